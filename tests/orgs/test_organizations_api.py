"""OrganizationService over a real authn + RBAC + orgs: create, read, list, rename, delete."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from keel.orgs.v1 import organizations_pb2 as pb
from keel.rbac.v1 import rbac_pb2
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.orgs.conftest import OrgsStack

T = TypeVar("T")


async def test_creator_becomes_the_admin_member_and_can_read_the_organization(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner, "  Acme  ")

    assert created.display_name == "Acme"
    assert created.state == pb.Organization.ACTIVE
    fetched = await orgs_stack.organizations.GetOrganization(
        pb.GetOrganizationRequest(organization_id=created.id), metadata=owner.metadata
    )
    assert fetched == created
    me = await orgs_stack.members.GetMember(
        pb.GetMemberRequest(organization_id=created.id, user_id="me"), metadata=owner.metadata
    )
    assert (me.user_id, me.email, me.role_id) == (owner.id, owner.email, "organization_admin")
    check = await orgs_stack.rbac_permissions.Check(
        rbac_pb2.CheckRequest(
            principal=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=owner.id),
            permission=rbac_pb2.Permission(resource_type="organization", action="delete"),
            resource=rbac_pb2.ResourceRef(organization_id=created.id),
        ),
        metadata=owner.metadata,
    )
    assert check.allowed


async def test_only_users_create_organizations_and_names_are_validated(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    for name in ("", "   ", "x" * 101):
        error = await expect_error(
            orgs_stack.organizations.CreateOrganization(
                pb.CreateOrganizationRequest(organization=pb.Organization(display_name=name)),
                metadata=owner.metadata,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        assert bad_fields(error) == ["organization.display_name"]
    mesh_token = await orgs_stack.orgs.domain.credential.token()  # type: ignore[union-attr]
    error = await expect_error(
        orgs_stack.organizations.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(display_name="Bots Inc")),
            metadata=(("authorization", f"Bearer {mesh_token}"),),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert reason_of(error) == "USERS_ONLY"
    await expect_error(
        orgs_stack.organizations.CreateOrganization(
            pb.CreateOrganizationRequest(organization=pb.Organization(display_name="Anon"))
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_create_with_a_request_id_is_idempotent(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    request = pb.CreateOrganizationRequest(
        organization=pb.Organization(display_name="Acme"), request_id="3f1c8e9a-0000-4000-8000-000000000001"
    )
    first = await orgs_stack.organizations.CreateOrganization(request, metadata=owner.metadata)
    again = await orgs_stack.organizations.CreateOrganization(request, metadata=owner.metadata)
    assert again == first
    listed = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(), metadata=owner.metadata
    )
    assert [o.id for o in listed.organizations] == [first.id]
    error = await expect_error(
        orgs_stack.organizations.CreateOrganization(
            pb.CreateOrganizationRequest(
                organization=pb.Organization(display_name="A"), request_id="bad id!"
            ),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["request_id"]


async def test_list_shows_only_the_callers_organizations(orgs_stack: OrgsStack) -> None:
    alice, bob = await orgs_stack.user(), await orgs_stack.user()
    a1 = await orgs_stack.organization(alice, "Alpha")
    a2 = await orgs_stack.organization(alice, "Beta")
    b1 = await orgs_stack.organization(bob, "Gamma")

    first = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(page_size=1, order_by="display_name desc"), metadata=alice.metadata
    )
    second = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(
            page_size=1, order_by="display_name desc", page_token=first.next_page_token
        ),
        metadata=alice.metadata,
    )
    assert [o.id for o in first.organizations] == [a2.id]
    assert [o.id for o in second.organizations] == [a1.id]
    assert second.next_page_token == ""
    filtered = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(filter='display_name = "Gamma"'), metadata=bob.metadata
    )
    assert [o.id for o in filtered.organizations] == [b1.id]


async def test_another_organization_is_denied_like_a_missing_one(orgs_stack: OrgsStack) -> None:
    alice, mallory = await orgs_stack.user(), await orgs_stack.user()
    acme = await orgs_stack.organization(alice)
    await orgs_stack.organization(mallory, "Evil")
    existing = await expect_error(
        orgs_stack.organizations.GetOrganization(
            pb.GetOrganizationRequest(organization_id=acme.id), metadata=mallory.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    missing = await expect_error(
        orgs_stack.organizations.GetOrganization(
            pb.GetOrganizationRequest(organization_id="00000000-0000-4000-8000-000000000000"),
            metadata=mallory.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert existing.details() == missing.details()


async def test_rename_honours_the_mask_and_the_etag(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner, "Acme")
    renamed = await orgs_stack.organizations.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=pb.Organization(
                id=created.id, display_name="Acme Corp", description="ignored", etag=created.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=owner.metadata,
    )
    assert (renamed.display_name, renamed.description) == ("Acme Corp", "")
    assert renamed.etag != created.etag
    error = await expect_error(
        orgs_stack.organizations.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=pb.Organization(id=created.id, display_name="Stale", etag=created.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert reason_of(error) == "ETAG_MISMATCH"
    error = await expect_error(
        orgs_stack.organizations.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=pb.Organization(id=created.id, display_name="X"),
                update_mask=field_mask_pb2.FieldMask(paths=["state"]),
            ),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["update_mask"]


async def test_a_member_without_update_permission_cannot_rename(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner)
    viewer = await orgs_stack.join(created.id, owner, "organization_viewer")
    await expect_error(
        orgs_stack.organizations.UpdateOrganization(
            pb.UpdateOrganizationRequest(organization=pb.Organization(id=created.id, display_name="Mine")),
            metadata=viewer.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_delete_removes_the_organization_its_members_and_its_rbac_state(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner)
    member = await orgs_stack.join(created.id, owner)
    team = await orgs_stack.teams.CreateTeam(
        pb.CreateTeamRequest(organization_id=created.id, team=pb.Team(display_name="Core")),
        metadata=owner.metadata,
    )
    await orgs_stack.teams.AddTeamMember(
        pb.AddTeamMemberRequest(organization_id=created.id, team_id=team.id, user_id=member.id),
        metadata=owner.metadata,
    )
    await expect_error(
        orgs_stack.organizations.DeleteOrganization(
            pb.DeleteOrganizationRequest(organization_id=created.id, etag='"99"'), metadata=owner.metadata
        ),
        grpc.StatusCode.ABORTED,
    )
    response = await orgs_stack.organizations.DeleteOrganization(
        pb.DeleteOrganizationRequest(organization_id=created.id, etag=created.etag), metadata=owner.metadata
    )
    assert response.deleted_workspaces == 0

    from services.orgs.store import members, organizations, team_members, teams

    async with orgs_stack.orgs.domain.engine.connect() as conn:
        for table in (organizations, members, teams, team_members):
            assert (await conn.execute(select(table))).first() is None
    listed = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(), metadata=owner.metadata
    )
    assert list(listed.organizations) == []
    # RBAC no longer knows the organization: the former admin is denied, like anyone.
    await expect_error(
        orgs_stack.organizations.GetOrganization(
            pb.GetOrganizationRequest(organization_id=created.id), metadata=owner.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def _add_workspace(stack: OrgsStack, organization_id: str, name: str) -> None:
    from services.orgs.workspace_store import ACTIVE, WorkspaceRecord, insert_workspace

    now = stack.clock.now()
    record = WorkspaceRecord(
        f"ws-{name}", organization_id, name, "", "", ACTIVE, "", None, None, now, now, None, 1
    )
    async with stack.orgs.domain.deps.store.transaction() as tx:
        await insert_workspace(tx.conn, record, "00" * 32)


async def test_delete_is_refused_while_workspaces_remain_unless_forced(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner)
    await _add_workspace(orgs_stack, created.id, "prod")
    await _add_workspace(orgs_stack, created.id, "dev")

    error = await expect_error(
        orgs_stack.organizations.DeleteOrganization(
            pb.DeleteOrganizationRequest(organization_id=created.id), metadata=owner.metadata
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "WORKSPACES_REMAIN"
    unchanged = await orgs_stack.organizations.GetOrganization(
        pb.GetOrganizationRequest(organization_id=created.id), metadata=owner.metadata
    )
    assert unchanged.state == pb.Organization.ACTIVE
    response = await orgs_stack.organizations.DeleteOrganization(
        pb.DeleteOrganizationRequest(organization_id=created.id, force=True), metadata=owner.metadata
    )
    assert response.deleted_workspaces == 2

    from services.orgs.workspace_store import workspaces

    async with orgs_stack.orgs.domain.engine.connect() as conn:
        states = (await conn.execute(select(workspaces.c.state, workspaces.c.credential_hash))).all()
    # The workspaces are left DELETING, credentials revoked, for the workspace sweeper to purge.
    assert sorted(states) == [("deleting", None), ("deleting", None)]


async def _once_rbac_answers(call: Callable[[], Awaitable[T]]) -> T:
    """The call's result, retried while UNAVAILABLE (orgs' channel reconnecting to a restarted RBAC)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or loop.time() > deadline:
                raise
        await asyncio.sleep(0.05)


