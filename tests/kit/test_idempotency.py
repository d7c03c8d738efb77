"""request_id idempotency: remembered with the change, scoped per method and principal."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import TypedDict

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit.db import create_engine
from services.kit.errors import Aborted, InvalidArgument
from services.kit.idempotency import (
    idempotency_table,
    purge_older_than,
    recall,
    remember,
    validate_request_id,
)

metadata = MetaData()
request_ids = idempotency_table(metadata)
widgets = Table("widgets", metadata, Column("id", Integer, primary_key=True))


class Key(TypedDict):
    method: str
    principal: str
    request_id: str


def key(
    *, method: str = "/keel.runs.v1.Runs/CreateRun", principal: str = "user-1", request_id: str = "req-1"
) -> Key:
    """The idempotency key of the test request, with the parts a test changes."""
    return Key(method=method, principal=principal, request_id=request_id)


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


async def recalled(engine: AsyncEngine, which: Key | None = None) -> bytes | None:
    async with engine.connect() as conn:
        return await recall(conn, request_ids, **(which or key()))


async def test_new_request_recalls_nothing(store: AsyncEngine) -> None:
    assert await recalled(store) is None


async def test_committed_response_is_recalled_byte_for_byte(store: AsyncEngine) -> None:
    response = bytes(range(256)) * 4
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(), response=response)
    assert await recalled(store) == response


async def test_same_request_id_from_two_principals_is_independent(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(), response=b"first user")
    assert await recalled(store, key(principal="user-2")) is None
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(principal="user-2"), response=b"second user")
    assert await recalled(store) == b"first user"
    assert await recalled(store, key(principal="user-2")) == b"second user"


async def test_same_request_id_for_two_methods_is_independent(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(), response=b"run")
    assert await recalled(store, key(method="/keel.runs.v1.Runs/CreateStep")) is None


async def test_rolled_back_transaction_remembers_nothing_and_changes_nothing(store: AsyncEngine) -> None:
    async def create_that_fails_after_remembering() -> None:
        async with store.begin() as conn:
            await conn.execute(insert(widgets).values(id=1))
            await remember(conn, request_ids, **key(), response=b"never sent")
            raise RuntimeError("create failed after remembering")

    with pytest.raises(RuntimeError, match="create failed"):
        await create_that_fails_after_remembering()
    assert await recalled(store) is None
    async with store.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(widgets))).scalar_one() == 0


async def test_second_remember_of_a_key_is_aborted_and_keeps_the_first(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(), response=b"first")
    with pytest.raises(Aborted) as caught:
        async with store.begin() as conn:
            await remember(conn, request_ids, **key(), response=b"second")
    assert caught.value.reason == "REQUEST_IN_PROGRESS"
    assert await recalled(store) == b"first"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_concurrent_duplicate_waits_for_the_first_then_is_aborted(database_url: str) -> None:
    first_engine, second_engine = create_engine(database_url), create_engine(database_url)
    try:
        async with first_engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with first_engine.begin() as first:
            await first.execute(insert(widgets).values(id=1))
            await remember(first, request_ids, **key(), response=b"first")
            second = asyncio.create_task(remember_in_new_transaction(second_engine, b"second"))
            await wait_until_a_session_waits_for_a_lock(first)
            assert not second.done()
        with pytest.raises(Aborted) as caught:
            await second
        assert caught.value.reason == "REQUEST_IN_PROGRESS"
        assert await recalled(first_engine) == b"first"
    finally:
        await first_engine.dispose()
        await second_engine.dispose()


async def remember_in_new_transaction(engine: AsyncEngine, response: bytes) -> None:
    async with engine.begin() as conn:
        await remember(conn, request_ids, **key(), response=response)


async def wait_until_a_session_waits_for_a_lock(conn: AsyncConnection, deadline_seconds: float = 10) -> None:
    stop = time.monotonic() + deadline_seconds
    # pg_locks, not pg_stat_activity: the latter is a snapshot frozen for the whole transaction.
    query = text("SELECT count(*) FROM pg_locks WHERE NOT granted")
    while time.monotonic() < stop:
        if (await conn.execute(query)).scalar_one() > 0:
            return
        await asyncio.sleep(0)  # yield to the other task; bounded by the deadline
    raise AssertionError("the concurrent request never waited for the first one")


async def test_purge_forgets_only_responses_older_than_the_cutoff(store: AsyncEngine) -> None:
    noon = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    async with store.begin() as conn:
        await remember(conn, request_ids, **key(), response=b"old", now=noon - dt.timedelta(hours=2))
        # Same instant as the cutoff but in another offset: kept, the comparison is on UTC instants.
        at_cutoff = noon.astimezone(dt.timezone(dt.timedelta(hours=-5)))
        await remember(conn, request_ids, **key(request_id="req-2"), response=b"new", now=at_cutoff)
    async with store.begin() as conn:
        purged = await purge_older_than(
            conn, request_ids, noon.astimezone(dt.timezone(dt.timedelta(hours=3)))
        )
    assert purged == 1
    assert await recalled(store) is None
    assert await recalled(store, key(request_id="req-2")) == b"new"


async def test_remember_without_request_id_is_a_programming_error(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        with pytest.raises(ValueError, match="needs a request_id"):
            await remember(conn, request_ids, **key(request_id=""), response=b"x")


@pytest.mark.parametrize("value", ["", str(uuid.uuid4()), "a", "A_b-9", "x" * 64])
def test_valid_request_ids_pass(value: str) -> None:
    validate_request_id(value)


@pytest.mark.parametrize(
    "value", ["x" * 65, "has space", "ünïcode", "a/b", f"{{{uuid.uuid4()}}}", "a\n", "'; DROP TABLE x"]
)
def test_malformed_request_id_is_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        validate_request_id(value)
    assert caught.value.violations[0].field == "request_id"
