"""Bulk seeding of a project's pipelines, snapshots and runs, for benchmarks (never for serving).

This writes rows straight into the metadata tables: executemany inserts on
SQLite, PostgreSQL COPY (asyncpg `copy_records_to_table`) on PostgreSQL. It
bypasses the domain on purpose: no callbacks, no state machine, no RBAC
ownership records (the seeded rows are visible to whoever may read the whole
project, e.g. its creator), no request ids. It must therefore match the
store's tables exactly: columns are named from the store's `Table` objects
and tests/metadata/test_seeding.py reads seeded rows back through the normal
store list/get functions on both backends.

Each seeded run belongs to one of `pipelines` pipelines (one snapshot of a
10-step chain each) and gets its 10 step runs, one output artifact version
per completed step (one artifact per pipeline and step) and a few run
metadata entries. Statuses are mixed but always coherent (terminal runs
have terminal steps; queued runs have initializing steps), so the sweeper
finds nothing to do. Runs are written in batches, one transaction each.
"""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.metadata import run_states as states
from services.metadata.annotation_store import metadata_entries
from services.metadata.artifact_store import artifact_versions, artifacts, step_artifacts
from services.metadata.pipeline_store import pipelines, snapshots
from services.metadata.run_store import runs, step_runs
from services.metadata.snapshots import StepDefinition

STEPS = 10
# Run status → weight; a run's steps follow from its status (see _run_rows).
STATUS_WEIGHTS = {
    states.COMPLETED: 80,
    states.FAILED: 10,
    states.STOPPED: 4,
    states.CACHED: 3,
    states.QUEUED: 3,
}
RUN_SPACING = timedelta(seconds=1)
STEP_SECONDS = 6


@dataclasses.dataclass(frozen=True)
class SeededPipeline:
    """A seeded pipeline with its one snapshot."""

    id: str
    name: str
    snapshot_id: str


@dataclasses.dataclass
class SeedResult:
    """What was written: pipelines and row counts per table."""

    pipelines: list[SeededPipeline]
    rows: dict[str, int]
    status_counts: dict[str, int]

    @property
    def total_rows(self) -> int:
        """Every row written."""
        return sum(self.rows.values())


def chain_steps(steps: int = STEPS) -> tuple[StepDefinition, ...]:
    """A chain of `steps` steps (step-0 → step-1 → …), each with the default heartbeat timeout."""
    return tuple(
        StepDefinition(
            f"step-{index}",
            "python:3.11",
            upstream_steps=(f"step-{index - 1}",) if index else (),
            heartbeat_timeout_seconds=600,
        )
        for index in range(steps)
    )


async def _write(
    conn: AsyncConnection, table: Table, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    """Writes rows (tuples in `columns` order, JSON values already `_encoder`-encoded).

    COPY on PostgreSQL, executemany elsewhere.
    """
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            table.name, records=rows, columns=list(columns)
        )
        return
    await conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])


def _encoder(engine: AsyncEngine) -> Callable[[Any], Any]:
    """How JSON column values are passed: text for COPY (PostgreSQL), objects for SQLAlchemy (SQLite)."""
    return json.dumps if engine.dialect.name == "postgresql" else (lambda value: value)


class _Ids:
    """UUID-shaped ids: one random prefix, then a counter.

    Cheaper than uuid4 per row (30 ids a run) and appended in order to the
    primary-key indexes, which keeps COPY fast at millions of rows. Unique
    within a seed and, by the random prefix, across seeds.
    """

    def __init__(self) -> None:
        self._prefix = str(uuid.uuid4())[:24]
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"{self._prefix}{self._count:012x}"


RUN_COLUMNS = (
    "id",
    "project_id",
    "pipeline_id",
    "snapshot_id",
    "status",
    "status_reason",
    "orchestrator_run_id",
    "trigger",
    "trigger_principal_id",
    "step_count",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
)
STEP_COLUMNS = (
    "id",
    "run_id",
    "project_id",
    "name",
    "position",
    "status",
    "status_reason",
    "attempt_count",
    "cache_key",
    "parents",
    "create_time",
    "update_time",
    "start_time",
    "end_time",
    "last_heartbeat_time",
    "heartbeat_timeout_seconds",
    "heartbeat_deadline",
)
VERSION_COLUMNS = (
    "id",
    "project_id",
    "artifact_id",
    "number",
    "uri",
    "type",
    "materializer",
    "content_hash",
    "size_bytes",
    "producer_step_run_id",
    "producer_run_id",
    "create_time",
)
LINK_COLUMNS = (
    "project_id",
    "step_run_id",
    "direction",
    "name",
    "artifact_version_id",
    "artifact_id",
    "run_id",
    "create_time",
)
ENTRY_COLUMNS = ("project_id", "target_kind", "target_id", "key", "value_kind", "value", "update_time")


