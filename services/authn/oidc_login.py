"""Single sign-on: ties the OidcClient to authn's persistence and users.

StartOidcLogin stores, under a keyed hash of the state, the PKCE
code_verifier and the nonce (both AES-GCM sealed) with the redirect URI and an
expiry; the oidc_code grant takes that row (single use: it is deleted whether
or not the exchange then succeeds), redeems the code and maps the identity to
a user.

Users are linked by (issuer, subject) and NEVER by e-mail alone. A first login
provisions a user just in time. If a local user already holds the asserted
e-mail and is not linked to this identity, the login is refused with
FAILED_PRECONDITION / EMAIL_ALREADY_REGISTERED rather than merged (whoever
controls an account at the provider must not take over a local account) or
duplicated (e-mail is the unique login name). Linking such accounts needs an
explicit, authenticated step, which is future work. The provider's e-mail is
copied to the new user only when the provider says it is verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from services.authn.auditing import authn_event
from services.authn.crypto import SecretBox, SecretHasher
from services.authn.ids import new_id
from services.authn.oidc import OidcClient, OidcIdentity
from services.authn.store import AuthnStore, Conflict, OidcLoginRecord, UserRecord
from services.authn.users import MAX_DISPLAY_NAME_LENGTH
from services.kit.audit import SYSTEM
from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, Unauthenticated

REASON_OIDC_NOT_CONFIGURED = "OIDC_NOT_CONFIGURED"
REASON_OIDC_LOGIN_UNKNOWN = "OIDC_LOGIN_UNKNOWN"
REASON_EMAIL_ALREADY_REGISTERED = "EMAIL_ALREADY_REGISTERED"
REASON_INVALID_CREDENTIALS = "INVALID_CREDENTIALS"
_STATE_PURPOSE = "oidc_state"
MAX_CODE_LENGTH = 2048
MAX_STATE_LENGTH = 512


@dataclass(frozen=True)
class StartedLogin:
    """What the caller needs to send the browser to the provider."""

    authorization_url: str
    state: str
    expire_time: datetime


def _not_configured() -> FailedPrecondition:
    return FailedPrecondition("single sign-on is not configured", reason=REASON_OIDC_NOT_CONFIGURED)


class OidcLogins:
    """Starts and completes single-sign-on logins."""

    def __init__(
        self,
        store: AuthnStore,
        box: SecretBox,
        hasher: SecretHasher,
        clock: Clock,
        client: OidcClient | None,
        *,
        redirect_uris: tuple[str, ...],
        login_ttl: timedelta,
    ) -> None:
        self._store = store
        self._box = box
        self._hasher = hasher
        self._clock = clock
        self._client = client
        self._redirect_uris = frozenset(redirect_uris)
        self._login_ttl = login_ttl

    async def start(self, redirect_uri: str) -> StartedLogin:
        """A new login for an allow-listed redirect URI."""
        if self._client is None:
            raise _not_configured()
        if not redirect_uri:
            raise InvalidArgument("redirect_uri", "is required")
        if redirect_uri not in self._redirect_uris:
            raise InvalidArgument("redirect_uri", "is not an allowed redirect URI")
        login = await self._client.new_login(redirect_uri)
        now = self._clock.now()
        state_hash = self._hasher.digest(login.state, _STATE_PURPOSE)
        record = OidcLoginRecord(
            state_hash=state_hash,
            code_verifier_sealed=self._box.seal(login.code_verifier.encode(), f"oidc_verifier:{state_hash}"),
            nonce_sealed=self._box.seal(login.nonce.encode(), f"oidc_nonce:{state_hash}"),
            redirect_uri=redirect_uri,
            create_time=now,
            expire_time=now + self._login_ttl,
        )
        async with self._store.transaction() as tx:
            # Housekeeping rides on logins instead of needing its own schedule.
            await tx.delete_expired_oidc_logins(now)
            await tx.insert_oidc_login(record)
        return StartedLogin(login.authorization_url, login.state, record.expire_time)

    async def complete(self, code: str, state: str) -> UserRecord:
        """The user a returning login maps to (provisioned on first sight)."""
        if self._client is None:
            raise _not_configured()
        if not code or len(code) > MAX_CODE_LENGTH:
            raise InvalidArgument("oidc_code.code", "is required" if not code else "is too long")
        if not state or len(state) > MAX_STATE_LENGTH:
            raise InvalidArgument("oidc_code.state", "is required" if not state else "is too long")
        state_hash = self._hasher.digest(state, _STATE_PURPOSE)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            login = await tx.take_oidc_login(state_hash)
        if login is None or login.expire_time <= now:
            raise Unauthenticated("unknown, used or expired login state", reason=REASON_OIDC_LOGIN_UNKNOWN)
        identity = await self._client.exchange_code(
            code,
            code_verifier=self._box.open(login.code_verifier_sealed, f"oidc_verifier:{state_hash}").decode(),
            redirect_uri=login.redirect_uri,
            nonce=self._box.open(login.nonce_sealed, f"oidc_nonce:{state_hash}").decode(),
        )
        user = await self._user_for(identity)
        if user.state != "active":
            raise Unauthenticated("invalid credentials", reason=REASON_INVALID_CREDENTIALS)
        return user

    async def _user_for(self, identity: OidcIdentity) -> UserRecord:
        async with self._store.transaction() as tx:
            linked = await tx.find_identity_user(identity.issuer, identity.subject)
        if linked is not None:
            return linked
        email = identity.email.strip().lower() if identity.email and identity.email_verified else None
        now = self._clock.now()
        user = UserRecord.new(
            new_id(), email=email, display_name=(identity.name or "")[:MAX_DISPLAY_NAME_LENGTH], now=now
        )
        try:
            async with self._store.transaction() as tx:
                if email is not None and await tx.get_user_by_email(email) is not None:
                    raise FailedPrecondition(
                        "a user with this e-mail already exists and is not linked to this identity",
                        reason=REASON_EMAIL_ALREADY_REGISTERED,
                    )
                await tx.insert_user(user)
                await tx.insert_identity(
                    new_id(), user.id, identity.issuer, identity.subject, identity.email, now
                )
                # Provisioned by authn on the provider's word, not by the (still anonymous) caller.
                await tx.record_event(
                    authn_event(
                        "authn.user.create",
                        "user",
                        user.id,
                        now,
                        actor=SYSTEM,
                        details={"email": email, "identity_issuer": identity.issuer, "source": "oidc"},
                    )
                )
        except Conflict as conflict:
            if conflict.constraint == "users.email":
                raise FailedPrecondition(
                    "a user with this e-mail already exists and is not linked to this identity",
                    reason=REASON_EMAIL_ALREADY_REGISTERED,
                ) from None
            # A concurrent first login of the same identity linked it first: use that user.
            async with self._store.transaction() as tx:
                linked = await tx.find_identity_user(identity.issuer, identity.subject)
            if linked is None:
                raise
            return linked
        return user
