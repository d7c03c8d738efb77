"""The workspace server starts against a real control plane and registers its workspace."""

from __future__ import annotations

from keel.orgs.v1 import workspaces_pb2
from tests.metadata.conftest import MetadataStack


async def test_the_server_registers_and_orgs_marks_the_workspace_active(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    assert stack.service.workspace.workspace_id == stack.workspace_id
    assert stack.service.workspace.organization_id == stack.organization_id
    workspace = await stack.workspaces.GetWorkspace(
        workspaces_pb2.GetWorkspaceRequest(
            organization_id=stack.organization_id, workspace_id=stack.workspace_id
        ),
        metadata=stack.owner.metadata,
    )
    assert workspace.state == workspaces_pb2.ACTIVE
    assert workspace.endpoint == stack.address
