"""MemberService members over a real stack: read, list, change role, remove, leave, last admin."""

from __future__ import annotations

import asyncio

import grpc

from keel.orgs.v1 import organizations_pb2 as pb
from keel.rbac.v1 import rbac_pb2
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.orgs.conftest import OrgsStack, User


async def _role(stack: OrgsStack, organization_id: str, user: User, caller: User) -> str:
    member = await stack.members.GetMember(
        pb.GetMemberRequest(organization_id=organization_id, user_id=user.id), metadata=caller.metadata
    )
    return member.role_id


async def _rbac_roles(stack: OrgsStack, organization_id: str, user: User, caller: User) -> list[str]:
    listed = await stack.rbac_bindings.ListRoleBindings(
        rbac_pb2.ListRoleBindingsRequest(organization_id=organization_id, filter=f'subject_id = "{user.id}"'),
        metadata=caller.metadata,
    )
    return sorted(binding.role_id for binding in listed.role_bindings)


async def _set_role(stack: OrgsStack, organization_id: str, user: User, role: str, caller: User) -> pb.Member:
    return await stack.members.UpdateMember(
        pb.UpdateMemberRequest(
            member=pb.Member(organization_id=organization_id, user_id=user.id, role_id=role)
        ),
        metadata=caller.metadata,
    )


