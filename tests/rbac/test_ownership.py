"""Ownership as a relation: recorded without moving the revision, read by key on checks, batched,
bounded in lookups, forgotten and purged; and scope-wide answers of Check. Both backends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from sqlalchemy import select

from keel.rbac.v1 import rbac_pb2
from services.kit.audit import AuditEvent
from services.kit.clients import connect
from services.kit.context import Principal
from services.kit.errors import AlreadyExists, FailedPrecondition
from services.kit.rbac_client import RbacPermissionChecker, workspace_scope
from services.kit.rbac_lookup import RbacLookup
from services.metadata.identity import ServedWorkspace, WorkspaceIdentity
from services.metadata.ownership import Ownership
from services.rbac.decisions import MAX_OWNED_IDS, Decisions
from services.rbac.evaluator import Ref
from services.rbac.ownership import Recorded
from services.rbac.store import OwnershipRecord, audit_outbox
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.clock import ManualClock
from tests.rbac.conftest import Rbac, Server, Ticker

ORG = "org-1"
WS = "ws-1"
ADMIN = "admin-1"
EDITOR = "editor-1"
OTHER = "other-1"
ALICE = ("user", "alice")
BOB = ("user", "bob")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


def user(subject_id: str) -> rbac_pb2.Subject:
    return rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=subject_id)


def run(run_id: str, project_id: str = "p-1") -> Ref:
    return Ref(ORG, WS, project_id, "run", run_id)


def message(ref: Ref, *, with_organization: bool = True) -> rbac_pb2.ResourceRef:
    return rbac_pb2.ResourceRef(
        organization_id=ref.organization_id if with_organization else "",
        workspace_id=ref.workspace_id,
        project_id=ref.project_id,
        resource_type=ref.resource_type,
        resource_id=ref.resource_id,
    )


async def seed(server: Server) -> None:
    """An admin; EDITOR and OTHER project editors of p-1 (EDITOR also of p-2)."""
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    for subject, project in ((EDITOR, "p-1"), (EDITOR, "p-2"), (OTHER, "p-1")):
        await administration.create_binding(ORG, ("user", subject), "project_editor", Ref(ORG, WS, project))


async def events_since(server: Server, mark: int) -> list[AuditEvent]:
    async with server.service.domain.engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(audit_outbox.c.payload).where(audit_outbox.c.seq > mark).order_by(audit_outbox.c.seq)
            )
        ).scalars()
        return [AuditEvent.from_record(json.loads(payload)) for payload in payloads]


async def outbox_mark(server: Server) -> int:
    async with server.service.domain.engine.connect() as conn:
        marks = (await conn.execute(select(audit_outbox.c.seq))).scalars()
        return max(marks, default=0)


# --- recording and evaluation (domain) ------------------------------------------------------------


async def test_recording_moves_no_revision_and_every_replica_sees_the_owner_at_once(rbac: Rbac) -> None:
    await rbac.administration.create_binding(ORG, ALICE, "project_editor", Ref(ORG, WS, "p-1"))
    other_replica = Decisions(rbac.store, poll_seconds=3600, monotonic=Ticker())
    loaded, _ = await rbac.decisions.index(ORG)
    await other_replica.index(ORG)
    revisions = await rbac.store.revisions(ORG)

    recorded = await rbac.ownerships.record(ALICE, run("r-1"))

    assert await rbac.store.revisions(ORG) == revisions
    assert recorded.revision == revisions[0]
    assert (await rbac.decisions.index(ORG))[0] is loaded  # not invalidated, not reloaded
    # A project editor holds no share; the owner does, on a replica that never polled since.
    assert (await other_replica.check(ALICE, ("run", "share"), run("r-1")))[0]
    assert not (await other_replica.check(BOB, ("run", "share"), run("r-1")))[0]


async def test_the_owner_holds_the_owner_role_on_its_resource_and_its_type_only(rbac: Rbac) -> None:
    await rbac.administration.create_binding(ORG, ALICE, "project_editor", Ref(ORG, WS, "p-1"))
    await rbac.ownerships.record(ALICE, run("r-1"))
    step_named_like_it = Ref(ORG, WS, "p-1", "step", "r-1")

    allowed, _ = await rbac.decisions.batch_check(
        ALICE,
        ORG,
        [
            (("run", "share"), run("r-1")),
            (("run", "share"), run("r-2")),
            (("run", "read"), run("r-2")),
            (("step", "share"), step_named_like_it),
            (("run", "share"), run("r-1", "p-elsewhere")),  # the key is the resource, as for shares
        ],
    )
    held, _ = await rbac.decisions.effective(ALICE, run("r-1"))
    bob_held, _ = await rbac.decisions.effective(BOB, run("r-1"))

    assert allowed == [True, False, True, False, True]
    assert {("run", "share"), ("run", "delete"), ("run", "read")} <= set(held)
    assert bob_held == []


async def test_two_owners_racing_for_one_resource_leave_one_owner(rbac: Rbac) -> None:
    for subject in (ALICE, BOB):
        await rbac.administration.create_binding(ORG, subject, "project_editor", Ref(ORG, WS, "p-1"))

    results = await asyncio.gather(
        rbac.ownerships.record(ALICE, run("r-1")),
        rbac.ownerships.record(BOB, run("r-1")),
        return_exceptions=True,
    )

    [won] = [r for r in results if isinstance(r, Recorded)]
    [lost] = [r for r in results if not isinstance(r, Recorded)]
    assert isinstance(lost, AlreadyExists)
    owner = (won.ownerships[0].subject_kind, won.ownerships[0].subject_id)
    assert await rbac.store.owner(ORG, "run", "r-1") == owner


async def test_purging_a_subject_or_the_organization_removes_its_ownerships(rbac: Rbac) -> None:
    for subject in (ALICE, BOB):
        await rbac.administration.create_binding(ORG, subject, "project_editor", Ref(ORG, WS, "p-1"))
    await rbac.ownerships.record(ALICE, run("r-1"))
    await rbac.ownerships.record(ALICE, run("r-2"))
    await rbac.ownerships.record(BOB, run("r-3"))

    bindings, memberships, owned, _ = await rbac.administration.purge_subject(ORG, ALICE)

    assert (bindings, memberships, owned) == (1, 0, 2)
    assert not (await rbac.decisions.check(ALICE, ("run", "read"), run("r-1")))[0]
    assert (await rbac.decisions.check(BOB, ("run", "share"), run("r-3")))[0]
    assert (await rbac.administration.purge_organization(ORG))[3] == 1
    assert await rbac.store.owner(ORG, "run", "r-3") is None


# --- Check: scope-wide answers -------------------------------------------------------------------


async def test_check_says_when_an_allow_holds_for_the_whole_scope(server: Server) -> None:
    await seed(server)
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", "friend"), "project_viewer", run("r-9"))
    await administration.create_binding(ORG, ("user", "ws-viewer"), "workspace_viewer", Ref(ORG, WS))
    await server.service.domain.ownerships.record(("user", EDITOR), run("r-1"))
    project = Ref(ORG, WS, "p-1", "project", "p-1")
    cases = [
        (EDITOR, ("run", "read"), run("r-5"), (True, True)),  # project role, above the run
        (EDITOR, ("run", "share"), run("r-1"), (True, False)),  # ownership of this run
        ("friend", ("run", "read"), run("r-9"), (True, False)),  # a share of this run
        (EDITOR, ("project", "read"), project, (True, False)),  # a project role on the project itself
        ("ws-viewer", ("project", "read"), project, (True, True)),  # a workspace role above it
        (EDITOR, ("run", "create"), Ref(ORG, WS, "p-1"), (True, True)),  # a scope: every allow is
        (EDITOR, ("run", "read"), run("r-5", "p-3"), (False, False)),
    ]

    answers = []
    for subject, (resource_type, action), ref, _ in cases:
        response = await server.permissions.Check(
            rbac_pb2.CheckRequest(
                principal=user(subject),
                permission=rbac_pb2.Permission(resource_type=resource_type, action=action),
                resource=message(ref),
            ),
            metadata=server.token(subject),
        )
        answers.append((response.allowed, response.scope_wide))

    assert answers == [expected for *_, expected in cases]


# --- BatchRecordOwnership ------------------------------------------------------------------------


def batch(owner: str, *refs: rbac_pb2.ResourceRef) -> rbac_pb2.BatchRecordOwnershipRequest:
    return rbac_pb2.BatchRecordOwnershipRequest(organization_id=ORG, owner=user(owner), resources=refs)


class CreateChecks:
    """Counts the `create` checks RBAC's decisions answer (the real ones answer)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.asked: list[tuple[str, Ref]] = []

    async def __call__(self, subject: Any, permission: Any, resource: Ref, at_least_revision: int = 0) -> Any:
        if permission[1] == "create":
            self.asked.append((permission[0], resource))
        return await self.inner(subject, permission, resource, at_least_revision)


