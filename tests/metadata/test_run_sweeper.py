"""The heartbeat sweeper on SQLite and PostgreSQL, driven by a ManualClock."""

from __future__ import annotations

import asyncio

import pytest

from services.metadata import run_states as s
from services.metadata import run_store as rs
from services.metadata.run_sweeper import RunSweeper
from services.metadata.runs import SILENT_STEP_REASON, Runs
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.run_fixtures import snapshot_in_new_project


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def running_run(store: MetadataStore, clock: ManualClock) -> tuple[Runs, str, str]:
    """A run whose 'load' step (60 s heartbeat timeout) is RUNNING; runs, project and run ids."""
    project_id, _, snapshot_id = await snapshot_in_new_project(store, clock)
    runs = Runs(store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    await runs.update_step_status(project_id, run.id, "load", s.RUNNING, principal="o", request_id="start")
    return runs, project_id, run.id


async def test_a_step_silent_past_its_timeout_fails_and_the_run_follows(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    runs, project_id, run_id = await running_run(metadata_store, clock)
    sweeper = RunSweeper(runs)
    clock.advance(seconds=59)
    assert await sweeper.sweep_once() == 0
    clock.advance(seconds=2)
    assert await sweeper.sweep_once() == 1
    dag = await runs.run_dag(project_id, run_id)
    load = dag.steps[0]
    assert (load.status, load.status_reason, load.end_time) == (s.FAILED, SILENT_STEP_REASON, clock.now())
    # Other steps are not terminal yet: the run keeps RUNNING until they end.
    assert dag.run.status == s.RUNNING
    for name in ("train", "features", "evaluate"):
        await runs.update_step_status(project_id, run_id, name, s.STOPPED, principal="o", request_id=name)
    assert (await runs.get_run(project_id, run_id)).status == s.FAILED


async def test_heartbeats_keep_a_step_alive(metadata_store: MetadataStore, clock: ManualClock) -> None:
    runs, project_id, run_id = await running_run(metadata_store, clock)
    sweeper = RunSweeper(runs)
    for _ in range(3):
        clock.advance(seconds=50)
        await runs.heartbeat(project_id, run_id, "load", principal="o")
        assert await sweeper.sweep_once() == 0
    assert (await runs.run_dag(project_id, run_id)).steps[0].status == s.RUNNING


async def test_a_run_whose_last_open_step_goes_silent_fails(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    runs, project_id, run_id = await running_run(metadata_store, clock)
    for name in ("train", "features", "evaluate"):
        await runs.update_step_status(project_id, run_id, name, s.CACHED, principal="o", request_id=name)
    clock.advance(seconds=61)
    await RunSweeper(runs).sweep_once()
    run = await runs.get_run(project_id, run_id)
    assert (run.status, run.end_time) == (s.FAILED, clock.now())


async def test_a_run_left_behind_its_ended_steps_is_repaired_by_the_next_sweep(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    runs, project_id, run_id = await running_run(metadata_store, clock)
    for name in ("train", "features", "evaluate"):
        await runs.update_step_status(project_id, run_id, name, s.CACHED, principal="o", request_id=name)
    clock.advance(seconds=61)
    # A sweep that failed the silent step and crashed before moving its run: only the step moved.
    async with metadata_store.transaction() as tx:
        failed = await rs.fail_silent_steps(tx.conn, clock.now(), SILENT_STEP_REASON, 10)
    stuck = await runs.get_run(project_id, run_id)

    repaired = await RunSweeper(runs).sweep_once()
    run = await runs.get_run(project_id, run_id)
    again = await RunSweeper(runs).sweep_once()

    assert (failed, stuck.status) == ([run_id], s.RUNNING)
    assert (repaired, run.status, again) == (1, s.FAILED, 0)


async def test_concurrent_sweepers_fail_each_step_once(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    made = [await running_run(metadata_store, clock) for _ in range(4)]
    clock.advance(seconds=61)
    runs = made[0][0]
    touched = await asyncio.gather(*(RunSweeper(runs, batch=2).sweep_once() for _ in range(3)))
    assert sum(touched) == 4
    for runs_of, project_id, run_id in made:
        assert (await runs_of.run_dag(project_id, run_id)).steps[0].status == s.FAILED


async def test_the_periodic_task_starts_and_stops(metadata_store: MetadataStore, clock: ManualClock) -> None:
    runs, project_id, run_id = await running_run(metadata_store, clock)
    clock.advance(seconds=61)
    sweeper = RunSweeper(runs, interval_seconds=3600)
    sweeper.start()
    try:
        for _ in range(200):
            if (await runs.run_dag(project_id, run_id)).steps[0].status == s.FAILED:
                break
            await asyncio.sleep(0.01)
    finally:
        await sweeper.stop()
    assert (await runs.run_dag(project_id, run_id)).steps[0].status == s.FAILED
