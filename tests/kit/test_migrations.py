"""Migrations: the sample two-revision folder applied on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit.db import create_engine
from services.kit.migrations import advisory_lock_key, alembic_config, upgrade_to_head

SAMPLE = Path(__file__).parent / "sample_migrations"

postgresql_only = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


async def table_names(engine: AsyncEngine, schema: str | None = None) -> set[str]:
    def names(conn: Connection) -> set[str]:
        return set(inspect(conn).get_table_names(schema=schema))

    async with engine.connect() as conn:
        return await conn.run_sync(names)


async def recorded_versions(engine: AsyncEngine, table: str = "alembic_version") -> list[str]:
    async with engine.connect() as conn:
        result = await conn.execute(text(f"SELECT version_num FROM {table}"))
        return [row[0] for row in result]


async def test_upgrade_to_head_creates_tables_and_records_head(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine, SAMPLE)

    assert {"widgets", "gadgets", "alembic_version"} <= await table_names(engine)
    assert await recorded_versions(engine) == ["r0002"]


async def test_upgrade_to_head_again_is_a_noop_that_keeps_data(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine, SAMPLE)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO widgets (id, name) VALUES ('w1', 'kept')"))

    await upgrade_to_head(engine, SAMPLE)

    async with engine.connect() as conn:
        names = (await conn.execute(text("SELECT name FROM widgets"))).scalars().all()
    assert names == ["kept"]
    assert await recorded_versions(engine) == ["r0002"]


async def test_upgrade_to_head_uses_the_service_version_table(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine, SAMPLE, version_table="runs_alembic_version")

    tables = await table_names(engine)
    assert "runs_alembic_version" in tables
    assert "alembic_version" not in tables
    assert await recorded_versions(engine, "runs_alembic_version") == ["r0002"]


async def test_upgrade_to_head_rejects_unsafe_identifiers(engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="version table"):
        await upgrade_to_head(engine, SAMPLE, version_table="v; DROP TABLE x")
    with pytest.raises(ValueError, match="version table"):
        await upgrade_to_head(engine, SAMPLE, version_table="alembic_version\n")
    with pytest.raises(ValueError, match="schema"):
        await upgrade_to_head(engine, SAMPLE, schema='a"b')


@postgresql_only
async def test_upgrade_to_head_creates_schema_and_keeps_everything_in_it(engine: AsyncEngine) -> None:
    await upgrade_to_head(engine, SAMPLE, schema="svc_runs")
    # Applying again must find the version table in the schema, not start over.
    await upgrade_to_head(engine, SAMPLE, schema="svc_runs")

    assert {"widgets", "gadgets", "alembic_version"} <= await table_names(engine, schema="svc_runs")
    assert not {"widgets", "alembic_version"} & await table_names(engine, schema="public")
    assert await recorded_versions(engine, "svc_runs.alembic_version") == ["r0002"]


@postgresql_only
async def test_upgrade_waits_for_the_advisory_lock_held_by_another_replica(database_url: str) -> None:
    holder = create_engine(database_url)
    replica = create_engine(database_url)
    try:
        async with holder.begin() as conn:
            await conn.execute(select(func.pg_advisory_xact_lock(advisory_lock_key("alembic_version"))))
            upgrade = asyncio.create_task(upgrade_to_head(replica, SAMPLE))
            await wait_until_a_session_waits_for_an_advisory_lock(conn)
            assert not upgrade.done()
        # The holder committed, releasing the lock: the replica proceeds.
        await upgrade
        assert await recorded_versions(replica) == ["r0002"]
    finally:
        await holder.dispose()
        await replica.dispose()


@postgresql_only
async def test_concurrent_replicas_apply_each_revision_once(database_url: str) -> None:
    replicas = [create_engine(database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade_to_head(replica, SAMPLE) for replica in replicas))
        assert await recorded_versions(replicas[0]) == ["r0002"]
    finally:
        for replica in replicas:
            await replica.dispose()


async def wait_until_a_session_waits_for_an_advisory_lock(
    conn: AsyncConnection, deadline_seconds: float = 10
) -> None:
    stop = time.monotonic() + deadline_seconds
    query = text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
    while time.monotonic() < stop:
        if (await conn.execute(query)).scalar_one() > 0:
            return
        await asyncio.sleep(0)  # yield to the upgrade task; polling is bounded by the deadline
    raise AssertionError("the upgrade never waited for the advisory lock")


def test_offline_mode_renders_the_upgrade_sql_without_a_database() -> None:
    buffer = io.StringIO()
    config = alembic_config(SAMPLE, version_table="runs_alembic_version")
    config.set_main_option("sqlalchemy.url", "postgresql://")
    config.output_buffer = buffer
    command.upgrade(config, "head", sql=True)

    sql = buffer.getvalue()
    assert "CREATE TABLE widgets" in sql
    assert "CREATE TABLE gadgets" in sql
    assert "INSERT INTO runs_alembic_version (version_num) VALUES ('r0001')" in sql
