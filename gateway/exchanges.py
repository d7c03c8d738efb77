"""Credential exchanges at authn, shared and cached: API key → access token, refresh token → new tokens.

`ExchangeCache` runs one exchange per credential however many requests present
it at once, and reuses the result until the sooner of `RENEW_BEFORE` ahead of
its expiry and the cache bound. Entries are keyed by an HMAC of the credential
under a per-process random key: the credential itself is never held.

- API keys: the bound is KEEL_GATEWAY_API_KEY_CACHE_SECONDS, so a revoked key
  stops working here within it; a backend refusing the token drops the entry
  at once (`forget`).
- Refresh tokens: rotation spends a token on use and a second use revokes the
  whole family, so a burst of browser requests carrying the same expired
  session must share one refresh. The result is kept for a short window
  (`REFRESH_SHARE_SECONDS`) for requests that were already on their way with
  the old cookie.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from services.kit.clock import Clock

API_KEY_PREFIX = "keel_ak_"
# Renew this long before expiry so a request never leaves with a token about to lapse.
RENEW_BEFORE = timedelta(seconds=30)
# How long the result of a refresh answers for the spent refresh token (requests already in flight).
REFRESH_SHARE_SECONDS = 30.0
MAX_ENTRIES = 10_000

T = TypeVar("T")


def looks_like_api_key(value: str) -> bool:
    """Whether a credential is a Keel API key (its recognisable prefix) rather than a token."""
    return value.startswith(API_KEY_PREFIX)


class ExchangeCache(Generic[T]):
    """Results of `exchange(credential)`, computed once per credential and cached within the bound."""

    def __init__(
        self,
        exchange: Callable[[str], Awaitable[T]],
        expire_time_of: Callable[[T], datetime],
        clock: Clock,
        *,
        max_age_seconds: float,
    ) -> None:
        self._exchange = exchange
        self._expire_time_of = expire_time_of
        self._clock = clock
        self._max_age = timedelta(seconds=max_age_seconds)
        self._pepper = secrets.token_bytes(32)
        self._cached: OrderedDict[str, tuple[T, datetime]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[T]] = {}

    def _key(self, credential: str) -> str:
        return hmac.new(self._pepper, credential.encode(), hashlib.sha256).hexdigest()

    async def get(self, credential: str) -> T:
        """The cached result for the credential, or a new exchange (shared by concurrent callers)."""
        key = self._key(credential)
        cached = self._cached.get(key)
        if cached is not None:
            result, valid_until = cached
            if self._clock.now() < valid_until:
                self._cached.move_to_end(key)
                return result
            del self._cached[key]
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            result = await self._exchange(credential)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # retrieved, so a lone caller leaves no "never retrieved" warning
            raise
        finally:
            del self._pending[key]
        future.set_result(result)
        now = self._clock.now()
        valid_until = min(self._expire_time_of(result) - RENEW_BEFORE, now + self._max_age)
        if now < valid_until:
            self._cached[key] = (result, valid_until)
            while len(self._cached) > MAX_ENTRIES:
                self._cached.popitem(last=False)
        return result

    def forget(self, credential: str) -> None:
        """Drops the credential's result (a backend refused it): the next request exchanges again."""
        self._cached.pop(self._key(credential), None)

    def __len__(self) -> int:
        return len(self._cached)
