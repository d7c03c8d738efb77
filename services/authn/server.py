"""Wiring of authn: settings → engine → migrations → store → domain → servicers → KeelServer.

Also runs the signing-key maintenance task (rotation on schedule, expiry of
retired keys) and verifies incoming access tokens in-process: the kit's
JwksCache is fed straight from authn's own store, no network hop to itself.
Audit events go to authn's outbox with each change (denials too) and are
shipped to orgs when authn has its own credential (KEEL_SERVICE_API_KEY_FILE).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.authn.v1 import (
    api_keys_pb2_grpc,
    service_accounts_pb2_grpc,
    signing_keys_pb2_grpc,
    tokens_pb2_grpc,
    users_pb2_grpc,
)
from services.authn.api_apikeys import ApiKeyApi
from services.authn.api_keys import ApiKeys
from services.authn.api_service_accounts import ServiceAccountApi
from services.authn.api_signing_keys import SigningKeyApi
from services.authn.api_tokens import TokenApi
from services.authn.api_users import UserApi
from services.authn.crypto import Keyring
from services.authn.oidc import OidcClient, OidcProviderConfig
from services.authn.oidc_login import OidcLogins
from services.authn.passwords import PasswordCost, Passwords
from services.authn.permissions import PlatformAdminChecker
from services.authn.revocations import API_KEY_SESSION_PREFIX, Revocations, revocation_lifetime
from services.authn.service_accounts import ServiceAccounts
from services.authn.settings import AuthnSettings, master_key_bytes
from services.authn.signing_keys import SigningKeys
from services.authn.store import AuthnStore, audit_outbox
from services.authn.throttling import LoginThrottle, ThrottleLimits
from services.authn.tokens import TokenIssuer
from services.authn.users import Users
from services.kit.audit import AuditOutbox
from services.kit.clock import Clock, SystemClock
from services.kit.context import Principal
from services.kit.db import create_engine_from_settings
from services.kit.migrations import upgrade_to_head
from services.kit.periodic import PeriodicTask
from services.kit.server import KeelServer, Registration
from services.kit.service_identity import ServiceCredential
from services.kit.tokens import JwksCache, TokenVerifier

logger = logging.getLogger(__name__)

SERVICE_NAME = "authn"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "authn_alembic_version"
# authn's requests are small (credentials, names); anything bigger is refused by gRPC itself.
MAX_REQUEST_BYTES = 64 * 1024
# AIP-155 asks for at least an hour; a day covers retries across a client's restart.
REQUEST_ID_RETENTION = timedelta(days=1)


async def migrate(engine: AsyncEngine, settings: AuthnSettings) -> None:
    """Brings the authn schema to head."""
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE, schema=settings.database_schema)


@dataclass
class AuthnDomain:
    """Every domain object of authn, built from settings."""

    settings: AuthnSettings
    engine: AsyncEngine
    clock: Clock
    store: AuthnStore
    keyring: Keyring
    users: Users
    service_accounts: ServiceAccounts
    api_keys: ApiKeys
    signing_keys: SigningKeys
    tokens: TokenIssuer
    revocations: Revocations
    oidc_logins: OidcLogins
    oidc_client: OidcClient | None

    async def is_live(self, principal: Principal) -> bool:
        """Whether the token's subject is active and, for a login session, the session is not revoked."""
        async with self.store.transaction() as tx:
            found = await tx.principal_state(principal.subject)
        if found is None or found[1] != "active" or found[0] != principal.kind:
            return False
        session_id = principal.claims.get("sid")
        if not isinstance(session_id, str) or not session_id:
            return True
        if session_id.startswith(API_KEY_SESSION_PREFIX):
            return await self.api_keys.is_live(
                principal.subject, session_id.removeprefix(API_KEY_SESSION_PREFIX)
            )
        return await self.tokens.is_session_live(session_id)


def _nothing() -> None:
    return None


