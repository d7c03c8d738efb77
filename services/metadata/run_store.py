"""Tables and queries of runs and step runs (SQLAlchemy Core); no gRPC, no clock, no policy.

Every request-serving query names the project (runs) or the run (steps, whose
run was found in the project first). Indexes follow the lists: keyset on
(project_id, create_time, id), (pipeline_id, create_time, id) and
(project_id, start_time, id); (project_id, status, create_time, id) for the
status filter; steps by (run_id, position); the heartbeat sweeper by
(status, heartbeat_deadline).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import AnyField, FilterField, parse_filter
from services.kit.pagination import paginate, parse_order_by, query_fingerprint
from services.kit.prepared import Batch, Prepared
from services.kit.rbac_lookup import Lookup, lookup_condition
from services.metadata import run_states
from services.metadata.annotation_store import annotation_filters
from services.metadata.rows import values_of
from services.metadata.store import metadata

TRIGGERS = ("user", "schedule", "dashboard")

runs = Table(
    "metadata_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("pipeline_id", String(36), nullable=False),
    Column("snapshot_id", String(36), nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(1000), nullable=False),
    Column("orchestrator_run_id", String(256), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("trigger_principal_id", String(255), nullable=False),
    Column("step_count", Integer, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("start_time", UtcDateTime, nullable=True),
    Column("end_time", UtcDateTime, nullable=True),
    Index("ix_metadata_runs_project_create", "project_id", "create_time", "id"),
    Index("ix_metadata_runs_pipeline_create", "pipeline_id", "create_time", "id"),
    Index("ix_metadata_runs_project_start", "project_id", "start_time", "id"),
    Index("ix_metadata_runs_project_status_create", "project_id", "status", "create_time", "id"),
    # "Is this snapshot still used?" before a snapshot is deleted.
    Index("ix_metadata_runs_snapshot", "snapshot_id"),
)
# Open runs only (few of millions): the sweeper's repair of runs behind their steps reads them.
Index(
    "ix_metadata_runs_open",
    runs.c.id,
    postgresql_where=runs.c.status.in_(run_states.OPEN_RUN_STATUSES),
    sqlite_where=runs.c.status.in_(run_states.OPEN_RUN_STATUSES),
)

# Newest runs of a pipeline in one status, in ListRuns' exact order (create_time desc, id asc): the
# plain (..., create_time, id) indexes cannot give that mixed order, so PostgreSQL sorted every match.
Index(
    "ix_metadata_runs_project_pipeline_status_create",
    runs.c.project_id,
    runs.c.pipeline_id,
    runs.c.status,
    runs.c.create_time.desc(),
    runs.c.id,
)

step_runs = Table(
    "metadata_step_runs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("run_id", String(36), nullable=False),
    Column("project_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    # Index of the step in the snapshot: the order of lists and DAGs.
    Column("position", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("status_reason", String(1000), nullable=False),
    Column("attempt_count", Integer, nullable=False),
    Column("cache_key", String(256), nullable=False),
    # Names of the upstream steps (from the snapshot): the edges of the run DAG.
    Column("parents", JSON, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("start_time", UtcDateTime, nullable=True),
    Column("end_time", UtcDateTime, nullable=True),
    Column("last_heartbeat_time", UtcDateTime, nullable=True),
    Column("heartbeat_timeout_seconds", Integer, nullable=False),
    # last heartbeat + timeout while RUNNING, else NULL: the sweeper compares it with now (portable SQL).
    Column("heartbeat_deadline", UtcDateTime, nullable=True),
    UniqueConstraint("run_id", "name", name="uq_metadata_step_runs_run_name"),
    UniqueConstraint("run_id", "position", name="uq_metadata_step_runs_run_position"),
    Index("ix_metadata_step_runs_status_deadline", "status", "heartbeat_deadline"),
)

_STATUS_FILTER = {status.upper(): status for status in run_states.RUN_STATUSES}
RUN_FILTER: Mapping[str, FilterField] = {
    "status": FilterField(runs.c.status, "enum", _STATUS_FILTER),
    "pipeline_id": FilterField(runs.c.pipeline_id, "string"),
    "snapshot_id": FilterField(runs.c.snapshot_id, "string"),
    "trigger": FilterField(runs.c.trigger, "enum", {kind.upper(): kind for kind in TRIGGERS}),
    "create_time": FilterField(runs.c.create_time, "timestamp"),
    "start_time": FilterField(runs.c.start_time, "timestamp"),
    "end_time": FilterField(runs.c.end_time, "timestamp"),
}
RUN_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "create_time": runs.c.create_time,
    "start_time": runs.c.start_time,
}
# ListRuns adds tags and run metadata to RUN_FILTER; WatchRuns filters change-log rows by RUN_FILTER alone.
LIST_RUN_FILTER: Mapping[str, AnyField] = {
    **RUN_FILTER,
    **annotation_filters("run", runs.c.id, runs.c.project_id),
}
STEP_FILTER: Mapping[str, AnyField] = {
    "name": FilterField(step_runs.c.name, "string"),
    "status": FilterField(
        step_runs.c.status, "enum", {status.upper(): status for status in run_states.STEP_STATUSES}
    ),
    **annotation_filters("step", step_runs.c.id, step_runs.c.project_id),
}


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A row of `metadata_runs`."""

    id: str
    project_id: str
    pipeline_id: str
    snapshot_id: str
    status: str
    status_reason: str
    orchestrator_run_id: str
    trigger: str
    trigger_principal_id: str
    step_count: int
    create_time: datetime
    update_time: datetime
    start_time: datetime | None
    end_time: datetime | None