def _step_statuses(status: str, rng: random.Random) -> list[str]:
    """The steps' statuses of a run in `status` (coherent with the run's status rule)."""
    if status in (states.COMPLETED, states.CACHED):
        return [status] * STEPS
    if status == states.QUEUED:
        return [states.INITIALIZING] * STEPS
    cut = rng.randrange(STEPS)
    ending = states.FAILED if status == states.FAILED else states.STOPPED
    return [states.COMPLETED] * cut + [ending] + [states.STOPPED] * (STEPS - cut - 1)


@dataclasses.dataclass(frozen=True)
class _Shared:
    """What every run's rows use: the id source, the JSON encoder, each step's encoded parents."""

    ids: Callable[[], str]
    encode: Callable[[Any], Any]
    parents: list[Any]


class _Batch:
    """Rows of one batch of runs, per table."""

    def __init__(self) -> None:
        self.runs: list[tuple[Any, ...]] = []
        self.steps: list[tuple[Any, ...]] = []
        self.versions: list[tuple[Any, ...]] = []
        self.links: list[tuple[Any, ...]] = []
        self.entries: list[tuple[Any, ...]] = []

    async def write(self, conn: AsyncConnection) -> dict[str, int]:
        await _write(conn, runs, RUN_COLUMNS, self.runs)
        await _write(conn, step_runs, STEP_COLUMNS, self.steps)
        await _write(conn, artifact_versions, VERSION_COLUMNS, self.versions)
        await _write(conn, step_artifacts, LINK_COLUMNS, self.links)
        await _write(conn, metadata_entries, ENTRY_COLUMNS, self.entries)
        return {
            runs.name: len(self.runs),
            step_runs.name: len(self.steps),
            artifact_versions.name: len(self.versions),
            step_artifacts.name: len(self.links),
            metadata_entries.name: len(self.entries),
        }


async def seed_project(
    engine: AsyncEngine,
    project_id: str,
    stack_id: str,
    *,
    runs_count: int,
    pipeline_count: int = 5,
    start: datetime,
    principal_id: str = "seed",
    batch_runs: int = 2_000,
    seed: int = 0,
) -> SeedResult:
    """Seeds `runs_count` runs of `pipeline_count` new pipelines into the project (see the module doc).

    Run i is created at `start + i` seconds (the newest is the last) and belongs
    to pipeline i mod `pipeline_count`.
    """
    rng = random.Random(seed)
    steps = chain_steps()
    encode = _encoder(engine)
    ids = _Ids()
    step_json = encode([step.to_json() for step in steps])
    parents = [encode(list(step.upstream_steps)) for step in steps]
    suffix = uuid.uuid4().hex[:6]
    seeded = [SeededPipeline(ids(), f"seed-{suffix}-{index}", ids()) for index in range(pipeline_count)]
    # One artifact per (pipeline, step); its versions are numbered as the runs go.
    artifact_ids = [[ids() for _ in steps] for _ in seeded]
    numbers = [[0] * STEPS for _ in seeded]
    counts = {table.name: 0 for table in (pipelines, snapshots, artifacts)}
    statuses = {status: 0 for status in STATUS_WEIGHTS}
    choices, weights = list(STATUS_WEIGHTS), list(STATUS_WEIGHTS.values())
    async with engine.begin() as conn:
        await _write(
            conn,
            pipelines,
            ("id", "project_id", "name", "description", "create_time", "update_time", "version"),
            [(p.id, project_id, p.name, "seeded", start, start, 1) for p in seeded],
        )
        await _write(
            conn,
            snapshots,
            (
                "id",
                "project_id",
                "pipeline_id",
                "description",
                "stack_id",
                "code_repository_id",
                "code_commit",
                "code_subdirectory",
                "steps",
                "step_count",
                "create_time",
            ),
            [
                (p.snapshot_id, project_id, p.id, "", stack_id, "", "", "", step_json, STEPS, start)
                for p in seeded
            ],
        )
    counts[pipelines.name] = counts[snapshots.name] = pipeline_count
    done = 0
    while done < runs_count:
        batch = _Batch()
        for index in range(done, min(done + batch_runs, runs_count)):
            which = index % pipeline_count
            status = rng.choices(choices, weights)[0]
            statuses[status] += 1
            _run_rows(
                batch,
                project_id,
                seeded[which],
                artifact_ids[which],
                numbers[which],
                principal_id,
                status,
                _step_statuses(status, rng),
                start + index * RUN_SPACING,
                steps,
                _Shared(ids, encode, parents),
            )
        async with engine.begin() as conn:
            for name, written in (await batch.write(conn)).items():
                counts[name] = counts.get(name, 0) + written
        done += len(batch.runs)
    async with engine.begin() as conn:
        await _write(
            conn,
            artifacts,
            (
                "id",
                "project_id",
                "name",
                "type",
                "description",
                "latest_version_number",
                "create_time",
                "update_time",
                "version",
            ),
            [
                (
                    artifact_ids[p][s],
                    project_id,
                    f"{pipe.name}.{steps[s].name}.output",
                    "dataset",
                    "",
                    numbers[p][s],
                    start,
                    start,
                    1,
                )
                for p, pipe in enumerate(seeded)
                for s in range(STEPS)
            ],
        )
    counts[artifacts.name] = pipeline_count * STEPS
    return SeedResult(seeded, counts, statuses)


