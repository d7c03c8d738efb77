"""Login throttling per account and per source address, shared by replicas through the database.

After `max_failures` failed logins the key is locked for base * 2^(failures
beyond the limit) seconds, capped; the answer is RESOURCE_EXHAUSTED with the
time left. The count is forgotten once the key has been quiet (no failure,
no lock) for a whole window, and a successful login forgets the account's
count — never the source's, so one valid account cannot launder an address
that guesses at others. Keys are keyed hashes: an e-mail field that really
holds a mistyped password never rests in clear.

The account key is the submitted e-mail whether or not such an account
exists, so a lockout says nothing about existence either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.authn.crypto import SecretHasher
from services.authn.store import AuthnStore, ThrottleRecord
from services.kit.audit import AuditEvent
from services.kit.clock import Clock
from services.kit.errors import ResourceExhausted

REASON_TOO_MANY_LOGIN_ATTEMPTS = "TOO_MANY_LOGIN_ATTEMPTS"
_PURPOSE = "login_throttle"


@dataclass(frozen=True)
class ThrottleLimits:
    """How many failures are allowed and how long lockouts last."""

    max_failures_per_account: int = 5
    max_failures_per_source: int = 50
    window: timedelta = timedelta(minutes=15)
    lockout_base: timedelta = timedelta(seconds=30)
    lockout_max: timedelta = timedelta(hours=1)


def source_address(peer: str) -> str:
    """The host part of a gRPC peer ("ipv4:1.2.3.4:5678", "ipv6:[::1]:5678") or a forwarded address."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        host = peer[5:]
        return host[1 : host.index("]")] if host.startswith("[") and "]" in host else host
    return peer


class LoginThrottle:
    """Checks and records login outcomes."""

    def __init__(self, store: AuthnStore, hasher: SecretHasher, clock: Clock, limits: ThrottleLimits) -> None:
        self._store = store
        self._hasher = hasher
        self._clock = clock
        self._limits = limits

    def _keys(self, email: str, source: str) -> dict[str, int]:
        keys = {self._hasher.digest(f"account:{email}", _PURPOSE): self._limits.max_failures_per_account}
        if source:
            keys[self._hasher.digest(f"source:{source}", _PURPOSE)] = self._limits.max_failures_per_source
        return keys

    async def check(self, email: str, source: str) -> None:
        """RESOURCE_EXHAUSTED with the time left when the account or the source is locked."""
        now = self._clock.now()
        async with self._store.transaction() as tx:
            records = await tx.get_throttles(list(self._keys(email, source)))
        locked_until = [
            r.locked_until for r in records if r.locked_until is not None and r.locked_until > now
        ]
        if locked_until:
            wait = (max(locked_until) - now).total_seconds()
            raise ResourceExhausted(
                "too many failed login attempts; try again later",
                retry_after_seconds=math.ceil(wait),
                reason=REASON_TOO_MANY_LOGIN_ATTEMPTS,
            )

    async def record_failure(self, email: str, source: str, event: AuditEvent | None = None) -> None:
        """Counts one failure against the account and the source, locking them when over the limit.

        `event` (the failed login's audit event) is recorded in the same transaction.
        """
        now = self._clock.now()
        keys = self._keys(email, source)
        async with self._store.transaction() as tx:
            existing = {r.throttle_key: r for r in await tx.get_throttles(list(keys))}
            for key, limit in keys.items():
                await tx.save_throttle(self._after_failure(key, limit, existing.get(key), now))
            if event is not None:
                await tx.record_event(event)

    def _after_failure(
        self, key: str, limit: int, record: ThrottleRecord | None, now: datetime
    ) -> ThrottleRecord:
        failures = 1
        if record is not None:
            quiet_since = max(record.last_failure_time, record.locked_until or record.last_failure_time)
            if now - quiet_since <= self._limits.window:
                failures = record.failures + 1
        locked_until = None
        if failures >= limit:
            lockout = self._limits.lockout_base.total_seconds() * 2 ** min(failures - limit, 32)
            locked_until = now + min(timedelta(seconds=lockout), self._limits.lockout_max)
        return ThrottleRecord(
            throttle_key=key, failures=failures, last_failure_time=now, locked_until=locked_until
        )

    async def record_success(self, email: str) -> None:
        """Forgets the account's failures."""
        async with self._store.transaction() as tx:
            await tx.clear_throttle(self._hasher.digest(f"account:{email}", _PURPOSE))
