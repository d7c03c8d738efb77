"""Wiring of RBAC: settings → engine → migrations → store → decisions/administration → servicers.

RBAC authorizes its own RPCs with its own decisions (RbacChecker), and
verifies access tokens against authn's JWKS like every other service. Audit
events go to RBAC's outbox with each write (denials too) and are shipped to
orgs when RBAC has its own credential (KEEL_SERVICE_API_KEY_FILE); with it,
RBAC also follows authn's revocation feed and refuses revoked tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.rbac.v1 import rbac_pb2_grpc
from services.kit.audit import AuditOutbox
from services.kit.clients import connect
from services.kit.clock import Clock, SystemClock
from services.kit.db import create_engine_from_settings
from services.kit.migrations import upgrade_to_head
from services.kit.periodic import PeriodicTask
from services.kit.revocations import RevocationFeed, feed_for_service
from services.kit.server import KeelServer, Registration
from services.kit.service_identity import ServiceCredential
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from services.rbac.administration import Administration
from services.rbac.api import PermissionApi, RoleApi, RoleBindingApi, TeamMembershipApi
from services.rbac.checker import RbacChecker
from services.rbac.decisions import Decisions
from services.rbac.ownership import Ownerships
from services.rbac.settings import RbacSettings
from services.rbac.store import RbacStore, audit_outbox

logger = logging.getLogger(__name__)

SERVICE_NAME = "rbac"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "rbac_alembic_version"
# AIP-155 asks for at least an hour; a day covers retries across a client's restart.
REQUEST_ID_RETENTION = timedelta(days=1)
HOUSEKEEPING_SECONDS = 3600.0
# A BatchRecordOwnership of 1,000 resources with every id at its 64-character limit is ~340 KiB;
# a BatchCheck of 100 items or a role with every permission stays far below this.
MAX_REQUEST_BYTES = 512 * 1024


async def migrate(engine: AsyncEngine, settings: RbacSettings) -> None:
    """Brings the RBAC schema to head."""
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE, schema=settings.database_schema)


@dataclass
class RbacDomain:
    """The domain objects of RBAC over one engine."""

    settings: RbacSettings
    engine: AsyncEngine
    store: RbacStore
    decisions: Decisions
    administration: Administration
    ownerships: Ownerships
    clock: Clock


def _nothing() -> None:
    return None


def build_domain(
    settings: RbacSettings,
    engine: AsyncEngine,
    clock: Clock,
    *,
    audit_recorded: Callable[[], None] = _nothing,
) -> RbacDomain:
    """The domain objects over one engine; `audit_recorded` runs after commits that recorded events."""
    store = RbacStore(engine, audit_recorded)
    decisions = Decisions(store, poll_seconds=settings.rbac_revision_poll_seconds)
    return RbacDomain(
        settings,
        engine,
        store,
        decisions,
        Administration(store, decisions, clock, mesh_service_accounts=settings.mesh_service_account_ids),
        Ownerships(store, decisions, clock),
        clock,
    )


@dataclass
class RbacService:
    """A runnable RBAC: its domain and its gRPC server."""

    domain: RbacDomain
    server: KeelServer
    jwks: JwksCache
    outbox: AuditOutbox
    # authn's revocation feed, followed when RBAC has its own credential (None otherwise).
    revocations: RevocationFeed | None = None
    credential: ServiceCredential | None = None
    authn_channel: grpc.aio.Channel | None = None
    housekeeping: PeriodicTask = field(init=False)

    def __post_init__(self) -> None:
        self.housekeeping = PeriodicTask(
            "rbac-housekeeping", self.forget_old_request_ids, HOUSEKEEPING_SECONDS
        )

    @property
    def port(self) -> int:
        """The bound port (after start)."""
        return self.server.port

    async def forget_old_request_ids(self) -> int:
        """Deletes remembered request ids past their retention (the housekeeping task's step)."""
        async with self.domain.store.transaction() as tx:
            return await tx.purge_request_ids(self.domain.clock.now() - REQUEST_ID_RETENTION)

    async def start(self) -> int:
        """Migrates, polls the revocation feed once, and starts serving; the bound port."""
        await migrate(self.domain.engine, self.domain.settings)
        if self.revocations is not None:
            await self.revocations.start()
        else:
            logger.warning(
                "rbac has no service credential (KEEL_SERVICE_API_KEY_FILE): no revocation feed, so a "
                "deactivated user's or ended session's access token is accepted until it expires"
            )
        port = await self.server.start()
        self.outbox.start()
        self.housekeeping.start()
        return port

    async def stop(self) -> None:
        """Stops serving (with the configured drain), the audit shipper, and disposes of the engine."""
        await self.housekeeping.stop()
        await self.server.stop()
        await self.outbox.stop()
        if self.revocations is not None:
            await self.revocations.stop()
        if self.credential is not None:
            await self.credential.close()
        if self.authn_channel is not None:
            await self.authn_channel.close(None)
        await self.domain.decisions.settle()
        await self.domain.engine.dispose()


def build_service(
    settings: RbacSettings,
    *,
    clock: Clock | None = None,
    engine: AsyncEngine | None = None,
    jwks: JwksCache | None = None,
) -> RbacService:
    """A complete RBAC service, not yet started; `jwks` defaults to authn's over gRPC."""
    clock = clock or SystemClock()
    engine = engine or create_engine_from_settings(settings, SERVICE_NAME)
    credential = ServiceCredential.from_settings(settings, SystemClock())
    outbox = AuditOutbox.from_settings(engine, audit_outbox, settings, clock, SERVICE_NAME, credential)
    domain = build_domain(settings, engine, clock, audit_recorded=outbox.notify)
    authn_channel = connect(settings.authn_address)
    if jwks is None:
        jwks = JwksCache(jwks_from_authn(authn_channel))
    revocations = feed_for_service(authn_channel, credential)
    verifier = TokenVerifier(
        jwks,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        principal_check=None if revocations is None else revocations.principal_check,
    )
    registrations = [
        Registration(
            "keel.rbac.v1.PermissionService",
            rbac_pb2_grpc.add_PermissionServiceServicer_to_server,
            PermissionApi(domain.decisions, domain.administration, domain.ownerships),
        ),
        Registration(
            "keel.rbac.v1.RoleService",
            rbac_pb2_grpc.add_RoleServiceServicer_to_server,
            RoleApi(domain.administration),
        ),
        Registration(
            "keel.rbac.v1.RoleBindingService",
            rbac_pb2_grpc.add_RoleBindingServiceServicer_to_server,
            RoleBindingApi(domain.administration),
        ),
        Registration(
            "keel.rbac.v1.TeamMembershipService",
            rbac_pb2_grpc.add_TeamMembershipServiceServicer_to_server,
            TeamMembershipApi(domain.administration),
        ),
    ]
    server = KeelServer(
        SERVICE_NAME,
        settings,
        registrations,
        verifier,
        RbacChecker(domain.decisions, settings.mesh_service_account_ids),
        max_message_bytes=MAX_REQUEST_BYTES,
        denial_recorder=outbox.denial_recorder,
    )
    return RbacService(domain, server, jwks, outbox, revocations, credential, authn_channel)
