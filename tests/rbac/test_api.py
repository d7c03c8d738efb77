"""RBAC over gRPC on a real server: authorization of its own RPCs, checks, lookups, CRUD, bad input."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from keel.rbac.v1 import rbac_pb2
from services.rbac.evaluator import Ref
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.rbac.conftest import Server

ORG = "org-1"
ADMIN = "admin-1"
MEMBER = "member-1"
USER = rbac_pb2.Subject.USER


def user(subject_id: str) -> rbac_pb2.Subject:
    return rbac_pb2.Subject(kind=USER, id=subject_id)


def permission(resource_type: str, action: str) -> rbac_pb2.Permission:
    return rbac_pb2.Permission(resource_type=resource_type, action=action)


async def seed_admin_and_member(server: Server) -> None:
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    await administration.create_binding(ORG, ("user", MEMBER), "organization_member", Ref(ORG))


def check_request(subject: str, resource_type: str, action: str, **resource: str) -> rbac_pb2.CheckRequest:
    return rbac_pb2.CheckRequest(
        principal=user(subject),
        permission=permission(resource_type, action),
        resource=rbac_pb2.ResourceRef(organization_id=ORG, **resource),
    )


async def test_management_rpcs_need_a_token_and_the_role(server: Server) -> None:
    await seed_admin_and_member(server)
    request = rbac_pb2.CreateRoleRequest(
        organization_id=ORG,
        role=rbac_pb2.Role(
            display_name="Runners", level=rbac_pb2.PROJECT, permissions=[permission("run", "create")]
        ),
    )

    await expect_error(server.roles.CreateRole(request), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        server.roles.CreateRole(request, metadata=server.token(MEMBER)), grpc.StatusCode.PERMISSION_DENIED
    )
    other_org = rbac_pb2.CreateRoleRequest(organization_id="org-2", role=request.role)
    await expect_error(
        server.roles.CreateRole(other_org, metadata=server.token(ADMIN)), grpc.StatusCode.PERMISSION_DENIED
    )
    created = await server.roles.CreateRole(request, metadata=server.token(ADMIN))

    assert (created.display_name, created.level, created.etag) == ("Runners", rbac_pb2.PROJECT, '"1"')


async def test_a_caller_may_check_itself_but_not_others_without_role_binding_read(server: Server) -> None:
    await seed_admin_and_member(server)

    own = await server.permissions.Check(
        check_request(MEMBER, "workspace", "read", workspace_id="ws-1"), metadata=server.token(MEMBER)
    )
    await expect_error(
        server.permissions.Check(check_request(ADMIN, "workspace", "read"), metadata=server.token(MEMBER)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    about_member = await server.permissions.Check(
        check_request(MEMBER, "workspace", "delete"), metadata=server.token(ADMIN)
    )

    assert own.allowed
    assert own.revision > 0
    assert not about_member.allowed


async def test_check_after_a_binding_write_sees_it(server: Server) -> None:
    await seed_admin_and_member(server)
    before = await server.permissions.Check(
        check_request(MEMBER, "run", "create", workspace_id="ws-1", project_id="p-1"),
        metadata=server.token(MEMBER),
    )

    binding = await server.bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=ORG,
            role_binding=rbac_pb2.RoleBinding(
                subject=user(MEMBER),
                role_id="workspace_editor",
                scope=rbac_pb2.ResourceRef(workspace_id="ws-1"),
            ),
            request_id="bind-1",
        ),
        metadata=server.token(ADMIN),
    )
    request = check_request(MEMBER, "run", "create", workspace_id="ws-1", project_id="p-1")
    request.at_least_revision = binding.revision
    after = await server.permissions.Check(request, metadata=server.token(MEMBER))

    assert not before.allowed
    assert after.allowed
    assert after.revision >= binding.revision
    assert binding.level == rbac_pb2.WORKSPACE


async def test_create_role_binding_retry_with_the_same_request_id_returns_the_first(server: Server) -> None:
    await seed_admin_and_member(server)
    request = rbac_pb2.CreateRoleBindingRequest(
        organization_id=ORG,
        role_binding=rbac_pb2.RoleBinding(subject=user(MEMBER), role_id="organization_viewer"),
        request_id="same",
    )

    first = await server.bindings.CreateRoleBinding(request, metadata=server.token(ADMIN))
    second = await server.bindings.CreateRoleBinding(request, metadata=server.token(ADMIN))

    assert first.id == second.id


async def test_batch_check_answers_in_order_and_refuses_more_than_100(server: Server) -> None:
    await seed_admin_and_member(server)
    items = [
        rbac_pb2.BatchCheckItem(permission=permission("team", "read"), resource=rbac_pb2.ResourceRef()),
        rbac_pb2.BatchCheckItem(permission=permission("team", "delete"), resource=rbac_pb2.ResourceRef()),
    ]
    answered = await server.permissions.BatchCheck(
        rbac_pb2.BatchCheckRequest(principal=user(MEMBER), organization_id=ORG, items=items),
        metadata=server.token(MEMBER),
    )
    error = await expect_error(
        server.permissions.BatchCheck(
            rbac_pb2.BatchCheckRequest(principal=user(MEMBER), organization_id=ORG, items=items * 51),
            metadata=server.token(MEMBER),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert list(answered.allowed) == [True, False]
    assert bad_fields(error) == ["items"]


async def test_lookup_resources_all_versus_explicit_ids(server: Server) -> None:
    await seed_admin_and_member(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", MEMBER), "project_viewer", Ref(ORG, "ws-1", "p-1"))
    await administration.create_binding(ORG, ("user", MEMBER), "project_editor", Ref(ORG, "ws-1", "p-2"))
    creators = await administration.create_role(ORG, "Run creators", "", "project", [("run", "create")])
    await administration.create_binding(ORG, ("user", MEMBER), creators.record.id, Ref(ORG, "ws-1", "p-3"))
    ownerships = server.service.domain.ownerships
    await ownerships.record(("user", MEMBER), Ref(ORG, "ws-1", "p-2", "run", "r-7"))
    await ownerships.record(("user", MEMBER), Ref(ORG, "ws-1", "p-3", "run", "r-8"))

    def lookup(subject: str, workspace_id: str) -> rbac_pb2.LookupResourcesRequest:
        return rbac_pb2.LookupResourcesRequest(
            subject=user(subject),
            permission=permission("run", "read"),
            scope=rbac_pb2.ResourceRef(organization_id=ORG, workspace_id=workspace_id),
        )

    for_admin = await server.permissions.LookupResources(lookup(ADMIN, "ws-1"), metadata=server.token(ADMIN))
    for_member = await server.permissions.LookupResources(
        lookup(MEMBER, "ws-1"), metadata=server.token(MEMBER)
    )

    assert for_admin.all
    assert not for_member.all
    assert list(for_member.project_ids) == ["p-1", "p-2"]
    # Owned r-8 (in p-3, where the member may create runs but not read them); r-7 lies in p-2, named already.
    assert list(for_member.resource_ids) == ["r-8"]
    assert not for_member.resource_ids_truncated


async def test_list_effective_permissions_of_the_caller(server: Server) -> None:
    await seed_admin_and_member(server)

    response = await server.permissions.ListEffectivePermissions(
        rbac_pb2.ListEffectivePermissionsRequest(
            subject=user(MEMBER), scope=rbac_pb2.ResourceRef(organization_id=ORG)
        ),
        metadata=server.token(MEMBER),
    )

    assert [(p.resource_type, p.action) for p in response.permissions] == [
        ("member", "read"),
        ("organization", "read"),
        ("role", "read"),
        ("team", "read"),
        ("workspace", "read"),
    ]


async def test_record_ownership_of_own_creation(server: Server) -> None:
    await seed_admin_and_member(server)
    await server.service.domain.administration.create_binding(
        ORG, ("user", MEMBER), "workspace_editor", Ref(ORG, "ws-1")
    )
    resource = rbac_pb2.ResourceRef(
        organization_id=ORG,
        workspace_id="ws-1",
        project_id="p-1",
        resource_type="pipeline",
        resource_id="pl-1",
    )

    owned = await server.permissions.RecordOwnership(
        rbac_pb2.RecordOwnershipRequest(owner=user(MEMBER), resource=resource), metadata=server.token(MEMBER)
    )
    await expect_error(
        server.permissions.RecordOwnership(
            rbac_pb2.RecordOwnershipRequest(owner=user(ADMIN), resource=resource),
            metadata=server.token(MEMBER),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert (owned.role_id, owned.level) == ("owner", rbac_pb2.RESOURCE)


async def test_bad_input_is_invalid_argument_naming_the_field(server: Server) -> None:
    await seed_admin_and_member(server)
    unknown = await expect_error(
        server.permissions.Check(check_request(MEMBER, "run", "fly"), metadata=server.token(MEMBER)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    no_kind = await expect_error(
        server.bindings.CreateRoleBinding(
            rbac_pb2.CreateRoleBindingRequest(
                organization_id=ORG,
                role_binding=rbac_pb2.RoleBinding(
                    subject=rbac_pb2.Subject(id="x"), role_id="organization_viewer"
                ),
            ),
            metadata=server.token(ADMIN),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_mask = await expect_error(
        server.roles.UpdateRole(
            rbac_pb2.UpdateRoleRequest(
                role=rbac_pb2.Role(id="r", organization_id=ORG),
                update_mask=field_mask_pb2.FieldMask(paths=["level"]),
            ),
            metadata=server.token(ADMIN),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert bad_fields(unknown) == ["permission"]
    assert bad_fields(no_kind) == ["role_binding.subject.kind"]
    assert bad_fields(bad_mask) == ["update_mask"]


async def test_role_update_with_a_stale_etag_is_aborted_and_built_in_roles_are_readable(
    server: Server,
) -> None:
    await seed_admin_and_member(server)
    admin = server.token(ADMIN)
    created = await server.roles.CreateRole(
        rbac_pb2.CreateRoleRequest(
            organization_id=ORG, role=rbac_pb2.Role(display_name="Auditors", level=rbac_pb2.ORGANIZATION)
        ),
        metadata=admin,
    )
    created.description = "reads the audit log"
    updated = await server.roles.UpdateRole(
        rbac_pb2.UpdateRoleRequest(role=created, update_mask=field_mask_pb2.FieldMask(paths=["description"])),
        metadata=admin,
    )
    stale = await expect_error(
        server.roles.UpdateRole(
            rbac_pb2.UpdateRoleRequest(
                role=created, update_mask=field_mask_pb2.FieldMask(paths=["description"])
            ),
            metadata=admin,
        ),
        grpc.StatusCode.ABORTED,
    )
    built_in = await server.roles.GetRole(
        rbac_pb2.GetRoleRequest(organization_id=ORG, role_id="project_viewer"), metadata=server.token(MEMBER)
    )
    listed = await server.roles.ListRoles(rbac_pb2.ListRolesRequest(organization_id=ORG), metadata=admin)

    assert updated.description == "reads the audit log"
    assert reason_of(stale) == "ETAG_MISMATCH"
    assert built_in.built_in
    assert ("pipeline", "read") in [(p.resource_type, p.action) for p in built_in.permissions]
    assert [r.display_name for r in listed.roles] == ["Auditors"]


async def test_deleting_the_last_admin_binding_is_refused(server: Server) -> None:
    await seed_admin_and_member(server)
    admin = server.token(ADMIN)
    listed = await server.bindings.ListRoleBindings(
        rbac_pb2.ListRoleBindingsRequest(organization_id=ORG, filter='role_id = "organization_admin"'),
        metadata=admin,
    )

    error = await expect_error(
        server.bindings.DeleteRoleBinding(
            rbac_pb2.DeleteRoleBindingRequest(
                organization_id=ORG, role_binding_id=listed.role_bindings[0].id
            ),
            metadata=admin,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert len(listed.role_bindings) == 1
    assert reason_of(error) == "LAST_ADMIN"


async def test_team_membership_rpcs_change_checks(server: Server) -> None:
    await seed_admin_and_member(server)
    admin = server.token(ADMIN)
    await server.bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=ORG,
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.TEAM, id="team-1"),
                role_id="organization_viewer",
            ),
        ),
        metadata=admin,
    )
    added = await server.teams.AddTeamMember(
        rbac_pb2.AddTeamMemberRequest(organization_id=ORG, team_id="team-1", member=user(MEMBER)),
        metadata=admin,
    )
    request = check_request(MEMBER, "run", "read", workspace_id="ws-1")
    request.at_least_revision = added.revision
    allowed = await server.permissions.Check(request, metadata=server.token(MEMBER))
    removed = await server.teams.RemoveTeamMember(
        rbac_pb2.RemoveTeamMemberRequest(organization_id=ORG, team_id="team-1", member=user(MEMBER)),
        metadata=admin,
    )
    request.at_least_revision = removed.revision
    denied = await server.permissions.Check(request, metadata=server.token(MEMBER))

    assert allowed.allowed
    assert not denied.allowed


async def test_purge_subject_removes_bindings_and_memberships_but_not_the_last_admin(server: Server) -> None:
    await seed_admin_and_member(server)
    admin = server.token(ADMIN)
    await server.teams.AddTeamMember(
        rbac_pb2.AddTeamMemberRequest(organization_id=ORG, team_id="team-1", member=user(MEMBER)),
        metadata=admin,
    )

    purged = await server.bindings.PurgeSubject(
        rbac_pb2.PurgeSubjectRequest(organization_id=ORG, subject=user(MEMBER)), metadata=admin
    )
    last_admin = await expect_error(
        server.bindings.PurgeSubject(
            rbac_pb2.PurgeSubjectRequest(organization_id=ORG, subject=user(ADMIN)), metadata=admin
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    request = check_request(MEMBER, "organization", "read")
    request.at_least_revision = purged.revision
    after = await server.permissions.Check(request, metadata=admin)

    assert (purged.deleted_bindings, purged.deleted_memberships) == (1, 1)
    assert reason_of(last_admin) == "LAST_ADMIN"
    assert not after.allowed


async def test_forget_resource_needs_delete_on_it_and_drops_its_shares(server: Server) -> None:
    await seed_admin_and_member(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", MEMBER), "project_editor", Ref(ORG, "ws-1", "p-1"))
    run = Ref(ORG, "ws-1", "p-1", "run", "r-1")
    await server.service.domain.ownerships.record(("user", MEMBER), run)
    await administration.create_binding(ORG, ("user", "viewer-1"), "project_viewer", run)
    resource = rbac_pb2.ResourceRef(
        organization_id=ORG, workspace_id="ws-1", project_id="p-1", resource_type="run", resource_id="r-1"
    )

    await expect_error(
        server.permissions.ForgetResource(
            rbac_pb2.ForgetResourceRequest(resource=resource), metadata=server.token("viewer-1")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    forgotten = await server.permissions.ForgetResource(
        rbac_pb2.ForgetResourceRequest(resource=resource), metadata=server.token(MEMBER)
    )

    assert (forgotten.deleted_bindings, forgotten.deleted_ownerships) == (1, 1)
    decisions = server.service.domain.decisions
    assert not (await decisions.check(("user", "viewer-1"), ("run", "read"), run))[0]
    assert not (await decisions.check(("user", MEMBER), ("run", "share"), run))[0]  # no longer the owner


async def test_forgetting_a_workspace_drops_the_bindings_inside_it_and_no_others(server: Server) -> None:
    await seed_admin_and_member(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", MEMBER), "workspace_editor", Ref(ORG, "ws-1"))
    await administration.create_binding(ORG, ("user", MEMBER), "project_viewer", Ref(ORG, "ws-1", "p-1"))
    await administration.create_binding(ORG, ("user", MEMBER), "workspace_viewer", Ref(ORG, "ws-2"))
    workspace = rbac_pb2.ResourceRef(
        organization_id=ORG, workspace_id="ws-1", resource_type="workspace", resource_id="ws-1"
    )

    forgotten = await server.permissions.ForgetResource(
        rbac_pb2.ForgetResourceRequest(resource=workspace), metadata=server.token(ADMIN)
    )
    decisions = server.service.domain.decisions
    in_deleted, _ = await decisions.check(("user", MEMBER), ("run", "read"), Ref(ORG, "ws-1", "p-1"))
    in_other, _ = await decisions.check(("user", MEMBER), ("run", "read"), Ref(ORG, "ws-2", "p-9"))

    assert forgotten.deleted_bindings == 2
    assert (in_deleted, in_other) == (False, True)


async def test_share_resource_needs_share_and_never_grants_more_than_the_sharer_holds(server: Server) -> None:
    await seed_admin_and_member(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", MEMBER), "project_editor", Ref(ORG, "ws-1", "p-1"))
    await server.service.domain.ownerships.record(("user", MEMBER), Ref(ORG, "ws-1", "p-1", "run", "r-1"))
    chain = {"organization_id": ORG, "workspace_id": "ws-1", "project_id": "p-1", "resource_type": "run"}
    run = rbac_pb2.ResourceRef(resource_id="r-1", **chain)
    not_owned = rbac_pb2.ResourceRef(resource_id="r-2", **chain)
    sharer_role = await administration.create_role(
        ORG, "Run sharer", "", "project", [("run", "read"), ("run", "share")]
    )

    def share(resource: rbac_pb2.ResourceRef, to: str, role_id: str) -> rbac_pb2.ShareResourceRequest:
        return rbac_pb2.ShareResourceRequest(resource=resource, subject=user(to), role_id=role_id)

    # The owner shares; an editor holds no share on a run it does not own.
    shared = await server.permissions.ShareResource(
        share(run, "friend", sharer_role.record.id), metadata=server.token(MEMBER)
    )
    await expect_error(
        server.permissions.ShareResource(
            share(not_owned, "friend", "project_viewer"), metadata=server.token(MEMBER)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # The friend may re-share what it holds, never more.
    reshared = await server.permissions.ShareResource(
        share(run, "other", "project_viewer"), metadata=server.token("friend")
    )
    escalation = await expect_error(
        server.permissions.ShareResource(
            share(run, "other", "project_editor"), metadata=server.token("friend")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    readable = await server.permissions.Check(
        rbac_pb2.CheckRequest(
            principal=user("other"),
            permission=permission("run", "read"),
            resource=run,
            at_least_revision=reshared.revision,
        ),
        metadata=server.token("other"),
    )

    assert (shared.level, shared.role_id) == (rbac_pb2.RESOURCE, sharer_role.record.id)
    assert reason_of(escalation) == "ESCALATION"
    assert readable.allowed


async def test_a_manager_grants_what_it_holds_but_never_admin(server: Server) -> None:
    await seed_admin_and_member(server)
    await server.service.domain.administration.create_binding(
        ORG, ("user", "manager-1"), "organization_manager", Ref(ORG)
    )
    manager = server.token("manager-1")

    def create(role_id: str, scope: rbac_pb2.ResourceRef) -> rbac_pb2.CreateRoleBindingRequest:
        return rbac_pb2.CreateRoleBindingRequest(
            organization_id=ORG,
            role_binding=rbac_pb2.RoleBinding(subject=user(MEMBER), role_id=role_id, scope=scope),
        )

    granted = await server.bindings.CreateRoleBinding(
        create("workspace_admin", rbac_pb2.ResourceRef(workspace_id="ws-1")), metadata=manager
    )
    escalation = await expect_error(
        server.bindings.CreateRoleBinding(
            create("organization_admin", rbac_pb2.ResourceRef()), metadata=manager
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    admins = await server.bindings.ListRoleBindings(
        rbac_pb2.ListRoleBindingsRequest(organization_id=ORG, filter='role_id = "organization_admin"'),
        metadata=manager,
    )
    unseat = await expect_error(
        server.bindings.DeleteRoleBinding(
            rbac_pb2.DeleteRoleBindingRequest(
                organization_id=ORG, role_binding_id=admins.role_bindings[0].id
            ),
            metadata=manager,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    purge = await expect_error(
        server.bindings.PurgeSubject(
            rbac_pb2.PurgeSubjectRequest(organization_id=ORG, subject=user(ADMIN)), metadata=manager
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert granted.role_id == "workspace_admin"
    assert [reason_of(e) for e in (escalation, unseat, purge)] == ["ESCALATION"] * 3
