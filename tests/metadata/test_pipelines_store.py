"""Pipelines and snapshots on SQLite and PostgreSQL: uniqueness, scoping, deletion rules, lists."""

from __future__ import annotations

import pytest

from services.kit.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.kit.fieldmask import etag
from services.kit.rbac_lookup import EVERYTHING, NOTHING, Lookup
from services.metadata.pipelines import Pipelines
from services.metadata.runs import Runs
from services.metadata.snapshots import CodeReference, SnapshotInput, StepDefinition
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.domain_fixtures import OTHER_WORKLOAD, WORKLOAD, offline_domain
from tests.metadata.run_fixtures import add_project_and_stack, diamond


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_pipeline_names_are_unique_per_project(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_a, _ = await add_project_and_stack(metadata_store, clock)
    project_b, _ = await add_project_and_stack(metadata_store, clock)
    await pipelines.create_pipeline(WORKLOAD, project_a, "training", "")
    with pytest.raises(AlreadyExists):
        await pipelines.create_pipeline(WORKLOAD, project_a, "training", "")
    other = await pipelines.create_pipeline(WORKLOAD, project_b, "training", "")
    assert other.project_id == project_b


async def test_create_pipeline_and_snapshot_are_idempotent_by_request_id(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    first = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "", request_id="r-1")
    again = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "", request_id="r-1")
    assert again == first
    # The same request id from another caller is another request: here a name conflict.
    with pytest.raises(AlreadyExists):
        await pipelines.create_pipeline(OTHER_WORKLOAD, project_id, "a", "", request_id="r-1")
    snapshot = await pipelines.create_snapshot(WORKLOAD, project_id, first.id, diamond(stack_id), "s-1")
    replay = await pipelines.create_snapshot(WORKLOAD, project_id, first.id, diamond(stack_id), "s-1")
    assert replay.id == snapshot.id
    # A failed create remembers nothing: the request id is still free for a create that succeeds.
    with pytest.raises(AlreadyExists):
        await pipelines.create_pipeline(WORKLOAD, project_id, "a", "", request_id="r-2")
    assert (await pipelines.create_pipeline(WORKLOAD, project_id, "b", "", request_id="r-2")).name == "b"
    # A retry after the pipeline was deleted says so rather than creating another.
    await pipelines.delete_snapshot(project_id, first.id, snapshot.id)
    await pipelines.delete_pipeline(project_id, first.id, "")
    with pytest.raises(NotFound):
        await pipelines.create_pipeline(WORKLOAD, project_id, "a", "", request_id="r-1")


async def test_a_pipeline_of_another_project_is_not_found(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_a, _ = await add_project_and_stack(metadata_store, clock)
    project_b, _ = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_a, "a", "")
    with pytest.raises(NotFound):
        await pipelines.get_pipeline(project_b, pipeline.id)
    with pytest.raises(NotFound):
        await pipelines.create_pipeline(WORKLOAD, "missing-project", "a", "")


async def test_update_checks_the_etag_and_names(metadata_store: MetadataStore, clock: ManualClock) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, _ = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "")
    await pipelines.create_pipeline(WORKLOAD, project_id, "b", "")
    changed = await pipelines.update_pipeline(project_id, pipeline.id, {"description": "new"}, etag(1))
    assert (changed.description, changed.version) == ("new", 2)
    with pytest.raises(Aborted):
        await pipelines.update_pipeline(project_id, pipeline.id, {"description": "x"}, etag(1))
    with pytest.raises(AlreadyExists):
        await pipelines.update_pipeline(project_id, pipeline.id, {"name": "b"}, "")
    with pytest.raises(InvalidArgument):
        await pipelines.update_pipeline(project_id, pipeline.id, {"name": "Bad Name"}, "")


async def test_snapshot_needs_a_stack_of_the_workspace_and_a_repository_of_the_project(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "")
    with pytest.raises(InvalidArgument) as error:
        await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, diamond("no-such-stack"))
    assert error.value.violations[0].field == "snapshot.stack_id"
    with_code = SnapshotInput(
        steps=(StepDefinition("a", "img"),),
        stack_id=stack_id,
        code_reference=CodeReference("no-such-repository", "abc123"),
    )
    with pytest.raises(InvalidArgument) as error:
        await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, with_code)
    assert error.value.violations[0].field == "snapshot.code_reference.code_repository_id"


