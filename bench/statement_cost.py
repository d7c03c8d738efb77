"""CPU per SQL statement through each layer, on PostgreSQL: where the metadata server's time goes.

The same point SELECT by primary key, executed --statements times on one
connection in one process, four ways: a SQLAlchemy Core statement built for
each call (what the stores do), a Core statement built once with bind
parameters, `text()`, and the raw asyncpg connection under SQLAlchemy's (the
same transaction). Prints process CPU time per statement (µs), so a busy
machine inflates wall time but not these figures much.

    python bench/statement_cost.py --statements 2000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Column, MetaData, String, Table, bindparam, select, text

from services.kit.db import create_engine

probe = Table(
    "keel_bench_probe", MetaData(), Column("id", String, primary_key=True), Column("project_id", String)
)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="postgresql+asyncpg://postgres@127.0.0.1/postgres")
    parser.add_argument("--statements", type=int, default=2000)
    args = parser.parse_args()
    engine = create_engine(args.url)
    prebuilt = select(probe.c.id).where(probe.c.project_id == bindparam("p"), probe.c.id == bindparam("r"))
    as_text = text("SELECT id FROM keel_bench_probe WHERE project_id = :p AND id = :r")
    try:
        async with engine.connect() as conn:
            await conn.execute(
                text("CREATE TEMPORARY TABLE keel_bench_probe (id varchar PRIMARY KEY, project_id varchar)")
            )
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw is not None

            async def core() -> None:
                await conn.execute(select(probe.c.id).where(probe.c.project_id == "p", probe.c.id == "r"))

            async def core_prebuilt() -> None:
                await conn.execute(prebuilt, {"p": "p", "r": "r"})

            async def text_statement() -> None:
                await conn.execute(as_text, {"p": "p", "r": "r"})

            async def raw_asyncpg() -> None:
                await raw.fetch("SELECT id FROM keel_bench_probe WHERE project_id = $1 AND id = $2", "p", "r")

            ways: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("Core, built per call", core),
                ("Core, built once", core_prebuilt),
                ("text()", text_statement),
                ("raw asyncpg", raw_asyncpg),
            ]
            for name, way in ways:
                for _ in range(200):
                    await way()
                started = time.process_time()
                for _ in range(args.statements):
                    await way()
                cost = (time.process_time() - started) / args.statements * 1e6
                print(f"{name:<22} {cost:6.0f} µs CPU per statement")
    finally:
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
