"""The engine factory: pooled PostgreSQL connections closed by the server are replaced on checkout."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import create_engine
from tests.conftest import POSTGRES_ADMIN_URL

ALIVE = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error() -> None:
    engine = create_engine(POSTGRES_ADMIN_URL, pool_size=1)
    admin = create_engine(POSTGRES_ADMIN_URL, pool_size=1)
    try:
        first = await _backend_pid(engine)  # now idle in the pool
        async with admin.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        for _ in range(100):
            async with admin.connect() as conn:
                if (await conn.execute(ALIVE, {"pid": first})).scalar_one() == 0:
                    break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.05)  # the event loop delivers the close to asyncpg

        second = await _backend_pid(engine)  # no "connection is closed": the pool replaced it
    finally:
        await engine.dispose()
        await admin.dispose()

    assert second != first
