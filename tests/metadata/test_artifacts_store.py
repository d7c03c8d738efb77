"""Artifacts, versions and step inputs/outputs over the store, on SQLite and PostgreSQL (no servers)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from services.kit.errors import Aborted, AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.kit.rbac_lookup import EVERYTHING, NOTHING, Lookup
from services.metadata.artifact_store import ListQuery, VersionInput
from services.metadata.artifacts import Artifacts, StepOutput
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.artifact_fixtures import project_with_run


async def test_artifact_names_are_unique_per_project_and_request_id_replays(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    first, created = await artifacts.create_artifact(run.project_id, "dataset", "data", "", request_id="r-1")
    again, created_again = await artifacts.create_artifact(
        run.project_id, "dataset", "data", "", request_id="r-1"
    )
    assert created
    assert not created_again
    assert again.id == first.id
    with pytest.raises(AlreadyExists):
        await artifacts.create_artifact(run.project_id, "dataset", "", "")
    with pytest.raises(InvalidArgument) as bad:
        await artifacts.create_artifact(run.project_id, "Bad Name", "", "")
    assert bad.value.violations[0].field == "artifact.name"
    other = await project_with_run(metadata_store, clock)
    with pytest.raises(NotFound):
        await artifacts.get_artifact(other.project_id, first.id)


async def test_concurrent_version_creates_get_distinct_consecutive_numbers(
    metadata_store: MetadataStore,
) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    artifact, _ = await artifacts.create_artifact(run.project_id, "weights", "model", "")

    async def one(index: int) -> int:
        version, _ = await artifacts.create_version(
            run.project_id, artifact.id, VersionInput(uri=f"s3://bucket/w/{index}")
        )
        return version.number

    numbers = await asyncio.gather(*(one(index) for index in range(12)))
    assert sorted(numbers) == list(range(1, 13))
    latest = await artifacts.get_artifact(run.project_id, artifact.id)
    assert latest.latest_version_number == 12
    page, token = await artifacts.list_versions(
        run.project_id, artifact.id, EVERYTHING, ListQuery(page_size=5)
    )
    assert [v.number for v in page] == [12, 11, 10, 9, 8]
    assert token
    assert page[0].type == "model"  # the artifact's type by default


async def test_a_version_is_a_uri_with_a_scheme(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    artifact, _ = await artifacts.create_artifact(run.project_id, "weights", "", "")
    for uri in ("", "no-scheme/path", "s3://" + "x" * 2050):
        with pytest.raises(InvalidArgument) as bad:
            await artifacts.create_version(run.project_id, artifact.id, VersionInput(uri=uri))
        assert bad.value.violations[0].field == "artifact_version.uri"
    with pytest.raises(InvalidArgument) as negative:
        await artifacts.create_version(
            run.project_id, artifact.id, VersionInput(uri="s3://b/k", size_bytes=-1)
        )
    assert negative.value.violations[0].field == "artifact_version.size_bytes"


async def test_step_outputs_create_versions_and_are_idempotent(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    outputs = [
        StepOutput(
            "data", "raw-data", VersionInput(uri="s3://b/raw/1", content_hash="sha256:aa", size_bytes=10)
        ),
        StepOutput("stats", "raw-stats", VersionInput(uri="s3://b/stats/1")),
    ]
    first = await artifacts.record_outputs(run.project_id, run.steps["load"], outputs, request_id="o-1")
    assert [v.number for v in first.versions] == [1, 1]
    assert {v.producer_step_run_id for v in first.versions} == {run.steps["load"]}
    assert {v.producer_run_id for v in first.versions} == {run.run_id}
    assert len(first.new_artifact_ids) == 2
    assert len(first.new_version_ids) == 2
    # The same request again, and the same outputs without a request id: nothing new.
    replay = await artifacts.record_outputs(run.project_id, run.steps["load"], outputs, request_id="o-1")
    retry = await artifacts.record_outputs(run.project_id, run.steps["load"], outputs)
    assert [v.id for v in replay.versions] == [v.id for v in first.versions] == [v.id for v in retry.versions]
    assert not retry.new_version_ids
    with pytest.raises(AlreadyExists):
        await artifacts.record_outputs(
            run.project_id,
            run.steps["load"],
            [StepOutput("data", "raw-data", VersionInput(uri="s3://b/other"))],
        )
    links, _ = await artifacts.list_step_links(run.project_id, run.steps["load"], "", 50, "")
    assert [(link.direction, link.name) for link in links] == [("output", "data"), ("output", "stats")]
    with pytest.raises(NotFound):
        await artifacts.record_outputs(run.project_id, "no-such-step", outputs)


async def test_step_inputs_link_existing_versions_of_the_project(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    other = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    made = await artifacts.record_outputs(
        run.project_id, run.steps["load"], [StepOutput("data", "raw", VersionInput(uri="s3://b/raw"))]
    )
    version_id = made.versions[0].id
    links = await artifacts.record_inputs(run.project_id, run.steps["train"], [("data", version_id)])
    again = await artifacts.record_inputs(
        run.project_id, run.steps["train"], [("data", version_id)], request_id="i"
    )
    assert links[0].run_id == run.run_id
    assert again[0].artifact_version_id == version_id
    with pytest.raises(NotFound):  # a version of another project is not there
        await artifacts.record_inputs(other.project_id, other.steps["train"], [("data", version_id)])
    with pytest.raises(InvalidArgument) as duplicate:
        await artifacts.record_inputs(
            run.project_id, run.steps["train"], [("a", version_id), ("a", version_id)]
        )
    assert duplicate.value.violations[0].field == "inputs"


async def test_a_consumed_version_and_its_artifact_cannot_be_deleted(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    made = await artifacts.record_outputs(
        run.project_id, run.steps["load"], [StepOutput("data", "raw", VersionInput(uri="s3://b/raw"))]
    )
    version = made.versions[0]
    second, _ = await artifacts.create_version(
        run.project_id, version.artifact_id, VersionInput(uri="s3://b/2")
    )
    await artifacts.record_inputs(run.project_id, run.steps["train"], [("data", version.id)])
    with pytest.raises(FailedPrecondition):
        await artifacts.delete_version(run.project_id, version.artifact_id, version.id)
    with pytest.raises(FailedPrecondition):
        await artifacts.delete_artifact(run.project_id, version.artifact_id, "")
    # Nothing went: the refused artifact delete left every version.
    page, _ = await artifacts.list_versions(run.project_id, version.artifact_id, EVERYTHING, ListQuery())
    assert {v.id for v in page} == {version.id, second.id}
    await artifacts.delete_version(run.project_id, version.artifact_id, second.id)
    with pytest.raises(NotFound):
        await artifacts.get_version(run.project_id, version.artifact_id, second.id)


async def test_deleting_an_unused_artifact_deletes_its_versions(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    made = await artifacts.record_outputs(
        run.project_id, run.steps["load"], [StepOutput("data", "raw", VersionInput(uri="s3://b/raw"))]
    )
    artifact_id = made.versions[0].artifact_id
    await artifacts.create_version(run.project_id, artifact_id, VersionInput(uri="s3://b/2"))
    artifact = await artifacts.get_artifact(run.project_id, artifact_id)
    with pytest.raises(Aborted):
        await artifacts.delete_artifact(run.project_id, artifact_id, '"999"')
    assert await artifacts.delete_artifact(run.project_id, artifact_id, f'"{artifact.version}"') == 2
    with pytest.raises(NotFound):
        await artifacts.get_version(run.project_id, artifact_id, made.versions[0].id)
    links, _ = await artifacts.list_step_links(run.project_id, run.steps["load"], "", 50, "")
    assert links == []


async def test_lists_keep_only_readable_rows_and_filter(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    made = []
    for name, type_ in (("a-data", "dataset"), ("b-model", "model"), ("c-data", "dataset")):
        record, _ = await artifacts.create_artifact(run.project_id, name, type_, "")
        made.append(record)
        clock.advance(seconds=1)
    everything, _ = await artifacts.list_artifacts(run.project_id, EVERYTHING, ListQuery())
    assert [a.name for a in everything] == ["c-data", "b-model", "a-data"]
    some, _ = await artifacts.list_artifacts(
        run.project_id, Lookup(all=False, ids=frozenset({made[0].id})), ListQuery()
    )
    assert [a.name for a in some] == ["a-data"]
    nothing, _ = await artifacts.list_artifacts(run.project_id, NOTHING, ListQuery())
    assert nothing == []
    by_project = Lookup(all=False, project_ids=frozenset({run.project_id}))
    filtered, _ = await artifacts.list_artifacts(
        run.project_id, by_project, ListQuery(filter='type = "dataset"', order_by="name")
    )
    assert [a.name for a in filtered] == ["a-data", "c-data"]
    with pytest.raises(InvalidArgument) as bad:
        await artifacts.list_artifacts(run.project_id, EVERYTHING, ListQuery(filter='size = "1"'))
    assert bad.value.violations[0].field == "filter"


async def test_forgetting_a_run_drops_its_links_and_annotations(metadata_store: MetadataStore) -> None:
    from sqlalchemy import func, select

    from services.metadata import annotation_store, artifact_store, run_store
    from services.metadata.annotations import Annotations, Target

    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    made = await artifacts.record_outputs(
        run.project_id, run.steps["load"], [StepOutput("data", "raw", VersionInput(uri="s3://b/raw"))]
    )
    await artifacts.record_inputs(run.project_id, run.steps["train"], [("data", made.versions[0].id)])
    await notes.put_metadata(run.project_id, Target("run", run.run_id), [("k", "bool", True)])
    await notes.add_tags(run.project_id, Target("step", run.steps["train"]), ["t"])
    async with metadata_store.transaction() as tx:
        await run_store.delete_run(tx.conn, run.run_id)  # runs the artifact area's deletion hook
    async with metadata_store.transaction() as tx:
        for table in (
            artifact_store.step_artifacts,
            annotation_store.metadata_entries,
            annotation_store.tags,
        ):
            assert await tx.conn.scalar(select(func.count()).select_from(table)) == 0
    # The version the run produced is no longer anyone's input: it can go.
    await artifacts.delete_version(run.project_id, made.versions[0].artifact_id, made.versions[0].id)


async def test_concurrent_outputs_share_one_new_artifact(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)

    async def output(step: str) -> Any:
        made = await artifacts.record_outputs(
            run.project_id, run.steps[step], [StepOutput("out", "shared", VersionInput(uri=f"s3://b/{step}"))]
        )
        return made.versions[0]

    versions = await asyncio.gather(*(output(step) for step in run.steps))
    assert len({v.artifact_id for v in versions}) == 1
    assert sorted(v.number for v in versions) == list(range(1, len(run.steps) + 1))
