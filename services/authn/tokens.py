"""Access tokens (JWTs signed by the current signing key, ES256 or EdDSA) and refresh-token families.

An access token is short-lived and self-contained (RFC 9068 profile: header
typ "at+jwt"). A refresh token is opaque (`keel_rt_` + 32 random bytes) and
stored only as a keyed hash. Each login starts a family; using a token spends
it and issues the next one of the same family. Presenting a spent token means
it was copied: the whole family is revoked (the thief's and the owner's
sessions both end) and the answer is REFRESH_TOKEN_REUSED. Each new refresh
token lives `refresh_ttl` from its issue (a sliding session that ends after
that much inactivity, or at once on logout, password change or deactivation).
An ended session goes on the revocation feed in the transaction that ends it,
so that services verifying its access tokens locally refuse them too.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import jwt

from services.authn.auditing import authn_event
from services.authn.crypto import SecretHasher
from services.authn.ids import new_id
from services.authn.signing_keys import SigningKeys
from services.authn.store import AuthnStore, AuthnTx, RefreshTokenRecord
from services.kit.audit import Actor
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument, Unauthenticated

REFRESH_TOKEN_PREFIX = "keel_rt_"
_REFRESH_TOKEN = re.compile(r"^keel_rt_[A-Za-z0-9_-]{43}$")
_HASH_PURPOSE = "refresh_token"
REASON_REFRESH_TOKEN_REUSED = "REFRESH_TOKEN_REUSED"
REASON_INVALID_REFRESH_TOKEN = "INVALID_REFRESH_TOKEN"


@dataclass(frozen=True)
class IssuedTokens:
    """The result of a successful exchange."""

    subject: str
    access_token: str = field(repr=False)
    access_token_expire_time: datetime
    refresh_token: str = field(default="", repr=False)
    refresh_token_expire_time: datetime | None = None


def check_refresh_token_format(token: str, field_name: str) -> None:
    """INVALID_ARGUMENT naming `field_name` unless `token` looks like a Keel refresh token."""
    if not token:
        raise InvalidArgument(field_name, "is required")
    if not _REFRESH_TOKEN.fullmatch(token):
        raise InvalidArgument(field_name, "is not a Keel refresh token")


class TokenIssuer:
    """Mints access tokens and manages refresh-token families."""

    def __init__(
        self,
        store: AuthnStore,
        signing_keys: SigningKeys,
        hasher: SecretHasher,
        clock: Clock,
        *,
        issuer: str,
        audience: str,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
        revocation_lifetime: timedelta,
    ) -> None:
        self._store = store
        self._signing_keys = signing_keys
        self._hasher = hasher
        self._clock = clock
        self._issuer = issuer
        self._audience = audience
        self._access_ttl = access_ttl
        self._refresh_ttl = refresh_ttl
        self._revocation_lifetime = revocation_lifetime

    async def mint_access_token(
        self, subject: str, kind: str, organization_id: str, *, session_id: str = ""
    ) -> tuple[str, datetime]:
        """A signed access token and its expiry. `session_id` (the refresh family) goes in "sid"."""
        signer = await self._signing_keys.signer()
        now = self._clock.now()
        expire_time = now + self._access_ttl
        issued_at = int(now.timestamp())
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": subject,
            "aud": self._audience,
            "exp": int(expire_time.timestamp()),
            "iat": issued_at,
            "nbf": issued_at,
            "jti": secrets.token_urlsafe(16),
            "typ": kind,
            "org": organization_id,
        }
        if session_id:
            claims["sid"] = session_id
        token = jwt.encode(
            claims,
            signer.private_key,
            algorithm=signer.algorithm,
            headers={"kid": signer.kid, "typ": "at+jwt"},
        )
        return token, expire_time.replace(microsecond=0)

    def _new_refresh_token(self, family_id: str, now: datetime) -> tuple[str, RefreshTokenRecord]:
        token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = RefreshTokenRecord(
            token_hash=self._hasher.digest(token, _HASH_PURPOSE),
            family_id=family_id,
            create_time=now,
            expire_time=now + self._refresh_ttl,
            spent_time=None,
        )
        return token, record

    async def start_session(
        self, user_id: str, organization_id: str, grant: str = "password"
    ) -> IssuedTokens:
        """A new refresh family for a user who just authenticated by `grant`, with its first tokens."""
        now = self._clock.now()
        family_id = new_id()
        token, record = self._new_refresh_token(family_id, now)
        async with self._store.transaction() as tx:
            await tx.insert_refresh_family(family_id, user_id, now)
            await tx.insert_refresh_token(record)
            # The caller was anonymous until now: the user who logged in is the actor.
            await tx.record_event(
                authn_event(
                    "authn.token.create",
                    "session",
                    family_id,
                    now,
                    actor=Actor(user_id, "user"),
                    organization_id=organization_id,
                    details={"grant": grant},
                )
            )
        access_token, access_expire = await self.mint_access_token(
            user_id, "user", organization_id, session_id=family_id
        )
        return IssuedTokens(user_id, access_token, access_expire, token, record.expire_time)

    async def refresh(self, refresh_token: str, organization_id: str) -> IssuedTokens:
        """Spends a refresh token and issues the next of its family; UNAUTHENTICATED when unusable."""
        now = self._clock.now()
        token_hash = self._hasher.digest(refresh_token, _HASH_PURPOSE)
        reused = False
        async with self._store.transaction() as tx:
            found = await tx.find_refresh_token(token_hash)
            if found is None:
                raise Unauthenticated("invalid refresh token", reason=REASON_INVALID_REFRESH_TOKEN)
            token, family = found
            if family.revoke_time is not None or token.expire_time <= now:
                raise Unauthenticated("invalid refresh token", reason=REASON_INVALID_REFRESH_TOKEN)
            user = await tx.get_user(family.user_id)
            if user is None or user.state != "active":
                raise Unauthenticated("invalid refresh token", reason=REASON_INVALID_REFRESH_TOKEN)
            # The conditional update makes concurrent uses of one token race to a single winner.
            if token.spent_time is not None or not await tx.spend_refresh_token(token_hash, now):
                if await tx.revoke_refresh_family(family.id, now, reason="reused"):
                    await self._publish_ended_session(tx, family.id, now)
                # The presenter is anonymous; its source address is what the log can tell.
                await tx.record_event(
                    authn_event(
                        "authn.session.revoke",
                        "session",
                        family.id,
                        now,
                        details={"reason": "refresh_token_reused", "user_id": family.user_id},
                    )
                )
                reused = True
            else:
                next_token, record = self._new_refresh_token(family.id, now)
                await tx.insert_refresh_token(record)
        # Raised after the block so that the family's revocation is committed.
        if reused:
            raise Unauthenticated(
                "refresh token was already used; the session has been revoked",
                reason=REASON_REFRESH_TOKEN_REUSED,
            )
        access_token, access_expire = await self.mint_access_token(
            family.user_id, "user", organization_id, session_id=family.id
        )
        return IssuedTokens(family.user_id, access_token, access_expire, next_token, record.expire_time)

    async def revoke(self, refresh_token: str) -> None:
        """Ends the family of a refresh token; unknown tokens are ignored (RFC 7009 §2.2)."""
        now = self._clock.now()
        async with self._store.transaction() as tx:
            found = await tx.find_refresh_token(self._hasher.digest(refresh_token, _HASH_PURPOSE))
            if found is not None and await tx.revoke_refresh_family(found[1].id, now, reason="logout"):
                await self._publish_ended_session(tx, found[1].id, now)
                await tx.record_event(
                    authn_event(
                        "authn.session.revoke",
                        "session",
                        found[1].id,
                        now,
                        details={"reason": "logout", "user_id": found[1].user_id},
                    )
                )

    async def _publish_ended_session(self, tx: AuthnTx, session_id: str, now: datetime) -> None:
        # The session's access tokens carry it as "sid": the feed tells other services to refuse them.
        await tx.record_revocations(
            session_ids=[session_id], revoke_time=now, expire_time=now + self._revocation_lifetime
        )

    async def is_session_live(self, session_id: str) -> bool:
        """Whether a refresh family (the "sid" of an access token) is still live."""
        async with self._store.transaction() as tx:
            return await tx.is_family_live(session_id)