@dataclasses.dataclass(frozen=True)
class StepRunRecord:
    """A row of `metadata_step_runs`."""

    id: str
    run_id: str
    project_id: str
    name: str
    position: int
    status: str
    status_reason: str
    attempt_count: int
    cache_key: str
    parents: tuple[str, ...]
    create_time: datetime
    update_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    last_heartbeat_time: datetime | None
    heartbeat_timeout_seconds: int
    heartbeat_deadline: datetime | None


async def lock_on_sqlite(conn: AsyncConnection, table: Table, row_id: str) -> None:
    """On SQLite, takes the database write lock before reading a row meant for update.

    SQLite has no FOR UPDATE, and the driver opens its transaction only at the
    first write, so a plain read-then-write lets two transactions decide on the
    same stale row. A no-op UPDATE first makes the transaction a writer at
    once (writers are serialized) and everything it reads afterwards current.
    PostgreSQL uses the row lock of FOR UPDATE / FOR SHARE instead.
    """
    if conn.dialect.name == "sqlite":
        await conn.execute(update(table).where(table.c.id == row_id).values(id=table.c.id))


def _run(values: Mapping[Any, Any]) -> RunRecord:
    return RunRecord(**{name: values[name] for name in RunRecord.__dataclass_fields__})


def _step(values: Mapping[Any, Any]) -> StepRunRecord:
    fields = {name: values[name] for name in StepRunRecord.__dataclass_fields__}
    fields["parents"] = tuple(fields["parents"])
    return StepRunRecord(**fields)


# The statements of recording runs (CreateRun, callbacks), prepared: services/kit/prepared.py.
_INSERT_RUN = Prepared(insert(runs))
_INSERT_STEPS = Prepared(insert(step_runs))
_RUN_BY_ID = select(runs).where(
    runs.c.project_id == bindparam("project_id"), runs.c.id == bindparam("run_id")
)
_GET_RUN = Prepared(_RUN_BY_ID)
_GET_RUN_FOR_UPDATE = Prepared(_RUN_BY_ID.with_for_update())
_WRITE_RUN = Prepared(
    update(runs)
    .where(runs.c.id == bindparam("run_id"))
    .values({column.name: bindparam(f"new_{column.name}") for column in runs.c if column.name != "id"})
)
_STEPS_OF_RUN = Prepared(
    select(step_runs).where(step_runs.c.run_id == bindparam("run_id")).order_by(step_runs.c.position)
)
# The columns a step's transitions and heartbeats change.
_STEP_STATE = (
    "status",
    "status_reason",
    "attempt_count",
    "cache_key",
    "update_time",
    "start_time",
    "end_time",
    "last_heartbeat_time",
    "heartbeat_deadline",
)
_WRITE_STEPS = Prepared(
    update(step_runs)
    .where(step_runs.c.id == bindparam("step_id"))
    .values({name: bindparam(f"new_{name}") for name in _STEP_STATE})
)
_RUN_COLUMNS = [column.name for column in runs.c]
# PostgreSQL: rows bound as arrays (kit Batch), so one statement text serves any number of steps.
_STEP_ROWS = Batch.of(step_runs, prefix="step_")
_INSERT_RUN_WITH_STEPS = Prepared(
    text(
        f"WITH run AS (INSERT INTO metadata_runs ({', '.join(_RUN_COLUMNS)})"  # noqa: S608 - constant names
        f" VALUES ({', '.join(f':run_{name}' for name in _RUN_COLUMNS)}))"
        f" INSERT INTO metadata_step_runs ({_STEP_ROWS.names()})"
        f" SELECT {_STEP_ROWS.names('s')} FROM {_STEP_ROWS.source('s')}"
    )
)
_STEP_STATE_ROWS = Batch.of(step_runs, ("id", *_STEP_STATE), prefix="step_")
_UPDATE_STEPS_BY_ARRAYS = (
    f"UPDATE metadata_step_runs AS t SET {', '.join(f'{name} = s.{name}' for name in _STEP_STATE)}"  # noqa: S608
    f" FROM {_STEP_STATE_ROWS.source('s')} WHERE t.id = s.id"
)
_WRITE_STEPS_BY_ARRAYS = Prepared(text(_UPDATE_STEPS_BY_ARRAYS))
# The run's UPDATE as `_WRITE_RUN` writes it, then the steps' (a data-modifying CTE always runs).
_WRITE_STEPS_AND_RUN = Prepared(
    text(
        "WITH run AS (UPDATE metadata_runs SET"  # noqa: S608 - constant names
        f" {', '.join(f'{name} = :new_{name}' for name in _RUN_COLUMNS if name != 'id')}"
        f" WHERE id = :run_id) {_UPDATE_STEPS_BY_ARRAYS}"
    )
)


