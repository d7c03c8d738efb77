"""Units of the edge identity: the exchange cache (bound, sharing), sealed cookies, the session key file."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from gateway.exchanges import ExchangeCache
from gateway.identity import safe_return_path
from gateway.sessions import GENERATED_KEY_NAME, Sealer, SealError, read_session_key, session_key
from tests.clock import ManualClock


@dataclass(frozen=True)
class Issued:
    token: str
    expire_time: datetime


class CountingExchange:
    """An exchange that mints numbered tokens valid 15 minutes; it can be told to fail or to wait."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self, credential: str) -> Issued:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise PermissionError("refused")
        return Issued(f"{credential}-{self.calls}", self.clock.now() + timedelta(minutes=15))


def _cache(clock: ManualClock, exchange: CountingExchange, max_age: float) -> ExchangeCache[Issued]:
    return ExchangeCache(exchange, lambda issued: issued.expire_time, clock, max_age_seconds=max_age)


async def test_a_result_is_reused_within_the_bound_only() -> None:
    clock = ManualClock()
    exchange = CountingExchange(clock)
    cache = _cache(clock, exchange, max_age=60)
    assert (await cache.get("key")).token == "key-1"
    clock.advance(seconds=59)
    assert (await cache.get("key")).token == "key-1"
    clock.advance(seconds=2)  # past the bound: a revoked key would now fail its exchange
    assert (await cache.get("key")).token == "key-2"
    cache.forget("key")
    assert (await cache.get("key")).token == "key-3"


async def test_the_bound_never_outlives_the_token() -> None:
    clock = ManualClock()
    exchange = CountingExchange(clock)
    cache = _cache(clock, exchange, max_age=3600)
    await cache.get("key")
    clock.advance(minutes=14, seconds=31)  # within 30 s of the token's expiry
    assert (await cache.get("key")).token == "key-2"


async def test_concurrent_callers_share_one_exchange_and_failures_are_not_kept() -> None:
    clock = ManualClock()
    exchange = CountingExchange(clock)
    exchange.gate = asyncio.Event()
    cache = _cache(clock, exchange, max_age=60)
    waiting = [asyncio.ensure_future(cache.get("key")) for _ in range(5)]
    await asyncio.sleep(0)
    exchange.gate.set()
    assert {issued.token for issued in await asyncio.gather(*waiting)} == {"key-1"}
    assert exchange.calls == 1

    exchange.fail = True
    with pytest.raises(PermissionError):
        await cache.get("other")
    exchange.fail = False
    assert (await cache.get("other")).token == "other-3"
    assert len(cache) == 2


def test_sealed_values_authenticate_and_keep_purposes_apart() -> None:
    sealer = Sealer(os.urandom(32))
    sealed = sealer.seal({"rt": "keel_rt_secret"}, "session")
    assert "keel_rt_secret" not in sealed
    assert sealer.open(sealed, "session") == {"rt": "keel_rt_secret"}
    with pytest.raises(SealError):
        sealer.open(sealed, "login")
    with pytest.raises(SealError):
        Sealer(os.urandom(32)).open(sealed, "session")
    with pytest.raises(SealError):
        sealer.open(sealed[:-3] + ("AAA" if not sealed.endswith("AAA") else "BBB"), "session")
    with pytest.raises(SealError):
        sealer.open("not sealed at all!", "session")


def test_the_generated_session_key_is_private_and_stable(tmp_path: Path) -> None:
    first = session_key(None, tmp_path / "data")
    path = tmp_path / "data" / GENERATED_KEY_NAME
    assert path.stat().st_mode & 0o777 == 0o600
    assert session_key(None, tmp_path / "data") == first
    assert len(first) == 32
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        read_session_key(path)
    short = tmp_path / "short.key"
    short.write_text("c2hvcnQ\n")
    short.chmod(0o600)
    with pytest.raises(ValueError, match="32"):
        session_key(short, tmp_path)


@pytest.mark.parametrize(
    ("asked", "went"),
    [
        ("/dashboard?x=1", "/dashboard?x=1"),
        ("//evil.test/", "/"),
        ("https://evil.test/", "/"),
        ("/\\evil", "/"),
    ],
)
def test_a_login_returns_only_to_a_same_site_path(asked: str, went: str) -> None:
    assert safe_return_path(asked) == went
