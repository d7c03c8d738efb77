"""Recording throughput through the public callbacks over gRPC: complete 10-step runs per second.

Processes: the metadata (workspace) server runs as its own process
(`python -m services.metadata serve`, registered with orgs through its
credential file); authn, RBAC and orgs run in this process on real
127.0.0.1 sockets as the tests start them (tests/orgs/conftest.py), as does
the load generator. Every service has its own database on the chosen
backend (SQLite files, or fresh PostgreSQL databases).

Setup: a project created through ProjectService (the caller, the
organization admin, owns it) and a pipeline with one snapshot of a 10-step
chain, written by services/metadata/seeding.py (0 runs). Then --recorders
concurrent recorders each record complete runs, one call at a time:

    CreateRun; for each step in order: UpdateStepStatus RUNNING,
    RecordStepOutputs (one output artifact version; the artifact per step
    name is created by the first run), UpdateStepStatus COMPLETED

31 calls per run. The run completes with its last step (the run follows its
steps; the last answer's run_status is checked to be COMPLETED). Figures:
runs/s over --seconds of recording after a warm-up, median of --rounds rounds,
with callback p50/p99; ceiling = GetProject calls/s with the same
concurrency.

    python bench/record_runs.py --database sqlite --recorders 16 --seconds 20 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc
from api_key_exchange import free_port, wait_serving
from list_runs import postgres_databases

from keel.metadata.v1 import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    projects_pb2,
    projects_pb2_grpc,
    runs_pb2,
    runs_pb2_grpc,
)
from services.kit.db import create_engine
from services.metadata import seeding
from tests.metadata.conftest import create_workspace, write_secret_file
from tests.orgs.conftest import OrgsStack, User, orgs_stack

METADATA = (sys.executable, "-m", "services.metadata", "serve")
# The server under cProfile; the stats are written every 5 s (a stopped server may not get to write them).
PROFILED_SERVER = """
import cProfile, runpy, sys, threading
out, profiler = sys.argv[1], cProfile.Profile()
def dump():
    profiler.dump_stats(out)
    threading.Timer(5, dump).start()
