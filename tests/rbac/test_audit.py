"""RBAC's audit events: each write records one event with its organization in the write's transaction.

A refused or failed write records none, except that refusals (by the rule in
the interceptor, by the escalation guard) record a DENIED event. Real RBAC
servers on SQLite and PostgreSQL; events are read from RBAC's own outbox.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select

from keel.rbac.v1 import rbac_pb2
from services.kit.audit import SYSTEM, Actor, AuditEvent
from services.kit.errors import FailedPrecondition
from services.rbac.evaluator import Ref
from services.rbac.store import audit_outbox
from tests.authn.helpers import expect_error
from tests.rbac.conftest import Rbac, Server

ORG = "org-1"
ADMIN = "admin-1"
MEMBER = "member-1"


def user(subject_id: str) -> rbac_pb2.Subject:
    return rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=subject_id)


async def outbox_mark(server: Server) -> int:
    async with server.service.domain.engine.connect() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(audit_outbox.c.seq), 0)))).scalar_one())


async def events_since(server: Server, mark: int = 0) -> list[AuditEvent]:
    async with server.service.domain.engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(audit_outbox.c.payload).where(audit_outbox.c.seq > mark).order_by(audit_outbox.c.seq)
            )
        ).scalars()
        return [AuditEvent.from_record(json.loads(payload)) for payload in payloads]


def summary(event: AuditEvent) -> tuple[str, str, str, str, str]:
    return event.action, event.organization_id, event.resource_type, event.resource_id, event.outcome


async def seed(server: Server) -> None:
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    await administration.create_binding(ORG, ("user", MEMBER), "organization_member", Ref(ORG))


def admin(server: Server, request_id: str = "") -> tuple[tuple[str, str], ...]:
    extra = (("x-request-id", request_id),) if request_id else ()
    return (*extra, *server.token(ADMIN))


async def test_writes_outside_a_request_are_the_system_s(server: Server) -> None:
    await seed(server)

    bootstrap, member = await events_since(server)
    assert summary(bootstrap)[:3] == ("rbac.role_binding.create", ORG, "role_binding")
    assert bootstrap.actor == SYSTEM
    assert bootstrap.details == {
        "subject_kind": "user",
        "subject_id": ADMIN,
        "role_id": "organization_admin",
        "level": "organization",
    }
    assert member.details["role_id"] == "organization_member"


async def test_role_changes_record_one_event_each_with_organization_actor_and_request_id(
    server: Server,
) -> None:
    await seed(server)
    mark = await outbox_mark(server)

    role = await server.roles.CreateRole(
        rbac_pb2.CreateRoleRequest(
            organization_id=ORG,
            role=rbac_pb2.Role(
                display_name="Runners",
                level=rbac_pb2.PROJECT,
                permissions=[rbac_pb2.Permission(resource_type="run", action="create")],
            ),
        ),
        metadata=admin(server, "req-role-1"),
    )
    updated = await server.roles.UpdateRole(
        rbac_pb2.UpdateRoleRequest(
            role=rbac_pb2.Role(id=role.id, organization_id=ORG, display_name="Run starters", etag=role.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=admin(server),
    )
    await server.roles.DeleteRole(
        rbac_pb2.DeleteRoleRequest(organization_id=ORG, role_id=role.id, etag=updated.etag),
        metadata=admin(server),
    )

    create, update, delete = await events_since(server, mark)
    assert summary(create) == ("rbac.role.create", ORG, "role", role.id, "SUCCESS")
    assert create.actor == Actor(ADMIN, "user")
    assert create.request_id == "req-role-1"
    assert create.details == {"display_name": "Runners", "level": "project", "permissions": ["run.create"]}
    assert summary(update) == ("rbac.role.update", ORG, "role", role.id, "SUCCESS")
    assert update.details == {"fields": ["display_name"]}
    assert summary(delete) == ("rbac.role.delete", ORG, "role", role.id, "SUCCESS")


async def test_binding_changes_are_recorded_and_refused_ones_are_not(server: Server) -> None:
    await seed(server)
    mark = await outbox_mark(server)
    request = rbac_pb2.CreateRoleBindingRequest(
        organization_id=ORG,
        role_binding=rbac_pb2.RoleBinding(
            subject=user("dev-1"),
            role_id="workspace_editor",
            scope=rbac_pb2.ResourceRef(organization_id=ORG, workspace_id="ws-1"),
        ),
    )

    binding = await server.bindings.CreateRoleBinding(request, metadata=admin(server))
    await expect_error(
        server.bindings.CreateRoleBinding(request, metadata=admin(server)), grpc.StatusCode.ALREADY_EXISTS
    )
    admin_binding = (await events_since(server))[0].resource_id
    await expect_error(
        server.bindings.DeleteRoleBinding(
            rbac_pb2.DeleteRoleBindingRequest(organization_id=ORG, role_binding_id=admin_binding),
            metadata=admin(server),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await server.bindings.DeleteRoleBinding(
        rbac_pb2.DeleteRoleBindingRequest(organization_id=ORG, role_binding_id=binding.id),
        metadata=admin(server),
    )

    create, delete = await events_since(server, mark)
    assert summary(create) == ("rbac.role_binding.create", ORG, "role_binding", binding.id, "SUCCESS")
    assert create.details == {
        "subject_kind": "user",
        "subject_id": "dev-1",
        "role_id": "workspace_editor",
        "level": "workspace",
        "workspace_id": "ws-1",
    }
    assert summary(delete) == ("rbac.role_binding.delete", ORG, "role_binding", binding.id, "SUCCESS")


async def test_team_memberships_ownership_shares_forgets_and_purges_are_recorded(server: Server) -> None:
    await seed(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", MEMBER), "project_editor", Ref(ORG, "ws-1", "p-1"))
    mark = await outbox_mark(server)
    add = rbac_pb2.AddTeamMemberRequest(organization_id=ORG, team_id="team-1", member=user(MEMBER))
    run = rbac_pb2.ResourceRef(
        organization_id=ORG, workspace_id="ws-1", project_id="p-1", resource_type="run", resource_id="r-1"
    )

    await server.teams.AddTeamMember(add, metadata=admin(server))
    await server.teams.AddTeamMember(add, metadata=admin(server))  # no change: no event
    owned = await server.permissions.RecordOwnership(
        rbac_pb2.RecordOwnershipRequest(owner=user(MEMBER), resource=run), metadata=server.token(MEMBER)
    )
    shared = await server.permissions.ShareResource(
        rbac_pb2.ShareResourceRequest(resource=run, subject=user("friend"), role_id="project_viewer"),
        metadata=server.token(MEMBER),
    )
    await server.permissions.ForgetResource(
        rbac_pb2.ForgetResourceRequest(resource=run), metadata=server.token(MEMBER)
    )
    await server.teams.RemoveTeamMember(
        rbac_pb2.RemoveTeamMemberRequest(organization_id=ORG, team_id="team-1", member=user(MEMBER)),
        metadata=admin(server),
    )
    await server.bindings.PurgeSubject(
        rbac_pb2.PurgeSubjectRequest(organization_id=ORG, subject=user(MEMBER)), metadata=admin(server)
    )

    events = await events_since(server, mark)
    assert [summary(e)[:4] for e in events] == [
        ("rbac.team_member.add", ORG, "team", "team-1"),
        ("rbac.ownership.record", ORG, "run", "r-1"),
        ("rbac.resource.share", ORG, "role_binding", shared.id),
        ("rbac.resource.forget", ORG, "run", "r-1"),
        ("rbac.team_member.remove", ORG, "team", "team-1"),
        ("rbac.subject.purge", ORG, "user", MEMBER),
    ]
    assert events[0].details == {"member_kind": "user", "member_id": MEMBER}
    assert events[1].actor == Actor(MEMBER, "user")
    assert events[1].details == {
        "owner_kind": "user",
        "owner_id": MEMBER,
        "ownership_id": owned.id,
        "workspace_id": "ws-1",
        "project_id": "p-1",
    }
    assert events[3].details == {
        "deleted_bindings": 1,
        "deleted_ownerships": 1,
        "workspace_id": "ws-1",
        "project_id": "p-1",
    }
    assert events[5].details == {"deleted_bindings": 2, "deleted_memberships": 0, "deleted_ownerships": 0}


async def test_a_rule_denial_records_a_denied_event_with_the_request_id(server: Server) -> None:
    await seed(server)
    mark = await outbox_mark(server)

    await expect_error(
        server.roles.CreateRole(
            rbac_pb2.CreateRoleRequest(organization_id=ORG, role=rbac_pb2.Role(display_name="x")),
            metadata=(("x-request-id", "req-denied-7"), *server.token(MEMBER)),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    [denied] = await events_since(server, mark)
    assert summary(denied) == ("/keel.rbac.v1.RoleService/CreateRole", ORG, "role", "", "DENIED")
    assert denied.actor == Actor(MEMBER, "user")
    assert denied.request_id == "req-denied-7"
    assert denied.source_address.startswith("ipv4:127.0.0.1:")
    assert denied.details == {"permission": "role.create"}


async def test_an_escalation_refusal_records_a_denied_event_and_no_binding_event(server: Server) -> None:
    await seed(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", "manager-1"), "organization_manager", Ref(ORG))
    mark = await outbox_mark(server)

    await expect_error(
        server.bindings.CreateRoleBinding(
            rbac_pb2.CreateRoleBindingRequest(
                organization_id=ORG,
                role_binding=rbac_pb2.RoleBinding(
                    subject=user("dev-2"),
                    role_id="organization_admin",
                    scope=rbac_pb2.ResourceRef(organization_id=ORG),
                ),
            ),
            metadata=(("x-request-id", "req-escalate"), *server.token("manager-1")),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    [denied] = await events_since(server, mark)
    assert summary(denied) == ("rbac.role_binding.create", ORG, "organization", ORG, "DENIED")
    assert denied.actor == Actor("manager-1", "user")
    assert denied.request_id == "req-escalate"
    assert denied.details == {"reason": "ESCALATION", "role_id": "organization_admin"}


async def test_caller_text_shaped_like_a_credential_is_redacted_not_refused(server: Server) -> None:
    await seed(server)
    mark = await outbox_mark(server)
    sneaky = "Bearer abcdefghijklmnopqrstuvwxyz0123"

    await server.teams.AddTeamMember(
        rbac_pb2.AddTeamMemberRequest(organization_id=ORG, team_id="team-2", member=user(sneaky)),
        metadata=admin(server),
    )

    [event] = await events_since(server, mark)
    assert event.details == {"member_kind": "user", "member_id": "[redacted]"}


@pytest.mark.parametrize("failing", [True, False])
async def test_the_event_exists_iff_the_write_committed(rbac: Rbac, failing: bool) -> None:
    calls: list[int] = []
    rbac.store.audit_recorded = lambda: calls.append(1)
    role = await rbac.administration.create_role(ORG, "Viewers", "", "organization", [("run", "read")])
    await rbac.administration.create_binding(ORG, ("user", "u-1"), role.record.id, Ref(ORG))
    if failing:
        # Still bound: the delete is refused inside its transaction, which rolls back.
        with pytest.raises(FailedPrecondition, match="still bound"):
            await rbac.administration.delete_role(ORG, role.record.id, "")
    else:
        await rbac.administration.purge_subject(ORG, ("user", "u-1"))
        await rbac.administration.delete_role(ORG, role.record.id, "")

    async with rbac.store.engine.connect() as conn:
        actions = list(
            (await conn.execute(select(audit_outbox.c.payload).order_by(audit_outbox.c.seq))).scalars()
        )
    recorded = [json.loads(payload)["action"] for payload in actions]
    if failing:
        assert recorded == ["rbac.role.create", "rbac.role_binding.create"]
        assert calls == [1, 1]
    else:
        assert recorded == [
            "rbac.role.create",
            "rbac.role_binding.create",
            "rbac.subject.purge",
            "rbac.role.delete",
        ]
        assert calls == [1, 1, 1, 1]
