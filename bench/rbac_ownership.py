"""RecordOwnership throughput, and Check latency while ownerships are being written, on a real RBAC.

Starts `python -m services.authn` (it issues the caller's token) and `python -m
services.rbac` on SQLite (or a fresh PostgreSQL database with --database
postgresql), seeded as bench/rbac_check.py seeds it (10,000 bindings, 1,000
teams of 10, 100 custom roles, the caller's 1,000 owned runs), plus one
binding: the caller edits proj-0, so it may create (and own) runs there.
Then, each phase for --seconds:

1. check alone: --checkers concurrent callers ask an allowed Check (a team's
   custom role on proj-0), then a denied Check on a resource (which also reads
   the resource's owner since ownership is a relation), then both alternating;
2. record alone: --writers concurrent RecordOwnership calls, each a new run;
3. check while recording: both at once. Before ownership became a relation
   every record bumped the revision, so the next check of the organization
   reloaded its whole index (10,000 bindings); now nothing is reloaded;
4. batch record: --writers concurrent BatchRecordOwnership calls of 100 new
   runs each (skipped when the server has no such RPC).

The RBAC revision is read before and after the recording phases: it moved by
one per ownership before, and not at all now. --source DIR runs RBAC and the
seeding from another checkout, for a before/after comparison on one machine:

    git archive <commit> | tar -x -C /tmp/keel-before
    python bench/rbac_ownership.py --source /tmp/keel-before
    python bench/rbac_ownership.py
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from api_key_exchange import database
from rbac_check import authn_with_admin, rbac_process

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc

RBAC = (sys.executable, "-m", "services.rbac")
REPOSITORY = Path(__file__).resolve().parent.parent
ORG = "bench-org"
# Where the caller records: proj-0 of ws-0 (bench/rbac_check.py's project 0), where it is an Editor.
WORKSPACE, PROJECT = "ws-0", "proj-0"
BATCH = 100

# Run inside the source checkout: its own rbac_check.seed and store, so old and new schemas both work.
SEED = """
import asyncio, sys
sys.path.insert(0, "bench")
from rbac_check import NOW, ORG, seed
from services.kit.db import create_engine
from services.rbac.store import BindingRecord, RbacStore

async def main(url: str, caller: str) -> None:
    await seed(url, caller)
    engine = create_engine(url)
    editor = BindingRecord(
        "b-recorder", ORG, "user", caller, "project_editor", "ws-0", "proj-0", "", "", "project", NOW, 0
    )
    try:
        async with RbacStore(engine).transaction() as tx:
            print(await tx.bulk_load(ORG, [], [editor], [], NOW))
    finally:
        await engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def figures(latencies: list[float], elapsed: float, per_call: int = 1) -> str:
    """p50 / p99 in ms and the rate (calls, or items with `per_call`) per second."""
    if len(latencies) < 2:
        return "no calls"
    cuts = statistics.quantiles(latencies, n=100)
    rate = len(latencies) * per_call / elapsed
    return f"p50 {cuts[49] * 1000:7.2f} ms  p99 {cuts[98] * 1000:8.2f} ms  {rate:9.0f}/s"


async def load(
    call: Callable[[], Awaitable[object]], concurrency: int, seconds: float
) -> tuple[list[float], float]:
    """Runs `call` from `concurrency` callers for `seconds`; the latencies and the elapsed time."""
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline:
            begin = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def seed_from(source: Path, url: str, caller: str) -> None:
    seeding = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SEED, url, caller, cwd=source, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await seeding.communicate()
    if seeding.returncode != 0:
        raise SystemExit("seeding failed")
    print(f"seeded from {source} (revision {output.decode().strip()})")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10, help="duration of each phase")
    parser.add_argument("--checkers", type=int, default=8, help="concurrent Check callers")
    parser.add_argument("--writers", type=int, default=8, help="concurrent RecordOwnership callers")
    parser.add_argument(
        "--database", choices=["sqlite", "postgresql"], default="sqlite", help="RBAC's database"
    )
    parser.add_argument("--source", type=Path, default=REPOSITORY, help="checkout to run RBAC from")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="keel-bench-") as folder:
        data_dir = Path(folder)
        async with (
            authn_with_admin(data_dir) as (authn_port, login),
            database(args.database, data_dir) as url,
        ):
            rbac_url = url or f"sqlite+aiosqlite:///{data_dir / 'rbac.db'}"
            await seed_from(args.source.resolve(), rbac_url, login.subject)
            async with rbac_process(data_dir, rbac_url, authn_port, args.source.resolve()) as channel:
                await run(channel, login.access_token, login.subject, args)


