"""Runs and step runs on SQLite and PostgreSQL: creation, callbacks, the run following its steps, lists."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import func, select

from services.kit.errors import InvalidArgument, NotFound
from services.kit.rbac_lookup import EVERYTHING, NOTHING, Lookup
from services.metadata import run_states as s
from services.metadata.run_store import step_runs
from services.metadata.runs import Runs
from services.metadata.snapshots import SnapshotInput, StepDefinition
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.run_fixtures import add_project_and_stack, snapshot_in_new_project
from tests.statements import counting_statements


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_create_run_makes_every_step_from_the_snapshot(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, pipeline_id, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, created = await runs.create_run(project_id, snapshot_id, trigger="schedule", principal="u1")
    assert created
    assert (run.status, run.pipeline_id, run.step_count, run.trigger, run.trigger_principal_id) == (
        s.INITIALIZING,
        pipeline_id,
        4,
        "schedule",
        "u1",
    )
    dag = await runs.run_dag(project_id, run.id)
    assert [(step.name, step.parents, step.status) for step in dag.steps] == [
        ("load", (), s.INITIALIZING),
        ("train", ("load",), s.INITIALIZING),
        ("features", ("load",), s.INITIALIZING),
        ("evaluate", ("train", "features"), s.INITIALIZING),
    ]


async def test_create_run_is_idempotent_and_scoped_to_the_project(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    other_project, _ = await add_project_and_stack(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    first, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1", request_id="k1")
    again, created = await runs.create_run(
        project_id, snapshot_id, trigger="user", principal="u1", request_id="k1"
    )
    assert (again.id, created) == (first.id, False)
    async with metadata_store.transaction() as tx:
        assert await tx.conn.scalar(select(func.count()).select_from(step_runs)) == 4
    with pytest.raises(NotFound):
        await runs.create_run(other_project, snapshot_id, trigger="user", principal="u1")
    with pytest.raises(NotFound):
        await runs.get_run(other_project, first.id)
    with pytest.raises(InvalidArgument):
        await runs.create_run(project_id, snapshot_id, trigger="cron", principal="u1")


async def test_run_status_moves_forward_only_and_says_so(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    queued = await runs.update_run_status(project_id, run.id, s.QUEUED, principal="orc", request_id="a")
    assert (queued.applied, queued.run.status) == (True, s.QUEUED)
    late = await runs.update_run_status(project_id, run.id, s.PROVISIONING, principal="orc", request_id="b")
    assert (late.applied, late.run.status) == (False, s.QUEUED)
    clock.advance(seconds=5)
    running = await runs.update_run_status(
        project_id, run.id, s.RUNNING, orchestrator_run_id="argo-1", principal="orc", request_id="c"
    )
    assert running.run.start_time == clock.now()
    assert running.run.orchestrator_run_id == "argo-1"
    done = await runs.update_run_status(project_id, run.id, s.COMPLETED, principal="orc", request_id="d")
    assert done.run.end_time == clock.now()
    after = await runs.update_run_status(project_id, run.id, s.RUNNING, principal="orc", request_id="e")
    assert (after.applied, after.run.status) == (False, s.COMPLETED)


async def test_a_retried_callback_returns_its_first_answer(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    first = await runs.update_step_status(
        project_id, run.id, "load", s.RUNNING, principal="orc", request_id="x"
    )
    retry = await runs.update_step_status(
        project_id, run.id, "load", s.RUNNING, principal="orc", request_id="x"
    )
    assert (first.applied, retry.applied) == (True, True)
    assert retry.step.attempt_count == 1
    fresh = await runs.update_step_status(
        project_id, run.id, "load", s.RUNNING, principal="orc", request_id="y"
    )
    assert (fresh.applied, fresh.step.attempt_count) == (False, 1)
    with pytest.raises(InvalidArgument) as missing:
        await runs.update_step_status(project_id, run.id, "load", s.COMPLETED, principal="orc", request_id="")
    assert missing.value.violations[0].field == "request_id"


async def test_steps_retry_and_count_attempts(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    for number, status in enumerate([s.RUNNING, s.RETRYING, s.RUNNING, s.COMPLETED]):
        update = await runs.update_step_status(
            project_id, run.id, "load", status, principal="orc", request_id=f"r{number}", cache_key="ck"
        )
        assert update.applied
    assert (update.step.attempt_count, update.step.status, update.step.cache_key) == (2, s.COMPLETED, "ck")
    assert update.step.heartbeat_deadline is None


async def test_the_run_follows_its_steps_to_the_end(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    started = await runs.update_step_status(
        project_id, run.id, "load", s.RUNNING, principal="o", request_id="1"
    )
    assert started.run_status == s.RUNNING
    outcomes = {"load": s.COMPLETED, "train": s.CACHED, "features": s.COMPLETED}
    for number, (name, status) in enumerate(outcomes.items()):
        update = await runs.update_step_status(
            project_id, run.id, name, status, principal="o", request_id=f"s{number}"
        )
        assert update.run_status == s.RUNNING
    last = await runs.update_step_status(
        project_id, run.id, "evaluate", s.FAILED, principal="o", request_id="z"
    )
    assert last.run_status == s.FAILED
    assert (await runs.get_run(project_id, run.id)).end_time == clock.now()


async def test_a_run_of_cached_steps_is_cached(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    for name in ("load", "train", "features", "evaluate"):
        update = await runs.update_step_status(
            project_id, run.id, name, s.CACHED, principal="o", request_id=name
        )
    assert update.run_status == s.CACHED


async def test_stopping_a_run_stops_its_open_steps(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    await runs.update_step_status(project_id, run.id, "load", s.COMPLETED, principal="o", request_id="1")
    await runs.update_run_status(project_id, run.id, s.STOPPED, principal="o", request_id="2")
    dag = await runs.run_dag(project_id, run.id)
    assert [step.status for step in dag.steps] == [s.COMPLETED, s.STOPPED, s.STOPPED, s.STOPPED]
    late = await runs.update_step_status(
        project_id, run.id, "train", s.RUNNING, principal="o", request_id="3"
    )
    assert (late.applied, late.step.status, late.run_status) == (False, s.STOPPED, s.STOPPED)


async def test_heartbeats_apply_only_to_running_steps(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    assert not (await runs.heartbeat(project_id, run.id, "load", principal="o")).applied
    await runs.update_step_status(project_id, run.id, "load", s.RUNNING, principal="o", request_id="1")
    clock.advance(seconds=30)
    beat = await runs.heartbeat(project_id, run.id, "load", principal="o", request_id="h1")
    assert (beat.applied, beat.status) == (True, s.RUNNING)
    step = (await runs.run_dag(project_id, run.id)).steps[0]
    assert step.last_heartbeat_time == clock.now()
    with pytest.raises(NotFound):
        await runs.heartbeat(project_id, run.id, "nope", principal="o")


async def test_list_runs_filters_orders_and_pages(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, pipeline_id, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    made = []
    for number in range(5):
        clock.advance(seconds=1)
        run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
        made.append(run)
        if number % 2 == 0:
            await runs.update_run_status(project_id, run.id, s.FAILED, principal="o", request_id=f"f{number}")
    failed, token = await runs.list_runs(
        project_id,
        EVERYTHING,
        filter_text=f'status = "FAILED" AND pipeline_id = "{pipeline_id}"',
        order_by="",
        size=2,
        page_token="",
    )
    assert [r.id for r in failed] == [made[4].id, made[2].id]
    rest, last = await runs.list_runs(
        project_id,
        EVERYTHING,
        filter_text=f'status = "FAILED" AND pipeline_id = "{pipeline_id}"',
        order_by="",
        size=2,
        page_token=token,
    )
    assert ([r.id for r in rest], last) == ([made[0].id], "")
    oldest, _ = await runs.list_runs(
        project_id, EVERYTHING, filter_text="trigger = USER", order_by="create_time", size=1, page_token=""
    )
    assert [r.id for r in oldest] == [made[0].id]
    since = made[3].create_time.isoformat().replace("+00:00", "Z")
    recent, _ = await runs.list_runs(
        project_id, EVERYTHING, filter_text=f'create_time >= "{since}"', order_by="", size=10, page_token=""
    )
    assert [r.id for r in recent] == [made[4].id, made[3].id]
    shared, _ = await runs.list_runs(
        project_id,
        Lookup(all=False, ids=frozenset({made[1].id})),
        filter_text="",
        order_by="",
        size=10,
        page_token="",
    )
    assert [r.id for r in shared] == [made[1].id]
    assert (await runs.list_runs(project_id, NOTHING, filter_text="", order_by="", size=10, page_token=""))[
        0
    ] == []
    with pytest.raises(InvalidArgument):
        await runs.list_runs(
            project_id, EVERYTHING, filter_text="owner = 1", order_by="", size=10, page_token=""
        )


async def test_list_step_runs_pages_in_snapshot_order(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    page, token = await runs.list_step_runs(project_id, run.id, filter_text="", size=3, page_token="")
    rest, last = await runs.list_step_runs(project_id, run.id, filter_text="", size=3, page_token=token)
    assert [step.name for step in page + rest] == ["load", "train", "features", "evaluate"]
    assert last == ""
    step = await runs.get_step_run(project_id, run.id, rest[0].id)
    assert step.name == "evaluate"


async def test_a_list_page_and_a_dag_take_a_fixed_number_of_statements(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    _, stack_id = await add_project_and_stack(metadata_store, clock)
    wide = SnapshotInput(
        steps=tuple(
            StepDefinition(f"s{i}", "img", upstream_steps=(f"s{i - 1}",) if i else ()) for i in range(200)
        ),
        stack_id=stack_id,
    )
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock, wide)
    runs = Runs(metadata_store, clock)
    for _ in range(30):
        run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    with counting_statements(metadata_store.engine) as seen:
        page, _ = await runs.list_runs(
            project_id, EVERYTHING, filter_text="", order_by="", size=25, page_token=""
        )
    assert len(page) == 25
    assert len([sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]) == 1
    with counting_statements(metadata_store.engine) as seen:
        dag = await runs.run_dag(project_id, run.id)
    assert len(dag.steps) == 200
    assert len([sql for sql in seen if sql.lstrip().upper().startswith("SELECT")]) == 2


async def test_delete_run_removes_its_steps(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    kept, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    with counting_statements(metadata_store.engine) as seen:
        await runs.delete_run(project_id, run.id)
    # One bounded DELETE per table, however many steps: artifact links; metadata entries, tags and
    # log pointers of the run and of its steps (3 x 2); the step runs; the run.
    assert len([sql for sql in seen if sql.lstrip().upper().startswith("DELETE")]) == 9
    with pytest.raises(NotFound):
        await runs.get_run(project_id, run.id)
    async with metadata_store.transaction() as tx:
        left = await tx.conn.scalar(select(func.count()).select_from(step_runs))
    assert left == 4
    assert (await runs.get_run(project_id, kept.id)).id == kept.id


async def test_steps_finishing_at_once_still_end_the_run(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    await asyncio.gather(
        *(
            runs.update_step_status(project_id, run.id, name, s.COMPLETED, principal="o", request_id=name)
            for name in ("load", "train", "features", "evaluate")
        )
    )
    assert (await runs.get_run(project_id, run.id)).status == s.COMPLETED


async def test_duplicated_callbacks_in_flight_apply_once(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs = Runs(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    answers = await asyncio.gather(
        *(
            runs.update_step_status(
                project_id, run.id, "load", s.RUNNING, principal="o", request_id=f"dup-{i}"
            )
            for i in range(4)
        )
    )
    assert sorted(answer.applied for answer in answers) == [False, False, False, True]
    assert (await runs.run_dag(project_id, run.id)).steps[0].attempt_count == 1
