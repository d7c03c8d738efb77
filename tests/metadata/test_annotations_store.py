"""Run metadata, tags and log pointers over the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from services.kit.errors import AlreadyExists, InvalidArgument, NotFound
from services.metadata.annotations import Annotations, Target
from services.metadata.artifact_store import VersionInput
from services.metadata.artifacts import Artifacts
from services.metadata.models import Models
from services.metadata.store import MetadataStore
from tests.clock import ManualClock
from tests.metadata.artifact_fixtures import project_with_run
from tests.metadata.domain_fixtures import WORKLOAD, offline_domain


async def test_metadata_is_typed_and_upserted(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    target = Target("run", run.run_id)
    entries = [
        ("accuracy", "number", 0.93),
        ("framework", "string", "torch"),
        ("tuned", "bool", True),
        ("config", "json", {"layers": [64, 32], "dropout": None}),
        ("report", "uri", "https://example.com/r/1"),
    ]
    await notes.put_metadata(run.project_id, target, entries, request_id="m-1")
    clock.advance(seconds=5)
    await notes.put_metadata(run.project_id, target, [("accuracy", "number", 0.95)])
    # A replay of the first request changes nothing (the accuracy stays 0.95).
    await notes.put_metadata(run.project_id, target, entries, request_id="m-1")
    page, token = await notes.list_metadata(run.project_id, target, 3, "")
    assert [e.key for e in page] == ["accuracy", "config", "framework"]
    assert token
    assert page[0].value == 0.95
    assert page[0].value_kind == "number"
    assert page[1].value == {"layers": [64, 32], "dropout": None}
    rest, last = await notes.list_metadata(run.project_id, target, 3, token)
    assert [(e.key, e.value) for e in rest] == [("report", "https://example.com/r/1"), ("tuned", True)]
    assert last == ""


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("number", float("nan")),
        ("number", True),
        ("string", 5),
        ("bool", "yes"),
        ("uri", "nope"),
        ("json", {1j}),
    ],
)
async def test_a_value_must_fit_its_kind(metadata_store: MetadataStore, kind: str, value: object) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    with pytest.raises(InvalidArgument) as bad:
        await Annotations(metadata_store, clock).put_metadata(
            run.project_id, Target("run", run.run_id), [("k", kind, value)]
        )
    assert bad.value.violations[0].field == "entries[0].value"


async def test_metadata_targets_exist_in_the_project(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    other = await project_with_run(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    artifacts = Artifacts(metadata_store, clock)
    models = Models(offline_domain(metadata_store, clock))
    artifact, _ = await artifacts.create_artifact(run.project_id, "data", "", "")
    av, _ = await artifacts.create_version(run.project_id, artifact.id, VersionInput(uri="s3://b/d"))
    model = await models.create_model(WORKLOAD, run.project_id, "m", "")
    mv = await models.create_version(WORKLOAD, run.project_id, model.id, "")
    for target in (
        Target("step", run.steps["train"]),
        Target("artifact_version", av.id),
        Target("model_version", mv.id),
    ):
        await notes.put_metadata(run.project_id, target, [("k", "string", "v")])
    with pytest.raises(NotFound):
        await notes.put_metadata(other.project_id, Target("run", run.run_id), [("k", "string", "v")])
    with pytest.raises(InvalidArgument) as kind:
        await notes.put_metadata(run.project_id, Target("model", model.id), [("k", "string", "v")])
    assert kind.value.violations[0].field == "target.kind"
    # Deleting the model version takes its metadata along.
    await models.delete_version(run.project_id, model.id, mv.id)
    async with metadata_store.transaction() as tx:
        from services.metadata import annotation_store

        left, _ = await annotation_store.list_entries(tx.conn, run.project_id, "model_version", mv.id, 50, "")
    assert left == []


async def test_tags_attach_detach_and_list(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    for target in (
        Target("run", run.run_id),
        Target("project", run.project_id),
        Target("snapshot", run.snapshot_id),
    ):
        await notes.add_tags(run.project_id, target, ["prod", "nightly", "prod"])
        await notes.add_tags(run.project_id, target, ["nightly", "gpu"])
        tags, _ = await notes.list_tags(run.project_id, target, 50, "")
        assert tags == ["gpu", "nightly", "prod"]
        await notes.remove_tags(run.project_id, target, ["nightly", "absent"])
        tags, _ = await notes.list_tags(run.project_id, target, 50, "")
        assert tags == ["gpu", "prod"]
    with pytest.raises(InvalidArgument) as bad:
        await notes.add_tags(run.project_id, Target("run", run.run_id), ["ok", " bad"])
    assert bad.value.violations[0].field == "tags[1]"
    with pytest.raises(NotFound):
        await notes.add_tags(run.project_id, Target("project", "another-project"), ["x"])


async def test_log_pointers_for_runs_and_steps(metadata_store: MetadataStore) -> None:
    clock = ManualClock()
    run = await project_with_run(metadata_store, clock)
    notes = Annotations(metadata_store, clock)
    step = Target("step", run.steps["load"])
    first = await notes.create_log_pointer(
        run.project_id, step, "s3://logs/load/1", "attempt-1", request_id="p1"
    )
    replay = await notes.create_log_pointer(
        run.project_id, step, "s3://logs/load/1", "attempt-1", request_id="p1"
    )
    assert replay.id == first.id
    clock.advance(seconds=1)
    await notes.create_log_pointer(run.project_id, step, "s3://logs/load/2", "attempt-2")
    with pytest.raises(AlreadyExists):
        await notes.create_log_pointer(run.project_id, step, "s3://logs/load/2", "attempt-2")
    pointers, _ = await notes.list_log_pointers(run.project_id, step, 50, "")
    assert [p.label for p in pointers] == ["attempt-1", "attempt-2"]
    with pytest.raises(InvalidArgument) as kind:
        await notes.create_log_pointer(run.project_id, Target("artifact", "a"), "s3://x", "")
    assert kind.value.violations[0].field == "log_pointer.target.kind"
    with pytest.raises(InvalidArgument) as uri:
        await notes.create_log_pointer(run.project_id, step, "not a uri", "")
    assert uri.value.violations[0].field == "log_pointer.uri"
