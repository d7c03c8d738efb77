"""CodeRepositoryService: gRPC ⇄ the CodeRepositories domain (no SQL, no policy)."""

from __future__ import annotations

from typing import Any

import grpc

from keel.metadata.v1 import code_repositories_pb2 as pb
from keel.metadata.v1 import code_repositories_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.fieldmask import etag, resolve_update_mask
from services.metadata.code_repositories import UPDATABLE, CodeRepositories, CodeRepositoryInput
from services.metadata.domain import MetadataDomain
from services.metadata.messages import list_query, timestamp
from services.metadata.rows import Row

Context = grpc.aio.ServicerContext[Any, Any]
_OUTPUT_ONLY = ("id", "project_id", "type", "create_time", "update_time", "etag")


def code_repository_message(row: Row) -> pb.CodeRepository:
    """The CodeRepository message of a row."""
    return pb.CodeRepository(
        id=row["id"],
        project_id=row["project_id"],
        name=row["name"],
        type=pb.CodeRepository.Type.Value(row["type"]),
        url=row["url"],
        credentials_ref=row["credentials_ref"],
        description=row["description"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["version"]),
    )


def _input(message: pb.CodeRepository) -> CodeRepositoryInput:
    type_name = pb.CodeRepository.Type.Name(message.type) if message.type else ""
    return CodeRepositoryInput(
        message.name, type_name, message.url, message.credentials_ref, message.description
    )


class CodeRepositoryApi(pb_grpc.CodeRepositoryServiceServicer):
    """CodeRepositoryService of the workspace served."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._workspace = domain.workspace
        self._repositories = CodeRepositories(domain)

    async def CreateCodeRepository(
        self, request: pb.CreateCodeRepositoryRequest, context: Context
    ) -> pb.CodeRepository:
        self._workspace.require(request.workspace_id)
        created = await self._repositories.create(
            require_principal(), request.project_id, _input(request.code_repository), request.request_id
        )
        return code_repository_message(created)

    async def GetCodeRepository(
        self, request: pb.GetCodeRepositoryRequest, context: Context
    ) -> pb.CodeRepository:
        self._workspace.require(request.workspace_id)
        return code_repository_message(
            await self._repositories.get(request.project_id, request.code_repository_id)
        )

    async def ListCodeRepositories(
        self, request: pb.ListCodeRepositoriesRequest, context: Context
    ) -> pb.ListCodeRepositoriesResponse:
        self._workspace.require(request.workspace_id)
        found, token = await self._repositories.list(
            require_principal(), request.project_id, list_query(request)
        )
        return pb.ListCodeRepositoriesResponse(
            code_repositories=[code_repository_message(row) for row in found], next_page_token=token
        )

    async def UpdateCodeRepository(
        self, request: pb.UpdateCodeRepositoryRequest, context: Context
    ) -> pb.CodeRepository:
        self._workspace.require(request.workspace_id)
        mask = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        repository = request.code_repository
        updated = await self._repositories.update(
            request.project_id, repository.id, _input(repository), mask, repository.etag
        )
        return code_repository_message(updated)

    async def DeleteCodeRepository(
        self, request: pb.DeleteCodeRepositoryRequest, context: Context
    ) -> pb.CodeRepository:
        self._workspace.require(request.workspace_id)
        deleted = await self._repositories.delete(
            require_principal(), request.project_id, request.code_repository_id, request.etag
        )
        return code_repository_message(deleted)
