"""The orgs core store on SQLite and PostgreSQL: rows, scoping by organization, pages, expiry, last admin."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from services.kit.audit import event_for_request
from services.kit.errors import InvalidArgument
from services.orgs.__main__ import main
from services.orgs.store import (
    ACCEPTED,
    ACTIVE,
    EXPIRED,
    OUTBOX,
    PENDING,
    Conflict,
    InvitationRecord,
    ListQuery,
    MemberRecord,
    OrganizationRecord,
    OrgsStore,
    TeamMemberRecord,
    TeamRecord,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def organization(org_id: str, name: str = "Acme", at: datetime = T0) -> OrganizationRecord:
    return OrganizationRecord(org_id, name, "", ACTIVE, at, at, 1)


def member(org_id: str, user_id: str, role: str = "organization_member", at: datetime = T0) -> MemberRecord:
    return MemberRecord(org_id, user_id, f"{user_id}@example.test", role, f"b-{user_id}", at, at, 1)


def invitation(org_id: str, invitation_id: str, expire: datetime) -> InvitationRecord:
    return InvitationRecord(
        invitation_id, org_id, "new@example.test", "organization_member", PENDING, "u-admin", "ab" * 32, "",
        T0, expire, T0,
    )  # fmt: skip


async def test_organizations_listed_for_a_user_are_only_those_they_belong_to(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        for index in range(5):
            await tx.insert_organization(
                organization(f"org-{index}", f"Org {index}", T0 + timedelta(seconds=index))
            )
        for index in (0, 2, 3, 4):
            await tx.insert_member(member(f"org-{index}", "u-1"))
        await tx.insert_member(member("org-1", "u-2"))

    seen: list[str] = []
    token = ""
    async with orgs_store.transaction() as tx:
        while True:
            page, token = await tx.list_organizations_of("u-1", ListQuery(page_size=2, page_token=token))
            seen += [record.id for record in page]
            if not token:
                break
        named, _ = await tx.list_organizations_of("u-1", ListQuery(filter='display_name = "Org 3"'))
        newest, _ = await tx.list_organizations_of("u-1", ListQuery(order_by="create_time desc", page_size=1))
    assert seen == ["org-0", "org-2", "org-3", "org-4"]
    assert [record.id for record in named] == ["org-3"]
    assert [record.id for record in newest] == ["org-4"]


async def test_a_filter_on_an_unlisted_field_is_invalid(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        with pytest.raises(InvalidArgument):
            await tx.list_members("org-1", ListQuery(filter='binding_id = "b-1"'))


async def test_members_are_scoped_by_organization_and_a_second_membership_conflicts(
    orgs_store: OrgsStore,
) -> None:
    async with orgs_store.transaction() as tx:
        await tx.insert_organization(organization("org-1"))
        await tx.insert_organization(organization("org-2"))
        await tx.insert_member(member("org-1", "u-1", "organization_admin"))
        await tx.insert_member(member("org-1", "u-2"))
        await tx.insert_member(member("org-2", "u-3"))
    async with orgs_store.transaction() as tx:
        assert await tx.get_member("org-2", "u-1") is None
        assert (await tx.get_member("org-1", "u-1")) == member("org-1", "u-1", "organization_admin")
        assert await tx.count_admins("org-1") == 1
        assert await tx.count_admins("org-2") == 0
        admins, _ = await tx.list_members("org-1", ListQuery(filter='role_id = "organization_admin"'))
        assert [m.user_id for m in admins] == ["u-1"]
        assert await tx.member_with_email("org-1", "u-2@example.test")
        assert not await tx.member_with_email("org-2", "u-2@example.test")
    with pytest.raises(Conflict):
        async with orgs_store.transaction() as tx:
            await tx.insert_member(member("org-1", "u-2"))


async def test_role_update_is_compare_and_set_on_the_version(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        await tx.insert_organization(organization("org-1"))
        await tx.insert_member(member("org-1", "u-1"))
    stale = member("org-1", "u-1")
    async with orgs_store.transaction() as tx:
        assert await tx.update_member_role(stale, "organization_viewer", "b-new", T0 + timedelta(minutes=1))
        assert not await tx.update_member_role(stale, "organization_admin", "b-newer", T0)
        current = await tx.get_member("org-1", "u-1")
    assert current is not None
    assert (current.role_id, current.binding_id, current.version) == ("organization_viewer", "b-new", 2)


async def test_removing_a_member_removes_their_team_memberships_in_that_organization_only(
    orgs_store: OrgsStore,
) -> None:
    async with orgs_store.transaction() as tx:
        for org_id in ("org-1", "org-2"):
            await tx.insert_organization(organization(org_id))
            await tx.insert_member(member(org_id, "u-1"))
            await tx.insert_team(TeamRecord(f"team-{org_id}", org_id, "Core", "", T0, T0, 1))
            assert await tx.insert_team_member(TeamMemberRecord(org_id, f"team-{org_id}", "u-1", T0))
        assert not await tx.insert_team_member(TeamMemberRecord("org-1", "team-org-1", "u-1", T0))
    async with orgs_store.transaction() as tx:
        assert await tx.delete_member("org-1", "u-1") == ["team-org-1"]
    async with orgs_store.transaction() as tx:
        assert await tx.get_member("org-1", "u-1") is None
        team_1 = await tx.get_team("org-1", "team-org-1")
        team_2 = await tx.get_team("org-2", "team-org-2")
    assert team_1 is not None
    assert team_1.member_count == 0
    assert team_2 is not None
    assert team_2.member_count == 1


async def test_team_names_are_unique_per_organization(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        await tx.insert_team(TeamRecord("t-1", "org-1", "Core", "", T0, T0, 1))
        await tx.insert_team(TeamRecord("t-2", "org-2", "Core", "", T0, T0, 1))
        assert await tx.team_name_taken("org-1", "Core")
        assert not await tx.team_name_taken("org-1", "Core", except_id="t-1")
        assert await tx.get_team("org-2", "t-1") is None
    with pytest.raises(Conflict):
        async with orgs_store.transaction() as tx:
            await tx.insert_team(TeamRecord("t-3", "org-1", "Core", "", T0, T0, 1))


async def test_invitation_expires_by_the_clock_and_closes_once(orgs_store: OrgsStore) -> None:
    expire = T0 + timedelta(days=7)
    async with orgs_store.transaction() as tx:
        await tx.insert_invitation(invitation("org-1", "i-1", expire))
        await tx.insert_invitation(invitation("org-1", "i-2", expire))
    async with orgs_store.transaction() as tx:
        before = await tx.get_invitation("i-1", expire - timedelta(seconds=1), "org-1")
        after = await tx.get_invitation("i-1", expire, "org-1")
        other_org = await tx.get_invitation("i-1", T0, "org-2")
        expired, _ = await tx.list_invitations("org-1", ListQuery(filter="state = EXPIRED"), expire)
        pending, _ = await tx.list_invitations("org-1", ListQuery(filter="state = PENDING"), T0)
        # Past expiry an invitation cannot be closed any more, whatever its stored state says.
        assert not await tx.close_invitation("i-2", ACCEPTED, "u-9", expire)
        assert await tx.close_invitation("i-1", ACCEPTED, "u-9", T0)
        assert not await tx.close_invitation("i-1", ACCEPTED, "u-8", T0)
        used = await tx.get_invitation("i-1", expire + timedelta(days=1))
    assert before is not None
    assert before.state == PENDING
    assert after is not None
    assert after.state == EXPIRED
    assert other_org is None
    assert {i.id for i in expired} == {"i-1", "i-2"}
    assert {i.id for i in pending} == {"i-1", "i-2"}
    assert used is not None
    assert (used.state, used.accepted_by) == (ACCEPTED, "u-9")


async def test_deleting_an_organization_content_leaves_other_organizations_alone(
    orgs_store: OrgsStore,
) -> None:
    async with orgs_store.transaction() as tx:
        for org_id in ("org-1", "org-2"):
            await tx.insert_organization(organization(org_id))
            await tx.insert_member(member(org_id, "u-1"))
            await tx.insert_invitation(invitation(org_id, f"i-{org_id}", T0 + timedelta(days=1)))
            await tx.insert_team(TeamRecord(f"t-{org_id}", org_id, "Core", "", T0, T0, 1))
            await tx.insert_team_member(TeamMemberRecord(org_id, f"t-{org_id}", "u-1", T0))
    async with orgs_store.transaction() as tx:
        counts = await tx.delete_organization_contents("org-1")
        await tx.delete_organization("org-1")
    assert counts == {"team_members": 1, "teams": 1, "invitations": 1, "members": 1}
    async with orgs_store.transaction() as tx:
        assert await tx.get_organization("org-1") is None
        assert await tx.get_organization("org-2") is not None
        assert await tx.get_member("org-2", "u-1") is not None
        assert await tx.get_team("org-2", "t-org-2") is not None


async def test_audit_event_and_change_commit_or_roll_back_together(orgs_store: OrgsStore) -> None:
    def event(org_id: str) -> object:
        return event_for_request(
            action="orgs.organization.create", resource_type="organization", resource_id=org_id,
            organization_id=org_id, occur_time=T0,
        )  # fmt: skip

    async with orgs_store.transaction() as tx:
        await tx.insert_organization(organization("org-1"))
        await tx.record(event("org-1"))  # type: ignore[arg-type]

    async def failing_change() -> None:
        async with orgs_store.transaction() as tx:
            await tx.insert_organization(organization("org-2"))
            await tx.record(event("org-2"))  # type: ignore[arg-type]
            raise RuntimeError("the change fails after recording")

    with pytest.raises(RuntimeError):
        await failing_change()
    async with orgs_store.engine.connect() as conn:
        outbox = (await conn.execute(select(OUTBOX.c.organization_id))).scalars().all()
    assert outbox == ["org-1"]


async def test_concurrent_demotions_of_the_last_two_admins_leave_one(orgs_store: OrgsStore) -> None:
    """Each change locks the organization row first, then counts Admins: the second sees one left."""
    async with orgs_store.transaction() as tx:
        await tx.insert_organization(organization("org-1"))
        await tx.insert_member(member("org-1", "u-1", "organization_admin"))
        await tx.insert_member(member("org-1", "u-2", "organization_admin"))
    first_counted = asyncio.Event()

    async def other_is_waiting() -> None:
        # PostgreSQL shows the second transaction queued on the row lock; without the lock it would
        # not queue, this poll would give up, and both demotions would succeed. SQLite has one writer.
        if orgs_store.engine.dialect.name != "postgresql":
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            async with orgs_store.engine.connect() as conn:
                waiting = await conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted"))
                if waiting.scalar_one():
                    return
            await asyncio.sleep(0.01)

    async def demote(user_id: str, first: bool) -> bool:
        async with orgs_store.transaction() as tx:
            assert await tx.lock_organization("org-1") is not None
            current = await tx.get_member("org-1", user_id)
            assert current is not None
            if await tx.count_admins("org-1") <= 1:
                return False
            if first:
                first_counted.set()
                await other_is_waiting()
            return await tx.update_member_role(current, "organization_member", "b", T0)

    first = asyncio.create_task(demote("u-1", True))
    await first_counted.wait()
    second = asyncio.create_task(demote("u-2", False))
    results = await asyncio.gather(first, second)
    assert sorted(results) == [False, True]
    async with orgs_store.transaction() as tx:
        assert await tx.count_admins("org-1") == 1


async def test_lock_of_a_missing_organization_is_none(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        assert await tx.lock_organization("nope") is None
    async with orgs_store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(OUTBOX))).scalar_one() == 0


async def test_remembered_creates_are_recalled_then_purged(orgs_store: OrgsStore) -> None:
    async with orgs_store.transaction() as tx:
        await tx.remember("m", "u-1", "r-1", b"org-1", T0)
        await tx.remember("m", "u-1", "r-2", b"org-2", T0 + timedelta(hours=2))
    async with orgs_store.transaction() as tx:
        assert await tx.recall("m", "u-1", "r-1") == b"org-1"
        assert await tx.recall("m", "u-2", "r-1") is None
        assert await tx.purge_request_ids(T0 + timedelta(hours=1)) == 1
        assert await tx.recall("m", "u-1", "r-1") is None
        assert await tx.recall("m", "u-1", "r-2") == b"org-2"


def test_migrate_command_creates_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("KEEL_LOG_LEVEL", "WARNING")
    assert main(["migrate"]) == 0
    assert main(["migrate"]) == 0
    with sqlite3.connect(tmp_path / "orgs.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "orgs_organizations",
        "orgs_members",
        "orgs_invitations",
        "orgs_teams",
        "orgs_team_members",
    } <= tables
    assert {"orgs_request_ids", "orgs_audit_outbox", "orgs_alembic_version"} <= tables