async def test_a_delete_interrupted_by_an_rbac_outage_is_finished_by_a_retry(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner)
    member = await orgs_stack.join(created.id, owner)
    read = pb.GetOrganizationRequest(organization_id=created.id)
    delete = pb.DeleteOrganizationRequest(organization_id=created.id)
    # Warm orgs' permission cache (answers live up to 4 s) so calls pass authorization during the outage.
    await orgs_stack.organizations.GetOrganization(read, metadata=owner.metadata)
    await expect_error(
        orgs_stack.organizations.DeleteOrganization(
            pb.DeleteOrganizationRequest(organization_id=created.id, etag='"99"'), metadata=owner.metadata
        ),
        grpc.StatusCode.ABORTED,
    )

    await orgs_stack.stop_rbac()
    await expect_error(
        orgs_stack.organizations.DeleteOrganization(delete, metadata=owner.metadata),
        grpc.StatusCode.UNAVAILABLE,
    )
    halfway = await orgs_stack.organizations.GetOrganization(read, metadata=owner.metadata)
    assert halfway.state == pb.Organization.DELETING
    await orgs_stack.start_rbac()
    # Members are gone from orgs already (RBAC keeps the bindings until the purge): changes are refused.
    error = await expect_error(
        _once_rbac_answers(
            lambda: orgs_stack.organizations.UpdateOrganization(
                pb.UpdateOrganizationRequest(
                    organization=pb.Organization(id=created.id, display_name="Back")
                ),
                metadata=owner.metadata,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "ORGANIZATION_DELETING"

    await _once_rbac_answers(
        lambda: orgs_stack.organizations.DeleteOrganization(delete, metadata=owner.metadata)
    )

    for user in (owner, member):
        await expect_error(
            orgs_stack.organizations.GetOrganization(read, metadata=user.metadata),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    async with orgs_stack.orgs.domain.engine.connect() as conn:
        from services.orgs.store import organizations

        assert (await conn.execute(select(organizations))).first() is None


async def test_every_change_leaves_its_audit_event(orgs_stack: OrgsStack) -> None:
    from services.orgs.store import OUTBOX

    owner = await orgs_stack.user()
    created = await orgs_stack.organization(owner)
    member = await orgs_stack.join(created.id, owner)
    await orgs_stack.organizations.UpdateOrganization(
        pb.UpdateOrganizationRequest(organization=pb.Organization(id=created.id, display_name="Renamed")),
        metadata=owner.metadata,
    )
    await orgs_stack.members.UpdateMember(
        pb.UpdateMemberRequest(
            member=pb.Member(organization_id=created.id, user_id=member.id, role_id="organization_viewer")
        ),
        metadata=owner.metadata,
    )
    await orgs_stack.members.RemoveMember(
        pb.RemoveMemberRequest(organization_id=created.id, user_id=member.id), metadata=owner.metadata
    )
    await orgs_stack.organizations.DeleteOrganization(
        pb.DeleteOrganizationRequest(organization_id=created.id), metadata=owner.metadata
    )

    import json

    async with orgs_stack.orgs.domain.engine.connect() as conn:
        payloads = (await conn.execute(select(OUTBOX.c.payload).order_by(OUTBOX.c.seq))).scalars().all()
    events = [json.loads(payload) for payload in payloads]
    assert [e["action"] for e in events] == [
        "orgs.organization.create",
        "orgs.invitation.create",
        "orgs.invitation.accept",
        "orgs.organization.update",
        "orgs.member.update",
        "orgs.member.remove",
        "orgs.organization.delete",
    ]
    assert {e["organization_id"] for e in events} == {created.id}
    assert events[0]["actor"] == {"subject": owner.id, "kind": "user"}
    assert events[2]["actor"] == {"subject": member.id, "kind": "user"}
    assert all(e["request_id"] for e in events)
