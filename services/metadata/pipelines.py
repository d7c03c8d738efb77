"""Pipelines and snapshots: the rules of creating, changing and deleting them; no gRPC, no SQL.

A snapshot is immutable: created (validated as a DAG, its stack checked to
exist in this workspace and its code repository in this project) and deleted,
never updated. Deleting a snapshot used by a run is FAILED_PRECONDITION;
deleting a pipeline is FAILED_PRECONDITION while any run of it exists — runs
are the record of what happened, so they are never dropped as a side effect
of tidying up pipelines: the caller deletes the runs first, on purpose. The
pipeline's snapshots (unused by then) go with it. Creates go through
`domain.create_owned`: the caller's ownership first, then the insert.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.context import Principal
from services.kit.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.kit.fieldmask import check_etag
from services.kit.rbac_lookup import Lookup
from services.metadata import pipeline_store as ps
from services.metadata import run_store as rs
from services.metadata import validation
from services.metadata.domain import MetadataDomain, create_owned
from services.metadata.pipeline_store import PipelineRecord, SnapshotRecord
from services.metadata.snapshots import SnapshotInput, validate_snapshot
from services.metadata.store import (
    code_repositories,
    projects,
    register_project_content_check,
    stacks,
)

UPDATABLE = ("name", "description")

register_project_content_check(ps.project_has_pipelines)


def check_id(value: str, field: str) -> str:
    """A required id of at most 36 characters (server ids are UUIDs)."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 36:
        raise InvalidArgument(field, "is not a valid id")
    return value


async def require_project(conn: AsyncConnection, project_id: str) -> None:
    """NOT_FOUND unless the project exists in this workspace."""
    if await conn.scalar(select(projects.c.id).where(projects.c.id == project_id)) is None:
        raise NotFound("project not found")


