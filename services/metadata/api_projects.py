"""ProjectService: gRPC ⇄ the Projects domain (no SQL, no policy)."""

from __future__ import annotations

from typing import Any

import grpc

from keel.metadata.v1 import projects_pb2, projects_pb2_grpc
from services.kit.context import require_principal
from services.kit.fieldmask import etag, resolve_update_mask
from services.metadata.domain import MetadataDomain
from services.metadata.messages import list_query, timestamp
from services.metadata.projects import UPDATABLE, ProjectInput, Projects
from services.metadata.rows import Row

Context = grpc.aio.ServicerContext[Any, Any]
_OUTPUT_ONLY = ("id", "create_time", "update_time", "etag")


def project_message(row: Row) -> projects_pb2.Project:
    """The Project message of a row."""
    return projects_pb2.Project(
        id=row["id"],
        name=row["name"],
        display_name=row["display_name"],
        description=row["description"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["version"]),
    )


def _input(message: projects_pb2.Project) -> ProjectInput:
    return ProjectInput(message.name, message.display_name, message.description)


class ProjectApi(projects_pb2_grpc.ProjectServiceServicer):
    """ProjectService of the workspace served."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._workspace = domain.workspace
        self._projects = Projects(domain)

    async def CreateProject(
        self, request: projects_pb2.CreateProjectRequest, context: Context
    ) -> projects_pb2.Project:
        self._workspace.require(request.workspace_id)
        created = await self._projects.create(
            require_principal(), _input(request.project), request.request_id
        )
        return project_message(created)

    async def GetProject(
        self, request: projects_pb2.GetProjectRequest, context: Context
    ) -> projects_pb2.Project:
        self._workspace.require(request.workspace_id)
        return project_message(await self._projects.get(request.project_id))

    async def ListProjects(
        self, request: projects_pb2.ListProjectsRequest, context: Context
    ) -> projects_pb2.ListProjectsResponse:
        self._workspace.require(request.workspace_id)
        found, token = await self._projects.list(require_principal(), list_query(request))
        return projects_pb2.ListProjectsResponse(
            projects=[project_message(row) for row in found], next_page_token=token
        )

    async def UpdateProject(
        self, request: projects_pb2.UpdateProjectRequest, context: Context
    ) -> projects_pb2.Project:
        self._workspace.require(request.workspace_id)
        mask = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        project = request.project
        return project_message(await self._projects.update(project.id, _input(project), mask, project.etag))

    async def DeleteProject(
        self, request: projects_pb2.DeleteProjectRequest, context: Context
    ) -> projects_pb2.Project:
        self._workspace.require(request.workspace_id)
        deleted = await self._projects.delete(require_principal(), request.project_id, request.etag)
        return project_message(deleted)
