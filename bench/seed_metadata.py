"""Seeds a project of a workspace database with N runs of 10-step pipelines, through the bulk path.

Rows go straight into the metadata tables (services/metadata/seeding.py):
PostgreSQL COPY (asyncpg copy_records_to_table) or SQLite executemany, one
transaction per batch of runs. Callbacks, the state machine and RBAC are
bypassed on purpose. Each run: its 10 step runs, one output artifact version
(and its step link) per completed step, 3 run metadata entries; statuses
mixed (80% completed, 10% failed, 4% stopped, 3% cached, 3% queued) over
--pipelines pipelines (one snapshot each).

Without --database-url a throwaway PostgreSQL database is created, migrated,
seeded and dropped (a timing run). Without --project-id a project and a stack
row are written first. Prints rows written and rows/s.

    python bench/seed_metadata.py --runs 100000
    python bench/seed_metadata.py --database-url postgresql+asyncpg://... \
        --project-id P --stack-id S --runs 10000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api_key_exchange import database
from sqlalchemy import insert

from services.kit.db import create_engine
from services.metadata import seeding
from services.metadata.server import migrate
from services.metadata.settings import MetadataSettings
from services.metadata.store import projects, stacks


async def seed(
    database_url: str, runs: int, pipelines: int, batch: int, project_id: str = "", stack_id: str = ""
) -> seeding.SeedResult:
    """Seeds (creating the project and stack rows when not given) and prints the rate."""
    settings = MetadataSettings(database_url=database_url, data_dir=Path(tempfile.mkdtemp()))
    engine = create_engine(database_url, statement_timeout_ms=600_000)
    try:
        await migrate(engine, settings)
        now = datetime.now(UTC).replace(microsecond=0)
        if not project_id:
            project_id, stack_id = str(uuid.uuid4()), str(uuid.uuid4())
            async with engine.begin() as conn:
                await conn.execute(
                    insert(projects).values(
                        id=project_id,
                        name=f"seed-{project_id[:8]}",
                        display_name="",
                        description="",
                        create_time=now,
                        update_time=now,
                        version=1,
                    )
                )
                await conn.execute(
                    insert(stacks).values(
                        id=stack_id,
                        name=f"seed-{stack_id[:8]}",
                        description="",
                        create_time=now,
                        update_time=now,
                        version=1,
                    )
                )
        start = now - runs * seeding.RUN_SPACING - timedelta(hours=1)
        began = time.perf_counter()
        result = await seeding.seed_project(
            engine,
            project_id,
            stack_id,
            runs_count=runs,
            pipeline_count=pipelines,
            start=start,
            batch_runs=batch,
        )
        elapsed = time.perf_counter() - began
    finally:
        await engine.dispose()
    print(
        f"seeded {runs:,} runs into project {project_id} in {elapsed:.1f} s: "
        f"{result.total_rows:,} rows, {result.total_rows / elapsed:,.0f} rows/s, {runs / elapsed:,.0f} runs/s"
    )
    for table, count in result.rows.items():
        print(f"  {table:<28} {count:>12,}")
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10_000, help="runs to seed")
    parser.add_argument("--pipelines", type=int, default=5, help="pipelines the runs are spread over")
    parser.add_argument("--batch", type=int, default=5_000, help="runs per transaction")
    parser.add_argument(
        "--database-url", default="", help="a metadata database (default: a throwaway PostgreSQL one)"
    )
    parser.add_argument("--project-id", default="", help="an existing project (default: a new project row)")
    parser.add_argument("--stack-id", default="", help="the stack the snapshots name (with --project-id)")
    args = parser.parse_args()
    if args.database_url:
        await seed(args.database_url, args.runs, args.pipelines, args.batch, args.project_id, args.stack_id)
        return
    async with database("postgresql", Path(tempfile.mkdtemp())) as url:
        await seed(url, args.runs, args.pipelines, args.batch)


if __name__ == "__main__":
    asyncio.run(main())
