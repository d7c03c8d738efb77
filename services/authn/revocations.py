"""The revocation feed: which subjects and sessions other services must refuse, and for how long.

Services verify access tokens locally, so a deactivation or a logout reaches
them only through this feed (services/kit/revocations.py polls it). A row is
written in the transaction of the change (users.py, service_accounts.py,
tokens.py) and kept for `lifetime` = access-token TTL + leeway: after that
no token it concerns can still pass a verifier. See
docs/decisions/revocation-feed.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.authn.store import AuthnStore, RevocationRecord
from services.kit.clock import Clock
from services.kit.errors import InvalidArgument
from services.kit.pagination import page_size

# Access tokens exchanged from an API key carry "sid" = this prefix + the key id, so that
# revoking the key puts them on the feed like an ended login session.
API_KEY_SESSION_PREFIX = "apikey:"

DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 1000


def revocation_lifetime(access_token_ttl: timedelta, leeway: timedelta) -> timedelta:
    """How long a revocation must be remembered: the longest a token issued before it stays valid.

    Verifiers accept a token up to `leeway` past its exp, so authn's leeway must be at
    least the largest leeway of any verifier (the kit default is 30 s, authn's 60 s).
    """
    return access_token_ttl + leeway


def api_key_session(key_id: str) -> str:
    """The "sid" of access tokens exchanged from API key `key_id`."""
    return API_KEY_SESSION_PREFIX + key_id


@dataclass(frozen=True)
class RevocationPage:
    """One page of the feed and the sequence to poll after."""

    revocations: list[RevocationRecord]
    last_sequence: int


class Revocations:
    """Reads and prunes the feed; writers append to it through the store in their own transaction."""

    def __init__(self, store: AuthnStore, clock: Clock, lifetime: timedelta) -> None:
        self._store = store
        self._clock = clock
        self.lifetime = lifetime

    async def list(self, after_sequence: int, requested_page_size: int) -> RevocationPage:
        """Unexpired revocations numbered above `after_sequence`, oldest first."""
        if after_sequence < 0:
            raise InvalidArgument("after_sequence", "must not be negative")
        size = page_size(requested_page_size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE)
        async with self._store.transaction() as tx:
            found = await tx.list_revocations(after_sequence, self._clock.now(), size)
        return RevocationPage(found, found[-1].sequence if found else after_sequence)

    async def purge_expired(self) -> int:
        """Forgets revocations that no valid token can match any more; how many."""
        async with self._store.transaction() as tx:
            return await tx.purge_revocations(self._clock.now())
