"""Batched orchestrator callbacks (RecordRunCallbacks) on SQLite and PostgreSQL.

The batch must mean what the single callbacks mean one after the other: the same
states, the same `applied` answers, the same change log; all or nothing; one
answer per request id; a fixed number of statements whatever its size.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import func, select

from services.kit.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata import artifact_store as st
from services.metadata import run_changes as rc
from services.metadata import run_states as s
from services.metadata.artifact_store import VersionInput
from services.metadata.artifacts import Artifacts, StepOutput
from services.metadata.run_callbacks import (
    Callback,
    RunCallbacks,
    RunStatusReport,
    StepHeartbeatReport,
    StepOutputsReport,
    StepStatusReport,
)
from services.metadata.runs import Runs
from services.metadata.snapshots import SnapshotInput, StepDefinition
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.run_fixtures import add_project_and_stack, snapshot_in_new_project
from tests.statements import counting_statements

DIAMOND = ("load", "train", "features", "evaluate")


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def _output(step: str, uri: str = "") -> StepOutput:
    return StepOutput("out", f"data.{step}", VersionInput(uri or f"s3://bucket/{uuid.uuid4()}"))


def _whole_run(steps: tuple[str, ...]) -> list[Callback]:
    callbacks: list[Callback] = [RunStatusReport(s.RUNNING, orchestrator_run_id="argo-1")]
    for name in steps:
        callbacks += [
            StepStatusReport(name, s.RUNNING),
            StepOutputsReport(name, [_output(name)]),
            StepStatusReport(name, s.COMPLETED, cache_key=f"key-{name}"),
        ]
    return callbacks


async def _changes(store: MetadataStore, project_id: str, run_id: str) -> list[tuple[str, str, str, str]]:
    async with store.transaction() as tx:
        changes = await rc.changes_of_run(tx.conn, project_id, run_id, 0)
    return [
        (c.kind, c.step.name if c.step else "", c.step.status if c.step else "", c.run.status)
        for c in changes
    ]


async def test_a_batch_means_what_the_single_callbacks_mean_one_after_the_other(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    one, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    other, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    callbacks = [*_whole_run(DIAMOND), StepStatusReport("load", s.RUNNING), RunStatusReport(s.RUNNING)]

    # The single calls, one after the other, on `one`.
    singles = []
    for callback in callbacks:
        rid = str(uuid.uuid4())
        if isinstance(callback, RunStatusReport):
            singles.append(
                (
                    await runs.update_run_status(
                        project_id,
                        one.id,
                        callback.status,
                        orchestrator_run_id=callback.orchestrator_run_id,
                        principal="u1",
                        request_id=rid,
                    )
                ).applied
            )
        elif isinstance(callback, StepStatusReport):
            singles.append(
                (
                    await runs.update_step_status(
                        project_id,
                        one.id,
                        callback.step_name,
                        callback.status,
                        cache_key=callback.cache_key,
                        principal="u1",
                        request_id=rid,
                    )
                ).applied
            )
        else:
            assert isinstance(callback, StepOutputsReport)
            dag = await runs.run_dag(project_id, one.id)
            step_id = next(step.id for step in dag.steps if step.name == callback.step_name)
            await artifacts.record_outputs(
                project_id, step_id, callback.outputs, principal="u1", request_id=rid
            )
            singles.append(True)

    # The same as one batch on `other`.
    batch = await batches.apply(project_id, other.id, callbacks, principal="u1", request_id=str(uuid.uuid4()))

    assert [result.applied for result in batch.results] == singles
    assert singles[-2:] == [False, False]  # a late RUNNING after COMPLETED changes nothing, and says so
    assert batch.run.status == s.COMPLETED
    assert batch.run.orchestrator_run_id == "argo-1"
    assert batch.run.start_time is not None
    assert batch.run.end_time is not None
    assert await _changes(metadata_store, project_id, other.id) == (
        await _changes(metadata_store, project_id, one.id)
    )
    dag = await runs.run_dag(project_id, other.id)
    assert [(step.status, step.attempt_count, step.cache_key) for step in dag.steps] == [
        (s.COMPLETED, 1, f"key-{name}") for name in DIAMOND
    ]
    # Each step's output is version 2 of its artifact (`one` made version 1), linked to the step.
    outputs = [result.versions for result in batch.results if result.versions]
    assert [[v.number for v in versions] for versions in outputs] == [[2]] * 4
    assert {v.producer_step_run_id for versions in outputs for v in versions} == {
        step.id for step in dag.steps
    }
    async with metadata_store.transaction() as tx:
        links = await st.links_of_steps(tx.conn, project_id, [step.id for step in dag.steps], st.OUTPUT)
    assert sorted(link.artifact_version_id for link in links) == sorted(
        v.id for versions in outputs for v in versions
    )
    assert sorted(batch.new_version_ids) == sorted(v.id for versions in outputs for v in versions)


async def test_a_retry_gets_the_first_answer_and_changes_nothing(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    callbacks = _whole_run(("load",))
    first = await batches.apply(project_id, run.id, callbacks, principal="u1", request_id="batch-1")
    changes = await _changes(metadata_store, project_id, run.id)
    clock.advance(seconds=5)
    again = await batches.apply(project_id, run.id, callbacks, principal="u1", request_id="batch-1")
    assert [r.applied for r in again.results] == [r.applied for r in first.results] == [True] * 4
    assert [[v.id for v in r.versions] for r in again.results] == [
        [v.id for v in r.versions] for r in first.results
    ]
    assert await _changes(metadata_store, project_id, run.id) == changes
    async with metadata_store.transaction() as tx:
        assert await tx.conn.scalar(select(func.count()).select_from(st.artifact_versions)) == 1
    # The same key from another principal is another request: every transition is late now.
    other = await batches.apply(project_id, run.id, callbacks, principal="u2", request_id="batch-1")
    assert [r.applied for r in other.results] == [False, False, False, False]
    assert [v.id for v in other.results[2].versions] == [v.id for v in first.results[2].versions]


async def test_a_batch_is_all_or_nothing(metadata_store: MetadataStore, clock: ManualClock) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    before = await _changes(metadata_store, project_id, run.id)
    broken = [*_whole_run(("load",)), StepStatusReport("no-such-step", s.RUNNING)]
    with pytest.raises(NotFound, match=r"callbacks\[4\]"):
        await batches.apply(project_id, run.id, broken, principal="u1", request_id="b1")
    dag = await runs.run_dag(project_id, run.id)
    assert {step.status for step in dag.steps} == {s.INITIALIZING}
    assert await _changes(metadata_store, project_id, run.id) == before
    async with metadata_store.transaction() as tx:
        assert await tx.conn.scalar(select(func.count()).select_from(st.artifact_versions)) == 0
    # The refused request id was not remembered: a corrected batch under it applies.
    fixed = await batches.apply(project_id, run.id, _whole_run(("load",)), principal="u1", request_id="b1")
    assert all(result.applied for result in fixed.results)


async def test_outputs_repeat_idempotently_and_conflict_with_another_version(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    same = _output("load", "s3://b/one")
    answer = await batches.apply(
        project_id,
        run.id,
        [StepOutputsReport("load", [same]), StepOutputsReport("load", [same])],
        principal="u1",
        request_id="o1",
    )
    assert [r.applied for r in answer.results] == [True, False]
    assert answer.results[0].versions == answer.results[1].versions
    later = await batches.apply(
        project_id, run.id, [StepOutputsReport("load", [same])], principal="u1", request_id="o2"
    )
    assert [r.applied for r in later.results] == [False]
    assert later.results[0].versions[0].id == answer.results[0].versions[0].id
    for callbacks in (
        [StepOutputsReport("load", [_output("load", "s3://b/two")])],
        [StepOutputsReport("train", [same]), StepOutputsReport("train", [_output("load", "s3://b/two")])],
    ):
        with pytest.raises(AlreadyExists):
            await batches.apply(project_id, run.id, callbacks, principal="u1", request_id=str(uuid.uuid4()))


async def test_heartbeats_and_a_terminal_run_status_inside_a_batch(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u1")
    answer = await batches.apply(
        project_id,
        run.id,
        [
            StepHeartbeatReport("load"),  # not RUNNING yet: nothing to extend
            StepStatusReport("load", s.RUNNING),
            StepHeartbeatReport("load"),
            RunStatusReport(s.STOPPING),
            RunStatusReport(s.STOPPED, reason="user asked"),
            StepStatusReport("train", s.RUNNING),  # the run is over: its steps were stopped
        ],
        principal="u1",
        request_id="h1",
    )
    assert [r.applied for r in answer.results] == [False, True, True, True, True, False]
    assert (answer.run.status, answer.run.status_reason) == (s.STOPPED, "user asked")
    dag = await runs.run_dag(project_id, run.id)
    assert {step.status for step in dag.steps} == {s.STOPPED}
    assert all(step.heartbeat_deadline is None for step in dag.steps)
    assert dag.steps[0].last_heartbeat_time == clock.now()


@pytest.mark.parametrize(
    ("callbacks", "field"),
    [
        ([], "callbacks"),
        ([StepStatusReport("", s.RUNNING)], "callbacks[0].step_status.step_name"),
        (
            [RunStatusReport(s.RUNNING), StepStatusReport("load", "sideways")],
            "callbacks[1].step_status.status",
        ),
        ([RunStatusReport(s.RUNNING, reason="x" * 1001)], "callbacks[0].run_status.status_reason"),
        ([StepOutputsReport("load", [])], "callbacks[0].step_outputs.outputs"),
        (
            [StepOutputsReport("load", [StepOutput("out", "data", VersionInput("not a uri"))])],
            "callbacks[0].step_outputs.outputs[0].artifact_version.uri",
        ),
    ],
)
async def test_bad_input_names_the_field(
    metadata_store: MetadataStore, clock: ManualClock, callbacks: list[Callback], field: str
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    run, _ = await Runs(metadata_store, clock).create_run(
        project_id, snapshot_id, trigger="user", principal="u"
    )
    with pytest.raises(InvalidArgument) as caught:
        await RunCallbacks(metadata_store, clock).apply(
            project_id, run.id, callbacks, principal="u", request_id="r"
        )
    assert caught.value.violations[0].field == field


async def test_a_batch_costs_a_fixed_number_of_statements_whatever_its_size(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    counts = []
    for size in (2, 20):
        _, stack_id = await add_project_and_stack(metadata_store, clock)
        steps = tuple(f"s{i}" for i in range(size))
        snapshot = SnapshotInput(
            steps=tuple(StepDefinition(name, "python:3.11") for name in steps), stack_id=stack_id
        )
        project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock, snapshot)
        runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
        first, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
        # The first run creates the artifacts (one INSERT each); the steady state is the second.
        await batches.apply(project_id, first.id, _whole_run(steps), principal="u", request_id="r1")
        run, _ = await runs.create_run(project_id, snapshot_id, trigger="user", principal="u")
        with counting_statements(metadata_store.engine) as seen:
            answer = await batches.apply(
                project_id, run.id, _whole_run(steps), principal="u", request_id="r2"
            )
        assert answer.run.status == s.COMPLETED
        counts.append(len(seen))
    # 61 callbacks cost what 7 do.
    assert counts[0] == counts[1], counts
    # PostgreSQL writes the steps and the run in one statement, numbers and inserts versions in one.
    assert counts[1] <= (10 if metadata_store.engine.dialect.name == "postgresql" else 14), counts


async def test_concurrent_batches_number_the_versions_of_shared_artifacts_without_gaps(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    project_id, _, snapshot_id = await snapshot_in_new_project(metadata_store, clock)
    runs, batches = Runs(metadata_store, clock), RunCallbacks(metadata_store, clock)
    created = [
        await runs.create_run(project_id, snapshot_id, trigger="user", principal="u") for _ in range(8)
    ]
    await batches.apply(project_id, created[0][0].id, _whole_run(DIAMOND), principal="u", request_id="first")
    answers = await asyncio.gather(
        *(
            batches.apply(project_id, run.id, _whole_run(DIAMOND), principal="u", request_id=str(i))
            for i, (run, _) in enumerate(created[1:])
        )
    )
    async with metadata_store.transaction() as tx:
        by_name = await st.get_artifacts_by_names(tx.conn, project_id, [f"data.{name}" for name in DIAMOND])
    for name in DIAMOND:
        artifact_id = by_name[f"data.{name}"].id
        numbers = sorted(
            version.number
            for answer in answers
            for result in answer.results
            for version in result.versions
            if version.artifact_id == artifact_id
        )
        assert numbers == list(range(2, 9)), (name, numbers)
