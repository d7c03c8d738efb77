"""API keys of users and service accounts: issue, exchange, rotate with grace, revoke.

Secret format: `keel_ak_<public id: 8 hex>_<43 urlsafe chars = 32 random bytes>`.
The public id finds the row (indexed) and becomes the key's visible prefix;
the whole secret is checked against a keyed HMAC-SHA256, the only thing
stored. Each issued secret is its own row with its own expiry, which makes a
rotation with grace simple: the new secret gets a row, the old ones get
expire_time = now + grace; revocation gives every secret of the key
expire_time = now at once.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from services.authn.auditing import authn_event
from services.authn.crypto import SecretHasher
from services.authn.ids import new_id
from services.authn.revocations import api_key_session
from services.authn.store import (
    ApiKeyRecord,
    ApiKeySecretRecord,
    AuthnStore,
    AuthnTx,
    Conflict,
    ListQuery,
    Page,
    RequestKey,
)
from services.kit.audit import Actor
from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated

API_KEY_PREFIX = "keel_ak_"
_SECRET = re.compile(r"^keel_ak_([0-9a-f]{8})_[A-Za-z0-9_-]{43}$")
_HASH_PURPOSE = "api_key"
MAX_GRACE = timedelta(days=30)
# last_use_time is written at most this often per key: exchanges stay read-mostly.
LAST_USE_RESOLUTION = timedelta(minutes=1)
REASON_INVALID_API_KEY = "INVALID_API_KEY"


@dataclass(frozen=True)
class IssuedApiKey:
    """A key with its secret, as returned once by create and rotate."""

    key: ApiKeyRecord
    secret: str = field(repr=False)
    previous_secret_expire_time: datetime | None = None


@dataclass(frozen=True)
class ApiKeyView:
    """A key as shown by Get/List: state as of now and the grace end of a rotated secret."""

    key: ApiKeyRecord
    state: str
    previous_secret_expire_time: datetime | None


def public_prefix(key: ApiKeyRecord) -> str:
    """The visible, non-secret prefix of the key's newest secret: `keel_ak_<public id>`."""
    return f"{API_KEY_PREFIX}{key.public_id}"


def check_api_key_format(secret: str, field_name: str) -> None:
    """INVALID_ARGUMENT naming `field_name` unless `secret` looks like a Keel API key."""
    if not secret:
        raise InvalidArgument(field_name, "is required")
    if not _SECRET.fullmatch(secret):
        raise InvalidArgument(field_name, "is not a Keel API key (keel_ak_...)")