async def run(channel: grpc.aio.Channel, token: str, caller: str, args: argparse.Namespace) -> None:
    metadata = (("authorization", f"Bearer {token}"),)
    permissions = rbac_pb2_grpc.PermissionServiceStub(channel)
    subject = rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=caller)

    def check(resource_type: str, action: str, project: str) -> rbac_pb2.CheckRequest:
        return rbac_pb2.CheckRequest(
            principal=subject,
            permission=rbac_pb2.Permission(resource_type=resource_type, action=action),
            resource=rbac_pb2.ResourceRef(
                organization_id=ORG,
                workspace_id=WORKSPACE,
                project_id=project,
                resource_type=resource_type,
                resource_id="x-1",
            ),
        )

    allowed, denied = check("pipeline", "run", PROJECT), check("model_version", "promote", "proj-499")
    flip = itertools.count()

    async def checks() -> object:
        return await permissions.Check(allowed if next(flip) % 2 == 0 else denied, metadata=metadata)

    numbers = itertools.count()

    def new_run() -> rbac_pb2.ResourceRef:
        return rbac_pb2.ResourceRef(
            organization_id=ORG,
            workspace_id=WORKSPACE,
            project_id=PROJECT,
            resource_type="run",
            resource_id=f"bench-run-{next(numbers):08}",
        )

    recorded = 0

    async def record() -> object:
        nonlocal recorded
        answer = await permissions.RecordOwnership(
            rbac_pb2.RecordOwnershipRequest(owner=subject, resource=new_run()), metadata=metadata
        )
        recorded += 1
        return answer

    async def record_batch() -> object:
        nonlocal recorded
        answer = await permissions.BatchRecordOwnership(
            rbac_pb2.BatchRecordOwnershipRequest(
                organization_id=ORG, owner=subject, resources=[new_run() for _ in range(BATCH)]
            ),
            metadata=metadata,
        )
        recorded += BATCH
        return answer

    first, second = (
        await permissions.Check(allowed, metadata=metadata),
        await permissions.Check(denied, metadata=metadata),
    )
    if not first.allowed or second.allowed:
        raise SystemExit("the seeded organization does not answer as designed")
    await load(checks, 4, 1)  # warm-up
    await load(record, 2, 1)
    revision_before = (await permissions.Check(allowed, metadata=metadata)).revision
    recorded_before = recorded
    print(
        f"source: {args.source.resolve()}; database: {args.database}; {args.seconds:.0f} s per phase; "
        f"{args.checkers} checkers, {args.writers} writers"
    )

    def asking(request: rbac_pb2.CheckRequest) -> Callable[[], Awaitable[object]]:
        async def ask() -> object:
            return await permissions.Check(request, metadata=metadata)

        return ask

    for name, request in (("check allowed alone", allowed), ("check denied alone", denied)):
        latencies, elapsed = await load(asking(request), args.checkers, args.seconds)
        print(f"{name:<34} {figures(latencies, elapsed)}")
    latencies, elapsed = await load(checks, args.checkers, args.seconds)
    print(f"{'check alone (both, alternating)':<34} {figures(latencies, elapsed)}")
    latencies, elapsed = await load(record, args.writers, args.seconds)
    print(f"{'RecordOwnership alone':<34} {figures(latencies, elapsed)}")
    (check_latencies, check_elapsed), (record_latencies, record_elapsed) = await asyncio.gather(
        load(checks, args.checkers, args.seconds), load(record, args.writers, args.seconds)
    )
    print(f"{'check while recording':<34} {figures(check_latencies, check_elapsed)}")
    print(f"{'RecordOwnership while checking':<34} {figures(record_latencies, record_elapsed)}")
    try:
        latencies, elapsed = await load(record_batch, args.writers, args.seconds)
        print(f"{'BatchRecordOwnership of 100':<34} {figures(latencies, elapsed)} (calls)")
        print(f"{'  ownerships recorded in batches':<34} {figures(latencies, elapsed, BATCH)}")
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        print("BatchRecordOwnership: not served by this source")
    revision_after = (await permissions.Check(allowed, metadata=metadata)).revision
    print(
        f"ownerships recorded: {recorded - recorded_before}; "
        f"RBAC revision moved by {revision_after - revision_before}"
    )


if __name__ == "__main__":
    asyncio.run(main())
