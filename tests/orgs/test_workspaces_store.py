"""The workspace tables and queries, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import create_engine
from services.kit.errors import InvalidArgument
from services.orgs import workspace_credentials as credentials
from services.orgs import workspace_store as ws
from services.orgs.store import OrgsStore
from tests.clock import ManualClock


def _workspace(clock: ManualClock, organization_id: str, name: str, **changes: object) -> ws.WorkspaceRecord:
    now = clock.now()
    values: dict[str, object] = {
        "id": str(uuid.uuid4()),
        "organization_id": organization_id,
        "display_name": name,
        "description": "",
        "endpoint": "",
        "state": ws.PROVISIONING,
        "server_version": "",
        "register_time": None,
        "last_heartbeat_time": None,
        "create_time": now,
        "update_time": now,
        "delete_time": None,
        "version": 1,
    }
    values.update(changes)
    return ws.WorkspaceRecord(**values)  # type: ignore[arg-type]


async def _insert(store: OrgsStore, record: ws.WorkspaceRecord, secret_hash: str = "0" * 64) -> None:
    async with store.transaction() as tx:
        await ws.insert_workspace(tx.conn, record, secret_hash)


async def test_delete_organization_workspaces_marks_live_ones_deleting_and_revokes(
    orgs_store: OrgsStore,
) -> None:
    clock = ManualClock()
    live = _workspace(clock, "org-a", "one", state=ws.ACTIVE, last_heartbeat_time=clock.now())
    degraded = _workspace(clock, "org-a", "two", state=ws.DEGRADED)
    gone = _workspace(clock, "org-a", "three", state=ws.DELETING, delete_time=clock.now(), version=4)
    other = _workspace(clock, "org-b", "one")
    for record in (live, degraded, gone, other):
        await _insert(orgs_store, record, credentials.issue(record.id).secret_hash)
    clock.advance(minutes=5)
    async with orgs_store.transaction() as tx:
        assert await ws.count_live_workspaces(tx.conn, "org-a") == 2
        assert await ws.delete_organization_workspaces(tx.conn, "org-a", clock.now()) == 2
    async with orgs_store.transaction() as tx:
        assert await ws.count_live_workspaces(tx.conn, "org-a") == 0
        assert await ws.count_live_workspaces(tx.conn, "org-b") == 1
        for record in (live, degraded):
            found = await ws.get_workspace(tx.conn, "org-a", record.id)
            assert found is not None
            assert found.state == ws.DELETING
            assert found.delete_time == clock.now()
            assert found.version == 2
            assert await ws.credential_hash_of(tx.conn, record.id) is None
        untouched = await ws.get_workspace(tx.conn, "org-a", gone.id)
        assert untouched is not None
        assert untouched.version == 4
        assert await ws.credential_hash_of(tx.conn, other.id) is not None


async def test_display_name_is_unique_among_live_workspaces_only(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    first = _workspace(clock, "org-a", "prod")
    await _insert(orgs_store, first)
    with pytest.raises(ws.NameTaken):
        await _insert(orgs_store, _workspace(clock, "org-a", "prod"))
    await _insert(orgs_store, _workspace(clock, "org-b", "prod"))  # another organization: fine
    async with orgs_store.transaction() as tx:
        assert await ws.mark_deleting(tx.conn, "org-a", first.id, 1, clock.now()) is not None
    await _insert(orgs_store, _workspace(clock, "org-a", "prod"))  # the name is free again


async def test_queries_are_scoped_by_organization(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    record = _workspace(clock, "org-a", "prod")
    await _insert(orgs_store, record)
    async with orgs_store.transaction() as tx:
        assert await ws.get_workspace(tx.conn, "org-b", record.id) is None
        assert (
            await ws.update_workspace(tx.conn, "org-b", record.id, 1, {"description": "x"}, clock.now())
            is None
        )
        assert await ws.mark_deleting(tx.conn, "org-b", record.id, 1, clock.now()) is None
        assert await ws.replace_credential(tx.conn, "org-b", record.id, "1" * 64, clock.now()) is None
        assert await ws.list_workspaces(tx.conn, "org-b", ws.ListQuery()) == ([], "")
        assert await ws.get_workspace(tx.conn, "org-a", record.id) == record


async def test_update_needs_the_expected_version_and_a_free_name(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    record = _workspace(clock, "org-a", "prod")
    await _insert(orgs_store, record)
    await _insert(orgs_store, _workspace(clock, "org-a", "staging"))
    clock.advance(seconds=1)
    async with orgs_store.transaction() as tx:
        assert (
            await ws.update_workspace(tx.conn, "org-a", record.id, 2, {"description": "x"}, clock.now())
            is None
        )
        updated = await ws.update_workspace(tx.conn, "org-a", record.id, 1, {"description": "x"}, clock.now())
    assert updated is not None
    assert updated.description == "x"
    assert updated.version == 2
    assert updated.update_time == clock.now()
    with pytest.raises(ws.NameTaken):
        async with orgs_store.transaction() as tx:
            await ws.update_workspace(
                tx.conn, "org-a", record.id, 2, {"display_name": "staging"}, clock.now()
            )


async def test_list_filters_orders_and_pages(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    names = [f"ws-{index:02d}" for index in range(7)]
    for index, name in enumerate(names):
        state = ws.ACTIVE if index % 2 else ws.PROVISIONING
        await _insert(orgs_store, _workspace(clock, "org-a", name, state=state, server_version=f"1.{index}"))
        clock.advance(seconds=1)
    await _insert(orgs_store, _workspace(clock, "org-b", "elsewhere", state=ws.ACTIVE))
    seen: list[str] = []
    token = ""
    async with orgs_store.transaction() as tx:
        while True:
            page, token = await ws.list_workspaces(
                tx.conn, "org-a", ws.ListQuery(page_size=3, page_token=token, order_by="display_name desc")
            )
            seen.extend(record.display_name for record in page)
            if not token:
                break
        assert seen == sorted(names, reverse=True)
        active, _ = await ws.list_workspaces(tx.conn, "org-a", ws.ListQuery(filter="state = ACTIVE"))
        assert [record.display_name for record in active] == ["ws-01", "ws-03", "ws-05"]
        versioned, _ = await ws.list_workspaces(
            tx.conn, "org-a", ws.ListQuery(filter='server_version = "1.4" OR display_name = "ws-06"')
        )
        assert [record.display_name for record in versioned] == ["ws-04", "ws-06"]
        with pytest.raises(InvalidArgument) as bad:
            await ws.list_workspaces(tx.conn, "org-a", ws.ListQuery(filter="credential_hash = 'x'"))
        assert bad.value.violations[0].field == "filter"
        with pytest.raises(InvalidArgument):
            await ws.list_workspaces(tx.conn, "org-a", ws.ListQuery(order_by="endpoint"))


async def test_heartbeat_recovers_degraded_and_needs_the_current_credential(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    degraded = _workspace(clock, "org-a", "one", state=ws.DEGRADED, last_heartbeat_time=clock.now())
    provisioning = _workspace(clock, "org-a", "two")
    await _insert(orgs_store, degraded, "a" * 64)
    await _insert(orgs_store, provisioning, "b" * 64)
    clock.advance(minutes=1)
    async with orgs_store.transaction() as tx:
        assert await ws.record_heartbeat(tx.conn, degraded.id, "b" * 64, clock.now()) is None
        beat = await ws.record_heartbeat(tx.conn, degraded.id, "a" * 64, clock.now())
        assert beat is not None
        previous, record = beat
        assert previous == ws.DEGRADED
        assert record.state == ws.ACTIVE
        assert record.last_heartbeat_time == clock.now()
        assert record.version == degraded.version
        again = await ws.record_heartbeat(tx.conn, degraded.id, "a" * 64, clock.now())
        assert again is not None
        assert again[0] == ws.ACTIVE
        waiting = await ws.record_heartbeat(tx.conn, provisioning.id, "b" * 64, clock.now())
        assert waiting is not None
        assert waiting[0] == ws.PROVISIONING
        assert waiting[1].state == ws.PROVISIONING
        assert waiting[1].last_heartbeat_time is None


async def test_register_is_refused_after_rotation_or_deletion(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    record = _workspace(clock, "org-a", "one")
    await _insert(orgs_store, record, "a" * 64)
    async with orgs_store.transaction() as tx:
        await ws.replace_credential(tx.conn, "org-a", record.id, "c" * 64, clock.now())
        assert await ws.register_server(tx.conn, record.id, "a" * 64, "h:1", "1.0", clock.now()) is None
        registered = await ws.register_server(tx.conn, record.id, "c" * 64, "h:1", "1.0", clock.now())
        assert registered is not None
        assert registered[0] == ws.PROVISIONING
        assert registered[1].state == ws.ACTIVE
        assert registered[1].endpoint == "h:1"
        await ws.mark_deleting(tx.conn, "org-a", record.id, registered[1].version, clock.now())
        assert await ws.register_server(tx.conn, record.id, "c" * 64, "h:1", "1.0", clock.now()) is None
        assert await ws.record_heartbeat(tx.conn, record.id, "c" * 64, clock.now()) is None


async def test_degrade_silent_moves_each_silent_workspace_once(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    start = clock.now()
    silent = [
        _workspace(clock, "org-a", f"silent-{index}", state=ws.ACTIVE, last_heartbeat_time=start)
        for index in range(3)
    ]
    fresh = _workspace(
        clock, "org-a", "fresh", state=ws.ACTIVE, last_heartbeat_time=start + timedelta(seconds=20)
    )
    waiting = _workspace(clock, "org-a", "provisioning")
    for record in (*silent, fresh, waiting):
        await _insert(orgs_store, record)
    clock.advance(seconds=31)
    cutoff = clock.now() - timedelta(seconds=30)
    async with orgs_store.transaction() as tx:
        first = await ws.degrade_silent(tx.conn, cutoff, clock.now(), limit=2)
        second = await ws.degrade_silent(tx.conn, cutoff, clock.now(), limit=2)
        third = await ws.degrade_silent(tx.conn, cutoff, clock.now(), limit=2)
    assert len(first) == 2
    assert len(second) == 1
    assert third == []
    assert {change.id for change in first + second} == {record.id for record in silent}
    assert all(change.last_heartbeat_time == start for change in first + second)
    async with orgs_store.transaction() as tx:
        states = {
            r.display_name: r.state for r in (await ws.list_workspaces(tx.conn, "org-a", ws.ListQuery()))[0]
        }
    assert states == {
        "silent-0": ws.DEGRADED,
        "silent-1": ws.DEGRADED,
        "silent-2": ws.DEGRADED,
        "fresh": ws.ACTIVE,
        "provisioning": ws.PROVISIONING,
    }


async def test_concurrent_sweepers_degrade_each_workspace_once(
    orgs_store: OrgsStore, database_url: str
) -> None:
    clock = ManualClock()
    records = [
        _workspace(clock, "org-a", f"ws-{index}", state=ws.ACTIVE, last_heartbeat_time=clock.now())
        for index in range(40)
    ]
    for record in records:
        await _insert(orgs_store, record)
    clock.advance(minutes=1)
    engines: list[AsyncEngine] = [create_engine(database_url) for _ in range(3)]
    try:

        async def sweep(engine: AsyncEngine) -> list[str]:
            moved: list[str] = []
            while True:
                async with engine.begin() as conn:
                    batch = await ws.degrade_silent(conn, clock.now() - timedelta(seconds=30), clock.now(), 7)
                moved.extend(change.id for change in batch)
                if not batch:
                    return moved

        results = await asyncio.gather(*(sweep(engine) for engine in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    moved = [workspace_id for result in results for workspace_id in result]
    assert sorted(moved) == sorted(record.id for record in records)  # each exactly once


async def test_purge_deleted_removes_only_expired_deleting_rows(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    old = _workspace(clock, "org-a", "old", state=ws.DELETING, delete_time=clock.now())
    live = _workspace(clock, "org-a", "live")
    clock.advance(days=6)
    recent = _workspace(clock, "org-a", "recent", state=ws.DELETING, delete_time=clock.now())
    for record in (old, live, recent):
        await _insert(orgs_store, record)
    clock.advance(days=2)
    async with orgs_store.transaction() as tx:
        purged = await ws.purge_deleted(tx.conn, clock.now() - timedelta(days=7), 100)
        assert [change.id for change in purged] == [old.id]
        assert await ws.get_workspace(tx.conn, "org-a", old.id) is None
        assert await ws.get_workspace(tx.conn, "org-a", recent.id) is not None
        assert await ws.get_workspace(tx.conn, "org-a", live.id) is not None