async def test_members_are_listed_with_filters_and_pages(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user("owner@example.test")
    org = await orgs_stack.organization(owner)
    orgs_stack.clock.advance(seconds=1)
    viewer = await orgs_stack.join(org.id, owner, "organization_viewer")
    orgs_stack.clock.advance(seconds=1)
    member = await orgs_stack.join(org.id, owner)

    first = await orgs_stack.members.ListMembers(
        pb.ListMembersRequest(organization_id=org.id, page_size=2), metadata=member.metadata
    )
    rest = await orgs_stack.members.ListMembers(
        pb.ListMembersRequest(organization_id=org.id, page_size=2, page_token=first.next_page_token),
        metadata=member.metadata,
    )
    assert [m.user_id for m in [*first.members, *rest.members]] == [owner.id, viewer.id, member.id]
    viewers = await orgs_stack.members.ListMembers(
        pb.ListMembersRequest(organization_id=org.id, filter='role_id = "organization_viewer"'),
        metadata=member.metadata,
    )
    assert [m.email for m in viewers.members] == [viewer.email]
    error = await expect_error(
        orgs_stack.members.ListMembers(
            pb.ListMembersRequest(organization_id=org.id, order_by="binding_id"), metadata=member.metadata
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["order_by"]


async def test_a_non_member_asking_about_themselves_finds_nothing(orgs_stack: OrgsStack) -> None:
    owner, stranger = await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    await expect_error(
        orgs_stack.members.GetMember(
            pb.GetMemberRequest(organization_id=org.id, user_id="me"), metadata=stranger.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_error(
        orgs_stack.members.ListMembers(
            pb.ListMembersRequest(organization_id=org.id), metadata=stranger.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_role_change_moves_the_rbac_binding(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)

    updated = await _set_role(orgs_stack, org.id, member, "organization_manager", owner)

    assert updated.role_id == "organization_manager"
    assert await _rbac_roles(orgs_stack, org.id, member, owner) == ["organization_manager"]
    # The new role is effective for the member at once: a manager may invite.
    await orgs_stack.members.CreateInvitation(
        pb.CreateInvitationRequest(organization_id=org.id, invitation=pb.Invitation(email="x@example.test")),
        metadata=member.metadata,
    )
    error = await expect_error(
        _set_role(orgs_stack, org.id, member, "superuser", owner), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_fields(error) == ["member.role_id"]
    error = await expect_error(
        orgs_stack.members.UpdateMember(
            pb.UpdateMemberRequest(
                member=pb.Member(
                    organization_id=org.id, user_id=member.id, role_id="organization_viewer", etag='"1"'
                )
            ),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert reason_of(error) == "ETAG_MISMATCH"


async def test_a_manager_cannot_make_or_unmake_admins(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    manager = await orgs_stack.join(org.id, owner, "organization_manager")
    member = await orgs_stack.join(org.id, owner)

    for target, role in ((member, "organization_admin"), (owner, "organization_member")):
        error = await expect_error(
            _set_role(orgs_stack, org.id, target, role, manager), grpc.StatusCode.PERMISSION_DENIED
        )
        assert reason_of(error) == "ESCALATION"
    assert await _rbac_roles(orgs_stack, org.id, member, owner) == ["organization_member"]
    assert await _role(orgs_stack, org.id, owner, owner) == "organization_admin"
    # Within the manager's reach, it works.
    await _set_role(orgs_stack, org.id, member, "organization_viewer", manager)
    assert await _rbac_roles(orgs_stack, org.id, member, owner) == ["organization_viewer"]


async def test_the_last_admin_cannot_be_demoted_or_removed_or_leave(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    for call in (
        _set_role(orgs_stack, org.id, owner, "organization_member", owner),
        orgs_stack.members.RemoveMember(
            pb.RemoveMemberRequest(organization_id=org.id, user_id=owner.id), metadata=owner.metadata
        ),
        orgs_stack.members.RemoveMember(
            pb.RemoveMemberRequest(organization_id=org.id, user_id="me"), metadata=owner.metadata
        ),
    ):
        error = await expect_error(call, grpc.StatusCode.FAILED_PRECONDITION)
        assert reason_of(error) == "LAST_ADMIN"
    assert await _rbac_roles(orgs_stack, org.id, owner, owner) == ["organization_admin"]


async def test_concurrent_demotions_of_the_last_two_admins_leave_one_admin(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    second = await orgs_stack.join(org.id, owner, "organization_admin")

    results = await asyncio.gather(
        _set_role(orgs_stack, org.id, owner, "organization_member", owner),
        _set_role(orgs_stack, org.id, second, "organization_member", second),
        return_exceptions=True,
    )

    failures = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(failures) == 1, results
    assert failures[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    listed = await orgs_stack.members.ListMembers(
        pb.ListMembersRequest(organization_id=org.id, filter='role_id = "organization_admin"'),
        metadata=second.metadata,
    )
    assert len(listed.members) == 1
    survivor = owner if listed.members[0].user_id == owner.id else second
    assert await _rbac_roles(orgs_stack, org.id, survivor, survivor) == ["organization_admin"]


async def test_removing_a_member_drops_their_bindings_and_team_memberships(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)
    team = await orgs_stack.teams.CreateTeam(
        pb.CreateTeamRequest(organization_id=org.id, team=pb.Team(display_name="Core")),
        metadata=owner.metadata,
    )
    await orgs_stack.teams.AddTeamMember(
        pb.AddTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
        metadata=owner.metadata,
    )

    await orgs_stack.members.RemoveMember(
        pb.RemoveMemberRequest(organization_id=org.id, user_id=member.id), metadata=owner.metadata
    )

    assert await _rbac_roles(orgs_stack, org.id, member, owner) == []
    fetched = await orgs_stack.teams.GetTeam(
        pb.GetTeamRequest(organization_id=org.id, team_id=team.id), metadata=owner.metadata
    )
    assert fetched.member_count == 0
    await expect_error(
        orgs_stack.organizations.GetOrganization(
            pb.GetOrganizationRequest(organization_id=org.id), metadata=member.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        orgs_stack.members.RemoveMember(
            pb.RemoveMemberRequest(organization_id=org.id, user_id=member.id), metadata=owner.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_member_may_leave_without_any_permission(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)

    await orgs_stack.members.RemoveMember(
        pb.RemoveMemberRequest(organization_id=org.id, user_id="me"), metadata=member.metadata
    )

    assert await _rbac_roles(orgs_stack, org.id, member, owner) == []
    listed = await orgs_stack.organizations.ListOrganizations(
        pb.ListOrganizationsRequest(), metadata=member.metadata
    )
    assert list(listed.organizations) == []


async def test_a_member_cannot_remove_another(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)
    await expect_error(
        orgs_stack.members.RemoveMember(
            pb.RemoveMemberRequest(organization_id=org.id, user_id=owner.id), metadata=member.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
