"""TeamService over a real authn + RBAC + orgs: teams, unique names, memberships mirrored into RBAC."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from keel.orgs.v1 import organizations_pb2 as pb
from keel.rbac.v1 import rbac_pb2
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.orgs.conftest import OrgsStack, User


async def _team(
    stack: OrgsStack, organization_id: str, name: str, caller: User, request_id: str = ""
) -> pb.Team:
    return await stack.teams.CreateTeam(
        pb.CreateTeamRequest(
            organization_id=organization_id, team=pb.Team(display_name=name), request_id=request_id
        ),
        metadata=caller.metadata,
    )


async def _team_may_read_members(stack: OrgsStack, organization_id: str, user: User) -> bool:
    """Whether RBAC grants `user` member.read through a team binding alone (the team holds a role)."""
    answer = await stack.rbac_permissions.Check(
        rbac_pb2.CheckRequest(
            principal=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=user.id),
            permission=rbac_pb2.Permission(resource_type="invitation", action="create"),
            resource=rbac_pb2.ResourceRef(organization_id=organization_id),
        ),
        metadata=user.metadata,
    )
    return bool(answer.allowed)


async def test_team_crud_with_unique_names_and_etags(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    core = await _team(orgs_stack, org.id, " Core ", owner)
    assert (core.display_name, core.member_count, core.organization_id) == ("Core", 0, org.id)
    await expect_error(_team(orgs_stack, org.id, "Core", owner), grpc.StatusCode.ALREADY_EXISTS)
    error = await expect_error(_team(orgs_stack, org.id, "", owner), grpc.StatusCode.INVALID_ARGUMENT)
    assert bad_fields(error) == ["team.display_name"]
    ops = await _team(orgs_stack, org.id, "Ops", owner)

    renamed = await orgs_stack.teams.UpdateTeam(
        pb.UpdateTeamRequest(
            team=pb.Team(id=core.id, organization_id=org.id, display_name="Platform", etag=core.etag)
        ),
        metadata=owner.metadata,
    )
    assert renamed.display_name == "Platform"
    assert renamed.etag != core.etag
    await expect_error(
        orgs_stack.teams.UpdateTeam(
            pb.UpdateTeamRequest(
                team=pb.Team(id=ops.id, organization_id=org.id, display_name="Platform"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    error = await expect_error(
        orgs_stack.teams.DeleteTeam(
            pb.DeleteTeamRequest(organization_id=org.id, team_id=core.id, etag=core.etag),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.ABORTED,
    )
    assert reason_of(error) == "ETAG_MISMATCH"
    listed = await orgs_stack.teams.ListTeams(
        pb.ListTeamsRequest(organization_id=org.id, order_by="display_name"), metadata=owner.metadata
    )
    assert [t.display_name for t in listed.teams] == ["Ops", "Platform"]
    await orgs_stack.teams.DeleteTeam(
        pb.DeleteTeamRequest(organization_id=org.id, team_id=core.id, etag=renamed.etag),
        metadata=owner.metadata,
    )
    await expect_error(
        orgs_stack.teams.GetTeam(
            pb.GetTeamRequest(organization_id=org.id, team_id=core.id), metadata=owner.metadata
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_a_retried_create_returns_the_first_team(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    first = await _team(orgs_stack, org.id, "Core", owner, request_id="team-1")
    again = await _team(orgs_stack, org.id, "Core", owner, request_id="team-1")
    assert again == first


async def test_team_memberships_are_mirrored_into_rbac(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)
    team = await _team(orgs_stack, org.id, "Recruiters", owner)
    await orgs_stack.rbac_bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=org.id,
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.TEAM, id=team.id),
                role_id="organization_manager",
                scope=rbac_pb2.ResourceRef(organization_id=org.id),
            ),
        ),
        metadata=owner.metadata,
    )
    assert not await _team_may_read_members(orgs_stack, org.id, member)

    added = await orgs_stack.teams.AddTeamMember(
        pb.AddTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
        metadata=owner.metadata,
    )
    assert (added.team_id, added.user_id) == (team.id, member.id)
    assert await _team_may_read_members(orgs_stack, org.id, member)
    await expect_error(
        orgs_stack.teams.AddTeamMember(
            pb.AddTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    listed = await orgs_stack.teams.ListTeamMembers(
        pb.ListTeamMembersRequest(organization_id=org.id, team_id=team.id), metadata=owner.metadata
    )
    assert [m.user_id for m in listed.members] == [member.id]

    await orgs_stack.teams.RemoveTeamMember(
        pb.RemoveTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
        metadata=owner.metadata,
    )
    assert not await _team_may_read_members(orgs_stack, org.id, member)
    await expect_error(
        orgs_stack.teams.RemoveTeamMember(
            pb.RemoveTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_deleting_a_team_removes_its_bindings_in_rbac(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    member = await orgs_stack.join(org.id, owner)
    team = await _team(orgs_stack, org.id, "Recruiters", owner)
    await orgs_stack.rbac_bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=org.id,
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.TEAM, id=team.id),
                role_id="organization_manager",
                scope=rbac_pb2.ResourceRef(organization_id=org.id),
            ),
        ),
        metadata=owner.metadata,
    )
    await orgs_stack.teams.AddTeamMember(
        pb.AddTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=member.id),
        metadata=owner.metadata,
    )

    await orgs_stack.teams.DeleteTeam(
        pb.DeleteTeamRequest(organization_id=org.id, team_id=team.id), metadata=owner.metadata
    )

    assert not await _team_may_read_members(orgs_stack, org.id, member)
    bindings = await orgs_stack.rbac_bindings.ListRoleBindings(
        rbac_pb2.ListRoleBindingsRequest(organization_id=org.id, filter=f'subject_id = "{team.id}"'),
        metadata=owner.metadata,
    )
    assert list(bindings.role_bindings) == []


async def test_only_organization_members_join_teams(orgs_stack: OrgsStack) -> None:
    owner, stranger = await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    team = await _team(orgs_stack, org.id, "Core", owner)
    error = await expect_error(
        orgs_stack.teams.AddTeamMember(
            pb.AddTeamMemberRequest(organization_id=org.id, team_id=team.id, user_id=stranger.id),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "NOT_A_MEMBER"


async def test_a_team_of_another_organization_is_not_found(orgs_stack: OrgsStack) -> None:
    alice, bob = await orgs_stack.user(), await orgs_stack.user()
    acme = await orgs_stack.organization(alice)
    other = await orgs_stack.organization(bob, "Other")
    team = await _team(orgs_stack, acme.id, "Core", alice)
    for call in (
        orgs_stack.teams.GetTeam(
            pb.GetTeamRequest(organization_id=other.id, team_id=team.id), metadata=bob.metadata
        ),
        orgs_stack.teams.DeleteTeam(
            pb.DeleteTeamRequest(organization_id=other.id, team_id=team.id), metadata=bob.metadata
        ),
        orgs_stack.teams.ListTeamMembers(
            pb.ListTeamMembersRequest(organization_id=other.id, team_id=team.id), metadata=bob.metadata
        ),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
