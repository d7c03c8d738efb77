"""The run change log: every run and step status change, numbered in commit order (SQLAlchemy Core).

Watchers (watch.py) read this table from their cursor; notifications only wake
them. A change row is written in the transaction of the change it records, so
a rolled-back change leaves none. Numbers come from a one-row counter whose
row lock the writing transaction holds until it commits (as authn's
revocation feed, docs/decisions/revocation-feed.md): a concurrent change
waits, then numbers after it, so numbers become visible in order and a
reader past n never misses a later commit below n. `record_changes` is
therefore called last in a transaction. On PostgreSQL the same transaction
NOTIFYs the new sequence (delivered at commit, to every replica's listener).

A row carries the run as it was after the change (JSON) and, for a step
change, the step; plus the run's filterable fields as columns, so WatchRuns
applies the ListRuns filter and the LookupResources condition in SQL.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    String,
    Table,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.prepared import Batch, Prepared
from services.kit.rbac_lookup import Lookup, lookup_condition
from services.metadata import run_store as rs
from services.metadata.rows import values_of
from services.metadata.run_store import RunRecord, StepRunRecord
from services.metadata.store import metadata

CHANGE = "change"
DELETED = "deleted"
NOTIFY_CHANNEL = "keel_metadata_run_changes"
PAGE = 500
# How long changes stay resumable; an older cursor answers OUT_OF_RANGE.
RETENTION = timedelta(days=1)

run_changes = Table(
    "metadata_run_changes",
    metadata,
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("project_id", String(36), nullable=False),
    Column("run_id", String(36), nullable=False),
    # '' for a change of the run itself.
    Column("step_run_id", String(36), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("change_time", UtcDateTime, nullable=False),
    # The run's filterable fields after the change (WatchRuns filters on them in SQL).
    Column("status", String(16), nullable=False),
    Column("pipeline_id", String(36), nullable=False),
    Column("snapshot_id", String(36), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("start_time", UtcDateTime, nullable=True),
    Column("end_time", UtcDateTime, nullable=True),
    Column("run", JSON, nullable=False),
    Column("step_run", JSON, nullable=True),
    # WatchRun reads by run, WatchRuns by project (run changes only), the purge by time.
    Index("ix_metadata_run_changes_run", "run_id", "sequence"),
    Index("ix_metadata_run_changes_project", "project_id", "step_run_id", "sequence"),
    Index("ix_metadata_run_changes_time", "change_time"),
)

# One row (id 1): the last sequence handed out and the last one purged. The row lock orders changes.
run_change_counter = Table(
    "metadata_run_change_counter",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("last_sequence", BigInteger, nullable=False),
    Column("purged_through", BigInteger, nullable=False),
)
COUNTER_ID = 1

CHANGE_FILTER: Mapping[str, FilterField] = {
    name: dataclasses.replace(field, column=run_changes.c[name]) for name, field in rs.RUN_FILTER.items()
}


@dataclasses.dataclass(frozen=True)
class Change:
    """One row of the log, decoded."""

    sequence: int
    kind: str
    change_time: datetime
    run: RunRecord
    step: StepRunRecord | None


def _encode(record: Any) -> dict[str, Any]:
    values = values_of(record)
    for name, value in values.items():
        if isinstance(value, datetime):
            values[name] = value.isoformat()
        elif isinstance(value, tuple):
            values[name] = list(value)
    return values


def _decode(cls: Any, values: Mapping[str, Any]) -> Any:
    fields = {}
    for field in dataclasses.fields(cls):
        value = values[field.name]
        if "datetime" in str(field.type):
            value = None if value is None else datetime.fromisoformat(value)
        elif field.name == "parents":
            value = tuple(value)
        fields[field.name] = value
    return cls(**fields)


_LOG_ROWS = Batch(
    {
        "project_id": "varchar",
        "run_id": "varchar",
        "step_run_id": "varchar",
        "kind": "varchar",
        "change_time": "timestamptz",
        "status": "varchar",
        "pipeline_id": "varchar",
        "snapshot_id": "varchar",
        "trigger": "varchar",
        "create_time": "timestamptz",
        "start_time": "timestamptz",
        "end_time": "timestamptz",
        "run": "json",
        "step_run": "json",
    }
)
# PostgreSQL: the counter bump, the rows and the NOTIFY (delivered at commit) in one statement.
# Built from the constant column list above only; every value is a bound parameter.
_LOG_INSERT = Prepared(
    text(
        "WITH bumped AS (UPDATE metadata_run_change_counter SET last_sequence = last_sequence + :count"  # noqa: S608
        " WHERE id = :counter RETURNING last_sequence),"
        " notified AS (SELECT pg_notify(:channel, CAST(last_sequence AS text)) AS sent FROM bumped)"
        f" INSERT INTO metadata_run_changes (sequence, {_LOG_ROWS.names()})"
        f" SELECT bumped.last_sequence - :count + batch.position, {_LOG_ROWS.names('batch')}"
        f" FROM bumped CROSS JOIN notified CROSS JOIN {_LOG_ROWS.source('batch', ordinality='position')}"
        " RETURNING sequence"
    ).columns(sequence=BigInteger)
)


class ChangeBatch:
    """The changes of one transaction, collected as they happen and written by `record`, last."""

    def __init__(self) -> None:
        self._rows: list[tuple[str, RunRecord, StepRunRecord | None]] = []

    def run(self, run: RunRecord, kind: str = CHANGE) -> None:
        """The run changed (or was created, or deleted)."""
        self._rows.append((kind, run, None))

    def step(self, run: RunRecord, step: StepRunRecord) -> None:
        """A step of `run` changed."""
        self._rows.append((CHANGE, run, step))

    def steps(self, run: RunRecord, steps: Sequence[StepRunRecord]) -> None:
        """Several steps of `run` changed in one statement."""
        for step in steps:
            self.step(run, step)

    def __bool__(self) -> bool:
        return bool(self._rows)

    async def record(self, conn: AsyncConnection, now: datetime) -> int | None:
        """Numbers and writes the changes, NOTIFYs on PostgreSQL; the last sequence (None when empty).

        Takes the counter's row lock, held until the transaction ends: call it after every other
        write. Every callback of the workspace passes through that one lock, so on PostgreSQL
        the bump, the INSERT and the NOTIFY are one statement: the lock is held for it and the
        COMMIT only.
        """
        if not self._rows:
            return None
        count = len(self._rows)
        # A batch logs its run once per step change: each record is encoded once.
        encoded: dict[int, dict[str, Any]] = {}

        def once(record: RunRecord | StepRunRecord) -> dict[str, Any]:
            if id(record) not in encoded:
                encoded[id(record)] = _encode(record)
            return encoded[id(record)]

        rows: list[dict[str, Any]] = [
            {
                "offset": offset,
                "project_id": run.project_id,
                "run_id": run.id,
                "step_run_id": "" if step is None else step.id,
                "kind": kind,
                "change_time": now,
                "status": run.status,
                "pipeline_id": run.pipeline_id,
                "snapshot_id": run.snapshot_id,
                "trigger": run.trigger,
                "create_time": run.create_time,
                "start_time": run.start_time,
                "end_time": run.end_time,
                "run": once(run),
                "step_run": None if step is None else once(step),
            }
            for offset, (kind, run, step) in enumerate(self._rows)
        ]
        self._rows.clear()
        counter = run_change_counter.c
        bump = (
            update(run_change_counter)
            .where(counter.id == COUNTER_ID)
            .values(last_sequence=counter.last_sequence + count)
            .returning(counter.last_sequence)
        )
        if conn.dialect.name != "postgresql":
            last = int((await conn.execute(bump)).scalar_one())
            await conn.execute(
                insert(run_changes),
                [{"sequence": last - count + 1 + row.pop("offset"), **row} for row in rows],
            )
            return last
        dumped = {id(values): json.dumps(values) for values in encoded.values()}
        for row in rows:
            row["run"] = dumped[id(row["run"])]
            row["step_run"] = "null" if row["step_run"] is None else dumped[id(row["step_run"])]
        params = {"count": count, "counter": COUNTER_ID, "channel": NOTIFY_CHANNEL, **_LOG_ROWS.params(rows)}
        written = await _LOG_INSERT.rows(conn, params)
        return max(int(row["sequence"]) for row in written)


async def cursor_bounds(conn: AsyncConnection) -> tuple[int, int]:
    """(purged_through, last_sequence): a cursor below the first is gone, above the second unknown."""
    row = (
        await conn.execute(
            select(run_change_counter.c.purged_through, run_change_counter.c.last_sequence).where(
                run_change_counter.c.id == COUNTER_ID
            )
        )
    ).one()
    return int(row.purged_through), int(row.last_sequence)


def _change(row: Any) -> Change:
    return Change(
        sequence=int(row.sequence),
        kind=row.kind,
        change_time=row.change_time,
        run=_decode(RunRecord, row.run),
        step=None if row.step_run is None else _decode(StepRunRecord, row.step_run),
    )


async def changes_of_run(
    conn: AsyncConnection, project_id: str, run_id: str, after: int, limit: int = PAGE
) -> list[Change]:
    """The run's changes (its own and its steps') after `after`, in order, at most `limit`."""
    rows = await conn.execute(
        select(run_changes)
        .where(
            run_changes.c.run_id == run_id,
            run_changes.c.project_id == project_id,
            run_changes.c.sequence > after,
        )
        .order_by(run_changes.c.sequence)
        .limit(limit)
    )
    return [_change(row) for row in rows]


async def changes_of_project(
    conn: AsyncConnection,
    project_id: str,
    readable: Lookup,
    after: int,
    *,
    filter_text: str = "",
    limit: int = PAGE,
) -> list[Change]:
    """The project's readable run changes (not step changes) after `after` matching the filter, in order."""
    stmt = select(run_changes).where(
        run_changes.c.project_id == project_id,
        run_changes.c.step_run_id == "",
        run_changes.c.sequence > after,
        lookup_condition(readable, run_changes.c.run_id, run_changes.c.project_id),
    )
    condition = parse_filter(filter_text, CHANGE_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    rows = await conn.execute(stmt.order_by(run_changes.c.sequence).limit(limit))
    return [_change(row) for row in rows]


async def purge_before(conn: AsyncConnection, cutoff: datetime) -> int:
    """Deletes changes older than `cutoff`; remembers the highest sequence deleted. How many went."""
    highest = await conn.scalar(
        select(func.max(run_changes.c.sequence)).where(run_changes.c.change_time < cutoff)
    )
    if highest is None:
        return 0
    result = await conn.execute(delete(run_changes).where(run_changes.c.sequence <= highest))
    await conn.execute(
        update(run_change_counter)
        .where(run_change_counter.c.id == COUNTER_ID)
        .values(
            purged_through=func.greatest(run_change_counter.c.purged_through, highest)
            if conn.dialect.name == "postgresql"
            else func.max(run_change_counter.c.purged_through, highest)
        )
    )
    return int(result.rowcount or 0)