class Pipelines:
    """Pipelines and snapshots of the projects of this workspace."""

    def __init__(self, domain: MetadataDomain, new_id: Callable[[], str] | None = None) -> None:
        self._domain = domain
        self._store = domain.store
        self._clock = domain.clock
        self._new_id = new_id or (lambda: str(uuid.uuid4()))

    async def create_pipeline(
        self, principal: Principal, project_id: str, name: str, description: str, request_id: str = ""
    ) -> PipelineRecord:
        """A new pipeline the caller owns; a retry with `request_id` returns the first one."""
        project_id = check_id(project_id, "project_id")
        name = validation.name(name, "pipeline.name")
        description = validation.description(description, "pipeline.description")
        pipeline_id = self._new_id()

        async def precheck(conn: AsyncConnection) -> None:
            await require_project(conn, project_id)

        async def write(conn: AsyncConnection) -> None:
            await require_project(conn, project_id)
            now = self._clock.now()
            try:
                await ps.insert_pipeline(
                    conn, PipelineRecord(pipeline_id, project_id, name, description, now, now, 1)
                )
            except ps.NameTaken:
                raise AlreadyExists(f"a pipeline named {name!r} exists in the project") from None

        return await create_owned(
            self._domain,
            principal,
            method=f"CreatePipeline/{project_id}",
            request_id=request_id,
            resource_type="pipeline",
            resource_id=pipeline_id,
            project_id=project_id,
            what="pipeline",
            fetch=lambda conn, found_id: ps.get_pipeline(conn, project_id, found_id),
            write=write,
            precheck=precheck,
        )

    async def get_pipeline(self, project_id: str, pipeline_id: str) -> PipelineRecord:
        """The pipeline; NOT_FOUND also for another project's."""
        async with self._store.transaction() as tx:
            return await _pipeline_or_not_found(tx.conn, project_id, pipeline_id)

    async def list_pipelines(
        self,
        project_id: str,
        readable: Lookup,
        *,
        filter_text: str,
        order_by: str,
        size: int,
        page_token: str,
    ) -> tuple[list[PipelineRecord], str]:
        """One page of the readable pipelines of a project."""
        check_id(project_id, "project_id")
        async with self._store.transaction() as tx:
            await require_project(tx.conn, project_id)
            return await ps.list_pipelines(
                tx.conn,
                project_id,
                readable,
                filter_text=filter_text,
                order_by=order_by,
                size=size,
                page_token=page_token,
            )

    async def update_pipeline(
        self, project_id: str, pipeline_id: str, values: Mapping[str, Any], etag: str
    ) -> PipelineRecord:
        """Writes the masked fields (name, description); ABORTED on a stale etag."""
        checked: dict[str, Any] = {}
        if "name" in values:
            checked["name"] = validation.name(values["name"], "pipeline.name")
        if "description" in values:
            checked["description"] = validation.description(values["description"], "pipeline.description")
        async with self._store.transaction() as tx:
            current = await _pipeline_or_not_found(tx.conn, project_id, pipeline_id, for_update=True)
            check_etag(etag, current.version)
            try:
                return await ps.update_pipeline(tx.conn, current, checked, self._clock.now())
            except ps.NameTaken:
                raise AlreadyExists(f"a pipeline named {checked['name']!r} exists in the project") from None

    async def delete_pipeline(
        self, project_id: str, pipeline_id: str, etag: str
    ) -> tuple[PipelineRecord, list[str]]:
        """Deletes a pipeline without runs and its snapshots; the pipeline and the snapshot ids."""
        async with self._store.transaction() as tx:
            current = await _pipeline_or_not_found(tx.conn, project_id, pipeline_id, for_update=True)
            check_etag(etag, current.version)
            if await rs.pipeline_has_runs(tx.conn, pipeline_id):
                raise FailedPrecondition(
                    "the pipeline has runs; delete them first", reason="PIPELINE_HAS_RUNS"
                )
            snapshot_ids = await ps.delete_pipeline(tx.conn, pipeline_id)
        return current, snapshot_ids

    async def create_snapshot(
        self,
        principal: Principal,
        project_id: str,
        pipeline_id: str,
        snapshot: SnapshotInput,
        request_id: str = "",
    ) -> SnapshotRecord:
        """A new snapshot the caller owns; a retry with `request_id` returns the first one."""
        check_id(project_id, "project_id")
        check_id(pipeline_id, "pipeline_id")
        snapshot = validate_snapshot(snapshot)
        snapshot_id = self._new_id()

        async def precheck(conn: AsyncConnection) -> None:
            await _pipeline_or_not_found(conn, project_id, pipeline_id)
            if await conn.scalar(select(stacks.c.id).where(stacks.c.id == snapshot.stack_id)) is None:
                raise InvalidArgument("snapshot.stack_id", "is not a stack of this workspace")
            repository = snapshot.code_reference.code_repository_id
            if repository and (
                await conn.scalar(
                    select(code_repositories.c.id).where(
                        code_repositories.c.id == repository, code_repositories.c.project_id == project_id
                    )
                )
                is None
            ):
                raise InvalidArgument(
                    "snapshot.code_reference.code_repository_id", "is not a code repository of this project"
                )

        async def write(conn: AsyncConnection) -> None:
            await precheck(conn)
            await ps.insert_snapshot(
                conn,
                snapshot_id=snapshot_id,
                project_id=project_id,
                pipeline_id=pipeline_id,
                snapshot=snapshot,
                now=self._clock.now(),
            )

        return await create_owned(
            self._domain,
            principal,
            method=f"CreateSnapshot/{pipeline_id}",
            request_id=request_id,
            resource_type="snapshot",
            resource_id=snapshot_id,
            project_id=project_id,
            what="snapshot",
            fetch=lambda conn, found_id: ps.get_snapshot(conn, project_id, found_id),
            write=write,
            precheck=precheck,
        )

    async def get_snapshot(self, project_id: str, pipeline_id: str, snapshot_id: str) -> SnapshotRecord:
        """The snapshot with its steps; NOT_FOUND also for another project's or pipeline's."""
        async with self._store.transaction() as tx:
            found = await ps.get_snapshot(tx.conn, project_id, snapshot_id, pipeline_id=pipeline_id)
        if found is None:
            raise NotFound("snapshot not found")
        return found

    async def list_snapshots(
        self,
        project_id: str,
        pipeline_id: str,
        readable: Lookup,
        *,
        filter_text: str,
        order_by: str,
        size: int,
        page_token: str,
    ) -> tuple[list[SnapshotRecord], str]:
        """One page of a pipeline's readable snapshots."""
        async with self._store.transaction() as tx:
            await _pipeline_or_not_found(tx.conn, project_id, pipeline_id)
            return await ps.list_snapshots(
                tx.conn,
                project_id,
                pipeline_id,
                readable,
                filter_text=filter_text,
                order_by=order_by,
                size=size,
                page_token=page_token,
            )

    async def delete_snapshot(self, project_id: str, pipeline_id: str, snapshot_id: str) -> SnapshotRecord:
        """Deletes a snapshot no run uses."""
        async with self._store.transaction() as tx:
            found = await ps.get_snapshot(
                tx.conn, project_id, snapshot_id, pipeline_id=pipeline_id, for_update=True
            )
            if found is None:
                raise NotFound("snapshot not found")
            if await rs.snapshot_has_runs(tx.conn, snapshot_id):
                raise FailedPrecondition(
                    "runs use the snapshot; delete them first", reason="SNAPSHOT_HAS_RUNS"
                )
            await ps.delete_snapshot(tx.conn, snapshot_id)
        return found


async def _pipeline_or_not_found(
    conn: AsyncConnection, project_id: str, pipeline_id: str, *, for_update: bool = False
) -> PipelineRecord:
    found = await ps.get_pipeline(conn, project_id, pipeline_id, for_update=for_update)
    if found is None:
        raise NotFound("pipeline not found")
    return found