async def insert_run(conn: AsyncConnection, run: RunRecord, steps: Sequence[StepRunRecord]) -> None:
    """Adds a run and all its step runs: one statement on PostgreSQL; elsewhere one INSERT for the run,
    one executemany INSERT for the steps."""
    if conn.dialect.name == "postgresql":
        await _INSERT_RUN_WITH_STEPS.execute(
            conn,
            {
                **{f"run_{name}": value for name, value in values_of(run).items()},
                **_STEP_ROWS.params(
                    [{**values_of(step), "parents": json.dumps(list(step.parents))} for step in steps]
                ),
            },
        )
        return
    await _INSERT_RUN.execute(conn, values_of(run))
    await _INSERT_STEPS.execute_many(
        conn, [{**values_of(step), "parents": list(step.parents)} for step in steps]
    )


async def get_run(
    conn: AsyncConnection, project_id: str, run_id: str, *, for_update: bool = False
) -> RunRecord | None:
    """The run, or None (also when it is another project's). `for_update` serializes a run's callbacks."""
    if for_update:
        await lock_on_sqlite(conn, runs, run_id)
    row = await (_GET_RUN_FOR_UPDATE if for_update else _GET_RUN).first(
        conn, {"project_id": project_id, "run_id": run_id}
    )
    return None if row is None else _run(row)


async def write_run(conn: AsyncConnection, run: RunRecord) -> None:
    """Writes every column of the run as the record holds it."""
    await _WRITE_RUN.execute(conn, _run_values(run))


def _run_values(run: RunRecord) -> dict[str, Any]:
    """`_WRITE_RUN`'s parameters for the run."""
    values = values_of(run)
    return {"run_id": run.id, **{f"new_{name}": value for name, value in values.items() if name != "id"}}


async def list_runs(
    conn: AsyncConnection,
    project_id: str,
    readable: Lookup,
    *,
    filter_text: str,
    order_by: str,
    size: int,
    page_token: str,
) -> tuple[list[RunRecord], str]:
    """One page of the project's readable runs (one statement)."""
    order = parse_order_by(order_by, RUN_SORTABLE, tie_breaker=runs.c.id, default="create_time desc")
    stmt = select(runs).where(
        runs.c.project_id == project_id, lookup_condition(readable, runs.c.id, runs.c.project_id)
    )
    condition = parse_filter(filter_text, LIST_RUN_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=size,
        page_token=page_token,
        fingerprint=query_fingerprint("ListRuns", filter_text=filter_text, scope=project_id),
    )
    return [_run(row._mapping) for row in page.rows], page.next_page_token


async def update_run(conn: AsyncConnection, run_id: str, values: Mapping[str, Any]) -> RunRecord:
    """Writes `values` on the run; the run after."""
    result = await conn.execute(update(runs).where(runs.c.id == run_id).values(**values).returning(*runs.c))
    return _run(result.one()._mapping)


