"""WatchRun / WatchRuns over the change log: order, resumption, filtering, replicas, cancellation.

Domain level (Runs + Watches + ChangeHub) on SQLite and PostgreSQL; the
two-replica test runs two engines, stores and hubs on one PostgreSQL database,
the second hub woken only by PostgreSQL's NOTIFY through its LISTEN connection.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.db import create_engine
from services.kit.rbac_lookup import EVERYTHING, Lookup
from services.metadata import run_changes as rc
from services.metadata import run_states as s
from services.metadata.runs import Runs
from services.metadata.store import MetadataStore
from services.metadata.watch import DELETED, ChangeHub, OutOfRange, Watches, WatchEvent
from tests.clock import ManualClock
from tests.metadata.run_fixtures import snapshot_in_new_project

_ids = itertools.count()
TIMEOUT = 10.0  # only bounds a broken test; events arrive in milliseconds


def request_id() -> str:
    return f"req-{next(_ids)}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def take(events: AsyncIterator[WatchEvent], count: int) -> list[WatchEvent]:
    """The next `count` non-heartbeat events."""
    found: list[WatchEvent] = []

    async def collect() -> None:
        async for event in events:
            if event.kind != "heartbeat":
                found.append(event)
                if len(found) == count:
                    return

    await asyncio.wait_for(collect(), TIMEOUT)
    return found


def label(event: WatchEvent) -> tuple[str, str, str]:
    assert event.run is not None
    return (event.kind, event.step.name if event.step else "", (event.step or event.run).status)


async def drive_run(runs: Runs, project_id: str, run_id: str) -> None:
    """load, train, features, evaluate through RUNNING to COMPLETED (the run follows)."""
    for name in ("load", "train", "features", "evaluate"):
        for status in (s.RUNNING, s.COMPLETED):
            await runs.update_step_status(
                project_id, run_id, name, status, principal="orch", request_id=request_id()
            )


EXPECTED_CHANGES = [
    ("change", "load", "running"),
    ("change", "", "running"),
    ("change", "load", "completed"),
    ("change", "train", "running"),
    ("change", "train", "completed"),
    ("change", "features", "running"),
    ("change", "features", "completed"),
    ("change", "evaluate", "running"),
    ("change", "evaluate", "completed"),
    ("change", "", "completed"),
]


async def test_every_status_change_of_a_run_and_its_steps_arrives_in_order(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    hub = ChangeHub()
    runs = Runs(metadata_store, clock, notify=hub.notify)
    watches = Watches(metadata_store, hub)
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
    events = watches.watch_run(project_id, run.id, 0)
    start = await take(events, 5)
    assert [label(e) for e in start] == [
        ("snapshot", "", "initializing"),
        *[("snapshot", name, "initializing") for name in ("load", "train", "features", "evaluate")],
    ]
    # A late, not applied report writes nothing to the log.
    driving = asyncio.create_task(drive_run(runs, project_id, run.id))
    changes = await take(events, len(EXPECTED_CHANGES))
    await driving
    assert [label(e) for e in changes] == EXPECTED_CHANGES
    cursors = [e.cursor for e in changes]
    assert cursors == sorted(cursors)
    assert len(set(cursors)) == len(cursors)
    assert all(e.cursor > start[0].cursor for e in changes)
    # A step change carries the run as it was at that change.
    assert changes[0].run is not None
    assert changes[0].run.status == s.INITIALIZING
    await events.aclose()  # type: ignore[attr-defined]
    assert hub.watchers == 0


async def test_resume_after_a_dropped_stream_loses_and_repeats_nothing(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    hub = ChangeHub()
    runs = Runs(metadata_store, clock, notify=hub.notify)
    watches = Watches(metadata_store, hub)
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
    first = watches.watch_run(project_id, run.id, 0)
    await take(first, 5)
    await drive_run(runs, project_id, run.id)
    got = await take(first, 4)
    await first.aclose()  # type: ignore[attr-defined]  # the stream drops after 4 changes
    resumed = watches.watch_run(project_id, run.id, got[-1].cursor)
    rest = await take(resumed, len(EXPECTED_CHANGES) - 4)
    assert [label(e) for e in got + rest] == EXPECTED_CHANGES
    # Deleting the run ends the watch with a DELETED event.
    await runs.delete_run(project_id, run.id)
    deleted = await take(resumed, 1)
    assert deleted[0].kind == DELETED
    assert [e async for e in resumed] == []
    assert hub.watchers == 0


async def test_watch_runs_shows_only_readable_runs_matching_the_filter(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    hub = ChangeHub()
    runs = Runs(metadata_store, clock, notify=hub.notify)
    watches = Watches(metadata_store, hub)
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    mine, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
    other, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")

    async def only_mine() -> Lookup:
        return Lookup(all=False, ids=frozenset({mine.id}))

    async def everything() -> Lookup:
        return EVERYTHING

    async with metadata_store.transaction() as tx:
        _, cursor = await rc.cursor_bounds(tx.conn)
    readable = watches.watch_runs(project_id, only_mine, cursor)
    completed = watches.watch_runs(project_id, everything, cursor, filter_text='status = "COMPLETED"')
    for run_id in (other.id, mine.id):
        await drive_run(runs, project_id, run_id)
    seen = await take(readable, 2)
    assert [(e.run.id, e.run.status) for e in seen if e.run] == [(mine.id, "running"), (mine.id, "completed")]
    assert all(e.step is None for e in seen)
    done = await take(completed, 2)
    assert [e.run.id for e in done if e.run] == [other.id, mine.id]
    for events in (readable, completed):
        await events.aclose()  # type: ignore[attr-defined]


async def test_a_purged_cursor_is_out_of_range(metadata_store: MetadataStore, clock: ManualClock) -> None:
    hub = ChangeHub()
    runs = Runs(metadata_store, clock, notify=hub.notify)
    watches = Watches(metadata_store, hub)
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
    await drive_run(runs, project_id, run.id)
    clock.advance(days=2)
    async with metadata_store.transaction() as tx:
        assert await rc.purge_before(tx.conn, clock.now() - timedelta(days=1)) == 11
    with pytest.raises(OutOfRange):
        await take(watches.watch_run(project_id, run.id, 3), 1)
    with pytest.raises(OutOfRange):
        await take(watches.watch_runs(project_id, lambda: _everything(), 10_000), 1)


async def _everything() -> Lookup:
    return EVERYTHING


async def test_cancelling_a_watcher_leaves_no_task_or_subscription(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    hub = ChangeHub()
    runs = Runs(metadata_store, clock, notify=hub.notify)
    watches = Watches(metadata_store, hub)
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
    before = asyncio.all_tasks()
    started = asyncio.Event()

    async def watch() -> None:
        async for _event in watches.watch_run(project_id, run.id, 0):
            started.set()

    task = asyncio.create_task(watch())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    assert hub.watchers == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.watchers == 0
    assert asyncio.all_tasks() <= before | {asyncio.current_task()}


# Replicas share a PostgreSQL database (NOTIFY crosses processes); SQLite's path is in-process.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_change_through_one_replica_reaches_a_watcher_on_another(
    engine: AsyncEngine, metadata_store: MetadataStore, clock: ManualClock
) -> None:
    other_engine = create_engine(engine.url.render_as_string(hide_password=False))
    hub_a, hub_b = ChangeHub(), ChangeHub()
    await hub_b.start(other_engine)
    try:
        runs_a = Runs(metadata_store, clock, notify=hub_a.notify)  # replica A writes
        watches_b = Watches(MetadataStore(other_engine), hub_b)  # replica B watches
        project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
        run, _ = await runs_a.create_run(project_id, snapshot_id, trigger="user", principal="u")
        events = watches_b.watch_run(project_id, run.id, 0)
        await take(events, 5)
        driving = asyncio.create_task(drive_run(runs_a, project_id, run.id))
        changes = await take(events, len(EXPECTED_CHANGES))
        await driving
        assert [label(e) for e in changes] == EXPECTED_CHANGES
        await events.aclose()  # type: ignore[attr-defined]
    finally:
        await hub_b.stop()
        await other_engine.dispose()
