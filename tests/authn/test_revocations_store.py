"""The revocation feed's store on SQLite and PostgreSQL: numbering in commit order, atomicity, purge.

The poller of the feed asks for "sequence > its high-water mark". With an
autoincrement, PostgreSQL hands out numbers at insert and transactions commit
in any order, so a row numbered 5 could appear after the poller moved past 6.
The counter row's lock makes a second revoking transaction wait for the first
to end, so numbers become visible in order; these tests hold one transaction
open and watch the other wait.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.authn.server import MIGRATIONS, VERSION_TABLE
from services.authn.store import AuthnStore
from services.kit.migrations import upgrade_to_head

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=16)


@pytest.fixture
async def store(engine: AsyncEngine) -> AuthnStore:
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE)
    return AuthnStore(engine)


async def listed(store: AuthnStore, after: int = 0, now: datetime = NOW) -> list[tuple[int, str, str]]:
    async with store.transaction() as tx:
        found = await tx.list_revocations(after, now, 1000)
    return [(r.sequence, r.subject_id, r.session_id) for r in found]


async def test_sequences_follow_each_other_across_transactions(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        first = await tx.record_revocations(subject_ids=["u-1"], revoke_time=NOW, expire_time=LATER)
    async with store.transaction() as tx:
        second = await tx.record_revocations(
            subject_ids=["u-2"], session_ids=["s-1", "s-2"], revoke_time=NOW, expire_time=LATER
        )
        assert await tx.record_revocations(revoke_time=NOW, expire_time=LATER) == []
    assert [r.sequence for r in first + second] == [1, 2, 3, 4]
    assert await listed(store) == [(1, "u-1", ""), (2, "u-2", ""), (3, "", "s-1"), (4, "", "s-2")]
    assert await listed(store, after=2) == [(3, "", "s-1"), (4, "", "s-2")]


async def test_a_rolled_back_revocation_leaves_no_row_and_no_number(store: AuthnStore) -> None:
    async def failing_change() -> None:
        async with store.transaction() as tx:
            await tx.record_revocations(subject_ids=["u-1"], revoke_time=NOW, expire_time=LATER)
            raise RuntimeError("the change failed after its revocation was written")

    with pytest.raises(RuntimeError):
        await failing_change()
    async with store.transaction() as tx:
        [record] = await tx.record_revocations(subject_ids=["u-2"], revoke_time=NOW, expire_time=LATER)
    assert record.sequence == 1
    assert await listed(store) == [(1, "u-2", "")]


async def test_expiry_hides_and_purge_forgets(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        await tx.record_revocations(
            subject_ids=["old"], revoke_time=NOW, expire_time=NOW + timedelta(minutes=1)
        )
        await tx.record_revocations(subject_ids=["new"], revoke_time=NOW, expire_time=LATER)
    moment = NOW + timedelta(minutes=1)
    assert await listed(store, now=moment) == [(2, "new", "")]
    async with store.transaction() as tx:
        assert await tx.purge_revocations(moment) == 1
        assert await tx.purge_revocations(moment) == 0
    assert await listed(store) == [(2, "new", "")]


async def _wait_until_blocked_on_a_lock(engine: AsyncEngine) -> None:
    """Polls pg_stat_activity (with a deadline) until another session of this database waits on a lock."""
    deadline = time.monotonic() + 10
    query = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        async with engine.connect() as conn:
            if (await conn.execute(query)).scalar_one() > 0:
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the second revocation never waited for the first")


# SQLite has one writer at a time: there, insert order is commit order already.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_poller_past_a_commit_never_misses_a_slower_transaction(store: AuthnStore) -> None:
    # The autoincrement failure: A numbers first but commits last. With the counter, A's
    # open transaction holds B back, so the poller's high-water mark can never pass A.
    async with store.transaction() as tx:
        await tx.record_revocations(subject_ids=["u-0"], revoke_time=NOW, expire_time=LATER)
    high_water = (await listed(store))[-1][0]

    release = asyncio.Event()
    numbered = asyncio.Event()

    async def slow_revocation() -> None:
        async with store.transaction() as tx:
            await tx.record_revocations(subject_ids=["u-slow"], revoke_time=NOW, expire_time=LATER)
            numbered.set()
            await release.wait()

    async def quick_revocation() -> None:
        async with store.transaction() as tx:
            await tx.record_revocations(subject_ids=["u-quick"], revoke_time=NOW, expire_time=LATER)

    slow = asyncio.create_task(slow_revocation())
    await asyncio.wait_for(numbered.wait(), 10)
    quick = asyncio.create_task(quick_revocation())
    await _wait_until_blocked_on_a_lock(store.engine)
    seen = await listed(store, after=high_water)
    release.set()
    await asyncio.wait_for(asyncio.gather(slow, quick), 10)
    assert seen == []
    after_commit = await listed(store, after=high_water)
    assert [subject for _, subject, _ in after_commit] == ["u-slow", "u-quick"]
