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
concurrent recorders each record complete runs. A run is always the same
content: CreateRun; for each step in order RUNNING, one output artifact
version (the artifact per step name is created by the first run), COMPLETED;
the run completes with its last step (checked on the last answer). Three
ways of sending it (--modes, all measured in one invocation, so their ratios
come from the same machine state):

    single  31 calls: CreateRun, then per step UpdateStepStatus RUNNING,
            RecordStepOutputs, UpdateStepStatus COMPLETED
    step    11 calls: CreateRun, then per step one RecordRunCallbacks
            (RUNNING, outputs, COMPLETED) — an orchestrator reporting as each step ends
    run      2 calls: CreateRun, then one RecordRunCallbacks with the 30 callbacks

With --replicas N, N metadata server processes serve the same database
(the service is stateless) and the recorders are spread over them.

Figures: runs/s over --seconds of recording after a warm-up, median of
--rounds rounds, with call p50/p99 and the CPU time per recorded run (from
/proc, so a busy machine changes it little) of the servers, of this process,
of PostgreSQL and of the whole machine (with how busy it was); ceiling =
GetProject calls/s with the same concurrency.

    python bench/record_runs.py --database postgresql --recorders 16 --seconds 15 --rounds 3
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
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MetadataServer:
    """A metadata server process and a channel to it."""

    channel: grpc.aio.Channel
    pid: int

    def cpu_seconds(self) -> float:
        """CPU time the process used so far (user + system), from /proc: robust to a busy machine."""
        return process_cpu_seconds(str(self.pid))


def process_cpu_seconds(pid: str) -> float:
    """User + system CPU time of a process so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU time of every PostgreSQL process on this machine (its backends included)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("postgres"):
                total += process_cpu_seconds(entry.name)
        except OSError:
            continue  # the process ended
    return total


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, from /proc/stat (idle and iowait not busy)."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    every = sum(ticks[:8]) / os.sysconf("SC_CLK_TCK")
    return every - (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK"), every


@dataclass(frozen=True)
class CpuMark:
    """CPU seconds used so far: the servers, this process (control plane + recorders), PostgreSQL, the
    machine (busy and all)."""

    servers: float
    bench: float
    postgres: float
    busy: float
    every: float

    @classmethod
    def now(cls, servers: list[MetadataServer]) -> CpuMark:
        busy, every = machine_cpu_seconds()
        return cls(
            sum(server.cpu_seconds() for server in servers),
            process_cpu_seconds("self"),
            postgres_cpu_seconds(),
            busy,
            every,
        )


@asynccontextmanager
async def metadata_process(
    orgs: OrgsStack, database_url: str, credential_file: Path, data_dir: Path, profile: str = ""
) -> AsyncIterator[MetadataServer]:
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
        yield MetadataServer(channel, process.pid)
    finally:
        await channel.close(None)
        process.terminate()
        await process.wait()


async def bench_pipeline(
    channel: grpc.aio.Channel, owner: User, workspace_id: str, database_url: str
) -> tuple[str, str]:
    """A project (created through the API, the owner owns it) with one 10-step pipeline seeded: ids."""
    project = await projects_pb2_grpc.ProjectServiceStub(channel).CreateProject(
        projects_pb2.CreateProjectRequest(
            workspace_id=workspace_id, project=projects_pb2.Project(name="bench")
        ),
        metadata=owner.metadata,
    )
    engine = create_engine(database_url)
    try:
        seeded = await seeding.seed_project(
            engine, project.id, "bench-stack", runs_count=0, pipeline_count=1, start=datetime.now(UTC)
        )
    finally:
        await engine.dispose()
    return project.id, seeded.pipelines[0].snapshot_id


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

    async def _create(self) -> str:
        run = await self._call(
            self.runs.CreateRun,
            runs_pb2.CreateRunRequest(
                workspace_id=self.workspace_id,
                project_id=self.project_id,
                snapshot_id=self.snapshot_id,
                request_id=str(uuid.uuid4()),
            ),
        )
        return str(run.id)  # type: ignore[attr-defined]

    @staticmethod
    def _output(run_id: str, name: str) -> artifacts_pb2.StepOutput:
        return artifacts_pb2.StepOutput(
            name="output",
            artifact_name=f"bench.{name}.output",
            artifact_version=artifacts_pb2.ArtifactVersion(
                uri=f"s3://bench/{run_id}/{name}", size_bytes=1024
            ),
        )

    async def record_run(self, mode: str) -> None:
        if mode == "single":
            status = await self._record_singly()
        else:
            status = await self._record_batched(per_step=mode == "step")
        if status != runs_pb2.Run.COMPLETED:
            raise AssertionError(f"a run ended {runs_pb2.Run.Status.Name(status)}")  # type: ignore[arg-type]

    async def _record_singly(self) -> int:
        ws, project = self.workspace_id, self.project_id
        run_id = await self._create()
        last: Any = None
        for index in range(seeding.STEPS):
            name = f"step-{index}"

            def status(value: int, step: str = name) -> runs_pb2.UpdateStepStatusRequest:
                return runs_pb2.UpdateStepStatusRequest(
                    workspace_id=ws,
                    project_id=project,
                    run_id=run_id,
                    step_name=step,
                    status=value,  # type: ignore[arg-type]
                    request_id=str(uuid.uuid4()),
                )

            started = await self._call(self.runs.UpdateStepStatus, status(runs_pb2.StepRun.RUNNING))
            await self._call(
                self.artifacts.RecordStepOutputs,
                artifacts_pb2.RecordStepOutputsRequest(
                    workspace_id=ws,
                    project_id=project,
                    step_run_id=started.step_run.id,  # type: ignore[attr-defined]
                    outputs=[self._output(run_id, name)],
                    request_id=str(uuid.uuid4()),
                ),
            )
            last = await self._call(self.runs.UpdateStepStatus, status(runs_pb2.StepRun.COMPLETED))
        return int(last.run_status)

    async def _record_batched(self, *, per_step: bool) -> int:
        run_id = await self._create()
        callbacks: list[runs_pb2.RunCallback] = []
        answer: Any = None
        step = runs_pb2.RunCallback.StepStatus
        for index in range(seeding.STEPS):
            name = f"step-{index}"
            callbacks += [
                runs_pb2.RunCallback(step_status=step(step_name=name, status=runs_pb2.StepRun.RUNNING)),
                runs_pb2.RunCallback(
                    step_outputs=runs_pb2.RunCallback.StepOutputs(
                        step_name=name, outputs=[self._output(run_id, name)]
                    )
                ),
                runs_pb2.RunCallback(step_status=step(step_name=name, status=runs_pb2.StepRun.COMPLETED)),
            ]
            if per_step or index == seeding.STEPS - 1:
                answer = await self._call(
                    self.runs.RecordRunCallbacks,
                    runs_pb2.RecordRunCallbacksRequest(
                        workspace_id=self.workspace_id,
                        project_id=self.project_id,
                        run_id=run_id,
                        callbacks=callbacks,
                        request_id=str(uuid.uuid4()),
                    ),
                )
                callbacks = []
        return int(answer.run.status)


async def record_for(recorders: list[Recorder], mode: str, seconds: float) -> tuple[float, list[float], int]:
    """Records runs for `seconds`: runs/s, every call's latency, how many runs."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def loop(recorder: Recorder) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await recorder.record_run(mode)
            done += 1

    for recorder in recorders:
        recorder.latencies.clear()
        recorder.by_call.clear()
    start = time.perf_counter()
    await asyncio.gather(*(loop(r) for r in recorders))
    return done / (time.perf_counter() - start), [x for r in recorders for x in r.latencies], done


