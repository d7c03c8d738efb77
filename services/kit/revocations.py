"""authn's revocation feed, followed by a service that verifies access tokens locally.

Access tokens live minutes and are verified without asking authn, so a
deactivated user's or a logged-out session's token would pass until it
expires. authn publishes such revocations (TokenService.ListRevocations, in
commit order); `RevocationFeed` polls them about once a second as the
service's own mesh service account and refuses matching tokens through the
TokenVerifier's `principal_check`:

```python
feed = RevocationFeed(tokens_pb2_grpc.TokenServiceStub(channel), credential.metadata, clock)
verifier = TokenVerifier(jwks, ..., principal_check=feed.principal_check)
await feed.start()   # one bounded first poll, then every poll_seconds
```

When polls fail the feed keeps the set it has (fail open, warned once after
`stale_after_seconds`): every token still expires within its TTL. The
reasoning and the bound are in docs/decisions/revocation-feed.md.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from services.kit.clock import Clock, SystemClock
from services.kit.context import Principal
from services.kit.periodic import PeriodicTask
from services.kit.service_identity import MetadataProvider, ServiceCredential

logger = logging.getLogger(__name__)

# The largest page ListRevocations serves.
PAGE_SIZE = 1000
# One poll's call: a slow authn must not hold a poll long past its interval.
CALL_TIMEOUT_SECONDS = 5.0
# The first poll at start-up, before serving: short, so an authn outage delays start-up little.
FIRST_POLL_TIMEOUT_SECONDS = 3.0


@dataclass(frozen=True)
class _SubjectRevocation:
    revoke_time: float  # seconds since the epoch, comparable with the "iat" claim
    expire_time: datetime


class RevocationFeed:
    """The revoked subjects and sessions known to this process, refreshed from authn."""

    def __init__(
        self,
        tokens: tokens_pb2_grpc.TokenServiceAsyncStub,
        metadata: MetadataProvider,
        clock: Clock,
        *,
        poll_seconds: float = 1.0,
        stale_after_seconds: float = 30.0,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._tokens = tokens
        self._metadata = metadata
        self._clock = clock
        self._stale_after = timedelta(seconds=stale_after_seconds)
        # authn caps pages at PAGE_SIZE: a larger size would make a full page look like the last one.
        self._page_size = min(page_size, PAGE_SIZE)
        self._subjects: dict[str, _SubjectRevocation] = {}
        self._sessions: dict[str, datetime] = {}
        self._after_sequence = 0
        self._lock = asyncio.Lock()
        self._started_at: datetime | None = None
        self._last_success: datetime | None = None
        self._warned_stale = False
        self._task = PeriodicTask("revocation-feed", self.poll_or_note_failure, poll_seconds)

    @property
    def last_sequence(self) -> int:
        """The high-water mark: the next poll asks for revocations after it."""
        return self._after_sequence

    @property
    def tracked(self) -> int:
        """How many subjects and sessions are held (expired ones are dropped on each poll)."""
        return len(self._subjects) + len(self._sessions)

    @property
    def healthy(self) -> bool:
        """Whether a poll succeeded within `stale_after_seconds`."""
        if self._last_success is None:
            return False
        return self._clock.now() - self._last_success <= self._stale_after

    async def poll_once(self) -> int:
        """Fetches every page after the high-water mark; how many revocations arrived. Raises on failure."""
        async with self._lock:
            received = 0
            metadata = await self._metadata()
            while True:
                response = await self._tokens.ListRevocations(
                    tokens_pb2.ListRevocationsRequest(
                        after_sequence=self._after_sequence, page_size=self._page_size
                    ),
                    metadata=metadata,
                    timeout=CALL_TIMEOUT_SECONDS,
                )
                for revocation in response.revocations:
                    self._apply(revocation)
                received += len(response.revocations)
                self._after_sequence = max(self._after_sequence, response.last_sequence)
                if len(response.revocations) < self._page_size:
                    break
            now = self._clock.now()
            self._forget_expired(now)
            if self._warned_stale:
                logger.info("revocation feed is current again")
            self._last_success = now
            self._warned_stale = False
            return received

    def _apply(self, revocation: tokens_pb2.Revocation) -> None:
        expire_time = revocation.expire_time.ToDatetime(tzinfo=UTC)
        if revocation.session_id:
            known = self._sessions.get(revocation.session_id)
            self._sessions[revocation.session_id] = expire_time if known is None else max(known, expire_time)
        if revocation.subject_id:
            revoke_time = revocation.revoke_time.ToDatetime(tzinfo=UTC).timestamp()
            known_subject = self._subjects.get(revocation.subject_id)
            # The latest revocation covers every earlier one: later revoke time, later expiry.
            if known_subject is None or revoke_time >= known_subject.revoke_time:
                self._subjects[revocation.subject_id] = _SubjectRevocation(revoke_time, expire_time)

    def _forget_expired(self, now: datetime) -> None:
        # Past its expiry no token the entry concerns can pass verification any more.
        self._subjects = {key: entry for key, entry in self._subjects.items() if entry.expire_time > now}
        self._sessions = {key: expiry for key, expiry in self._sessions.items() if expiry > now}

    def is_revoked(self, principal: Principal) -> bool:
        """Whether the token was issued before its subject was revoked, or its session was ended."""
        subject = self._subjects.get(principal.subject)
        if subject is not None:
            issued_at = principal.claims.get("iat")
            # "iat" is whole seconds (floored), so a token of the revocation's own second is refused too.
            if not isinstance(issued_at, int | float) or issued_at <= subject.revoke_time:
                return True
        session_id = principal.claims.get("sid")
        return isinstance(session_id, str) and session_id in self._sessions

    async def principal_check(self, principal: Principal) -> bool:
        """The TokenVerifier hook: False (UNAUTHENTICATED) for a revoked token. Runs on every call."""
        return not self.is_revoked(principal)

    async def start(self, first_poll_timeout_seconds: float = FIRST_POLL_TIMEOUT_SECONDS) -> None:
        """Polls once (bounded; an unreachable authn is logged, not fatal), then every poll_seconds."""
        self._started_at = self._clock.now()
        try:
            await asyncio.wait_for(self.poll_once(), timeout=first_poll_timeout_seconds)
        except Exception as error:  # TimeoutError, grpc errors: serve on and catch up on the next poll
            logger.warning(
                "revocation feed: first poll failed (%s); serving and retrying every poll",
                type(error).__name__,
            )
        self._task.start()

    async def stop(self) -> None:
        """Stops polling after the poll in flight."""
        await self._task.stop()

    async def poll_or_note_failure(self) -> None:
        """The background step: poll_once, and on failure a warning once the set is stale.

        One log line per failing second would drown the log, so a failure is logged at debug
        level and the warning comes once per outage, after `stale_after_seconds`.
        """
        try:
            await self.poll_once()
        except Exception as error:
            logger.debug("revocation feed poll failed: %s", type(error).__name__)
            since = self._last_success or self._started_at or self._clock.now()
            if not self._warned_stale and self._clock.now() - since > self._stale_after:
                self._warned_stale = True
                logger.warning(
                    "revocation feed is stale: no successful poll of authn since %s; serving with the "
                    "revocations known then (tokens still expire within their TTL)",
                    since.isoformat(),
                )


def feed_for_service(authn: grpc.aio.Channel, credential: ServiceCredential | None) -> RevocationFeed | None:
    """A service's feed over its channel to authn, as its own account; None without a credential.

    It runs on real time, like the service's TokenVerifier: entries are dropped on the
    clock that decides whether the tokens they concern have expired.
    """
    if credential is None:
        return None
    return RevocationFeed(tokens_pb2_grpc.TokenServiceStub(authn), credential.metadata, SystemClock())
