"""Tables and queries of pipelines and snapshots (SQLAlchemy Core); no gRPC, no clock, no policy.

Every query names the project: a pipeline or snapshot of another project is
indistinguishable from a missing one. A snapshot's steps are stored as one
JSON document (immutable, read whole, bounded by validation at 4 MiB).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import AnyField, FilterField, parse_filter
from services.kit.pagination import Page, paginate, parse_order_by, query_fingerprint
from services.kit.prepared import Prepared
from services.kit.rbac_lookup import Lookup, lookup_condition
from services.metadata.annotation_store import annotation_filters
from services.metadata.run_store import lock_on_sqlite
from services.metadata.snapshots import CodeReference, SnapshotInput, StepDefinition
from services.metadata.store import metadata

pipelines = Table(
    "metadata_pipelines",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_metadata_pipelines_project_name"),
    Index("ix_metadata_pipelines_project_create", "project_id", "create_time", "id"),
)

snapshots = Table(
    "metadata_snapshots",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("pipeline_id", String(36), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("stack_id", String(36), nullable=False),
    Column("code_repository_id", String(36), nullable=False),
    Column("code_commit", String(64), nullable=False),
    Column("code_subdirectory", String(1024), nullable=False),
    # The validated steps (StepDefinition.to_json each), in the order they were given.
    Column("steps", JSON, nullable=False),
    Column("step_count", Integer, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Index("ix_metadata_snapshots_pipeline_create", "pipeline_id", "create_time", "id"),
    # "Is this stack / code repository still used by a snapshot?"
    Index("ix_metadata_snapshots_stack", "stack_id"),
    Index("ix_metadata_snapshots_code_repository", "code_repository_id"),
)

PIPELINE_FILTER: Mapping[str, AnyField] = {
    "name": FilterField(pipelines.c.name, "string"),
    "create_time": FilterField(pipelines.c.create_time, "timestamp"),
    **annotation_filters("pipeline", pipelines.c.id, pipelines.c.project_id),
}
PIPELINE_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "create_time": pipelines.c.create_time,
    "name": pipelines.c.name,
}
SNAPSHOT_FILTER: Mapping[str, AnyField] = {
    "stack_id": FilterField(snapshots.c.stack_id, "string"),
    "create_time": FilterField(snapshots.c.create_time, "timestamp"),
    **annotation_filters("snapshot", snapshots.c.id, snapshots.c.project_id),
}
SNAPSHOT_SORTABLE: Mapping[str, ColumnElement[Any]] = {"create_time": snapshots.c.create_time}


@dataclasses.dataclass(frozen=True)
class PipelineRecord:
    """A row of `metadata_pipelines`."""

    id: str
    project_id: str
    name: str
    description: str
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class SnapshotRecord:
    """A row of `metadata_snapshots`; `steps` is empty when read for a list."""

    id: str
    project_id: str
    pipeline_id: str
    description: str
    stack_id: str
    code_reference: CodeReference
    steps: tuple[StepDefinition, ...]
    step_count: int
    create_time: datetime


class NameTaken(Exception):
    """The pipeline name is used in the project."""


def _by_id(table: Table) -> dict[str, Prepared]:
    """A row of a project by id: unlocked, FOR SHARE and FOR UPDATE (prepared: CreateRun reads both)."""
    found = select(table).where(table.c.project_id == bindparam("project_id"), table.c.id == bindparam("id"))
    return {
        "": Prepared(found),
        "share": Prepared(found.with_for_update(read=True)),
        "update": Prepared(found.with_for_update()),
    }


def _lock_mode(*, for_update: bool, for_share: bool) -> str:
    return "update" if for_update else "share" if for_share else ""


_GET_PIPELINE = _by_id(pipelines)
_GET_SNAPSHOT = _by_id(snapshots)


def _pipeline(values: Mapping[Any, Any]) -> PipelineRecord:
    return PipelineRecord(**{name: values[name] for name in PipelineRecord.__dataclass_fields__})


def _snapshot(values: Mapping[Any, Any], *, with_steps: bool) -> SnapshotRecord:
    steps = tuple(StepDefinition.from_json(item) for item in values["steps"]) if with_steps else ()
    return SnapshotRecord(
        id=values["id"],
        project_id=values["project_id"],
        pipeline_id=values["pipeline_id"],
        description=values["description"],
        stack_id=values["stack_id"],
        code_reference=CodeReference(
            values["code_repository_id"], values["code_commit"], values["code_subdirectory"]
        ),
        steps=steps,
        step_count=values["step_count"],
        create_time=values["create_time"],
    )


async def insert_pipeline(conn: AsyncConnection, record: PipelineRecord) -> None:
    """Adds a pipeline; NameTaken (the transaction must then end) when the project has one of that name."""
    try:
        await conn.execute(insert(pipelines).values(**dataclasses.asdict(record)))
    except IntegrityError:
        raise NameTaken(record.name) from None


async def get_pipeline(
    conn: AsyncConnection,
    project_id: str,
    pipeline_id: str,
    *,
    for_update: bool = False,
    for_share: bool = False,
) -> PipelineRecord | None:
    """The pipeline, or None (also when it is another project's).

    `for_share` (CreateRun) and `for_update` (DeletePipeline) make a delete
    and a new run of the same pipeline wait for each other.
    """
    if for_update or for_share:
        await lock_on_sqlite(conn, pipelines, pipeline_id)
    statement = _GET_PIPELINE[_lock_mode(for_update=for_update, for_share=for_share)]
    row = await statement.first(conn, {"project_id": project_id, "id": pipeline_id})
    return None if row is None else _pipeline(row)


async def update_pipeline(
    conn: AsyncConnection, record: PipelineRecord, values: Mapping[str, Any], now: datetime
) -> PipelineRecord:
    """Writes `values` (name, description) and bumps the version; NameTaken on a used name."""
    try:
        result = await conn.execute(
            update(pipelines)
            .where(pipelines.c.id == record.id, pipelines.c.version == record.version)
            .values(**values, update_time=now, version=record.version + 1)
            .returning(*pipelines.c)
        )
        row = result.one()
    except IntegrityError:
        raise NameTaken(values.get("name", record.name)) from None
    return _pipeline(row._mapping)


async def delete_pipeline(conn: AsyncConnection, pipeline_id: str) -> list[str]:
    """Deletes a pipeline and its snapshots (two statements); the deleted snapshots' ids."""
    result = await conn.execute(
        delete(snapshots).where(snapshots.c.pipeline_id == pipeline_id).returning(snapshots.c.id)
    )
    gone = [row.id for row in result]
    await conn.execute(delete(pipelines).where(pipelines.c.id == pipeline_id))
    return gone


async def list_pipelines(
    conn: AsyncConnection,
    project_id: str,
    readable: Lookup,
    *,
    filter_text: str,
    order_by: str,
    size: int,
    page_token: str,
) -> tuple[list[PipelineRecord], str]:
    """One page of the project's readable pipelines."""
    order = parse_order_by(
        order_by, PIPELINE_SORTABLE, tie_breaker=pipelines.c.id, default="create_time desc"
    )
    stmt = select(pipelines).where(
        pipelines.c.project_id == project_id,
        lookup_condition(readable, pipelines.c.id, pipelines.c.project_id),
    )
    condition = parse_filter(filter_text, PIPELINE_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page: Page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=size,
        page_token=page_token,
        fingerprint=query_fingerprint("ListPipelines", filter_text=filter_text, scope=project_id),
    )
    return [_pipeline(row._mapping) for row in page.rows], page.next_page_token


async def insert_snapshot(
    conn: AsyncConnection,
    *,
    snapshot_id: str,
    project_id: str,
    pipeline_id: str,
    snapshot: SnapshotInput,
    now: datetime,
) -> SnapshotRecord:
    """Adds a validated snapshot."""
    reference = snapshot.code_reference
    result = await conn.execute(
        insert(snapshots)
        .values(
            id=snapshot_id,
            project_id=project_id,
            pipeline_id=pipeline_id,
            description=snapshot.description,
            stack_id=snapshot.stack_id,
            code_repository_id=reference.code_repository_id,
            code_commit=reference.commit,
            code_subdirectory=reference.subdirectory,
            steps=[step.to_json() for step in snapshot.steps],
            step_count=len(snapshot.steps),
            create_time=now,
        )
        .returning(*snapshots.c)
    )
    return _snapshot(result.one()._mapping, with_steps=True)


async def get_snapshot(
    conn: AsyncConnection,
    project_id: str,
    snapshot_id: str,
    *,
    pipeline_id: str | None = None,
    for_update: bool = False,
    for_share: bool = False,
) -> SnapshotRecord | None:
    """The snapshot with its steps, or None (also another project's, or another pipeline's if named).

    `for_share` (CreateRun) and `for_update` (DeleteSnapshot) serialize a delete with a new run.
    """
    if for_update or for_share:
        await lock_on_sqlite(conn, snapshots, snapshot_id)
    statement = _GET_SNAPSHOT[_lock_mode(for_update=for_update, for_share=for_share)]
    row = await statement.first(conn, {"project_id": project_id, "id": snapshot_id})
    if row is None or (pipeline_id is not None and row["pipeline_id"] != pipeline_id):
        return None
    return _snapshot(row, with_steps=True)


async def delete_snapshot(conn: AsyncConnection, snapshot_id: str) -> None:
    """Deletes one snapshot."""
    await conn.execute(delete(snapshots).where(snapshots.c.id == snapshot_id))


async def list_snapshots(
    conn: AsyncConnection,
    project_id: str,
    pipeline_id: str,
    readable: Lookup,
    *,
    filter_text: str,
    order_by: str,
    size: int,
    page_token: str,
) -> tuple[list[SnapshotRecord], str]:
    """One page of a pipeline's readable snapshots, without their steps (never loaded)."""
    order = parse_order_by(
        order_by, SNAPSHOT_SORTABLE, tie_breaker=snapshots.c.id, default="create_time desc"
    )
    listed = [column for column in snapshots.c if column.name != "steps"]
    stmt = select(*listed).where(
        snapshots.c.project_id == project_id,
        snapshots.c.pipeline_id == pipeline_id,
        lookup_condition(readable, snapshots.c.id, snapshots.c.project_id),
    )
    condition = parse_filter(filter_text, SNAPSHOT_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=size,
        page_token=page_token,
        fingerprint=query_fingerprint("ListSnapshots", filter_text=filter_text, scope=pipeline_id),
    )
    return [_snapshot(row._mapping, with_steps=False) for row in page.rows], page.next_page_token


async def project_has_pipelines(conn: AsyncConnection, project_id: str) -> str | None:
    """'pipelines' when the project holds any (checked before a project is deleted)."""
    found = await conn.scalar(select(exists().where(and_(pipelines.c.project_id == project_id))))
    return "pipelines" if found else None
