"""CodeRepositoryService through the real workspace server: project scoping, credentials by reference only."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2

from keel.metadata.v1 import code_repositories_pb2 as pb
from keel.metadata.v1 import code_repositories_pb2_grpc as pb_grpc
from services.kit.status import rich_status_of
from tests.metadata.conftest import MetadataStack
from tests.orgs.conftest import User


def _stub(stack: MetadataStack) -> pb_grpc.CodeRepositoryServiceAsyncStub:
    return pb_grpc.CodeRepositoryServiceStub(stack.channel)


def _bad_field(error: grpc.aio.AioRpcError) -> str:
    status = rich_status_of(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return str(bad.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


async def _create(
    stack: MetadataStack, project_id: str, user: User | None = None, **fields: object
) -> pb.CodeRepository:
    values: dict[str, object] = {
        "name": f"repo-{uuid.uuid4().hex[:6]}",
        "type": pb.CodeRepository.GITHUB,
        "url": "https://github.com/acme/churn.git",
        **fields,
    }
    return await _stub(stack).CreateCodeRepository(
        pb.CreateCodeRepositoryRequest(
            workspace_id=stack.workspace_id,
            project_id=project_id,
            code_repository=pb.CodeRepository(**values),  # type: ignore[arg-type]
        ),
        metadata=(user or stack.owner).metadata,
    )


async def test_crud_within_a_project(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    project = await stack.project()
    created = await _create(stack, project.id, name="main", credentials_ref="connector-42")
    assert (created.project_id, created.credentials_ref) == (project.id, "connector-42")
    updated = await _stub(stack).UpdateCodeRepository(
        pb.UpdateCodeRepositoryRequest(
            workspace_id=stack.workspace_id,
            project_id=project.id,
            code_repository=pb.CodeRepository(id=created.id, url="git@gitlab.com:acme/churn.git"),
            update_mask=field_mask_pb2.FieldMask(paths=["url"]),
        ),
        metadata=stack.owner.metadata,
    )
    assert updated.url == "git@gitlab.com:acme/churn.git"
    assert updated.type == pb.CodeRepository.GITHUB
    listed = await _stub(stack).ListCodeRepositories(
        pb.ListCodeRepositoriesRequest(
            workspace_id=stack.workspace_id, project_id=project.id, filter='name = "main"'
        ),
        metadata=stack.owner.metadata,
    )
    assert [item.id for item in listed.code_repositories] == [created.id]
    await _stub(stack).DeleteCodeRepository(
        pb.DeleteCodeRepositoryRequest(
            workspace_id=stack.workspace_id, project_id=project.id, code_repository_id=created.id
        ),
        metadata=stack.owner.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _stub(stack).GetCodeRepository(
            pb.GetCodeRepositoryRequest(
                workspace_id=stack.workspace_id, project_id=project.id, code_repository_id=created.id
            ),
            metadata=stack.owner.metadata,
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_repository_of_another_project_is_not_found(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    mine, other = await stack.project(), await stack.project()
    created = await _create(stack, mine.id)
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await _stub(stack).GetCodeRepository(
            pb.GetCodeRepositoryRequest(
                workspace_id=stack.workspace_id, project_id=other.id, code_repository_id=created.id
            ),
            metadata=stack.owner.metadata,
        )
    assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_project:
        await _create(stack, str(uuid.uuid4()))
    assert no_project.value.code() == grpc.StatusCode.NOT_FOUND


async def test_urls_never_carry_passwords_and_fields_are_named(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    project = await stack.project()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"url": "https://user:hunter2@github.com/acme/x.git"}, "code_repository.url"),
        ({"url": "ftp://github.com/acme/x"}, "code_repository.url"),
        ({"type": pb.CodeRepository.TYPE_UNSPECIFIED}, "code_repository.type"),
        ({"name": "Bad Name"}, "code_repository.name"),
        ({"credentials_ref": "not a ref!"}, "code_repository.credentials_ref"),
    ]
    for fields, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await _create(stack, project.id, **fields)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _bad_field(bad.value) == field
        assert "hunter2" not in (bad.value.details() or "")


async def test_a_project_viewer_reads_but_cannot_create(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    project = await stack.project()
    created = await _create(stack, project.id)
    viewer = await stack.user_with_role("project_viewer", project.id)
    listed = await _stub(stack).ListCodeRepositories(
        pb.ListCodeRepositoriesRequest(workspace_id=stack.workspace_id, project_id=project.id),
        metadata=viewer.metadata,
    )
    assert [item.id for item in listed.code_repositories] == [created.id]
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await _create(stack, project.id, user=viewer)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    other = await stack.project()
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await _stub(stack).ListCodeRepositories(
            pb.ListCodeRepositoriesRequest(workspace_id=stack.workspace_id, project_id=other.id),
            metadata=viewer.metadata,
        )
    assert elsewhere.value.code() == grpc.StatusCode.PERMISSION_DENIED
