"""Prepared statements: the same answers, types, errors and transactions as SQLAlchemy. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, bindparam, insert, select, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import UtcDateTime
from services.kit.prepared import Batch, Prepared, _bound
from tests.statements import counting_statements

metadata = MetaData()
things = Table(
    "prepared_things",
    metadata,
    Column("id", String(20), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("seen", UtcDateTime, nullable=True),
)
INSERT = Prepared(insert(things))
BY_IDS = Prepared(
    select(things).where(things.c.id.in_(bindparam("ids", expanding=True))).order_by(things.c.id)
)
BY_SIZE = Prepared(select(things.c.id, things.c.tags).where(things.c.size >= bindparam("least")))
ASYNCPG = postgresql.asyncpg.dialect()  # type: ignore[no-untyped-call]  # untyped in SQLAlchemy
SEEN = datetime(2026, 11, 26, 12, 30, tzinfo=UTC)


def row(thing_id: str, size: int = 1) -> dict[str, Any]:
    return {"id": thing_id, "size": size, "tags": {"k": [thing_id, size]}, "seen": SEEN}


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


async def test_rows_come_back_as_through_sqlalchemy(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        await INSERT.execute_many(conn, [row("a", 1), row("b", 2), row("c", 3)])
        through_sqlalchemy = [
            dict(r._mapping) for r in await conn.execute(select(things).order_by(things.c.id))
        ]
        prepared = await BY_IDS.rows(conn, {"ids": ["a", "b", "c"]})
        two = await BY_IDS.rows(conn, {"ids": ["c", "a"]})  # another list length: its own statement
        big = await BY_SIZE.rows(conn, {"least": 2})
        none = await BY_IDS.first(conn, {"ids": ["zzz"]})

    assert prepared == through_sqlalchemy
    assert prepared[0] == row("a", 1)  # JSON decoded, the datetime aware UTC
    assert [r["id"] for r in two] == ["a", "c"]
    assert sorted((r["id"], r["tags"]["k"][1]) for r in big) == [("b", 2), ("c", 3)]
    assert none is None


async def test_a_duplicate_key_is_sqlalchemys_integrity_error(store: AsyncEngine) -> None:
    async with store.begin() as conn:
        await INSERT.execute(conn, row("a"))
    with pytest.raises(IntegrityError):
        async with store.begin() as conn:
            await INSERT.execute(conn, row("a"))


@pytest.mark.parametrize("begin", [True, False], ids=["begin", "autobegin"])
async def test_a_prepared_first_statement_belongs_to_the_transaction(store: AsyncEngine, begin: bool) -> None:
    async with store.connect() as conn:
        if begin:
            await conn.begin()
        await INSERT.execute(conn, row("a"))  # the transaction's first statement
        await conn.execute(insert(things).values(row("b")))
        await conn.rollback()
    async with store.connect() as conn:
        await INSERT.execute(conn, row("c"))
        await conn.commit()
    async with store.connect() as conn:
        assert [r["id"] for r in await BY_IDS.rows(conn, {"ids": ["a", "b", "c"]})] == ["c"]


async def test_statements_are_announced_to_the_engines_listeners(store: AsyncEngine) -> None:
    with counting_statements(store) as seen:
        async with store.begin() as conn:
            await INSERT.execute_many(conn, [row("a"), row("b")])
            await BY_IDS.rows(conn, {"ids": ["a"]})
    assert len(seen) == 2
    assert seen[0].startswith("INSERT INTO prepared_things")
    assert seen[1].startswith("SELECT")


@pytest.mark.parametrize(
    ("statement", "values"),
    [
        (INSERT, row("a", 3)),
        (BY_SIZE, {"least": 2}),
        (BY_IDS, {"ids": []}),
        (BY_IDS, {"ids": ["a"]}),
        (BY_IDS, {"ids": ["a", "b", "c"]}),
        (BY_IDS, {"ids": ["d", "e", "f"]}),  # the kept text of length 3, new values
    ],
)
def test_the_fast_binder_binds_as_sqlalchemy_does(statement: Prepared, values: dict[str, Any]) -> None:
    compiled = statement._for(ASYNCPG)
    assert compiled.binder is not None
    assert compiled.binder.bind(dict(values)) == _bound(compiled.compiled, dict(values))


def test_the_fast_binder_names_a_missing_value_as_sqlalchemy_does() -> None:
    compiled = BY_SIZE._for(ASYNCPG)
    assert compiled.binder is not None
    with pytest.raises(InvalidRequestError, match="least"):
        compiled.binder.bind({})


def test_a_batch_of_a_table_takes_its_postgresql_types_without_lengths() -> None:
    assert Batch.of(things, ("id", "size", "tags", "seen")).columns == {
        "id": "VARCHAR",
        "size": "INTEGER",
        "tags": "JSON",
        "seen": "TIMESTAMP WITH TIME ZONE",
    }


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # Batch binds arrays: PostgreSQL
async def test_a_batch_refuses_a_value_too_long_for_its_column_rather_than_cut_it(
    store: AsyncEngine,
) -> None:
    batch = Batch.of(things, ("id", "size"))
    columns = batch.names("b")
    statement = Prepared(
        text(f"INSERT INTO prepared_things (id, size, tags) SELECT {columns}, '[]' FROM {batch.source('b')}")
    )
    with pytest.raises(DBAPIError, match="too long"):
        async with store.begin() as conn:
            await statement.execute(conn, batch.params([{"id": "x" * 21, "size": 1}]))
    async with store.begin() as conn:
        await statement.execute(conn, batch.params([{"id": "x" * 20, "size": 1}]))
        assert [row["id"] for row in await BY_IDS.rows(conn, {"ids": ["x" * 20]})] == ["x" * 20]