class ApiKeys:
    """The API-key rules."""

    def __init__(
        self,
        store: AuthnStore,
        hasher: SecretHasher,
        clock: Clock,
        *,
        default_grace: timedelta,
        revocation_lifetime: timedelta,
    ) -> None:
        self._store = store
        self._hasher = hasher
        self._clock = clock
        self._default_grace = default_grace
        self._revocation_lifetime = revocation_lifetime

    def _new_secret(self, key_id: str, now: datetime) -> tuple[str, ApiKeySecretRecord]:
        public_id = secrets.token_hex(4)
        secret = f"{API_KEY_PREFIX}{public_id}_{secrets.token_urlsafe(32)}"
        record = ApiKeySecretRecord(
            public_id=public_id,
            api_key_id=key_id,
            secret_hash=self._hasher.digest(secret, _HASH_PURPOSE),
            create_time=now,
            expire_time=None,
        )
        return secret, record

    def view(self, key: ApiKeyRecord, previous_secret_expire_time: datetime | None) -> ApiKeyView:
        """The key with its state as of now."""
        state = key.state
        if state == "active" and key.expire_time is not None and key.expire_time <= self._clock.now():
            state = "expired"
        return ApiKeyView(key, state, previous_secret_expire_time if state == "active" else None)

    async def _principal_kind(self, tx: AuthnTx, principal_id: str) -> str:
        found = await tx.principal_state(principal_id)
        if found is None:
            raise NotFound("principal not found")
        kind, state = found
        if state != "active":
            raise FailedPrecondition("the principal is deactivated", reason="PRINCIPAL_DEACTIVATED")
        return kind

    async def create(
        self,
        principal_id: str,
        display_name: str,
        expire_time: datetime | None,
        *,
        request_key: RequestKey | None = None,
    ) -> IssuedApiKey | ApiKeyView:
        """A new key and its secret; a retry with the same request key returns the key without secret."""
        now = self._clock.now()
        if expire_time is not None and expire_time <= now:
            raise InvalidArgument("api_key.expire_time", "must be in the future")
        for _attempt in range(3):
            try:
                async with self._store.transaction() as tx:
                    if request_key is not None:
                        earlier = await tx.recall(request_key)
                        if earlier is not None:
                            key = await tx.get_api_key(principal_id, earlier)
                            if key is None:
                                raise NotFound("api key not found")
                            return self.view(key, await tx.previous_secret_expiry(key.id, now))
                    kind = await self._principal_kind(tx, principal_id)
                    key_id = new_id()
                    secret, secret_record = self._new_secret(key_id, now)
                    key = ApiKeyRecord(
                        id=key_id,
                        principal_id=principal_id,
                        principal_kind=kind,
                        display_name=display_name,
                        state="active",
                        public_id=secret_record.public_id,
                        expire_time=expire_time,
                        last_use_time=None,
                        create_time=now,
                        rotate_time=None,
                        revoke_time=None,
                    )
                    await tx.insert_api_key(key, secret_record)
                    if request_key is not None:
                        # Only the id is remembered: a retry can never reveal the secret again.
                        await tx.remember(request_key, key_id, now)
                    await tx.record_event(
                        authn_event(
                            "authn.api_key.create",
                            "api_key",
                            key_id,
                            now,
                            details={
                                "principal_id": principal_id,
                                "principal_kind": kind,
                                "api_key_prefix": public_prefix(key),
                            },
                        )
                    )
                    return IssuedApiKey(key, secret)
            except Conflict as conflict:
                # A 32-bit public id collided (rare); draw another. Anything else is not ours to retry.
                if conflict.constraint != "api_key_secrets.public_id":
                    raise
        raise RuntimeError("could not allocate a unique API key id")

    async def get(self, principal_id: str, key_id: str) -> ApiKeyView:
        """One key of a principal; NOT_FOUND otherwise."""
        async with self._store.transaction() as tx:
            key = await tx.get_api_key(principal_id, key_id)
            if key is None:
                raise NotFound("api key not found")
            return self.view(key, await tx.previous_secret_expiry(key.id, self._clock.now()))

    async def list(self, principal_id: str, query: ListQuery) -> tuple[list[ApiKeyView], str]:
        """One page of a principal's keys."""
        async with self._store.transaction() as tx:
            page: Page[ApiKeyRecord] = await tx.list_api_keys(principal_id, query, self._clock.now())
            views = [
                self.view(key, await tx.previous_secret_expiry(key.id, self._clock.now()))
                for key in page.items
            ]
        return views, page.next_page_token

    async def rotate(self, principal_id: str, key_id: str, grace: timedelta | None) -> IssuedApiKey:
        """A new secret; earlier ones keep working for `grace` (default from settings)."""
        grace = self._default_grace if grace is None else grace
        if grace < timedelta(0) or grace > MAX_GRACE:
            raise InvalidArgument("grace_period", "must be between 0 and 30 days")
        now = self._clock.now()
        for _attempt in range(3):
            try:
                async with self._store.transaction() as tx:
                    key = await tx.get_api_key(principal_id, key_id)
                    if key is None:
                        raise NotFound("api key not found")
                    if self.view(key, None).state != "active":
                        raise FailedPrecondition(
                            "only an active key can be rotated", reason="API_KEY_NOT_ACTIVE"
                        )
                    await self._principal_kind(tx, principal_id)
                    secret, secret_record = self._new_secret(key.id, now)
                    rotated = await tx.rotate_api_key(key, secret_record, now + grace, now)
                    if rotated is None:
                        raise FailedPrecondition(
                            "only an active key can be rotated", reason="API_KEY_NOT_ACTIVE"
                        )
                    previous = await tx.previous_secret_expiry(key.id, now)
                    await tx.record_event(
                        authn_event(
                            "authn.api_key.rotate",
                            "api_key",
                            key.id,
                            now,
                            details={
                                "principal_id": principal_id,
                                "api_key_prefix": public_prefix(rotated),
                                "grace_seconds": int(grace.total_seconds()),
                            },
                        )
                    )
                    return IssuedApiKey(rotated, secret, previous)
            except Conflict as conflict:
                if conflict.constraint != "api_key_secrets.public_id":
                    raise
        raise RuntimeError("could not allocate a unique API key id")

    async def revoke(self, principal_id: str, key_id: str) -> ApiKeyView:
        """Ends the key and every secret of it now."""
        now = self._clock.now()
        async with self._store.transaction() as tx:
            key = await tx.revoke_api_key(principal_id, key_id, now)
            if key is None:
                raise NotFound("api key not found")
            # Tokens already exchanged from the key carry its session: the feed ends them too.
            await tx.record_revocations(
                session_ids=[api_key_session(key_id)],
                revoke_time=now,
                expire_time=now + self._revocation_lifetime,
            )
            await tx.record_event(
                authn_event(
                    "authn.api_key.revoke",
                    "api_key",
                    key_id,
                    now,
                    details={"principal_id": principal_id, "api_key_prefix": public_prefix(key)},
                )
            )
        return self.view(key, None)

    async def is_live(self, principal_id: str, key_id: str) -> bool:
        """Whether the principal's key is still active (tokens exchanged from it stay valid)."""
        async with self._store.transaction() as tx:
            key = await tx.get_api_key(principal_id, key_id)
        return key is not None and key.state == "active"

    async def authenticate(
        self, secret: str, *, token_grant: bool = False, organization_id: str = ""
    ) -> ApiKeyRecord:
        """The key a secret belongs to, when it may be exchanged now; UNAUTHENTICATED otherwise.

        With `token_grant` (the api_key grant of CreateToken) the grant is audited in the same
        transaction, as the key's principal, for `organization_id`.
        """
        match = _SECRET.fullmatch(secret)
        if match is None:
            raise Unauthenticated("invalid API key", reason=REASON_INVALID_API_KEY)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            found = await tx.find_api_key_secret(match.group(1))
            if found is None:
                # Same work as a hit, so timing does not tell a known public id from an unknown one.
                self._hasher.matches(secret, _HASH_PURPOSE, "0" * 64)
                raise Unauthenticated("invalid API key", reason=REASON_INVALID_API_KEY)
            secret_record, key = found.secret, found.key
            usable = (
                self._hasher.matches(secret, _HASH_PURPOSE, secret_record.secret_hash)
                and key.state == "active"
                and found.principal_state == "active"
                and (key.expire_time is None or key.expire_time > now)
                and (secret_record.expire_time is None or secret_record.expire_time > now)
            )
            if not usable:
                raise Unauthenticated("invalid API key", reason=REASON_INVALID_API_KEY)
            if key.last_use_time is None or key.last_use_time < now - LAST_USE_RESOLUTION:
                # Conditional again in SQL: concurrent exchanges on other replicas write once.
                await tx.touch_api_key(key.id, now, now - LAST_USE_RESOLUTION)
                key = replace(key, last_use_time=now)
            if token_grant:
                await tx.record_event(
                    authn_event(
                        "authn.token.create",
                        "api_key",
                        key.id,
                        now,
                        actor=Actor(key.principal_id, key.principal_kind),
                        organization_id=organization_id,
                        details={"grant": "api_key", "api_key_prefix": public_prefix(key)},
                    )
                )
        return key
