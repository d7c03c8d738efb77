"""AuditLogService through a real server and a real RBAC: who may read, list/verify, and ingestion."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import grpc
from sqlalchemy import select, update

from keel.orgs.v1 import audit_pb2
from keel.rbac.v1 import rbac_pb2
from services.kit.audit import Actor, AuditEvent
from services.kit.audit_chain import canonical_json
from services.kit.audit_proto import event_to_proto
from services.kit.context import Principal
from services.orgs.audit_store import audit_events
from services.orgs.store import OUTBOX
from services.rbac.catalog import ALL_PERMISSIONS
from services.rbac.evaluator import Ref
from tests.authn.helpers import bad_fields, expect_error
from tests.orgs.test_audit_fixtures import MESH_ACCOUNT, AuditServer, audit  # noqa: F401
from tests.rbac.conftest import server  # noqa: F401  (used by the audit fixture)

ORG = "org-1"
OTHER = "org-2"
ADMIN = "admin-1"
START = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)


def make_event(organization_id: str = ORG, index: int = 0, **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "organization_id": organization_id,
        "actor": Actor(ADMIN, "user"),
        "action": "orgs.team.create" if index % 2 == 0 else "orgs.member.remove",
        "resource_type": "team" if index % 2 == 0 else "member",
        "resource_id": f"r-{index}",
        "outcome": "SUCCESS",
        "occur_time": START + dt.timedelta(seconds=index),
        "details": {"index": index},
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


async def seed(audit: AuditServer, count: int = 5) -> list[AuditEvent]:  # noqa: F811
    await audit.rbac.service.domain.administration.bootstrap_organization_admin(ORG, ADMIN)
    events = [make_event(index=i) for i in range(count)]
    await audit.log.append([*events, make_event(OTHER, 0)])
    return events


def ingest(*events: AuditEvent) -> audit_pb2.IngestAuditEventsRequest:
    return audit_pb2.IngestAuditEventsRequest(audit_events=[event_to_proto(event) for event in events])


async def test_an_org_admin_lists_the_chain_page_by_page(audit: AuditServer) -> None:  # noqa: F811
    events = await seed(audit)
    admin = audit.token(ADMIN)

    first = await audit.stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(organization_id=ORG, page_size=3), metadata=admin
    )
    second = await audit.stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(organization_id=ORG, page_size=3, page_token=first.next_page_token),
        metadata=admin,
    )

    listed = [*first.audit_events, *second.audit_events]
    assert [event.id for event in listed] == [event.id for event in events]
    assert [event.sequence for event in listed] == [1, 2, 3, 4, 5]
    assert second.next_page_token == ""
    assert listed[0].previous_hash == "0" * 64
    assert all(later.previous_hash == earlier.hash for earlier, later in itertools.pairwise(listed))
    assert listed[1].actor_id == ADMIN
    assert listed[1].outcome == audit_pb2.AuditEvent.SUCCESS
    assert dict(listed[1].details) == {"index": 1}


async def test_list_filters_and_orders_and_names_bad_fields(audit: AuditServer) -> None:  # noqa: F811
    events = await seed(audit)
    admin = audit.token(ADMIN)

    newest = await audit.stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(
            organization_id=ORG, filter='action = "orgs.member.remove"', order_by="sequence desc"
        ),
        metadata=admin,
    )
    bad_filter = await expect_error(
        audit.stub.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(organization_id=ORG, filter="secret = 1"), metadata=admin
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_order = await expect_error(
        audit.stub.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(organization_id=ORG, order_by="action"), metadata=admin
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert [event.id for event in newest.audit_events] == [events[3].id, events[1].id]
    assert bad_fields(bad_filter) == ["filter"]
    assert bad_fields(bad_order) == ["order_by"]


async def test_a_custom_role_with_only_audit_log_read_can_list_and_nothing_else(
    audit: AuditServer,  # noqa: F811
) -> None:
    events = await seed(audit, count=2)
    await audit.rbac.service.domain.administration.bootstrap_organization_admin(OTHER, ADMIN)
    admin = audit.token(ADMIN)
    role = await audit.rbac.roles.CreateRole(
        rbac_pb2.CreateRoleRequest(
            organization_id=ORG,
            role=rbac_pb2.Role(
                display_name="Auditor",
                level=rbac_pb2.ORGANIZATION,
                permissions=[rbac_pb2.Permission(resource_type="audit_log", action="read")],
            ),
        ),
        metadata=admin,
    )
    await audit.rbac.bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=ORG,
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id="auditor"),
                role_id=role.id,
                scope=rbac_pb2.ResourceRef(organization_id=ORG),
            ),
        ),
        metadata=admin,
    )
    await audit.rbac.service.domain.administration.create_binding(
        ORG, ("user", "viewer"), "organization_viewer", Ref(ORG)
    )
    auditor = audit.token("auditor")

    listed = await audit.stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(organization_id=ORG), metadata=auditor
    )
    verified = await audit.stub.VerifyAuditLog(
        audit_pb2.VerifyAuditLogRequest(organization_id=ORG), metadata=auditor
    )
    elsewhere = await expect_error(
        audit.stub.ListAuditEvents(audit_pb2.ListAuditEventsRequest(organization_id=OTHER), metadata=auditor),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        audit.stub.IngestAuditEvents(ingest(make_event(index=9)), metadata=auditor),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # An organization viewer reads everything else, but not the audit log.
    await expect_error(
        audit.stub.ListAuditEvents(
            audit_pb2.ListAuditEventsRequest(organization_id=ORG), metadata=audit.token("viewer")
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    assert [event.id for event in listed.audit_events] == [event.id for event in events]
    assert verified.intact
    assert elsewhere.code() == grpc.StatusCode.PERMISSION_DENIED
    # Nothing else: RBAC itself grants the auditor no other permission in the organization.
    principal = Principal("auditor", "user", token=auditor[0][1].removeprefix("Bearer "))
    granted = {
        (resource_type, action)
        for resource_type, action in sorted(ALL_PERMISSIONS)
        if await audit.checker.check(principal, resource_type, action, "", ORG)
    }
    assert granted == {("audit_log", "read")}


async def test_verify_reports_a_row_tampered_with_sql(audit: AuditServer) -> None:  # noqa: F811
    events = await seed(audit)
    admin = audit.token(ADMIN)
    intact = await audit.stub.VerifyAuditLog(
        audit_pb2.VerifyAuditLogRequest(organization_id=ORG), metadata=admin
    )
    engine = audit.log._store.engine  # the test plays an intruder with direct database access
    async with engine.begin() as conn:
        record = json.loads(
            (
                await conn.execute(
                    select(audit_events.c.record).where(audit_events.c.event_id == events[3].id)
                )
            ).scalar_one()
        )
        record["resource_id"] = "r-innocent"
        await conn.execute(
            update(audit_events)
            .where(audit_events.c.event_id == events[3].id)
            .values(record=canonical_json(record).decode(), resource_id="r-innocent")
        )

    broken = await audit.stub.VerifyAuditLog(
        audit_pb2.VerifyAuditLogRequest(organization_id=ORG), metadata=admin
    )

    assert (intact.intact, intact.checked_events, intact.first_broken_sequence) == (True, 5, 0)
    assert (broken.intact, broken.checked_events) == (False, 3)
    assert (broken.first_broken_sequence, broken.first_broken_event_id) == (4, events[3].id)


async def test_only_mesh_service_accounts_may_ingest(audit: AuditServer) -> None:  # noqa: F811
    await audit.rbac.service.domain.administration.bootstrap_organization_admin(ORG, ADMIN)
    event = make_event(index=0)

    anonymous = await expect_error(
        audit.stub.IngestAuditEvents(ingest(event)), grpc.StatusCode.UNAUTHENTICATED
    )
    as_admin = await expect_error(
        audit.stub.IngestAuditEvents(ingest(event), metadata=audit.token(ADMIN)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # A service account that is not one of the mesh's own, and a user named like a mesh account.
    outsider = await expect_error(
        audit.stub.IngestAuditEvents(ingest(event), metadata=audit.token("sa-else", "service_account")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    impostor = await expect_error(
        audit.stub.IngestAuditEvents(ingest(event), metadata=audit.token(MESH_ACCOUNT, "user")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    mesh = audit.token(MESH_ACCOUNT, "service_account")
    first = await audit.stub.IngestAuditEvents(ingest(event, make_event(index=1)), metadata=mesh)
    again = await audit.stub.IngestAuditEvents(ingest(make_event(index=1), event), metadata=mesh)

    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    assert {as_admin.code(), outsider.code(), impostor.code()} == {grpc.StatusCode.PERMISSION_DENIED}
    assert first.appended == 2
    assert again.appended == 1  # the new make_event(index=1) has a new id; `event` is known
    listed = await audit.stub.ListAuditEvents(
        audit_pb2.ListAuditEventsRequest(organization_id=ORG), metadata=audit.token(ADMIN)
    )
    assert [item.sequence for item in listed.audit_events] == [1, 2, 3]
    assert listed.audit_events[0].id == event.id
    # Each refused ingestion is itself audited (in orgs' outbox, shipped like any orgs event).
    async with audit.log._store.engine.connect() as conn:
        payloads = (await conn.execute(select(OUTBOX.c.payload).order_by(OUTBOX.c.seq))).scalars().all()
    denials = [json.loads(payload) for payload in payloads]
    assert [(d["action"], d["outcome"], d["actor"]["subject"]) for d in denials] == [
        ("orgs.audit_log.ingest", "DENIED", ADMIN),
        ("orgs.audit_log.ingest", "DENIED", "sa-else"),
        ("orgs.audit_log.ingest", "DENIED", MESH_ACCOUNT),
    ]


async def test_ingest_refuses_a_batch_with_an_invalid_event_naming_its_index(
    audit: AuditServer,  # noqa: F811
) -> None:
    mesh = audit.token(MESH_ACCOUNT, "service_account")
    good = event_to_proto(make_event(index=0))
    secret = event_to_proto(make_event(index=1))
    secret.details.update({"api_key": "whatever"})
    leaked = event_to_proto(make_event(index=2))
    leaked.request_id = "keel_rt_" + "Z" * 40
    bad_id = event_to_proto(make_event(index=3))
    bad_id.id = "keel_rt_" + "Y" * 40
    too_long = event_to_proto(make_event(index=4))
    too_long.organization_id = "o" * 65

    errors = [
        await expect_error(
            audit.stub.IngestAuditEvents(
                audit_pb2.IngestAuditEventsRequest(audit_events=[good, bad]), metadata=mesh
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        for bad in (secret, leaked, bad_id, too_long)
    ]
    too_many = await expect_error(
        audit.stub.IngestAuditEvents(
            audit_pb2.IngestAuditEventsRequest(audit_events=[good] * 501), metadata=mesh
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )

    assert [bad_fields(error) for error in errors] == [
        ["audit_events[1]"],
        ["audit_events[1]"],
        ["audit_events[1]"],
        ["audit_events[1].organization_id"],
    ]
    assert all("keel_rt_" not in (error.details() or "") for error in errors)
    assert bad_fields(too_many) == ["audit_events"]
    assert (await audit.log.list(ORG))[0] == []  # nothing of a refused batch was appended
