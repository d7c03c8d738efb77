"""The bulk seeder writes rows the service reads back through its normal store and domain functions."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.rbac_lookup import Lookup
from services.metadata import annotation_store, artifact_store, seeding
from services.metadata import run_states as s
from services.metadata.artifact_store import ListQuery
from services.metadata.pipelines import Pipelines
from services.metadata.runs import Runs
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.domain_fixtures import offline_domain
from tests.metadata.run_fixtures import add_project_and_stack

RUNS = 37


async def test_seeded_runs_read_back_through_the_store(
    engine: AsyncEngine, metadata_store: MetadataStore
) -> None:
    clock = ManualClock()
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    start = clock.now() - timedelta(days=1)
    result = await seeding.seed_project(
        engine, project_id, stack_id, runs_count=RUNS, pipeline_count=3, start=start, batch_runs=10
    )
    assert result.rows["metadata_runs"] == RUNS
    assert result.rows["metadata_step_runs"] == RUNS * seeding.STEPS
    assert sum(result.status_counts.values()) == RUNS
    readable = Lookup(all=False, project_ids=frozenset({project_id}))
    runs = Runs(metadata_store, clock)

    # Every run comes back, newest first, over keyset pages.
    seen, token = [], ""
    while True:
        page, token = await runs.list_runs(
            project_id, readable, filter_text="", order_by="", size=10, page_token=token
        )
        seen += page
        if not token:
            break
    assert len(seen) == RUNS
    assert [run.create_time for run in seen] == sorted((run.create_time for run in seen), reverse=True)
    assert seen[0].create_time == start + (RUNS - 1) * seeding.RUN_SPACING

    # The status and pipeline filters see the seeded values.
    pipeline = result.pipelines[1]
    filtered, _ = await runs.list_runs(
        project_id,
        readable,
        filter_text=f'status = "COMPLETED" AND pipeline_id = "{pipeline.id}"',
        order_by="",
        size=100,
        page_token="",
    )
    expected = [run for run in seen if run.pipeline_id == pipeline.id and run.status == s.COMPLETED]
    assert [run.id for run in filtered] == [run.id for run in expected]
    assert all(run.snapshot_id == pipeline.snapshot_id for run in filtered)

    # A run's DAG: 10 steps in order with their parents; a completed run's steps all completed.
    completed = next(run for run in seen if run.status == s.COMPLETED)
    dag = await runs.run_dag(project_id, completed.id)
    assert [step.name for step in dag.steps] == [f"step-{i}" for i in range(seeding.STEPS)]
    assert dag.steps[1].parents == ("step-0",)
    assert {step.status for step in dag.steps} == {s.COMPLETED}

    # The snapshot parses into its steps.
    snapshot = await Pipelines(offline_domain(metadata_store, clock)).get_snapshot(
        project_id, pipeline.id, pipeline.snapshot_id
    )
    assert [step.name for step in snapshot.steps] == [f"step-{i}" for i in range(seeding.STEPS)]

    async with metadata_store.transaction() as tx:
        # One output version per completed step, linked to it, numbered consecutively per artifact.
        links = await artifact_store.links_of_run(tx.conn, project_id, completed.id, "output")
        assert sorted(link.step_run_id for link in links) == sorted(step.id for step in dag.steps)
        artifact = await artifact_store.get_artifact(tx.conn, project_id, links[0].artifact_id)
        assert artifact is not None
        versions, _ = await artifact_store.list_versions(
            tx.conn, project_id, artifact.id, ListQuery(page_size=1000), readable
        )
        assert sorted(v.number for v in versions) == list(range(1, artifact.latest_version_number + 1))
        entries, _ = await annotation_store.list_entries(tx.conn, project_id, "run", completed.id, 10, "")
        assert {entry.key: entry.value for entry in entries}["git_branch"] == "main"