# What other store modules hold about runs (artifact links, run metadata) and delete with a run:
# each hook is one bounded statement over the given run ids, in the delete's transaction.
RunDeletionHook = Callable[[AsyncConnection, Sequence[str]], Awaitable[int]]
RUN_DELETION_HOOKS: list[RunDeletionHook] = []


def register_run_deletion(hook: RunDeletionHook) -> RunDeletionHook:
    """Adds a hook run when runs are deleted (usable as a decorator)."""
    if hook not in RUN_DELETION_HOOKS:
        RUN_DELETION_HOOKS.append(hook)
    return hook


async def delete_run(conn: AsyncConnection, run_id: str) -> int:
    """Deletes what hooks hold about the run, its steps (one statement) then the run; how many steps went."""
    for hook in RUN_DELETION_HOOKS:
        await hook(conn, [run_id])
    result = await conn.execute(delete(step_runs).where(step_runs.c.run_id == run_id))
    await conn.execute(delete(runs).where(runs.c.id == run_id))
    return int(result.rowcount or 0)


async def snapshot_has_runs(conn: AsyncConnection, snapshot_id: str) -> bool:
    """Whether any run uses the snapshot."""
    return bool(await conn.scalar(select(exists().where(runs.c.snapshot_id == snapshot_id))))


async def pipeline_has_runs(conn: AsyncConnection, pipeline_id: str) -> bool:
    """Whether any run of the pipeline exists."""
    return bool(await conn.scalar(select(exists().where(runs.c.pipeline_id == pipeline_id))))


async def steps_of_run(conn: AsyncConnection, run_id: str) -> list[StepRunRecord]:
    """Every step run of a run in snapshot order (one statement; at most 1,000 rows)."""
    return [_step(row) for row in await _STEPS_OF_RUN.rows(conn, {"run_id": run_id})]


async def list_step_runs(
    conn: AsyncConnection, run_id: str, *, filter_text: str, size: int, page_token: str
) -> tuple[list[StepRunRecord], str]:
    """One page of a run's step runs in snapshot order."""
    order = parse_order_by("", {}, tie_breaker=step_runs.c.position, tie_breaker_name="position")
    stmt = select(step_runs).where(step_runs.c.run_id == run_id)
    condition = parse_filter(filter_text, STEP_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=size,
        page_token=page_token,
        fingerprint=query_fingerprint("ListStepRuns", filter_text=filter_text, scope=run_id),
    )
    return [_step(row._mapping) for row in page.rows], page.next_page_token


async def get_step_run(conn: AsyncConnection, run_id: str, step_run_id: str) -> StepRunRecord | None:
    """The step run of this run, or None."""
    row = (
        await conn.execute(
            select(step_runs).where(step_runs.c.run_id == run_id, step_runs.c.id == step_run_id)
        )
    ).first()
    return None if row is None else _step(row._mapping)


async def get_step_by_name(conn: AsyncConnection, run_id: str, name: str) -> StepRunRecord | None:
    """The step run of this run with this name, or None."""
    row = (
        await conn.execute(select(step_runs).where(step_runs.c.run_id == run_id, step_runs.c.name == name))
    ).first()
    return None if row is None else _step(row._mapping)


async def update_step(conn: AsyncConnection, step_id: str, values: Mapping[str, Any]) -> StepRunRecord:
    """Writes `values` on the step run; the step after."""
    result = await conn.execute(
        update(step_runs).where(step_runs.c.id == step_id).values(**values).returning(*step_runs.c)
    )
    return _step(result.one()._mapping)


async def write_steps(conn: AsyncConnection, steps: Sequence[StepRunRecord], run: RunRecord | None) -> None:
    """Writes the changing columns of several step runs, and every column of `run` when given: one
    statement on PostgreSQL; elsewhere one executemany UPDATE, and one for the run."""
    if conn.dialect.name == "postgresql":
        if steps or run is not None:
            statement = _WRITE_STEPS_AND_RUN if run is not None else _WRITE_STEPS_BY_ARRAYS
            values = _STEP_STATE_ROWS.params([values_of(step) for step in steps])
            if run is not None:
                values.update(_run_values(run))
            await statement.execute(conn, values)
        return
    if run is not None:
        await write_run(conn, run)
    if not steps:
        return
    await _WRITE_STEPS.execute_many(
        conn,
        [
            {"step_id": step.id, **{f"new_{name}": getattr(step, name) for name in _STEP_STATE}}
            for step in steps
        ],
    )


