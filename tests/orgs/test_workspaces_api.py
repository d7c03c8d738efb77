"""WorkspaceService and WorkspaceRegistryService over gRPC: real orgs and RBAC servers, real sockets."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from keel.orgs.v1 import workspaces_pb2 as pb
from services.orgs import workspace_credentials as credentials
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.orgs.workspace_fixtures import ADMIN, Mesh, audit_events, mesh_fixture  # noqa: F401 (fixture)

ORG = "org-1"


async def _create(
    mesh: Mesh, name: str = "prod", organization_id: str = ORG, *, description: str = "", endpoint: str = ""
) -> pb.CreateWorkspaceResponse:
    workspace = pb.Workspace(display_name=name, description=description, endpoint=endpoint)
    request = pb.CreateWorkspaceRequest(organization_id=organization_id, workspace=workspace)
    response: pb.CreateWorkspaceResponse = await mesh.api.CreateWorkspace(request, metadata=mesh.token())
    return response


async def test_create_returns_a_provisioning_workspace_its_credential_and_records_ownership(
    mesh: Mesh,
) -> None:
    await mesh.add_organization(ORG)
    created = await _create(mesh, description="the production workspace", endpoint="ws.example.com:443")
    workspace = created.workspace
    assert workspace.state == pb.PROVISIONING
    assert workspace.organization_id == ORG
    assert workspace.display_name == "prod"
    assert workspace.endpoint == "ws.example.com:443"
    assert workspace.etag
    assert workspace.create_time.ToDatetime().year > 2000
    assert not workspace.HasField("register_time")
    assert not workspace.HasField("last_heartbeat_time")
    assert created.credential.startswith(f"keel_wsc_{workspace.id}_")
    assert await mesh.owner_of(ORG, workspace.id) == ADMIN
    fetched = await mesh.api.GetWorkspace(
        pb.GetWorkspaceRequest(organization_id=ORG, workspace_id=workspace.id), metadata=mesh.token()
    )
    assert fetched == workspace
    events = await audit_events(mesh.store)
    assert [(event["action"], event["actor"]["subject"]) for event in events] == [
        ("orgs.workspace.create", ADMIN)
    ]
    assert created.credential not in str(events)


async def test_create_retry_with_request_id_returns_the_workspace_without_credential(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    request = pb.CreateWorkspaceRequest(
        organization_id=ORG, workspace=pb.Workspace(display_name="prod"), request_id="req-1"
    )
    first = await mesh.api.CreateWorkspace(request, metadata=mesh.token())
    retry = await mesh.api.CreateWorkspace(request, metadata=mesh.token())
    assert first.credential
    assert retry.credential == ""
    assert retry.workspace == first.workspace
    listed = await mesh.api.ListWorkspaces(
        pb.ListWorkspacesRequest(organization_id=ORG), metadata=mesh.token()
    )
    assert [workspace.id for workspace in listed.workspaces] == [first.workspace.id]
    bad = await expect_error(
        mesh.api.CreateWorkspace(
            pb.CreateWorkspaceRequest(
                organization_id=ORG, workspace=pb.Workspace(display_name="x"), request_id="a b"
            ),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(bad) == ["request_id"]


async def test_create_rejects_bad_fields_and_taken_names(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    await _create(mesh, "prod")
    taken = await expect_error(_create(mesh, "prod"), grpc.StatusCode.ALREADY_EXISTS)
    assert "prod" in (taken.details() or "")
    for name, description, endpoint, field in [
        ("", "", "", "workspace.display_name"),
        ("x" * 101, "", "", "workspace.display_name"),
        ("ok", "d" * 1001, "", "workspace.description"),
        ("ok", "", "not an endpoint", "workspace.endpoint"),
        ("ok", "", "https://ws.example.com/keel_rt_" + "a" * 20, "workspace.endpoint"),
    ]:
        error = await expect_error(
            _create(mesh, name, description=description, endpoint=endpoint), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert bad_fields(error) == [field]
    # Nothing was written for the refused requests: no workspace, no ownership.
    listed = await mesh.api.ListWorkspaces(
        pb.ListWorkspacesRequest(organization_id=ORG), metadata=mesh.token()
    )
    assert [workspace.display_name for workspace in listed.workspaces] == ["prod"]


async def test_another_organizations_workspace_is_not_found_and_outsiders_are_denied(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    await mesh.add_organization("org-2")
    theirs = (await _create(mesh, "prod", organization_id="org-2")).workspace
    for call in (
        mesh.api.GetWorkspace(
            pb.GetWorkspaceRequest(organization_id=ORG, workspace_id=theirs.id), metadata=mesh.token()
        ),
        mesh.api.LookupWorkspace(
            pb.LookupWorkspaceRequest(organization_id=ORG, workspace_id=theirs.id), metadata=mesh.token()
        ),
        mesh.api.DeleteWorkspace(
            pb.DeleteWorkspaceRequest(organization_id=ORG, workspace_id=theirs.id), metadata=mesh.token()
        ),
        mesh.api.RotateWorkspaceCredential(
            pb.RotateWorkspaceCredentialRequest(organization_id=ORG, workspace_id=theirs.id),
            metadata=mesh.token(),
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    outsider = mesh.token("stranger")
    await expect_error(
        mesh.api.GetWorkspace(
            pb.GetWorkspaceRequest(organization_id="org-2", workspace_id=theirs.id), metadata=outsider
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        mesh.api.GetWorkspace(
            pb.GetWorkspaceRequest(organization_id="org-2", workspace_id="missing"), metadata=outsider
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        mesh.api.ListWorkspaces(pb.ListWorkspacesRequest(organization_id="org-2"), metadata=outsider),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_list_filters_orders_and_pages(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    await mesh.add_organization("org-2")
    for name in ("charlie", "alpha", "delta", "bravo"):
        created = await _create(mesh, name)
        mesh.clock.advance(seconds=1)
        if name in ("alpha", "delta"):
            await mesh.servers.RegisterWorkspaceServer(
                pb.RegisterWorkspaceServerRequest(
                    credential=created.credential, endpoint="h:1", server_version="2.0"
                )
            )
    await _create(mesh, "elsewhere", organization_id="org-2")
    names: list[str] = []
    token = ""
    while True:
        page = await mesh.api.ListWorkspaces(
            pb.ListWorkspacesRequest(
                organization_id=ORG, page_size=3, page_token=token, order_by="display_name"
            ),
            metadata=mesh.token(),
        )
        names.extend(workspace.display_name for workspace in page.workspaces)
        token = page.next_page_token
        if not token:
            break
    assert names == ["alpha", "bravo", "charlie", "delta"]
    by_time = await mesh.api.ListWorkspaces(
        pb.ListWorkspacesRequest(organization_id=ORG, order_by="create_time desc"), metadata=mesh.token()
    )
    assert [workspace.display_name for workspace in by_time.workspaces] == [
        "bravo",
        "delta",
        "alpha",
        "charlie",
    ]
    active = await mesh.api.ListWorkspaces(
        pb.ListWorkspacesRequest(organization_id=ORG, filter='state = ACTIVE AND server_version = "2.0"'),
        metadata=mesh.token(),
    )
    assert sorted(workspace.display_name for workspace in active.workspaces) == ["alpha", "delta"]
    bad = await expect_error(
        mesh.api.ListWorkspaces(
            pb.ListWorkspacesRequest(organization_id=ORG, filter="endpoint = 'h:1'"), metadata=mesh.token()
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(bad) == ["filter"]


async def test_update_applies_the_mask_and_refuses_a_stale_etag(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    workspace = (await _create(mesh, "prod", description="old")).workspace
    updated = await mesh.api.UpdateWorkspace(
        pb.UpdateWorkspaceRequest(
            workspace=pb.Workspace(
                id=workspace.id,
                organization_id=ORG,
                description="new",
                display_name="ignored",
                etag=workspace.etag,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=mesh.token(),
    )
    assert updated.description == "new"
    assert updated.display_name == "prod"
    assert updated.etag != workspace.etag
    stale = await expect_error(
        mesh.api.UpdateWorkspace(
            pb.UpdateWorkspaceRequest(
                workspace=pb.Workspace(
                    id=workspace.id, organization_id=ORG, description="x", etag=workspace.etag
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.ABORTED,
    )
    assert reason_of(stale) == "ETAG_MISMATCH"
    output_only = await expect_error(
        mesh.api.UpdateWorkspace(
            pb.UpdateWorkspaceRequest(
                workspace=pb.Workspace(id=workspace.id, organization_id=ORG),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(output_only) == ["update_mask"]
    bad_endpoint = await expect_error(
        mesh.api.UpdateWorkspace(
            pb.UpdateWorkspaceRequest(
                workspace=pb.Workspace(id=workspace.id, organization_id=ORG, endpoint="nope"),
                update_mask=field_mask_pb2.FieldMask(paths=["endpoint"]),
            ),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(bad_endpoint) == ["workspace.endpoint"]
    assert [event["action"] for event in await audit_events(mesh.store)] == [
        "orgs.workspace.create",
        "orgs.workspace.update",
    ]


async def test_delete_makes_it_deleting_revokes_the_credential_and_forgets_ownership(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    created = await _create(mesh, "prod")
    workspace = created.workspace
    await mesh.servers.RegisterWorkspaceServer(
        pb.RegisterWorkspaceServerRequest(credential=created.credential, endpoint="h:1", server_version="1.0")
    )
    await expect_error(
        mesh.api.DeleteWorkspace(
            pb.DeleteWorkspaceRequest(organization_id=ORG, workspace_id=workspace.id, etag=workspace.etag),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.ABORTED,  # registration changed the endpoint since this etag
    )
    deleted = await mesh.api.DeleteWorkspace(
        pb.DeleteWorkspaceRequest(organization_id=ORG, workspace_id=workspace.id), metadata=mesh.token()
    )
    assert deleted.state == pb.DELETING
    assert await mesh.owner_of(ORG, workspace.id) is None
    error = await expect_error(
        mesh.servers.SendHeartbeat(pb.SendHeartbeatRequest(credential=created.credential)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert created.credential not in (error.details() or "")
    location = await mesh.api.LookupWorkspace(
        pb.LookupWorkspaceRequest(organization_id=ORG, workspace_id=workspace.id), metadata=mesh.token()
    )
    assert location.state == pb.DELETING
    assert location.state_reason == "workspace is being deleted"
    await expect_error(
        mesh.api.RotateWorkspaceCredential(
            pb.RotateWorkspaceCredentialRequest(organization_id=ORG, workspace_id=workspace.id),
            metadata=mesh.token(),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await _create(mesh, "prod")  # the name is free again


async def test_rotation_replaces_the_credential_at_once(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    created = await _create(mesh, "prod")
    rotated = await mesh.api.RotateWorkspaceCredential(
        pb.RotateWorkspaceCredentialRequest(organization_id=ORG, workspace_id=created.workspace.id),
        metadata=mesh.token(),
    )
    assert rotated.credential != created.credential
    assert credentials.parse(rotated.credential) is not None
    old = await expect_error(
        mesh.servers.RegisterWorkspaceServer(
            pb.RegisterWorkspaceServerRequest(
                credential=created.credential, endpoint="h:1", server_version="1.0"
            )
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    garbage = await expect_error(
        mesh.servers.RegisterWorkspaceServer(
            pb.RegisterWorkspaceServerRequest(credential="garbage", endpoint="h:1", server_version="1.0")
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert old.details() == garbage.details()
    registered = await mesh.servers.RegisterWorkspaceServer(
        pb.RegisterWorkspaceServerRequest(credential=rotated.credential, endpoint="h:1", server_version="1.0")
    )
    assert registered.workspace.state == pb.ACTIVE
    actions = [event["action"] for event in await audit_events(mesh.store)]
    assert actions == ["orgs.workspace.create", "orgs.workspace.rotate_credential", "orgs.workspace.register"]


async def test_registry_health_over_grpc_follows_heartbeats_and_the_sweeper(mesh: Mesh) -> None:
    await mesh.add_organization(ORG)
    created = await _create(mesh, "prod")
    workspace_id = created.workspace.id
    lookup = pb.LookupWorkspaceRequest(organization_id=ORG, workspace_id=workspace_id)

    location = await mesh.api.LookupWorkspace(lookup, metadata=mesh.token())
    assert location.state == pb.PROVISIONING
    assert location.state_reason == "workspace server not registered yet"
    not_yet = await expect_error(
        mesh.servers.SendHeartbeat(pb.SendHeartbeatRequest(credential=created.credential)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(not_yet) == "WORKSPACE_SERVER_NOT_REGISTERED"

    registered = await mesh.servers.RegisterWorkspaceServer(
        pb.RegisterWorkspaceServerRequest(
            credential=created.credential, endpoint="https://ws.example.com", server_version="3.1.0"
        )
    )
    assert registered.heartbeat_interval.ToTimedelta().total_seconds() == 10
    assert registered.workspace.state == pb.ACTIVE
    location = await mesh.api.LookupWorkspace(lookup, metadata=mesh.token())
    assert (location.state, location.endpoint, location.server_version, location.state_reason) == (
        pb.ACTIVE,
        "https://ws.example.com",
        "3.1.0",
        "",
    )

    mesh.clock.advance(seconds=25)
    beat = await mesh.servers.SendHeartbeat(pb.SendHeartbeatRequest(credential=created.credential))
    assert beat.state == pb.ACTIVE
    assert beat.heartbeat_interval.ToTimedelta().total_seconds() == 10
    last_beat = mesh.clock.now()
    mesh.clock.advance(seconds=31)
    assert await mesh.sweeper.sweep_once() == 1
    location = await mesh.api.LookupWorkspace(lookup, metadata=mesh.token())
    assert location.state == pb.DEGRADED
    assert location.state_reason == f"no heartbeat since {last_beat.isoformat()}"
    workspace = await mesh.api.GetWorkspace(
        pb.GetWorkspaceRequest(organization_id=ORG, workspace_id=workspace_id), metadata=mesh.token()
    )
    assert workspace.last_heartbeat_time.ToDatetime().replace(tzinfo=last_beat.tzinfo) == last_beat

    beat = await mesh.servers.SendHeartbeat(pb.SendHeartbeatRequest(credential=created.credential))
    assert beat.state == pb.ACTIVE
    assert (await mesh.api.LookupWorkspace(lookup, metadata=mesh.token())).state == pb.ACTIVE
    bad = await expect_error(
        mesh.servers.RegisterWorkspaceServer(
            pb.RegisterWorkspaceServerRequest(credential=created.credential, endpoint="h", server_version="1")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(bad) == ["endpoint"]