def build_domain(
    settings: AuthnSettings,
    engine: AsyncEngine,
    clock: Clock,
    http: httpx.AsyncClient | None = None,
    *,
    audit_recorded: Callable[[], None] = _nothing,
) -> AuthnDomain:
    """The domain objects over one engine; `audit_recorded` runs after commits that recorded events."""
    store = AuthnStore(engine, audit_recorded)
    keyring = Keyring(master_key_bytes(settings.authn_master_key))
    passwords = Passwords(
        PasswordCost(
            time_cost=settings.authn_password_time_cost,
            memory_kib=settings.authn_password_memory_kib,
            parallelism=settings.authn_password_parallelism,
        )
    )
    throttle = LoginThrottle(
        store,
        keyring.hasher,
        clock,
        ThrottleLimits(
            max_failures_per_account=settings.authn_login_max_failures_per_account,
            max_failures_per_source=settings.authn_login_max_failures_per_source,
            window=timedelta(seconds=settings.authn_login_failure_window_seconds),
            lockout_base=timedelta(seconds=settings.authn_login_lockout_base_seconds),
            lockout_max=timedelta(seconds=settings.authn_login_lockout_max_seconds),
        ),
    )
    access_ttl = timedelta(seconds=settings.authn_access_token_ttl_seconds)
    leeway = timedelta(seconds=settings.authn_token_leeway_seconds)
    revocations_kept = revocation_lifetime(access_ttl, leeway)
    signing_keys = SigningKeys(
        store,
        keyring.box,
        clock,
        access_token_ttl=access_ttl,
        leeway=leeway,
        rotation_interval=timedelta(days=settings.authn_signing_key_rotation_days),
        algorithm=settings.authn_signing_algorithm,
    )
    oidc_client = None
    if settings.oidc_enabled:
        oidc_client = OidcClient(
            OidcProviderConfig(
                issuer=settings.authn_oidc_issuer,
                client_id=settings.authn_oidc_client_id,
                client_secret=settings.authn_oidc_client_secret.get_secret_value(),
            ),
            http,
            clock,
            leeway=settings.authn_token_leeway_seconds,
        )
    return AuthnDomain(
        settings=settings,
        engine=engine,
        clock=clock,
        store=store,
        keyring=keyring,
        users=Users(store, passwords, throttle, clock, revocation_lifetime=revocations_kept),
        service_accounts=ServiceAccounts(store, clock, revocation_lifetime=revocations_kept),
        api_keys=ApiKeys(
            store,
            keyring.hasher,
            clock,
            default_grace=timedelta(seconds=settings.authn_api_key_default_grace_seconds),
            revocation_lifetime=revocations_kept,
        ),
        signing_keys=signing_keys,
        tokens=TokenIssuer(
            store,
            signing_keys,
            keyring.hasher,
            clock,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            access_ttl=access_ttl,
            refresh_ttl=timedelta(seconds=settings.authn_refresh_token_ttl_seconds),
            revocation_lifetime=revocations_kept,
        ),
        revocations=Revocations(store, clock, revocations_kept),
        oidc_logins=OidcLogins(
            store,
            keyring.box,
            keyring.hasher,
            clock,
            oidc_client,
            redirect_uris=settings.authn_oidc_redirect_uris,
            login_ttl=timedelta(seconds=settings.authn_oidc_login_ttl_seconds),
        ),
        oidc_client=oidc_client,
    )


