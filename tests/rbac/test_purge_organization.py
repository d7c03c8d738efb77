"""PurgeOrganization: all RBAC holds for a deleted organization goes in one transaction, nothing else."""

from __future__ import annotations

import json

import grpc
from sqlalchemy import func, select

from keel.rbac.v1 import rbac_pb2
from services.kit.audit import Actor, AuditEvent
from services.rbac.administration import Administration
from services.rbac.evaluator import Ref
from services.rbac.store import audit_outbox, role_bindings, roles, team_members
from tests.authn.helpers import expect_error
from tests.rbac.conftest import Rbac, Server

ORG = "org-gone"
OTHER = "org-kept"


async def seed(rbac_admin: Administration, organization_id: str) -> None:
    await rbac_admin.bootstrap_organization_admin(organization_id, "admin-1")
    role = await rbac_admin.create_role(organization_id, "Run viewers", "", "project", [("run", "read")])
    team = f"team-of-{organization_id}"  # team ids are unique across organizations (orgs mints them)
    scope = Ref(organization_id, "ws-1", "p-1")
    await rbac_admin.create_binding(organization_id, ("team", team), role.record.id, scope)
    await rbac_admin.add_team_member(organization_id, team, ("user", "u-1"))
    await rbac_admin.add_team_member(organization_id, team, ("service_account", "sa-1"))


async def rows(rbac: Rbac, organization_id: str) -> tuple[int, int, int]:
    async with rbac.store.engine.connect() as conn:
        counts = []
        for table in (role_bindings, roles, team_members):
            statement = (
                select(func.count()).select_from(table).where(table.c.organization_id == organization_id)
            )
            counts.append(int((await conn.execute(statement)).scalar_one()))
    return counts[0], counts[1], counts[2]


async def test_purge_removes_the_organization_s_roles_bindings_and_memberships_only(rbac: Rbac) -> None:
    await seed(rbac.administration, ORG)
    await seed(rbac.administration, OTHER)
    reader = Ref(ORG, "ws-1", "p-1", "run", "r-1")
    assert (await rbac.decisions.check(("user", "u-1"), ("run", "read"), reader))[0]
    before = (await rbac.store.revisions(ORG))[0]

    bindings, deleted_roles, memberships, _, revision = await rbac.administration.purge_organization(ORG)

    assert (bindings, deleted_roles, memberships) == (2, 1, 2)
    assert revision > before
    assert await rows(rbac, ORG) == (0, 0, 0)
    assert await rows(rbac, OTHER) == (2, 1, 2)
    assert ORG not in rbac.decisions.cached_organizations()
    assert not (await rbac.decisions.check(("user", "u-1"), ("run", "read"), reader))[0]
    assert not (await rbac.decisions.check(("user", "admin-1"), ("organization", "read"), Ref(ORG)))[0]
    kept = Ref(OTHER, "ws-1", "p-1", "run", "r-1")
    assert (await rbac.decisions.check(("user", "u-1"), ("run", "read"), kept))[0]


async def test_purge_records_one_event_in_its_transaction_and_a_repeat_purges_nothing(rbac: Rbac) -> None:
    await seed(rbac.administration, ORG)
    notified: list[int] = []
    rbac.store.audit_recorded = lambda: notified.append(1)

    await rbac.administration.purge_organization(ORG)
    again = await rbac.administration.purge_organization(ORG)

    assert again[:4] == (0, 0, 0, 0)
    async with rbac.store.engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(audit_outbox.c.payload)
                .where(audit_outbox.c.organization_id == ORG)
                .order_by(audit_outbox.c.seq)
            )
        ).scalars()
        events = [AuditEvent.from_record(json.loads(p)) for p in payloads]
    purges = [e for e in events if e.action == "rbac.organization.purge"]
    assert [(e.resource_type, e.resource_id, e.outcome) for e in purges] == [
        ("organization", ORG, "SUCCESS"),
        ("organization", ORG, "SUCCESS"),
    ]
    assert purges[0].details == {
        "deleted_bindings": 2,
        "deleted_roles": 1,
        "deleted_memberships": 2,
        "deleted_ownerships": 0,
    }
    assert notified == [1, 1]


async def test_purge_organization_rpc_needs_organization_delete(server: Server) -> None:
    administration = server.service.domain.administration
    await seed(administration, ORG)
    await administration.create_binding(ORG, ("user", "manager-1"), "organization_manager", Ref(ORG))
    request = rbac_pb2.PurgeOrganizationRequest(organization_id=ORG)

    await expect_error(server.bindings.PurgeOrganization(request), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        server.bindings.PurgeOrganization(request, metadata=server.token("manager-1")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        server.bindings.PurgeOrganization(
            rbac_pb2.PurgeOrganizationRequest(organization_id=OTHER), metadata=server.token("admin-1")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    purged = await server.bindings.PurgeOrganization(
        request, metadata=(("x-request-id", "req-purge"), *server.token("admin-1"))
    )

    assert (purged.deleted_bindings, purged.deleted_roles, purged.deleted_memberships) == (3, 1, 2)
    assert purged.revision > 0
    # The former admin holds nothing there any more, on this replica at once.
    await expect_error(
        server.bindings.ListRoleBindings(
            rbac_pb2.ListRoleBindingsRequest(organization_id=ORG), metadata=server.token("admin-1")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    async with server.service.domain.engine.connect() as conn:
        payloads = (await conn.execute(select(audit_outbox.c.payload).order_by(audit_outbox.c.seq))).scalars()
        events = [AuditEvent.from_record(json.loads(p)) for p in payloads]
    denied = [e for e in events if e.outcome == "DENIED"]
    assert [(e.action.rsplit("/", 1)[1], e.organization_id, e.actor) for e in denied] == [
        ("PurgeOrganization", ORG, Actor("manager-1", "user")),
        ("PurgeOrganization", OTHER, Actor("admin-1", "user")),
        ("ListRoleBindings", ORG, Actor("admin-1", "user")),
    ]
    [purge] = [e for e in events if e.action == "rbac.organization.purge"]
    assert (purge.actor, purge.request_id) == (Actor("admin-1", "user"), "req-purge")
