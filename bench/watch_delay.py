"""Watch delay: from an UpdateStepStatus completing to a watcher receiving the change.

Domain level (no gRPC yet): `Runs.update_step_status` (the callback's domain
call, commit included) against a `Watches.watch_run` watcher. On SQLite the
watcher is woken in-process; on PostgreSQL it runs on a second engine and hub
(a second "replica"), woken only by NOTIFY through its LISTEN connection.
Prints median and p99 in milliseconds per backend.

    .venv/bin/python bench/watch_delay.py --runs 30
    .venv/bin/python bench/watch_delay.py --backend postgresql --postgres-url postgresql+asyncpg://...
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.kit.db import create_engine
from services.metadata.runs import Runs
from services.metadata.server import migrate
from services.metadata.settings import MetadataSettings
from services.metadata.store import MetadataStore
from services.metadata.watch import ChangeHub, Watches
from tests.clock import ManualClock
from tests.metadata.run_fixtures import snapshot_in_new_project

_ids = itertools.count()
STEPS = ("load", "train", "features", "evaluate")


async def measure(url: str, runs_count: int, cross_replica: bool) -> list[float]:
    """Delays (ms) of every step transition of `runs_count` runs."""
    engine = create_engine(url)
    other = create_engine(url) if cross_replica else engine
    clock = ManualClock()
    hub_a, hub_b = ChangeHub(), ChangeHub() if cross_replica else None
    watch_hub = hub_b or hub_a
    try:
        await migrate(engine, MetadataSettings())
        await watch_hub.start(other)
        store = MetadataStore(engine)
        runs = Runs(store, clock, notify=hub_a.notify)
        watches = Watches(MetadataStore(other), watch_hub)
        delays: list[float] = []
        for _ in range(runs_count):
            project_id, _, snapshot_id = await snapshot_in_new_project(store, clock)
            run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="bench")
            events = watches.watch_run(project_id, run.id, 0)
            for _snapshot in range(1 + len(STEPS)):
                await anext(events)
            for name in STEPS:
                for status in ("running", "completed"):
                    received = asyncio.create_task(_next_step_change(events, name, status))
                    await asyncio.sleep(0.005)  # the watcher is waiting, as a live one would be
                    await runs.update_step_status(
                        project_id, run.id, name, status, principal="bench", request_id=f"r{next(_ids)}"
                    )
                    done = time.perf_counter()
                    arrived = await asyncio.wait_for(received, 10)
                    delays.append(max(0.0, (arrived - done) * 1000))
            await events.aclose()  # type: ignore[attr-defined]
        return delays
    finally:
        await watch_hub.stop()
        await engine.dispose()
        if other is not engine:
            await other.dispose()


async def _next_step_change(events, name: str, status: str) -> float:  # type: ignore[no-untyped-def]
    async for event in events:
        if event.step is not None and event.step.name == name and event.step.status == status:
            return time.perf_counter()
    raise RuntimeError("watch ended")


def _report(name: str, delays: list[float]) -> None:
    ordered = sorted(delays)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{name}: n={len(ordered)} median={statistics.median(ordered):.2f} ms p99={p99:.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="runs of 4 steps (8 transitions each)")
    parser.add_argument("--backend", choices=("both", "sqlite", "postgresql"), default="both")
    parser.add_argument("--postgres-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    if args.backend in ("both", "sqlite"):
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite+aiosqlite:///{Path(folder) / 'watch.db'}"
            _report("sqlite (in-process wake-up)", await measure(url, args.runs, cross_replica=False))
    if args.backend in ("both", "postgresql"):
        admin = args.postgres_url.replace("+asyncpg", "")
        name = f"keel_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
            _report("postgresql (second replica, NOTIFY)", await measure(url, args.runs, cross_replica=True))
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
