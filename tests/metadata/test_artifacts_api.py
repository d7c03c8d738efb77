"""Artifact, model and annotation services through the real workspace server (authn, RBAC, orgs)."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy import insert

from keel.metadata.v1 import annotations_pb2 as an
from keel.metadata.v1 import annotations_pb2_grpc as an_grpc
from keel.metadata.v1 import artifacts_pb2 as ar
from keel.metadata.v1 import artifacts_pb2_grpc as ar_grpc
from keel.metadata.v1 import models_pb2 as mo
from keel.metadata.v1 import models_pb2_grpc as mo_grpc
from keel.metadata.v1 import pipelines_pb2 as pp
from keel.metadata.v1 import pipelines_pb2_grpc as pp_grpc
from keel.metadata.v1 import runs_pb2 as rp
from keel.metadata.v1 import runs_pb2_grpc as rp_grpc
from services.metadata.store import stacks
from tests.metadata.conftest import MetadataStack, field_of

Stage = mo.ModelVersion.Stage


async def _fails(call: Any, code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return error.value


async def _run(stack: MetadataStack, project_id: str, metadata: Any) -> tuple[str, dict[str, str]]:
    """A run of a two-step snapshot (load -> train) in the project: its id and its step ids by name."""
    stack_id = str(uuid.uuid4())
    now = stack.clock.now()
    async with stack.service.domain.store.transaction() as tx:
        await tx.conn.execute(
            insert(stacks).values(
                id=stack_id,
                name=f"s-{secrets.token_hex(3)}",
                description="",
                create_time=now,
                update_time=now,
                version=1,
            )
        )
    ws = stack.workspace_id
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    runs = rp_grpc.RunServiceStub(stack.channel)
    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(workspace_id=ws, project_id=project_id, pipeline=pp.Pipeline(name="p")),
        metadata=metadata,
    )
    steps = [
        pp.StepSpec(name="load", image="python:3.11"),
        pp.StepSpec(name="train", image="python:3.11", upstream_steps=["load"]),
    ]
    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=ws,
            project_id=project_id,
            pipeline_id=pipeline.id,
            snapshot=pp.Snapshot(stack_id=stack_id, steps=steps),
        ),
        metadata=metadata,
    )
    run = await runs.CreateRun(
        rp.CreateRunRequest(workspace_id=ws, project_id=project_id, snapshot_id=snapshot.id),
        metadata=metadata,
    )
    listed = await runs.ListStepRuns(
        rp.ListStepRunsRequest(workspace_id=ws, project_id=project_id, run_id=run.id), metadata=metadata
    )
    return run.id, {step.name: step.id for step in listed.step_runs}


async def test_artifacts_lineage_models_and_annotations_through_the_server(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    owner = stack.owner.metadata
    ws = stack.workspace_id
    artifacts = ar_grpc.ArtifactServiceStub(stack.channel)
    models = mo_grpc.ModelServiceStub(stack.channel)
    notes = an_grpc.AnnotationServiceStub(stack.channel)
    project = await stack.project()
    p = project.id
    run_id, steps = await _run(stack, p, owner)

    made = await artifacts.RecordStepOutputs(
        ar.RecordStepOutputsRequest(
            workspace_id=ws,
            project_id=p,
            step_run_id=steps["load"],
            outputs=[
                ar.StepOutput(
                    name="data",
                    artifact_name="raw",
                    artifact_version=ar.ArtifactVersion(uri="s3://b/raw/1", size_bytes=7),
                )
            ],
            request_id="out-1",
        ),
        metadata=owner,
    )
    raw = made.artifact_versions[0]
    assert raw.number == 1
    assert raw.producer_run_id == run_id
    assert raw.producer_step_run_id == steps["load"]
    await artifacts.RecordStepInputs(
        ar.RecordStepInputsRequest(
            workspace_id=ws,
            project_id=p,
            step_run_id=steps["train"],
            inputs=[ar.StepInput(name="data", artifact_version_id=raw.id)],
        ),
        metadata=owner,
    )
    lineage = await artifacts.GetLineage(
        ar.GetLineageRequest(
            workspace_id=ws,
            project_id=p,
            artifact_version_id=raw.id,
            direction=ar.GetLineageRequest.DOWNSTREAM,
        ),
        metadata=owner,
    )
    assert {n.id for n in lineage.nodes} == {raw.id, steps["train"]}
    assert [(e.step_run_id, e.direction) for e in lineage.edges] == [(steps["train"], ar.StepArtifact.INPUT)]
    listed = await artifacts.ListArtifacts(
        ar.ListArtifactsRequest(workspace_id=ws, project_id=p), metadata=owner
    )
    assert [a.name for a in listed.artifacts] == ["raw"]
    assert listed.artifacts[0].latest_version_number == 1
    used = await _fails(
        artifacts.DeleteArtifactVersion(
            ar.DeleteArtifactVersionRequest(
                workspace_id=ws, project_id=p, artifact_id=raw.artifact_id, artifact_version_id=raw.id
            ),
            metadata=owner,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "input" in (used.details() or "")
    bad = await _fails(
        artifacts.CreateArtifactVersion(
            ar.CreateArtifactVersionRequest(
                workspace_id=ws,
                project_id=p,
                artifact_id=raw.artifact_id,
                artifact_version=ar.ArtifactVersion(uri="x"),
            ),
            metadata=owner,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_of(bad) == "artifact_version.uri"
    await _fails(
        artifacts.GetArtifact(
            ar.GetArtifactRequest(workspace_id=str(uuid.uuid4()), project_id=p, artifact_id=raw.artifact_id),
            metadata=owner,
        ),
        grpc.StatusCode.NOT_FOUND,
    )

    model = await models.CreateModel(
        mo.CreateModelRequest(workspace_id=ws, project_id=p, model=mo.Model(name="churn")), metadata=owner
    )
    versions = [
        await models.CreateModelVersion(
            mo.CreateModelVersionRequest(workspace_id=ws, project_id=p, model_id=model.id), metadata=owner
        )
        for _ in range(2)
    ]
    assert [v.number for v in versions] == [1, 2]
    assert versions[0].stage == Stage.NONE

    def promote(version: mo.ModelVersion, stage: mo.ModelVersion.Stage.ValueType) -> Any:
        return models.PromoteModelVersion(
            mo.PromoteModelVersionRequest(
                workspace_id=ws, project_id=p, model_id=model.id, model_version_id=version.id, stage=stage
            ),
            metadata=owner,
        )

    first = await promote(versions[0], Stage.PRODUCTION)
    assert first.model_version.stage == Stage.PRODUCTION
    assert not first.HasField("demoted")
    second = await promote(versions[1], Stage.PRODUCTION)
    assert second.demoted.id == versions[0].id
    assert second.demoted.stage == Stage.ARCHIVED
    got = await models.GetModel(
        mo.GetModelRequest(workspace_id=ws, project_id=p, model_id=model.id), metadata=owner
    )
    assert got.production_version_id == versions[1].id
    await models.CreateModelVersionLink(
        mo.CreateModelVersionLinkRequest(
            workspace_id=ws,
            project_id=p,
            model_id=model.id,
            model_version_id=versions[1].id,
            link=mo.ModelVersionLink(artifact_version_id=raw.id, name="training-data"),
        ),
        metadata=owner,
    )
    links = await models.ListModelVersionLinks(
        mo.ListModelVersionLinksRequest(
            workspace_id=ws, project_id=p, model_id=model.id, model_version_id=versions[1].id
        ),
        metadata=owner,
    )
    assert [(link.artifact_version_id, link.name) for link in links.links] == [(raw.id, "training-data")]

    run_target = an.AnnotationTarget(kind=an.AnnotationTarget.RUN, id=run_id)
    config = struct_pb2.Value()
    config.struct_value.update({"lr": 0.1})
    await notes.PutMetadata(
        an.PutMetadataRequest(
            workspace_id=ws,
            project_id=p,
            target=run_target,
            entries=[
                an.MetadataEntry(key="accuracy", value=an.MetadataValue(number_value=0.9)),
                an.MetadataEntry(key="config", value=an.MetadataValue(json_value=config)),
            ],
        ),
        metadata=owner,
    )
    entries = await notes.ListMetadata(
        an.ListMetadataRequest(workspace_id=ws, project_id=p, target=run_target), metadata=owner
    )
    assert [e.key for e in entries.entries] == ["accuracy", "config"]
    assert entries.entries[0].value.number_value == 0.9
    assert entries.entries[1].value.json_value.struct_value["lr"] == 0.1
    await notes.AddTags(
        an.AddTagsRequest(workspace_id=ws, project_id=p, target=run_target, tags=["nightly"]), metadata=owner
    )
    tags = await notes.ListTags(
        an.ListTagsRequest(workspace_id=ws, project_id=p, target=run_target), metadata=owner
    )
    assert list(tags.tags) == ["nightly"]
    pointer = await notes.CreateLogPointer(
        an.CreateLogPointerRequest(
            workspace_id=ws, project_id=p, log_pointer=an.LogPointer(target=run_target, uri="s3://logs/run")
        ),
        metadata=owner,
    )
    assert pointer.target.id == run_id
    missing_kind = await _fails(
        notes.ListTags(an.ListTagsRequest(workspace_id=ws, project_id=p), metadata=owner),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert field_of(missing_kind) == "target.kind"


async def test_roles_and_ownership_govern_artifacts_models_and_annotations(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    ws = stack.workspace_id
    artifacts = ar_grpc.ArtifactServiceStub(stack.channel)
    models = mo_grpc.ModelServiceStub(stack.channel)
    notes = an_grpc.AnnotationServiceStub(stack.channel)
    project = await stack.project()
    p = project.id
    editor = await stack.user_with_role("project_editor", p)
    viewer = await stack.user_with_role("project_viewer", p)
    outsider = await stack.member()
    run_id, _ = await _run(stack, p, editor.metadata)

    artifact = await artifacts.CreateArtifact(
        ar.CreateArtifactRequest(
            workspace_id=ws, project_id=p, artifact=ar.Artifact(name="data"), request_id="a-1"
        ),
        metadata=editor.metadata,
    )
    again = await artifacts.CreateArtifact(
        ar.CreateArtifactRequest(
            workspace_id=ws, project_id=p, artifact=ar.Artifact(name="data"), request_id="a-1"
        ),
        metadata=editor.metadata,
    )
    assert again.id == artifact.id
    listed = await artifacts.ListArtifacts(
        ar.ListArtifactsRequest(workspace_id=ws, project_id=p), metadata=viewer.metadata
    )
    assert [a.id for a in listed.artifacts] == [artifact.id]
    await _fails(
        artifacts.CreateArtifact(
            ar.CreateArtifactRequest(workspace_id=ws, project_id=p, artifact=ar.Artifact(name="other")),
            metadata=viewer.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await _fails(
        artifacts.ListArtifacts(
            ar.ListArtifactsRequest(workspace_id=ws, project_id=p), metadata=outsider.metadata
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # A member who merely created nothing here cannot read the editor's artifact; the editor (owner) can.
    await _fails(
        artifacts.GetArtifact(
            ar.GetArtifactRequest(workspace_id=ws, project_id=p, artifact_id=artifact.id),
            metadata=outsider.metadata,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    model = await models.CreateModel(
        mo.CreateModelRequest(workspace_id=ws, project_id=p, model=mo.Model(name="m")),
        metadata=editor.metadata,
    )
    version = await models.CreateModelVersion(
        mo.CreateModelVersionRequest(workspace_id=ws, project_id=p, model_id=model.id),
        metadata=editor.metadata,
    )
    promote = mo.PromoteModelVersionRequest(
        workspace_id=ws, project_id=p, model_id=model.id, model_version_id=version.id, stage=Stage.PRODUCTION
    )
    await _fails(
        models.PromoteModelVersion(promote, metadata=viewer.metadata), grpc.StatusCode.PERMISSION_DENIED
    )
    assert (
        await models.PromoteModelVersion(promote, metadata=editor.metadata)
    ).model_version.stage == Stage.PRODUCTION

    # Annotations: read on the project lets a viewer in; the target's own permission decides.
    run_target = an.AnnotationTarget(kind=an.AnnotationTarget.RUN, id=run_id)
    put = an.PutMetadataRequest(
        workspace_id=ws,
        project_id=p,
        target=run_target,
        entries=[an.MetadataEntry(key="k", value=an.MetadataValue(string_value="v"))],
    )
    await _fails(notes.PutMetadata(put, metadata=viewer.metadata), grpc.StatusCode.PERMISSION_DENIED)
    await notes.PutMetadata(put, metadata=editor.metadata)
    read = await notes.ListMetadata(
        an.ListMetadataRequest(workspace_id=ws, project_id=p, target=run_target), metadata=viewer.metadata
    )
    assert [e.key for e in read.entries] == ["k"]
    # Another project's run is not found through this project, even for the organization admin.
    other = await stack.project()
    await _fails(
        notes.ListMetadata(
            an.ListMetadataRequest(workspace_id=ws, project_id=other.id, target=run_target),
            metadata=stack.owner.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
