"""Projects: create, read, list (filtered by what the caller may read), update, delete when empty."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit import errors
from services.kit.context import Principal
from services.kit.fieldmask import check_etag
from services.kit.rbac_lookup import lookup_condition
from services.metadata import rows, validation
from services.metadata.annotation_store import annotation_filters
from services.metadata.domain import MetadataDomain, create_owned, forget_quietly
from services.metadata.store import PROJECT_FILTERS, PROJECT_SORTABLE, project_content, projects

CREATE_METHOD = "keel.metadata.v1.ProjectService/CreateProject"
UPDATABLE = ("name", "display_name", "description")
# A project's tags are its own annotations (target and project are the project).
_FILTERS = {**PROJECT_FILTERS, **annotation_filters("project", projects.c.id, projects.c.id)}


@dataclass(frozen=True)
class ProjectInput:
    """The client-settable fields of a project."""

    name: str = ""
    display_name: str = ""
    description: str = ""


def _checked(fields: ProjectInput) -> dict[str, str]:
    return {
        "name": validation.name(fields.name, "project.name"),
        "display_name": validation.display_name(fields.display_name, "project.display_name"),
        "description": validation.description(fields.description, "project.description"),
    }


class Projects:
    """The project operations of one workspace server."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._domain = domain

    async def create(self, principal: Principal, fields: ProjectInput, request_id: str = "") -> rows.Row:
        """A new project owned by the caller; ALREADY_EXISTS when the name is taken."""
        values = _checked(fields)
        project_id = str(uuid.uuid4())
        now = self._domain.clock.now()

        async def write(conn: AsyncConnection) -> None:
            await rows.insert_row(
                conn,
                projects,
                {"id": project_id, **values, "create_time": now, "update_time": now, "version": 1},
            )

        return await create_owned(
            self._domain,
            principal,
            method=CREATE_METHOD,
            request_id=request_id,
            resource_type="project",
            resource_id=project_id,
            what="project",
            fetch=lambda conn, row_id: rows.get_row(conn, projects, row_id),
            write=write,
        )

    async def get(self, project_id: str) -> rows.Row:
        """The project; NOT_FOUND when missing."""
        validation.resource_id(project_id, "project_id", "project")
        async with self._domain.store.transaction() as tx:
            found = await rows.get_row(tx.conn, projects, project_id)
        if found is None:
            raise errors.NotFound("project not found")
        return found

    async def list(self, principal: Principal, query: rows.ListQuery) -> tuple[list[rows.Row], str]:
        """One page of the projects the caller may read."""
        readable = await self._domain.lookup.readable_ids(
            principal, "project", "read", self._domain.workspace.workspace_id
        )
        async with self._domain.store.transaction() as tx:
            return await rows.list_rows(
                tx.conn,
                projects,
                query,
                method="ListProjects",
                filter_fields=_FILTERS,
                sortable=PROJECT_SORTABLE,
                visible=lookup_condition(readable, projects.c.id),
            )

    async def update(
        self, project_id: str, fields: ProjectInput, mask: Collection[str], etag: str
    ) -> rows.Row:
        """Writes the masked fields; ABORTED on a stale etag, ALREADY_EXISTS when the new name is taken."""
        validation.resource_id(project_id, "project.id", "project")
        values = {name: value for name, value in _checked_masked(fields, mask).items()}
        async with self._domain.store.transaction() as tx:
            current = await rows.get_row(tx.conn, projects, project_id)
            if current is None:
                raise errors.NotFound("project not found")
            check_etag(etag, current["version"])
            if all(current[name] == value for name, value in values.items()):
                return current
            try:
                updated = await rows.update_row(
                    tx.conn,
                    projects,
                    project_id,
                    current["version"],
                    {**values, "update_time": self._domain.clock.now()},
                )
            except rows.Conflict:
                raise errors.AlreadyExists("a project with this name already exists") from None
        if updated is None:
            raise errors.Aborted("the project changed concurrently; retry", reason="CONCURRENT_UPDATE")
        return updated

    async def delete(self, principal: Principal, project_id: str, etag: str) -> rows.Row:
        """Deletes an empty project and forgets its bindings; FAILED_PRECONDITION while it holds anything."""
        validation.resource_id(project_id, "project_id", "project")
        async with self._domain.store.transaction() as tx:
            current = await rows.get_row(tx.conn, projects, project_id)
            if current is None:
                raise errors.NotFound("project not found")
            check_etag(etag, current["version"])
            held = await project_content(tx.conn, project_id)
            if held is not None:
                raise errors.FailedPrecondition(
                    f"the project still holds {held}; delete them first", reason="PROJECT_NOT_EMPTY"
                )
            try:
                deleted = await rows.delete_row(tx.conn, projects, project_id, current["version"])
            except rows.InUse:
                raise errors.FailedPrecondition(
                    "the project is not empty; delete its contents first", reason="PROJECT_NOT_EMPTY"
                ) from None
        if not deleted:
            raise errors.Aborted("the project changed concurrently; retry", reason="CONCURRENT_UPDATE")
        await forget_quietly(self._domain, principal, "project", project_id)
        return current


def _checked_masked(fields: ProjectInput, mask: Collection[str]) -> dict[str, str]:
    checked = {
        "name": lambda: validation.name(fields.name, "project.name"),
        "display_name": lambda: validation.display_name(fields.display_name, "project.display_name"),
        "description": lambda: validation.description(fields.description, "project.description"),
    }
    return {name: checked[name]() for name in UPDATABLE if name in mask}
