"""Workspaces in the full orgs service (production wiring) with real authn and RBAC."""

from __future__ import annotations

import grpc

from keel.orgs.v1 import organizations_pb2 as org_pb
from keel.orgs.v1 import workspaces_pb2 as pb
from keel.orgs.v1 import workspaces_pb2_grpc as pb_grpc
from tests.authn.helpers import expect_error, reason_of
from tests.orgs.conftest import OrgsStack


async def test_workspaces_through_the_orgs_service_and_organization_deletion(orgs_stack: OrgsStack) -> None:
    api = pb_grpc.WorkspaceServiceStub(orgs_stack.channel)
    servers = pb_grpc.WorkspaceRegistryServiceStub(orgs_stack.channel)
    owner = await orgs_stack.user()
    organization = await orgs_stack.organization(owner)
    member = await orgs_stack.join(organization.id, owner)

    created = await api.CreateWorkspace(
        pb.CreateWorkspaceRequest(
            organization_id=organization.id, workspace=pb.Workspace(display_name="prod")
        ),
        metadata=owner.metadata,
    )
    workspace_id = created.workspace.id
    registered = await servers.RegisterWorkspaceServer(
        pb.RegisterWorkspaceServerRequest(
            credential=created.credential, endpoint="ws.example.test:443", server_version="0.9.0"
        )
    )
    assert registered.workspace.state == pb.ACTIVE
    # An organization member reads workspaces; creating one takes more than membership.
    location = await api.LookupWorkspace(
        pb.LookupWorkspaceRequest(organization_id=organization.id, workspace_id=workspace_id),
        metadata=member.metadata,
    )
    assert (location.state, location.endpoint) == (pb.ACTIVE, "ws.example.test:443")
    await expect_error(
        api.CreateWorkspace(
            pb.CreateWorkspaceRequest(
                organization_id=organization.id, workspace=pb.Workspace(display_name="x")
            ),
            metadata=member.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    refused = await expect_error(
        orgs_stack.organizations.DeleteOrganization(
            org_pb.DeleteOrganizationRequest(organization_id=organization.id), metadata=owner.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(refused) == "WORKSPACES_REMAIN"
    deleted = await orgs_stack.organizations.DeleteOrganization(
        org_pb.DeleteOrganizationRequest(organization_id=organization.id, force=True), metadata=owner.metadata
    )
    assert deleted.deleted_workspaces == 1
    # The organization's workspaces went with it: their servers' credentials no longer work.
    await expect_error(
        servers.SendHeartbeat(pb.SendHeartbeatRequest(credential=created.credential)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