async def test_batch_record_checks_create_once_per_type_and_scope_and_answers_in_order(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed(server)
    decisions = server.service.domain.decisions
    checks = CreateChecks(decisions.check)
    monkeypatch.setattr(decisions, "check", checks)
    artifact = Ref(ORG, WS, "p-1", "artifact", "a-1")
    refs = [run("r-1"), run("r-2"), artifact, run("r-3", "p-2"), run("r-1")]
    before = (await server.service.domain.store.revisions(ORG))[0]
    mark = await outbox_mark(server)

    answer = await server.permissions.BatchRecordOwnership(
        batch(EDITOR, *(message(r, with_organization=False) for r in refs)), metadata=server.token(EDITOR)
    )
    again = await server.permissions.BatchRecordOwnership(
        batch(EDITOR, *(message(r) for r in refs)), metadata=server.token(EDITOR)
    )

    assert [(o.scope.resource_type, o.scope.resource_id, o.scope.project_id) for o in answer.ownerships] == [
        (r.resource_type, r.resource_id, r.project_id) for r in refs
    ]
    assert {(o.role_id, o.level, o.subject.id) for o in answer.ownerships} == {
        ("owner", rbac_pb2.RESOURCE, EDITOR)
    }
    assert answer.ownerships[0].id == answer.ownerships[4].id
    assert [o.id for o in again.ownerships] == [o.id for o in answer.ownerships]
    assert answer.revision == again.revision == before
    assert sorted((t, r.project_id) for t, r in checks.asked) == sorted(
        [("artifact", "p-1"), ("run", "p-1"), ("run", "p-2")] * 2
    )
    [event] = await events_since(server, mark)  # the repeat recorded nothing new: no event
    assert (event.action, event.resource_type, event.resource_id) == (
        "rbac.ownership.batch_record",
        "user",
        EDITOR,
    )
    assert event.details == {
        "recorded": 4,
        "resources": ["run/r-1", "run/r-2", "artifact/a-1", "run/r-3"],
        "unlisted": 0,
    }
    for ref in refs:
        permission = (ref.resource_type, "share")
        assert (await decisions.decide(("user", EDITOR), permission, ref)).allowed


async def test_a_batch_event_lists_resources_only_within_the_details_bound(server: Server) -> None:
    await seed(server)
    mark = await outbox_mark(server)
    refs = [message(run(f"run-{index:04}-{'x' * 40}")) for index in range(1000)]

    await server.permissions.BatchRecordOwnership(batch(EDITOR, *refs), metadata=server.token(EDITOR))

    [event] = await events_since(server, mark)
    listed = event.details["resources"]
    assert event.details["recorded"] == 1000
    assert 0 < len(listed) < 1000
    assert event.details["unlisted"] == 1000 - len(listed)


async def test_batch_record_is_all_or_nothing(server: Server) -> None:
    await seed(server)
    ownerships = server.service.domain.ownerships
    store = server.service.domain.store
    await ownerships.record(("user", OTHER), run("r-1"))

    taken = await expect_error(
        server.permissions.BatchRecordOwnership(
            batch(EDITOR, message(run("r-10")), message(run("r-1"))), metadata=server.token(EDITOR)
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    not_creatable = await expect_error(
        server.permissions.BatchRecordOwnership(
            batch(EDITOR, message(run("r-11")), message(run("r-12", "p-9"))), metadata=server.token(EDITOR)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    assert taken.details() == "run r-1 already has an owner"
    assert reason_of(not_creatable) == "OWNER_CANNOT_CREATE"
    assert await store.owner(ORG, "run", "r-10") is None
    assert await store.owner(ORG, "run", "r-11") is None
    assert await store.owner(ORG, "run", "r-1") == ("user", OTHER)


async def test_batch_record_bad_input_is_invalid_argument_naming_the_field(server: Server) -> None:
    await seed(server)
    editor = server.token(EDITOR)
    no_id = rbac_pb2.ResourceRef(workspace_id=WS, project_id="p-1", resource_type="run")
    elsewhere = message(run("r-1"))
    elsewhere.organization_id = "org-2"
    cases = [
        (batch(EDITOR, *(message(run(f"r-{i}")) for i in range(1001))), editor, ["resources"]),
        (batch(EDITOR), editor, ["resources"]),
        (batch(EDITOR, message(run("r-1")), no_id), editor, ["resources[1].resource_id"]),
        (batch(EDITOR, elsewhere), editor, ["resources[0].organization_id"]),
        (batch(EDITOR, message(run("r-1")), message(run("r-1", "p-2"))), editor, ["resources[1]"]),
        (
            rbac_pb2.BatchRecordOwnershipRequest(
                organization_id=ORG,
                owner=rbac_pb2.Subject(kind=rbac_pb2.Subject.TEAM, id="team-1"),
                resources=[message(run("r-1"))],
            ),
            server.token(ADMIN),
            ["owner.kind"],
        ),
    ]

    fields = []
    for request, metadata in ((request, metadata) for request, metadata, _ in cases):
        error = await expect_error(
            server.permissions.BatchRecordOwnership(request, metadata=metadata),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        fields.append(bad_fields(error))

    assert fields == [expected for *_, expected in cases]
    assert await server.service.domain.store.owner(ORG, "run", "r-1") is None


@asynccontextmanager
async def workspace_ownership(server: Server) -> AsyncIterator[Ownership]:
    """The workspace server's ownership client, on a real channel to the RBAC server."""
    clock = ManualClock()
    channel = connect(f"127.0.0.1:{server.service.port}")
    try:
        mapping = workspace_scope(ORG, WS)
        yield Ownership(
            channel,
            ServedWorkspace(WorkspaceIdentity(ORG, WS)),
            RbacPermissionChecker(channel, clock, scope=mapping),
            RbacLookup(channel, clock, mapping),
        )
    finally:
        await channel.close(None)


def principal(subject: str, server: Server) -> Principal:
    return Principal(subject, "user", token=server.keys.mint(sub=subject, typ="user"))


async def test_the_workspace_servers_record_many_takes_one_call_per_1000_ids(server: Server) -> None:
    await seed(server)
    ids = [f"r-{index:04}" for index in range(2500)]
    mark = await outbox_mark(server)
    async with workspace_ownership(server) as ownership:
        recorded = await ownership.record_many(principal(EDITOR, server), "run", ids, "p-1")
        workload = await ownership.record_many(Principal("wl-1", "workload"), "run", ["r-x"], "p-1")

    events = await events_since(server, mark)
    assert (recorded, workload) == (True, False)  # a workload holds nothing
    assert [e.details["recorded"] for e in events] == [1000, 1000, 500]
    owners = await server.service.domain.store.owners(ORG, [("run", i) for i in ids])
    assert set(owners.values()) == {("user", EDITOR)}
    assert len(owners) == 2500
    assert await server.service.domain.store.owner(ORG, "run", "r-x") is None


async def test_concurrent_claims_of_one_owner_are_group_committed(server: Server) -> None:
    await seed(server)
    ids = [f"r-{index:02}" for index in range(20)]
    mark = await outbox_mark(server)
    async with workspace_ownership(server) as ownership:
        editor = principal(EDITOR, server)
        answers = await asyncio.gather(*(ownership.record(editor, "run", i, "p-1") for i in ids))
        after = await ownership.record(editor, "run", "r-later", "p-1")  # idle again: alone

    events = await events_since(server, mark)
    assert answers == [True] * 20
    assert after
    # The 20 requests waited for one call between them; the later one went on its own.
    assert [e.details["recorded"] for e in events] == [20, 1]
    owners = await server.service.domain.store.owners(ORG, [("run", i) for i in [*ids, "r-later"]])
    assert set(owners.values()) == {("user", EDITOR)}
    assert len(owners) == 21


async def test_a_refused_claim_fails_only_its_own_request(server: Server) -> None:
    await seed(server)
    async with workspace_ownership(server) as ownership:
        await ownership.record(principal(ADMIN, server), "run", "r-taken", "p-1")
        editor = principal(EDITOR, server)
        answers = await asyncio.gather(
            *(ownership.record(editor, "run", i, "p-1") for i in ("r-a", "r-taken", "r-b")),
            return_exceptions=True,
        )

    assert answers[0] is True
    assert answers[2] is True
    assert isinstance(answers[1], FailedPrecondition)  # RBAC's ALREADY_EXISTS, for this request only
    owners = await server.service.domain.store.owners(ORG, [("run", i) for i in ("r-a", "r-taken", "r-b")])
    assert owners == {
        ("run", "r-a"): ("user", EDITOR),
        ("run", "r-taken"): ("user", ADMIN),
        ("run", "r-b"): ("user", EDITOR),
    }


# --- LookupResources: the bound ------------------------------------------------------------------


async def test_lookup_carries_at_most_10000_owned_ids_and_says_when_it_cut(server: Server) -> None:
    await seed(server)
    heavy = ("user", "heavy")  # owns many runs but holds no role that reads them all
    records = [
        OwnershipRecord(
            f"o-{project}-{index}", ORG, "run", f"r-{index:05}-{project}", WS, project, *heavy, NOW
        )
        for project, count in (("p-1", MAX_OWNED_IDS + 1), ("p-2", 5))
        for index in range(count)
    ]
    async with server.service.domain.store.transaction() as tx:
        await tx.insert_ownerships(records)

    def lookup(scope: rbac_pb2.ResourceRef) -> rbac_pb2.LookupResourcesRequest:
        return rbac_pb2.LookupResourcesRequest(
            subject=user("heavy"),
            permission=rbac_pb2.Permission(resource_type="run", action="read"),
            scope=scope,
        )

    in_workspace = await server.permissions.LookupResources(
        lookup(rbac_pb2.ResourceRef(organization_id=ORG, workspace_id=WS)), metadata=server.token("heavy")
    )
    in_p2 = await server.permissions.LookupResources(
        lookup(rbac_pb2.ResourceRef(organization_id=ORG, workspace_id=WS, project_id="p-2")),
        metadata=server.token("heavy"),
    )

    assert MAX_OWNED_IDS == 10_000  # the bound docs/rbac.md and the proto state
    assert len(in_workspace.resource_ids) == MAX_OWNED_IDS
    assert in_workspace.resource_ids_truncated
    # The first in (workspace, project, id) order: p-1's, all but its last.
    assert set(in_workspace.resource_ids) == {r.resource_id for r in records[:MAX_OWNED_IDS]}
    assert (len(in_p2.resource_ids), in_p2.resource_ids_truncated) == (5, False)


# --- forgetting ----------------------------------------------------------------------------------


async def test_forgetting_drops_ownerships_and_moves_the_revision_only_for_bindings(server: Server) -> None:
    await seed(server)
    ownerships = server.service.domain.ownerships
    await ownerships.record(("user", EDITOR), run("r-1"))
    await ownerships.record(("user", EDITOR), run("r-2", "p-2"))
    await server.service.domain.administration.create_binding(
        ORG, ("user", "friend"), "project_viewer", run("r-2", "p-2")
    )
    before = (await server.service.domain.store.revisions(ORG))[0]

    run_forgotten = await server.permissions.ForgetResource(
        rbac_pb2.ForgetResourceRequest(resource=message(run("r-1"))), metadata=server.token(EDITOR)
    )
    project = Ref(ORG, WS, "p-2", "project", "p-2")
    project_forgotten = await server.permissions.ForgetResource(
        rbac_pb2.ForgetResourceRequest(resource=message(project)), metadata=server.token(ADMIN)
    )

    assert (run_forgotten.deleted_bindings, run_forgotten.deleted_ownerships) == (0, 1)
    assert run_forgotten.revision == before
    # Inside p-2: EDITOR's project role and friend's share (bindings), EDITOR's run (ownership).
    assert (project_forgotten.deleted_bindings, project_forgotten.deleted_ownerships) == (2, 1)
    assert project_forgotten.revision > before
    decisions = server.service.domain.decisions
    assert not (await decisions.check(("user", EDITOR), ("run", "share"), run("r-1")))[0]
    assert await server.service.domain.store.owner(ORG, "run", "r-2") is None