def _run_rows(
    batch: _Batch,
    project_id: str,
    pipeline: SeededPipeline,
    artifact_ids: list[str],
    numbers: list[int],
    principal_id: str,
    status: str,
    step_statuses: list[str],
    created: datetime,
    steps: tuple[StepDefinition, ...],
    shared: _Shared,
) -> None:
    ids, encode, parents = shared.ids, shared.encode, shared.parents
    run_id = ids()
    queued = status == states.QUEUED
    started = None if queued else created + timedelta(seconds=1)
    ended = None if queued else created + timedelta(seconds=1 + STEP_SECONDS * STEPS)
    batch.runs.append(
        (
            run_id,
            project_id,
            pipeline.id,
            pipeline.snapshot_id,
            status,
            "",
            "",
            "user",
            principal_id,
            STEPS,
            created,
            ended or created,
            started,
            ended,
        )
    )
    for position, (step, step_status) in enumerate(zip(steps, step_statuses, strict=True)):
        step_id = ids()
        ran = step_status in (states.COMPLETED, states.FAILED)
        step_start = created + timedelta(seconds=1 + STEP_SECONDS * position) if ran else None
        step_end = None if queued else created + timedelta(seconds=1 + STEP_SECONDS * (position + 1))
        batch.steps.append(
            (
                step_id,
                run_id,
                project_id,
                step.name,
                position,
                step_status,
                "",
                1 if ran else 0,
                "",
                parents[position],
                created,
                step_end or created,
                step_start,
                step_end,
                step_end if ran else None,
                step.heartbeat_timeout_seconds,
                None,
            )
        )
        if step_status in (states.COMPLETED, states.CACHED):
            numbers[position] += 1
            version_id = ids()
            batch.versions.append(
                (
                    version_id,
                    project_id,
                    artifact_ids[position],
                    numbers[position],
                    f"s3://seed/{run_id}/{step.name}/output",
                    "dataset",
                    "keel.materializers.Json",
                    "",
                    1024,
                    step_id,
                    run_id,
                    step_end,
                )
            )
            batch.links.append(
                (
                    project_id,
                    step_id,
                    "output",
                    "output",
                    version_id,
                    artifact_ids[position],
                    run_id,
                    step_end,
                )
            )
    when = ended or created
    batch.entries += [
        (project_id, "run", run_id, "accuracy", "number", encode(0.5 + (len(batch.runs) % 50) / 100), when),
        (project_id, "run", run_id, "git_branch", "string", encode("main"), when),
        (project_id, "run", run_id, "dataset", "uri", encode("s3://seed/datasets/train"), when),
    ]