async def record_heartbeat(conn: AsyncConnection, step_id: str, now: datetime, deadline: datetime) -> bool:
    """Moves a RUNNING step's heartbeat deadline; False when it is no longer RUNNING (a sweep won)."""
    result = await conn.execute(
        update(step_runs)
        .where(step_runs.c.id == step_id, step_runs.c.status == run_states.RUNNING)
        .values(last_heartbeat_time=now, heartbeat_deadline=deadline)
    )
    return bool(result.rowcount)


async def step_status_counts(conn: AsyncConnection, run_id: str) -> list[tuple[str, int]]:
    """(status, count) of a run's steps."""
    result = await conn.execute(
        select(step_runs.c.status, func.count())
        .where(step_runs.c.run_id == run_id)
        .group_by(step_runs.c.status)
    )
    return [(row[0], int(row[1])) for row in result]


async def stop_open_steps(
    conn: AsyncConnection, run_id: str, reason: str, now: datetime
) -> list[StepRunRecord]:
    """Every non-terminal step of a run becomes STOPPED (one bounded UPDATE); those steps after."""
    result = await conn.execute(
        update(step_runs)
        .where(step_runs.c.run_id == run_id, step_runs.c.status.not_in(sorted(run_states.TERMINAL)))
        .values(
            status=run_states.STOPPED,
            status_reason=reason,
            end_time=now,
            update_time=now,
            heartbeat_deadline=None,
        )
        .returning(*step_runs.c)
    )
    return sorted((_step(row._mapping) for row in result), key=lambda step: step.position)


async def runs_behind_their_steps(conn: AsyncConnection, limit: int) -> list[str]:
    """Ids of open runs every step of which has ended (at most `limit`): runs that missed following.

    A sweep fails steps and then moves their runs in separate transactions; a crash between
    the two leaves such a run, and the next sweep repairs it.
    """
    open_step = (
        select(step_runs.c.id)
        .where(step_runs.c.run_id == runs.c.id, step_runs.c.status.not_in(sorted(run_states.TERMINAL)))
        .exists()
    )
    rows = await conn.execute(
        select(runs.c.id)
        .where(runs.c.status.in_(run_states.OPEN_RUN_STATUSES), ~open_step)
        .order_by(runs.c.id)
        .limit(limit)
    )
    return [row.id for row in rows]


async def fail_silent_steps(conn: AsyncConnection, now: datetime, reason: str, limit: int) -> list[str]:
    """RUNNING steps past their heartbeat deadline become FAILED, at most `limit`; their runs' ids."""
    return sorted({step.run_id for step in await fail_silent_step_records(conn, now, reason, limit)})


async def fail_silent_step_records(
    conn: AsyncConnection, now: datetime, reason: str, limit: int
) -> list[StepRunRecord]:
    """RUNNING steps past their heartbeat deadline become FAILED, at most `limit`; those steps after.

    One UPDATE whose WHERE repeats the condition, so a heartbeat committed
    meanwhile or a replica sweeping at once makes a row simply not match;
    SKIP LOCKED lets concurrent sweepers share the work on PostgreSQL.
    """
    silent = and_(step_runs.c.status == run_states.RUNNING, step_runs.c.heartbeat_deadline < now)
    batch = (
        select(step_runs.c.id)
        .where(silent)
        .order_by(step_runs.c.heartbeat_deadline, step_runs.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte("silent_steps")
        .prefix_with("MATERIALIZED")
    )
    result = await conn.execute(
        update(step_runs)
        .where(step_runs.c.id.in_(select(batch.c.id)), silent)
        .values(
            status=run_states.FAILED,
            status_reason=reason,
            end_time=now,
            update_time=now,
            heartbeat_deadline=None,
        )
        .returning(*step_runs.c)
    )
    return sorted((_step(row._mapping) for row in result), key=lambda step: (step.run_id, step.position))


async def runs_by_id(conn: AsyncConnection, run_ids: Sequence[str]) -> dict[str, RunRecord]:
    """The runs with these ids, by id (the sweeper's change log needs each failed step's run)."""
    if not run_ids:
        return {}
    rows = await conn.execute(select(runs).where(runs.c.id.in_(sorted(set(run_ids)))))
    return {row.id: _run(row._mapping) for row in rows}


async def project_of_run(conn: AsyncConnection, run_id: str) -> str | None:
    """The project of a run (for the sweeper, which serves no request)."""
    return await conn.scalar(select(runs.c.project_id).where(runs.c.id == run_id))
