"""Watch delay over gRPC between two replicas: a step status change reported to replica A, seen by a
WatchRun stream on replica B.

Processes: two metadata servers (`python -m services.metadata serve`) on the
same database, each its own process, registered with orgs by the same
workspace credential; authn, RBAC and orgs in this process on real sockets
(as in bench/record_runs.py). On PostgreSQL replica B learns of A's commit
only through LISTEN/NOTIFY; on SQLite (one file, no NOTIFY) both calls go to
one server, so the figure is the in-process path.

Per run: CreateRun on A, a WatchRun stream opened on B (its SNAPSHOT read),
then for each of the 10 steps UpdateStepStatus RUNNING and COMPLETED on A,
one after the other. For each change: the time from sending the callback to
B's stream yielding it ("from send", what a dashboard sees), and from A's
answer to it ("from answer"; negative when B's event came first).

    python bench/watch_delay_grpc.py --database postgresql --runs 20
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from record_runs import bench_pipeline, control_plane, database_urls, metadata_process

from keel.metadata.v1 import runs_pb2, runs_pb2_grpc
from services.metadata import seeding
from tests.metadata.conftest import create_workspace, write_secret_file


async def measure(
    a: Any,
    b: Any,
    metadata: Any,
    ws: str,
    project: str,
    snapshot: str,
    runs: int,
) -> tuple[list[float], list[float]]:
    from_send: list[float] = []
    from_answer: list[float] = []
    for _ in range(runs):
        run = await a.CreateRun(
            runs_pb2.CreateRunRequest(
                workspace_id=ws, project_id=project, snapshot_id=snapshot, request_id=str(uuid.uuid4())
            ),
            metadata=metadata,
        )
        stream = b.WatchRun(
            runs_pb2.WatchRunRequest(workspace_id=ws, project_id=project, run_id=run.id), metadata=metadata
        )
        events = stream.__aiter__()
        # Everything up to now (the SNAPSHOT of the run and its steps) before measuring.
        while (await events.__anext__()).kind != runs_pb2.RunEvent.SNAPSHOT:
            pass
        try:
            for index in range(seeding.STEPS):
                for status in (runs_pb2.StepRun.RUNNING, runs_pb2.StepRun.COMPLETED):
                    received = asyncio.ensure_future(_next_step_change(events, f"step-{index}", status))
                    sent = time.perf_counter()
                    await a.UpdateStepStatus(
                        runs_pb2.UpdateStepStatusRequest(
                            workspace_id=ws,
                            project_id=project,
                            run_id=run.id,
                            step_name=f"step-{index}",
                            status=status,
                            request_id=str(uuid.uuid4()),
                        ),
                        metadata=metadata,
                    )
                    answered = time.perf_counter()
                    seen = await asyncio.wait_for(received, 10)
                    from_send.append(seen - sent)
                    from_answer.append(seen - answered)
        finally:
            stream.cancel()
    return from_send, from_answer


async def _next_step_change(events: Any, name: str, status: int) -> float:
    while True:
        event = await events.__anext__()
        if (
            event.kind == runs_pb2.RunEvent.CHANGE
            and event.step_run.name == name
            and event.step_run.status == status
        ):
            return time.perf_counter()


def _report(name: str, delays: list[float]) -> None:
    cuts = statistics.quantiles(delays, n=100)
    print(
        f"  {name:<12} median {statistics.median(delays) * 1000:7.2f} ms  p99 {cuts[98] * 1000:7.2f} ms  "
        f"({len(delays)} changes)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="postgresql")
    parser.add_argument("--runs", type=int, default=20, help="runs of 10 steps (20 changes each)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp())
    async with database_urls(args.database, data_dir) as urls, control_plane(urls, data_dir) as orgs:
        owner = await orgs.user()
        organization = await orgs.organization(owner)
        workspace_id, credential = await create_workspace(orgs, organization.id, owner)
        credential_file = write_secret_file(data_dir / "workspace-credential", credential)
        async with AsyncExitStack() as stack:
            first = (
                await stack.enter_async_context(
                    metadata_process(orgs, urls["metadata"], credential_file, data_dir / "a")
                )
            ).channel
            second = first
            if args.database == "postgresql":
                second = (
                    await stack.enter_async_context(
                        metadata_process(orgs, urls["metadata"], credential_file, data_dir / "b")
                    )
                ).channel
            project_id, snapshot = await bench_pipeline(first, owner, workspace_id, urls["metadata"])
            a, b = runs_pb2_grpc.RunServiceStub(first), runs_pb2_grpc.RunServiceStub(second)
            await measure(a, b, owner.metadata, workspace_id, project_id, snapshot, 2)  # warm-up
            from_send, from_answer = await measure(
                a, b, owner.metadata, workspace_id, project_id, snapshot, args.runs
            )
            replicas = "two replicas (NOTIFY)" if first is not second else "one server (in-process)"
            print(f"{args.database}, {replicas}:")
            _report("from send", from_send)
            _report("from answer", from_answer)


if __name__ == "__main__":
    asyncio.run(main())