CALLS_PER_RUN = {"single": 31, "step": 11, "run": 2}


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
    parser.add_argument(
        "--modes", default="single,step,run", help="comma-separated: single, step, run (see the docstring)"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="metadata server processes on one database (recorders spread)"
    )
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp())
    async with database_urls(args.database, data_dir) as urls, control_plane(urls, data_dir) as orgs:
        owner = await orgs.user()
        organization = await orgs.organization(owner)
        workspace_id, credential = await create_workspace(orgs, organization.id, owner)
        credential_file = write_secret_file(data_dir / "workspace-credential", credential)
        async with AsyncExitStack() as stack:
            servers = [
                await stack.enter_async_context(
                    metadata_process(
                        orgs, urls["metadata"], credential_file, data_dir / f"metadata-{i}", args.profile
                    )
                )
                for i in range(args.replicas)
            ]
            channel = servers[0].channel
            project_id, snapshot_id = await bench_pipeline(channel, owner, workspace_id, urls["metadata"])
            # Stateless replicas: each recorder talks to one of them, spread evenly.
            recorders = [
                Recorder(servers[i % len(servers)].channel, owner, workspace_id, project_id, snapshot_id)
                for i in range(args.recorders)
            ]
            top = await ceiling(channel, owner, workspace_id, project_id, args.recorders)
            print(
                f"{args.database}, {args.recorders} recorders, {args.replicas} server(s); "
                f"ceiling GetProject {top:.0f} calls/s (one server)"
            )
            modes = args.modes.split(",")
            await record_for(recorders, modes[0], 3)  # warm-up (creates the 10 artifacts)
            for mode in modes:
                rounds, cpu_per_run = [], []
                for _ in range(args.rounds):
                    before = CpuMark.now(servers)
                    rate, latencies, runs = await record_for(recorders, mode, args.seconds)
                    rounds.append((rate, latencies))
                    after = CpuMark.now(servers)
                    per_run = [
                        (getattr(after, name) - getattr(before, name)) / max(runs, 1) * 1000
                        for name in ("servers", "bench", "postgres", "busy")
                    ]
                    busy = (after.busy - before.busy) / (after.every - before.every) * 100
                    cpu_per_run.append((*per_run, busy))
                rates = [rate for rate, _ in rounds]
                median_round = sorted(rounds)[len(rounds) // 2][1]
                cuts = statistics.quantiles(median_round, n=100)
                print(
                    f"  {mode:<6} {statistics.median(rates):6.1f} complete runs/s "
                    f"(rounds {', '.join(f'{r:.1f}' for r in rates)}); "
                    f"{statistics.median(rates) * CALLS_PER_RUN[mode]:.0f} calls/s; "
                    f"call p50 {cuts[49] * 1000:.1f} ms p99 {cuts[98] * 1000:.1f} ms"
                )
                servers_ms, bench_ms, postgres_ms, machine_ms, busy = (
                    statistics.median(values) for values in zip(*cpu_per_run, strict=True)
                )
                print(
                    f"         CPU per run (median of rounds): servers {servers_ms:.1f} ms, this process "
                    f"(control plane + recorders) {bench_ms:.1f} ms, PostgreSQL {postgres_ms:.1f} ms; "
                    f"whole machine {machine_ms:.1f} ms ({busy:.0f} % busy)"
                )
                by_call: dict[str, list[float]] = {}
                for recorder in recorders:
                    for name, values in recorder.by_call.items():
                        by_call.setdefault(name, []).extend(values)
                for name, values in sorted(by_call.items()):
                    cuts = statistics.quantiles(values, n=100)
                    print(
                        f"      {name:<28} p50 {cuts[49] * 1000:6.1f} ms  p99 {cuts[98] * 1000:6.1f} ms"
                        " (last round)"
                    )


if __name__ == "__main__":
    asyncio.run(main())