async def test_snapshot_round_trips_its_steps(metadata_store: MetadataStore, clock: ManualClock) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "")
    step = StepDefinition(
        "train",
        "img:1",
        command=("python", "-m", "train"),
        args=("--epochs", "3"),
        parameters={"lr": 0.1, "layers": [1, 2], "name": "x"},
        cpu=1.5,
        memory_bytes=2**30,
        gpu=1,
        cache_enabled=True,
        cache_key_inputs=("lr",),
        heartbeat_timeout_seconds=30,
    )
    made = await pipelines.create_snapshot(
        WORKLOAD, project_id, pipeline.id, SnapshotInput((step,), stack_id)
    )
    read = await pipelines.get_snapshot(project_id, pipeline.id, made.id)
    assert read.steps == (step,)
    assert read.step_count == 1
    with pytest.raises(NotFound):
        await pipelines.get_snapshot(project_id, "other-pipeline", made.id)


async def test_snapshots_list_without_steps_and_filtered_by_lookup(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "")
    made = []
    for _ in range(3):
        clock.advance(seconds=1)
        made.append(await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, diamond(stack_id)))
    listed, token = await pipelines.list_snapshots(
        project_id, pipeline.id, EVERYTHING, filter_text="", order_by="", size=2, page_token=""
    )
    assert [s.id for s in listed] == [made[2].id, made[1].id]
    assert all(s.steps == () and s.step_count == 4 for s in listed)
    rest, last = await pipelines.list_snapshots(
        project_id, pipeline.id, EVERYTHING, filter_text="", order_by="", size=2, page_token=token
    )
    assert ([s.id for s in rest], last) == ([made[0].id], "")
    only, _ = await pipelines.list_snapshots(
        project_id,
        pipeline.id,
        Lookup(all=False, ids=frozenset({made[1].id})),
        filter_text="",
        order_by="",
        size=10,
        page_token="",
    )
    assert [s.id for s in only] == [made[1].id]
    none, _ = await pipelines.list_snapshots(
        project_id, pipeline.id, NOTHING, filter_text="", order_by="", size=10, page_token=""
    )
    assert none == []


async def test_pipelines_list_pages_filters_and_respects_lookup(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    project_id, _ = await add_project_and_stack(metadata_store, clock)
    other_project, _ = await add_project_and_stack(metadata_store, clock)
    names = ["a", "b", "c"]
    made = {}
    for name in names:
        clock.advance(seconds=1)
        made[name] = await pipelines.create_pipeline(WORKLOAD, project_id, name, "")
    await pipelines.create_pipeline(WORKLOAD, other_project, "z", "")
    page, token = await pipelines.list_pipelines(
        project_id, EVERYTHING, filter_text="", order_by="name", size=2, page_token=""
    )
    assert [p.name for p in page] == ["a", "b"]
    page, token = await pipelines.list_pipelines(
        project_id, EVERYTHING, filter_text="", order_by="name", size=2, page_token=token
    )
    assert ([p.name for p in page], token) == (["c"], "")
    page, _ = await pipelines.list_pipelines(
        project_id, EVERYTHING, filter_text='name = "b"', order_by="", size=10, page_token=""
    )
    assert [p.name for p in page] == ["b"]
    page, _ = await pipelines.list_pipelines(
        project_id,
        Lookup(all=False, ids=frozenset({made["c"].id})),
        filter_text="",
        order_by="",
        size=10,
        page_token="",
    )
    assert [p.name for p in page] == ["c"]


async def test_deleting_a_snapshot_or_pipeline_with_runs_is_refused(
    metadata_store: MetadataStore, clock: ManualClock
) -> None:
    pipelines = Pipelines(offline_domain(metadata_store, clock))
    runs = Runs(metadata_store, clock)
    project_id, stack_id = await add_project_and_stack(metadata_store, clock)
    pipeline = await pipelines.create_pipeline(WORKLOAD, project_id, "a", "")
    used = await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, diamond(stack_id))
    unused = await pipelines.create_snapshot(WORKLOAD, project_id, pipeline.id, diamond(stack_id))
    run, _ = await runs.create_run(project_id, used.id, trigger="user", principal="u1")
    with pytest.raises(FailedPrecondition) as refused:
        await pipelines.delete_snapshot(project_id, pipeline.id, used.id)
    assert refused.value.reason == "SNAPSHOT_HAS_RUNS"
    with pytest.raises(FailedPrecondition) as refused:
        await pipelines.delete_pipeline(project_id, pipeline.id, "")
    assert refused.value.reason == "PIPELINE_HAS_RUNS"
    await pipelines.delete_snapshot(project_id, pipeline.id, unused.id)
    await runs.delete_run(project_id, run.id)
    _, snapshot_ids = await pipelines.delete_pipeline(project_id, pipeline.id, "")
    assert snapshot_ids == [used.id]
    with pytest.raises(NotFound):
        await pipelines.get_snapshot(project_id, pipeline.id, used.id)
    with pytest.raises(NotFound):
        await pipelines.get_pipeline(project_id, pipeline.id)