@dataclass
class AuthnService:
    """A runnable authn: its domain, its gRPC server and the key-maintenance task."""

    domain: AuthnDomain
    server: KeelServer
    jwks: JwksCache
    verifier: TokenVerifier
    outbox: AuditOutbox
    # This service's own account (ships its audit outbox); None without KEEL_SERVICE_API_KEY_FILE.
    credential: ServiceCredential | None
    maintenance: PeriodicTask = field(init=False)

    def __post_init__(self) -> None:
        self.maintenance = PeriodicTask(
            "authn-signing-key-maintenance",
            self.maintain_keys_once,
            self.domain.settings.authn_signing_key_check_seconds,
        )

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return self.server.port

    async def start(self) -> int:
        """Migrates, ensures a signing key, starts serving and the maintenance task; the bound port."""
        await migrate(self.domain.engine, self.domain.settings)
        await self.domain.signing_keys.ensure_current()
        await self.jwks.refresh()
        port = await self.server.start()
        self.maintenance.start()
        self.outbox.start()
        return port

    async def maintain_keys_once(self) -> None:
        """Rotates the signing key when due, unpublishes expired ones, forgets stale request ids and
        revocations that no token can match any more.

        The step of the maintenance task; tests call it directly with a moved clock.
        """
        async with self.domain.store.transaction() as tx:
            await tx.purge_housekeeping(self.domain.clock.now() - REQUEST_ID_RETENTION)
        await self.domain.revocations.purge_expired()
        rotated = await self.domain.signing_keys.rotate_if_due()
        expired = await self.domain.signing_keys.expire_due()
        if rotated or expired:
            logger.info("signing keys maintained", extra={"rotated": rotated, "expired": expired})
            await self.jwks.refresh()

    async def stop(self) -> None:
        """Stops serving (with the configured drain), the task, the OIDC client and the engine."""
        await self.maintenance.stop()
        await self.server.stop()
        await self.outbox.stop()
        if self.credential is not None:
            await self.credential.close()
        if self.domain.oidc_client is not None:
            await self.domain.oidc_client.aclose()
        await self.domain.engine.dispose()


def build_service(
    settings: AuthnSettings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    http: httpx.AsyncClient | None = None,
) -> AuthnService:
    """A complete authn service, not yet started."""
    clock = clock or SystemClock()
    engine = engine or create_engine_from_settings(settings, SERVICE_NAME)
    credential = ServiceCredential.from_settings(settings, SystemClock())
    outbox = AuditOutbox.from_settings(engine, audit_outbox, settings, clock, SERVICE_NAME, credential)
    domain = build_domain(settings, engine, clock, http, audit_recorded=outbox.notify)

    jwks = JwksCache(
        domain.signing_keys.jwks,
        # A local query, so refetching on an unknown kid can be frequent.
        min_refetch_interval_seconds=1.0,
        max_age_seconds=60.0,
        clock=clock,
    )
    # One verifier for the server's authentication and for IntrospectToken: unlike other
    # services, authn holds the state, so it refuses a deactivated subject's token at once.
    verifier = TokenVerifier(
        jwks,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        leeway_seconds=settings.authn_token_leeway_seconds,
        clock=clock,
        principal_check=domain.is_live,
    )
    registrations = [
        Registration(
            "keel.authn.v1.UserService",
            users_pb2_grpc.add_UserServiceServicer_to_server,
            UserApi(domain.users),
        ),
        Registration(
            "keel.authn.v1.ServiceAccountService",
            service_accounts_pb2_grpc.add_ServiceAccountServiceServicer_to_server,
            ServiceAccountApi(domain.service_accounts),
        ),
        Registration(
            "keel.authn.v1.ApiKeyService",
            api_keys_pb2_grpc.add_ApiKeyServiceServicer_to_server,
            ApiKeyApi(domain.api_keys),
        ),
        Registration(
            "keel.authn.v1.TokenService",
            tokens_pb2_grpc.add_TokenServiceServicer_to_server,
            TokenApi(
                users=domain.users,
                api_keys=domain.api_keys,
                tokens=domain.tokens,
                signing_keys=domain.signing_keys,
                oidc_logins=domain.oidc_logins,
                verifier=verifier,
                revocations=domain.revocations,
            ),
        ),
        Registration(
            "keel.authn.v1.SigningKeyService",
            signing_keys_pb2_grpc.add_SigningKeyServiceServicer_to_server,
            SigningKeyApi(domain.signing_keys, jwks.refresh),
        ),
    ]
    server = KeelServer(
        SERVICE_NAME,
        settings,
        registrations,
        verifier,
        PlatformAdminChecker(domain.users),
        max_message_bytes=MAX_REQUEST_BYTES,
        denial_recorder=outbox.denial_recorder,
    )
    return AuthnService(domain, server, jwks, verifier, outbox, credential)
