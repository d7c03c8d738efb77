"""ProjectService through the real workspace server, with real authn, RBAC and orgs."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from keel.metadata.v1 import code_repositories_pb2 as cr
from keel.metadata.v1 import code_repositories_pb2_grpc as cr_grpc
from keel.metadata.v1 import projects_pb2 as pb
from keel.metadata.v1 import projects_pb2_grpc as pb_grpc
from keel.rbac.v1 import rbac_pb2
from services.kit.status import error_info_of
from tests.metadata.conftest import MetadataStack, field_of


def _stub(stack: MetadataStack) -> pb_grpc.ProjectServiceAsyncStub:
    return pb_grpc.ProjectServiceStub(stack.channel)


async def _owner_of(stack: MetadataStack, project_id: str) -> str | None:
    async with stack.orgs.rbac.domain.store.transaction() as tx:
        owner = await tx.owner_of(stack.organization_id, "project", project_id)
    return None if owner is None else str(owner.subject_id)


async def test_create_get_update_delete(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    projects = _stub(stack)
    created = await stack.project("churn", stack.owner)
    assert created.name == "churn"
    assert created.id
    assert created.etag == '"1"'
    got = await projects.GetProject(
        pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert got == created
    updated = await projects.UpdateProject(
        pb.UpdateProjectRequest(
            workspace_id=stack.workspace_id,
            project=pb.Project(id=created.id, display_name="Churn model", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=stack.owner.metadata,
    )
    assert updated.display_name == "Churn model"
    assert updated.name == "churn"
    assert updated.etag == '"2"'
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await projects.DeleteProject(
            pb.DeleteProjectRequest(
                workspace_id=stack.workspace_id, project_id=created.id, etag=created.etag
            ),
            metadata=stack.owner.metadata,
        )
    assert stale.value.code() == grpc.StatusCode.ABORTED
    assert await _owner_of(stack, created.id) == stack.owner.id
    deleted = await projects.DeleteProject(
        pb.DeleteProjectRequest(workspace_id=stack.workspace_id, project_id=created.id, etag=updated.etag),
        metadata=stack.owner.metadata,
    )
    assert deleted.id == created.id
    assert await _owner_of(stack, created.id) is None  # ForgetResource removed the ownership
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await projects.GetProject(
            pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=created.id),
            metadata=stack.owner.metadata,
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_names_are_validated_and_unique(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    await stack.project("taken")
    with pytest.raises(grpc.aio.AioRpcError) as duplicate:
        await stack.project("taken")
    assert duplicate.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stack.project("Not A Name")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(bad.value) == "project.name"


async def test_request_id_makes_create_idempotent(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    request = pb.CreateProjectRequest(
        workspace_id=stack.workspace_id, project=pb.Project(name="once"), request_id=str(uuid.uuid4())
    )
    first = await _stub(stack).CreateProject(request, metadata=stack.owner.metadata)
    again = await _stub(stack).CreateProject(request, metadata=stack.owner.metadata)
    assert again.id == first.id
    listed = await _stub(stack).ListProjects(
        pb.ListProjectsRequest(workspace_id=stack.workspace_id), metadata=stack.owner.metadata
    )
    assert [project.name for project in listed.projects] == ["once"]


async def test_another_workspace_is_not_found(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await stack.project()
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await _stub(stack).GetProject(
            pb.GetProjectRequest(workspace_id=str(uuid.uuid4()), project_id=created.id),
            metadata=stack.owner.metadata,
        )
    assert other.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_viewer_reads_but_cannot_create(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await stack.project()
    viewer = await stack.user_with_role("workspace_viewer")
    got = await _stub(stack).GetProject(
        pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=created.id), metadata=viewer.metadata
    )
    assert got.id == created.id
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await stack.project(user=viewer)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    project_viewer = await stack.user_with_role("project_viewer", created.id)
    listed = await _stub(stack).ListProjects(
        pb.ListProjectsRequest(workspace_id=stack.workspace_id), metadata=project_viewer.metadata
    )
    assert [project.id for project in listed.projects] == [created.id]


async def test_without_roles_existing_and_missing_ids_are_denied_alike(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await stack.project()
    outsider = await stack.member()
    answers = []
    for project_id in (created.id, str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await _stub(stack).GetProject(
                pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=project_id),
                metadata=outsider.metadata,
            )
        info = error_info_of(denied.value)
        answers.append((denied.value.code(), info.reason if info else ""))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.PERMISSION_DENIED
    # A member holds workspace read (organization_member) but no project: the list is empty, not an error.
    listed = await _stub(stack).ListProjects(
        pb.ListProjectsRequest(workspace_id=stack.workspace_id), metadata=outsider.metadata
    )
    assert list(listed.projects) == []


async def test_the_creator_owns_the_project(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    editor = await stack.user_with_role("workspace_editor")
    created = await stack.project(user=editor)
    # workspace_editor grants no share: only the ownership recorded on create lets the editor share.
    shared_with = await stack.member()
    await stack.orgs.rbac_permissions.ShareResource(
        rbac_pb2.ShareResourceRequest(
            resource=rbac_pb2.ResourceRef(
                organization_id=stack.organization_id,
                workspace_id=stack.workspace_id,
                project_id=created.id,
                resource_type="project",
                resource_id=created.id,
            ),
            subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=shared_with.id),
            role_id="project_viewer",
        ),
        metadata=editor.metadata,
    )
    got = await _stub(stack).GetProject(
        pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=created.id),
        metadata=shared_with.metadata,
    )
    assert got.id == created.id


async def test_a_project_with_contents_cannot_be_deleted(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await stack.project()
    repositories = cr_grpc.CodeRepositoryServiceStub(stack.channel)
    repository = await repositories.CreateCodeRepository(
        cr.CreateCodeRepositoryRequest(
            workspace_id=stack.workspace_id,
            project_id=created.id,
            code_repository=cr.CodeRepository(
                name="main", type=cr.CodeRepository.GITHUB, url="https://github.com/acme/churn.git"
            ),
        ),
        metadata=stack.owner.metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stub(stack).DeleteProject(
            pb.DeleteProjectRequest(workspace_id=stack.workspace_id, project_id=created.id),
            metadata=stack.owner.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await repositories.DeleteCodeRepository(
        cr.DeleteCodeRepositoryRequest(
            workspace_id=stack.workspace_id, project_id=created.id, code_repository_id=repository.id
        ),
        metadata=stack.owner.metadata,
    )
    await _stub(stack).DeleteProject(
        pb.DeleteProjectRequest(workspace_id=stack.workspace_id, project_id=created.id),
        metadata=stack.owner.metadata,
    )
