"""RBAC's store and domain on SQLite and PostgreSQL: revisions, roles, bindings, teams, ownership."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, Unavailable
from services.rbac.administration import Administration
from services.rbac.decisions import Decisions
from services.rbac.evaluator import Membership, Ref
from services.rbac.store import BindingRecord, ListQuery, RbacStore, RoleRecord, Snapshot
from tests.clock import ManualClock
from tests.rbac.conftest import Rbac, Ticker

ORG = "org-1"
ALICE = ("user", "alice")
BOB = ("user", "bob")
NOW = datetime(2026, 1, 1, tzinfo=UTC)


async def test_every_write_returns_a_higher_revision(rbac: Rbac) -> None:
    first = await rbac.administration.create_binding(ORG, ALICE, "organization_admin", Ref(ORG))
    second = await rbac.administration.add_team_member(ORG, "t-1", BOB)
    third = await rbac.administration.delete_binding(
        ORG, (await rbac.administration.create_binding(ORG, BOB, "organization_admin", Ref(ORG))).id
    )

    assert 0 < first.revision < second < third
    assert (await rbac.store.revisions(ORG))[0] == third


async def test_check_after_a_write_on_another_replica_sees_it_with_at_least_revision(rbac: Rbac) -> None:
    ticker = Ticker()
    other_replica = Decisions(rbac.store, poll_seconds=3600, monotonic=ticker)
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1"), 0))[0] is False

    written = await rbac.administration.create_binding(ORG, ALICE, "workspace_viewer", Ref(ORG, "ws-1"))

    # Without a revision the other replica answers from its cache until its poll interval passes...
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0] is False
    # ...with the write's revision it never answers from older state.
    allowed, revision = await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1"), written.revision)
    assert allowed
    assert revision >= written.revision


async def test_other_replica_sees_a_removal_after_a_background_refresh_past_the_poll_interval(
    rbac: Rbac,
) -> None:
    ticker = Ticker()
    other_replica = Decisions(rbac.store, poll_seconds=1.0, max_staleness_seconds=4.0, monotonic=ticker)
    binding = await rbac.administration.create_binding(ORG, ALICE, "workspace_viewer", Ref(ORG, "ws-1"))
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]

    await rbac.administration.delete_binding(ORG, binding.id)
    ticker.now += 0.5
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]
    ticker.now += 0.6
    # Past the poll interval: answered from memory while the revision is read behind it...
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]
    await other_replica.settle()
    # ...and the next answer reflects the removal.
    assert not (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]


async def test_past_the_staleness_bound_a_check_reads_the_store_first(rbac: Rbac) -> None:
    ticker = Ticker()
    other_replica = Decisions(rbac.store, poll_seconds=1.0, max_staleness_seconds=4.0, monotonic=ticker)
    binding = await rbac.administration.create_binding(ORG, ALICE, "workspace_viewer", Ref(ORG, "ws-1"))
    assert (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]

    await rbac.administration.delete_binding(ORG, binding.id)
    ticker.now += 4.0

    assert not (await other_replica.check(ALICE, ("run", "read"), Ref(ORG, "ws-1")))[0]


async def test_the_writing_replica_sees_its_write_immediately(rbac: Rbac) -> None:
    assert not (await rbac.decisions.check(ALICE, ("run", "read"), Ref(ORG)))[0]

    await rbac.administration.create_binding(ORG, ALICE, "organization_viewer", Ref(ORG))

    assert (await rbac.decisions.check(ALICE, ("run", "read"), Ref(ORG)))[0]


async def test_a_revision_not_reached_is_unavailable_so_callers_retry(rbac: Rbac) -> None:
    with pytest.raises(Unavailable) as raised:
        await rbac.decisions.check(ALICE, ("run", "read"), Ref(ORG), 99)
    assert raised.value.reason == "REVISION_NOT_REACHED"


async def test_team_membership_writes_change_checks(rbac: Rbac) -> None:
    await rbac.administration.create_binding(ORG, ("team", "t-1"), "workspace_editor", Ref(ORG, "ws-1"))
    await rbac.administration.add_team_member(ORG, "t-1", ALICE)
    assert (await rbac.decisions.check(ALICE, ("run", "create"), Ref(ORG, "ws-1")))[0]

    await rbac.administration.remove_team_member(ORG, "t-1", ALICE)

    assert not (await rbac.decisions.check(ALICE, ("run", "create"), Ref(ORG, "ws-1")))[0]


async def test_custom_role_lifecycle_with_etag_and_in_use_protection(rbac: Rbac) -> None:
    admin = rbac.administration
    role = await admin.create_role(ORG, "Secret readers", "", "workspace", [("secret", "read_secret_value")])
    with pytest.raises(AlreadyExists):
        await admin.create_role(ORG, "Secret readers", "", "workspace", [])
    await admin.create_binding(ORG, ALICE, role.record.id, Ref(ORG, "ws-1"))
    secret = Ref(ORG, "ws-1", "", "secret", "s-1")
    assert (await rbac.decisions.check(ALICE, ("secret", "read_secret_value"), secret))[0]

    updated = await admin.update_role(ORG, role.record.id, '"1"', {"permissions": [("secret", "read")]})
    with pytest.raises(Aborted):
        await admin.update_role(ORG, role.record.id, '"1"', {"description": "late"})
    with pytest.raises(FailedPrecondition):
        await admin.delete_role(ORG, role.record.id, "")

    assert updated.record.version == 2
    assert not (await rbac.decisions.check(ALICE, ("secret", "read_secret_value"), secret))[0]
    assert (await rbac.decisions.check(ALICE, ("secret", "read"), secret))[0]


async def test_unknown_permission_in_a_role_is_invalid_argument_naming_the_item(rbac: Rbac) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await rbac.administration.create_role(
            ORG, "Bad", "", "workspace", [("run", "read"), ("run", "promote")]
        )
    assert [v.field for v in raised.value.violations] == ["role.permissions[1]"]


async def test_role_level_must_match_the_binding_scope(rbac: Rbac) -> None:
    with pytest.raises(InvalidArgument):
        await rbac.administration.create_binding(ORG, ALICE, "project_viewer", Ref(ORG, "ws-1"))


async def test_last_organization_admin_cannot_be_unbound(rbac: Rbac) -> None:
    first = await rbac.administration.create_binding(ORG, ALICE, "organization_admin", Ref(ORG))
    with pytest.raises(FailedPrecondition) as raised:
        await rbac.administration.delete_binding(ORG, first.id)
    assert raised.value.reason == "LAST_ADMIN"

    await rbac.administration.create_binding(ORG, BOB, "organization_admin", Ref(ORG))
    await rbac.administration.delete_binding(ORG, first.id)


async def test_ownership_needs_create_rights_and_has_one_owner(rbac: Rbac) -> None:
    pipeline = Ref(ORG, "ws-1", "proj-1", "pipeline", "p-1")
    with pytest.raises(FailedPrecondition):
        await rbac.ownerships.record(ALICE, pipeline)
    await rbac.administration.create_binding(ORG, ALICE, "project_editor", Ref(ORG, "ws-1", "proj-1"))
    await rbac.administration.create_binding(ORG, BOB, "project_editor", Ref(ORG, "ws-1", "proj-1"))

    owned = await rbac.ownerships.record(ALICE, pipeline)
    again = await rbac.ownerships.record(ALICE, pipeline)
    with pytest.raises(AlreadyExists):
        await rbac.ownerships.record(BOB, pipeline)

    assert again.ownerships[0].id == owned.ownerships[0].id
    assert (await rbac.decisions.check(ALICE, ("pipeline", "share"), pipeline))[0]
    assert not (await rbac.decisions.check(BOB, ("pipeline", "share"), pipeline))[0]


async def test_list_bindings_filters_by_subject_and_pages(rbac: Rbac) -> None:
    for index in range(5):
        await rbac.administration.create_binding(ORG, ALICE, "workspace_viewer", Ref(ORG, f"ws-{index}"))
    await rbac.administration.create_binding(ORG, BOB, "workspace_viewer", Ref(ORG, "ws-0"))

    first, token = await rbac.administration.list_bindings(
        ORG, ListQuery(page_size=3, filter='subject_id = "alice" AND level = WORKSPACE')
    )
    second, last = await rbac.administration.list_bindings(
        ORG, ListQuery(page_size=3, page_token=token, filter='subject_id = "alice" AND level = WORKSPACE')
    )

    assert [b.subject_id for b in first + second] == ["alice"] * 5
    assert token
    assert last == ""


async def test_bulk_load_is_one_revision_and_visible_in_the_snapshot(rbac: Rbac) -> None:
    role = RoleRecord("r-1", ORG, "Runner", "", "project", (("pipeline", "run"),), NOW, NOW, 1)
    bindings = [
        BindingRecord(f"b-{i}", ORG, "team", f"t-{i}", "r-1", "ws-1", f"p-{i}", "", "", "project", NOW, 0)
        for i in range(50)
    ]
    members = [Membership(f"t-{i}", "user", "alice") for i in range(50)]
    async with rbac.store.transaction() as tx:
        revision = await tx.bulk_load(ORG, [role], bindings, members, NOW)

    snapshot = await rbac.store.snapshot(ORG)

    assert revision == 1
    assert (len(snapshot.bindings), len(snapshot.memberships), set(snapshot.custom_roles)) == (
        50,
        50,
        {"r-1"},
    )
    assert (await rbac.decisions.check(ALICE, ("pipeline", "run"), Ref(ORG, "ws-1", "p-7")))[0]


class PausingStore(RbacStore):
    """A store whose snapshot, once read, waits for a signal before returning (a load racing a write)."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    async def snapshot(self, organization_id: str) -> Snapshot:
        taken = await super().snapshot(organization_id)
        self.read.set()
        await self.release.wait()
        return taken


async def test_a_load_racing_a_local_write_is_not_taken_as_fresh(rbac: Rbac) -> None:
    store = PausingStore(rbac.store.engine)
    decisions = Decisions(store, poll_seconds=3600, monotonic=Ticker())
    administration = Administration(store, decisions, ManualClock())
    loading = asyncio.create_task(decisions.check(ALICE, ("run", "read"), Ref(ORG)))
    await store.read.wait()

    await administration.create_binding(ORG, ALICE, "organization_viewer", Ref(ORG))
    store.release.set()
    raced, _ = await loading

    assert not raced
    assert (await decisions.check(ALICE, ("run", "read"), Ref(ORG)))[0]
