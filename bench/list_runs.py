"""ListRuns over gRPC on PostgreSQL at 10,000 runs and at a large N (1,000,000 by default).

Servers: authn, RBAC, orgs and the metadata (workspace) server are started
in this process as the tests start them (tests/orgs/conftest.py and
tests/metadata/conftest.py fixtures, each service with its own fresh
PostgreSQL database, each listening on a real 127.0.0.1 socket); the load
generator is a gRPC client in the same process (so client work competes with
the servers for the same event loop: the figures are an upper bound of the
server's own latency). The caller is the project's creator (authorized by
real RBAC: Check for project.read, LookupResources for run.read, cached).

For each size: a project is created through ProjectService, then seeded
with services/metadata/seeding.py (COPY, bypassing callbacks and RBAC; see
bench/seed_metadata.py) to the size, over 5 pipelines. Measured, each call
newest 50 runs filtered by `status = "COMPLETED" AND pipeline_id = P`:

- first page;
- deep page: page tokens are followed --depth pages deep, then that page's
  request is repeated;
- ceiling: GetProject (a one-row read with the same auth path).

p50/p99 over --calls sequential calls, median of --rounds rounds. The
PostgreSQL plan of both queries is printed (EXPLAIN ANALYZE, captured from the
server's real statements).

    python bench/list_runs.py --sizes 10000 1000000 --calls 500 --rounds 3 --depth 200
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import event
from sqlalchemy.engine import make_url

from keel.metadata.v1 import projects_pb2, projects_pb2_grpc, runs_pb2, runs_pb2_grpc
from services.metadata import seeding
from tests.conftest import POSTGRES_ADMIN_URL, _administer
from tests.metadata.conftest import MetadataStack, metadata_stack
from tests.orgs.conftest import OrgsStack, User, orgs_stack


@asynccontextmanager
async def postgres_databases(*names: str) -> AsyncIterator[dict[str, str]]:
    """Fresh PostgreSQL databases, dropped at the end."""
    made = {name: f"keel_bench_{secrets.token_hex(5)}" for name in names}
    for database in made.values():
        await _administer(f'CREATE DATABASE "{database}"')
    try:
        yield {
            name: make_url(POSTGRES_ADMIN_URL).set(database=db).render_as_string(hide_password=False)
            for name, db in made.items()
        }
    finally:
        for database in made.values():
            await _administer(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@asynccontextmanager
async def running_stack(data_dir: Path) -> AsyncIterator[MetadataStack]:
    """authn, RBAC, orgs and a registered metadata server, on PostgreSQL (the tests' fixtures)."""
    async with postgres_databases("authn", "rbac", "orgs", "metadata") as urls:
        orgs_gen = orgs_stack.__wrapped__(urls, data_dir)  # type: ignore[attr-defined]
        orgs: OrgsStack = await orgs_gen.__anext__()
        try:
            meta_gen = metadata_stack.__wrapped__(orgs, urls["metadata"], data_dir)  # type: ignore[attr-defined]
            stack: MetadataStack = await meta_gen.__anext__()
            try:
                yield stack
            finally:
                await meta_gen.aclose()
        finally:
            await orgs_gen.aclose()


async def fresh_token(stack: MetadataStack, user: User) -> User:
    """The user signed in again (a seed can outlast an access token)."""
    signed_in = await stack.orgs.authn.login(user.email, "correct horse battery")
    return User(user.id, user.email, signed_in.access_token)


async def timed(call: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - start)
    cuts = statistics.quantiles(latencies, n=100)
    return {"p50": cuts[49] * 1000, "p99": cuts[98] * 1000}


def median_of(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def bench_size(stack: MetadataStack, size: int, args: argparse.Namespace) -> None:
    project = await stack.project()
    engine = stack.service.domain.engine
    stack_id = f"bench-stack-{secrets.token_hex(3)}"
    began = time.perf_counter()
    start = stack.clock.now() - size * seeding.RUN_SPACING - timedelta(hours=1)
    result = await seeding.seed_project(
        engine, project.id, stack_id, runs_count=size, start=start, batch_runs=args.batch
    )
    seeded = time.perf_counter() - began
    print(
        f"\n== {size:,} runs: seeded {result.total_rows:,} rows in {seeded:.0f} s "
        f"({result.total_rows / seeded:,.0f} rows/s, {size / seeded:,.0f} runs/s)"
    )
    async with engine.connect() as conn:
        await conn.exec_driver_sql("ANALYZE")
    owner = await fresh_token(stack, stack.owner)
    runs = runs_pb2_grpc.RunServiceStub(stack.channel)
    projects = projects_pb2_grpc.ProjectServiceStub(stack.channel)
    pipeline = result.pipelines[0]
    request = runs_pb2.ListRunsRequest(
        workspace_id=stack.workspace_id,
        project_id=project.id,
        page_size=50,
        filter=f'status = "COMPLETED" AND pipeline_id = "{pipeline.id}"',
    )
    token, pages = "", 0
    while pages < args.depth:
        reply = await runs.ListRuns(
            runs_pb2.ListRunsRequest(**{**_fields(request), "page_token": token}), metadata=owner.metadata
        )
        if not reply.next_page_token:
            break
        token, pages = reply.next_page_token, pages + 1
    deep = runs_pb2.ListRunsRequest(**{**_fields(request), "page_token": token})
    print(f"deep page: {pages} pages deep (row ~{pages * 50:,} of the filtered list)")
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if "FROM metadata_runs" in statement:
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    await runs.ListRuns(request, metadata=owner.metadata)
    await runs.ListRuns(deep, metadata=owner.metadata)
    event.remove(engine.sync_engine, "before_cursor_execute", capture)
    async with engine.connect() as conn:
        for label, (statement, parameters) in zip(("first page", "deep page"), statements[-2:], strict=True):
            plan = await conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
            print(f"-- plan, {label}:")
            for row in plan:
                print("   ", row[0])
    get = projects_pb2.GetProjectRequest(workspace_id=stack.workspace_id, project_id=project.id)
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "ceiling: GetProject": lambda: projects.GetProject(get, metadata=owner.metadata),
        "ListRuns first page": lambda: runs.ListRuns(request, metadata=owner.metadata),
        f"ListRuns page {pages + 1}": lambda: runs.ListRuns(deep, metadata=owner.metadata),
    }
    for name, call in calls.items():
        await timed(call, 20)  # warm-up
        figures = median_of([await timed(call, args.calls) for _ in range(args.rounds)])
        print(f"{name:<26} p50 {figures['p50']:6.2f} ms   p99 {figures['p99']:6.2f} ms")


def _fields(message: Any) -> dict[str, Any]:
    return {field.name: value for field, value in message.ListFields()}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[10_000, 1_000_000], help="runs in the project"
    )
    parser.add_argument("--calls", type=int, default=500, help="calls per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is printed)")
    parser.add_argument("--depth", type=int, default=200, help="pages followed for the deep page")
    parser.add_argument("--batch", type=int, default=5_000, help="runs per seeding transaction")
    args = parser.parse_args()
    async with running_stack(Path(tempfile.mkdtemp())) as stack:
        for size in args.sizes:
            await bench_size(stack, size, args)


if __name__ == "__main__":
    asyncio.run(main())