threading.Timer(5, dump).start()
sys.argv = ["services.metadata", "serve"]
profiler.enable()
runpy.run_module("services.metadata", run_name="__main__")
"""


@asynccontextmanager
async def database_urls(kind: str, data_dir: Path) -> AsyncIterator[dict[str, str]]:
    names = ("authn", "rbac", "orgs", "metadata")
    if kind == "sqlite":
        yield {name: f"sqlite+aiosqlite:///{data_dir / f'{name}.db'}" for name in names}
        return
    async with postgres_databases(*names) as urls:
        yield urls


@asynccontextmanager
async def control_plane(urls: dict[str, str], data_dir: Path) -> AsyncIterator[OrgsStack]:
    generator = orgs_stack.__wrapped__(urls, data_dir)  # type: ignore[attr-defined]
    stack: OrgsStack = await generator.__anext__()
    try:
        yield stack
    finally:
        await generator.aclose()


@asynccontextmanager
async def metadata_process(
    orgs: OrgsStack, database_url: str, credential_file: Path, data_dir: Path, profile: str = ""
) -> AsyncIterator[grpc.aio.Channel]:
    port = free_port()
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "KEEL_AUTHN_ADDRESS": orgs.authn_address,
        "KEEL_RBAC_ADDRESS": orgs.rbac_address,
        "KEEL_ORGS_ADDRESS": orgs.orgs_address,
        "KEEL_WORKSPACE_CREDENTIAL_FILE": str(credential_file),
        "KEEL_LOG_LEVEL": "WARNING",
        "KEEL_DRAIN_SECONDS": "0",
    }
    command: tuple[str, ...] = METADATA
    if profile:
        command = (sys.executable, "-c", PROFILED_SERVER, profile)
    process = await asyncio.create_subprocess_exec(*command, env=env)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await wait_serving(channel)
        yield channel
    finally:
        await channel.close(None)
        process.terminate()
        await process.wait()


class Recorder:
    def __init__(
        self, channel: grpc.aio.Channel, user: User, workspace_id: str, project_id: str, snapshot_id: str
    ) -> None:
        self.runs = runs_pb2_grpc.RunServiceStub(channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(channel)
        self.metadata = user.metadata
        self.workspace_id, self.project_id, self.snapshot_id = workspace_id, project_id, snapshot_id
        self.latencies: list[float] = []
        self.by_call: dict[str, list[float]] = {}

    async def _call(self, method: object, request: object) -> object:
        start = time.perf_counter()
        reply = await method(request, metadata=self.metadata)  # type: ignore[operator]
        elapsed = time.perf_counter() - start
        self.latencies.append(elapsed)
        name = type(request).__name__.removesuffix("Request")
        if name == "UpdateStepStatus":
            name += " " + runs_pb2.StepRun.Status.Name(request.status)  # type: ignore[attr-defined]
        self.by_call.setdefault(name, []).append(elapsed)
        return reply

    async def record_run(self) -> None:
        ws, project = self.workspace_id, self.project_id
        run = await self._call(
            self.runs.CreateRun,
            runs_pb2.CreateRunRequest(
                workspace_id=ws,
                project_id=project,
                snapshot_id=self.snapshot_id,
                request_id=str(uuid.uuid4()),
            ),
        )
        run_id = run.id  # type: ignore[attr-defined]
        last: Any = None
        for index in range(seeding.STEPS):
            name = f"step-{index}"
            started = await self._call(
                self.runs.UpdateStepStatus,
                runs_pb2.UpdateStepStatusRequest(
                    workspace_id=ws,
                    project_id=project,
                    run_id=run_id,
                    step_name=name,
                    status=runs_pb2.StepRun.RUNNING,
                    request_id=str(uuid.uuid4()),
                ),
            )
            output = artifacts_pb2.StepOutput(
                name="output",
                artifact_name=f"bench.{name}.output",
                artifact_version=artifacts_pb2.ArtifactVersion(
                    uri=f"s3://bench/{run_id}/{name}", size_bytes=1024
                ),
            )
            await self._call(
                self.artifacts.RecordStepOutputs,
                artifacts_pb2.RecordStepOutputsRequest(
                    workspace_id=ws,
                    project_id=project,
                    step_run_id=started.step_run.id,  # type: ignore[attr-defined]
                    outputs=[output],
                    request_id=str(uuid.uuid4()),
                ),
            )
            last = await self._call(
                self.runs.UpdateStepStatus,
                runs_pb2.UpdateStepStatusRequest(
                    workspace_id=ws,
                    project_id=project,
                    run_id=run_id,
                    step_name=name,
                    status=runs_pb2.StepRun.COMPLETED,
                    request_id=str(uuid.uuid4()),
                ),
            )
        if last.run_status != runs_pb2.Run.COMPLETED:
            raise AssertionError(f"run {run_id} ended {last.run_status}")


async def record_for(recorders: list[Recorder], seconds: float) -> tuple[float, list[float]]:
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(recorder: Recorder) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await recorder.record_run()
            done += 1

    for recorder in recorders:
        recorder.latencies.clear()
        recorder.by_call.clear()
    start = time.perf_counter()
    await asyncio.gather(*(loop(r) for r in recorders))
    return done / (time.perf_counter() - start), [x for r in recorders for x in r.latencies]


async def ceiling(channel: grpc.aio.Channel, user: User, ws: str, project: str, concurrency: int) -> float:
    stub = projects_pb2_grpc.ProjectServiceStub(channel)
    request = projects_pb2.GetProjectRequest(workspace_id=ws, project_id=project)
    calls, deadline = 0, time.perf_counter() + 5

    async def loop() -> None:
        nonlocal calls
        while time.perf_counter() < deadline:
            await stub.GetProject(request, metadata=user.metadata)
            calls += 1

    start = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--recorders", type=int, default=16, help="concurrent recorders")
    parser.add_argument("--seconds", type=float, default=20, help="recording time per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (the median is printed)")
    parser.add_argument("--profile", default="", help="run the metadata server under cProfile into this file")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp())
    async with database_urls(args.database, data_dir) as urls, control_plane(urls, data_dir) as orgs:
        owner = await orgs.user()
        organization = await orgs.organization(owner)
        workspace_id, credential = await create_workspace(orgs, organization.id, owner)
        credential_file = write_secret_file(data_dir / "workspace-credential", credential)
        async with metadata_process(
            orgs, urls["metadata"], credential_file, data_dir / "metadata", args.profile
        ) as channel:
            project = await projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
                projects_pb2.CreateProjectRequest(
                    workspace_id=workspace_id, project=projects_pb2.Project(name="bench")
                ),
                metadata=owner.metadata,
            )
            engine = create_engine(urls["metadata"])
            try:
                seeded = await seeding.seed_project(
                    engine,
                    project.id,
                    "bench-stack",
                    runs_count=0,
                    pipeline_count=1,
                    start=datetime.now(UTC),
                )
            finally:
                await engine.dispose()
            recorders = [
                Recorder(channel, owner, workspace_id, project.id, seeded.pipelines[0].snapshot_id)
                for _ in range(args.recorders)
            ]
            top = await ceiling(channel, owner, workspace_id, project.id, args.recorders)
            await record_for(recorders, 3)  # warm-up (creates the 10 artifacts)
            rounds = [await record_for(recorders, args.seconds) for _ in range(args.rounds)]
            rates = [rate for rate, _ in rounds]
            median_round = sorted(rounds)[len(rounds) // 2][1]
            cuts = statistics.quantiles(median_round, n=100)
            print(
                f"{args.database}, {args.recorders} recorders: "
                f"{statistics.median(rates):.1f} complete runs/s "
                f"(rounds {', '.join(f'{r:.1f}' for r in rates)}); "
                f"{statistics.median(rates) * 31:.0f} calls/s; "
                f"callback p50 {cuts[49] * 1000:.1f} ms p99 {cuts[98] * 1000:.1f} ms; "
                f"ceiling GetProject {top:.0f} calls/s"
            )
            by_call: dict[str, list[float]] = {}
            for recorder in recorders:
                for name, values in recorder.by_call.items():
                    by_call.setdefault(name, []).extend(values)
            for name, values in sorted(by_call.items()):
                cuts = statistics.quantiles(values, n=100)
                print(
                    f"  {name:<28} p50 {cuts[49] * 1000:6.1f} ms  p99 {cuts[98] * 1000:6.1f} ms (last round)"
                )


if __name__ == "__main__":
    asyncio.run(main())
