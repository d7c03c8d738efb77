"""PipelineService and RunService through the real workspace server (real authn, RBAC and orgs)."""

from __future__ import annotations

import secrets
import uuid

import grpc
import pytest
from sqlalchemy import insert, select

from keel.metadata.v1 import artifacts_pb2 as ap
from keel.metadata.v1 import pipelines_pb2 as pp
from keel.metadata.v1 import pipelines_pb2_grpc as pp_grpc
from keel.metadata.v1 import runs_pb2 as rp
from keel.metadata.v1 import runs_pb2_grpc as rp_grpc
from services.metadata import artifact_store as st
from services.metadata.store import stacks
from services.rbac.store import ownerships
from tests.metadata.conftest import MetadataStack, field_of

Status = rp.Run.Status
StepStatus = rp.StepRun.Status


async def _stack_id(stack: MetadataStack) -> str:
    """A workspace stack row (stacks are M1's; written directly to keep this test about runs)."""
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
    return stack_id


def _diamond(stack_id: str) -> pp.Snapshot:
    def step(name: str, *upstream: str) -> pp.StepSpec:
        return pp.StepSpec(name=name, image="python:3.11", upstream_steps=upstream)

    return pp.Snapshot(
        stack_id=stack_id,
        steps=[
            step("load"),
            step("train", "load"),
            step("features", "load"),
            step("evaluate", "train", "features"),
        ],
    )


async def test_pipeline_snapshot_and_run_lifecycle(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    owner = stack.owner.metadata
    ws = stack.workspace_id
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    runs = rp_grpc.RunServiceStub(stack.channel)
    project = await stack.project()
    stack_id = await _stack_id(stack)

    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(
            workspace_id=ws, project_id=project.id, pipeline=pp.Pipeline(name="training")
        ),
        metadata=owner,
    )
    assert (pipeline.name, pipeline.etag) == ("training", '"1"')
    with pytest.raises(grpc.aio.AioRpcError) as other_workspace:
        await pipelines.GetPipeline(
            pp.GetPipelineRequest(
                workspace_id=str(uuid.uuid4()), project_id=project.id, pipeline_id=pipeline.id
            ),
            metadata=owner,
        )
    assert other_workspace.value.code() == grpc.StatusCode.NOT_FOUND

    cyclic = _diamond(stack_id)
    cyclic.steps[0].upstream_steps.append("evaluate")
    with pytest.raises(grpc.aio.AioRpcError) as cycle:
        await pipelines.CreateSnapshot(
            pp.CreateSnapshotRequest(
                workspace_id=ws, project_id=project.id, pipeline_id=pipeline.id, snapshot=cyclic
            ),
            metadata=owner,
        )
    assert cycle.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(cycle.value) == "snapshot.steps"
    assert "cycle" in (cycle.value.details() or "")

    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=ws, project_id=project.id, pipeline_id=pipeline.id, snapshot=_diamond(stack_id)
        ),
        metadata=owner,
    )
    assert snapshot.step_count == 4
    assert snapshot.steps[0].heartbeat_timeout.seconds == 600

    create = rp.CreateRunRequest(
        workspace_id=ws,
        project_id=project.id,
        snapshot_id=snapshot.id,
        trigger=rp.RunTrigger(kind=rp.RunTrigger.SCHEDULE),
        request_id="run-1",
    )
    run = await runs.CreateRun(create, metadata=owner)
    assert await runs.CreateRun(create, metadata=owner) == run
    assert (run.status, run.trigger.kind, run.trigger.principal_id) == (
        Status.INITIALIZING,
        rp.RunTrigger.SCHEDULE,
        stack.owner.id,
    )

    def step_update(name: str, status: int, request_id: str) -> rp.UpdateStepStatusRequest:
        return rp.UpdateStepStatusRequest(
            workspace_id=ws,
            project_id=project.id,
            run_id=run.id,
            step_name=name,
            status=status,  # type: ignore[arg-type]
            request_id=request_id,
        )

    started = await runs.UpdateStepStatus(step_update("load", StepStatus.RUNNING, "a"), metadata=owner)
    assert (started.applied, started.run_status, started.step_run.attempt_count) == (True, Status.RUNNING, 1)
    beat = await runs.SendStepHeartbeat(
        rp.SendStepHeartbeatRequest(workspace_id=ws, project_id=project.id, run_id=run.id, step_name="load"),
        metadata=owner,
    )
    assert (beat.applied, beat.status) == (True, StepStatus.RUNNING)
    for number, name in enumerate(["load", "train", "features", "evaluate"]):
        done = await runs.UpdateStepStatus(
            step_update(name, StepStatus.COMPLETED, f"done-{number}"), metadata=owner
        )
        assert done.applied
    assert done.run_status == Status.COMPLETED
    late = await runs.UpdateStepStatus(step_update("load", StepStatus.RUNNING, "late"), metadata=owner)
    assert (late.applied, late.step_run.status) == (False, StepStatus.COMPLETED)
    late_run = await runs.UpdateRunStatus(
        rp.UpdateRunStatusRequest(
            workspace_id=ws, project_id=project.id, run_id=run.id, status=Status.RUNNING, request_id="r-late"
        ),
        metadata=owner,
    )
    assert (late_run.applied, late_run.run.status) == (False, Status.COMPLETED)

    dag = await runs.GetRunDag(
        rp.GetRunDagRequest(workspace_id=ws, project_id=project.id, run_id=run.id), metadata=owner
    )
    assert [step.name for step in dag.steps] == ["load", "train", "features", "evaluate"]
    assert {(edge.upstream, edge.downstream) for edge in dag.edges} == {
        ("load", "train"),
        ("load", "features"),
        ("train", "evaluate"),
        ("features", "evaluate"),
    }
    listed = await runs.ListRuns(
        rp.ListRunsRequest(
            workspace_id=ws,
            project_id=project.id,
            filter=f'status = "COMPLETED" AND pipeline_id = "{pipeline.id}"',
        ),
        metadata=owner,
    )
    assert [r.id for r in listed.runs] == [run.id]
    steps = await runs.ListStepRuns(
        rp.ListStepRunsRequest(workspace_id=ws, project_id=project.id, run_id=run.id, page_size=3),
        metadata=owner,
    )
    assert len(steps.step_runs) == 3
    assert steps.next_page_token

    with pytest.raises(grpc.aio.AioRpcError) as has_runs:
        await pipelines.DeletePipeline(
            pp.DeletePipelineRequest(workspace_id=ws, project_id=project.id, pipeline_id=pipeline.id),
            metadata=owner,
        )
    assert has_runs.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await runs.DeleteRun(
        rp.DeleteRunRequest(workspace_id=ws, project_id=project.id, run_id=run.id), metadata=owner
    )
    await pipelines.DeletePipeline(
        pp.DeletePipelineRequest(workspace_id=ws, project_id=project.id, pipeline_id=pipeline.id),
        metadata=owner,
    )
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await runs.GetRun(
            rp.GetRunRequest(workspace_id=ws, project_id=project.id, run_id=run.id), metadata=owner
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_roles_govern_runs_and_callbacks(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    ws = stack.workspace_id
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    runs = rp_grpc.RunServiceStub(stack.channel)
    project = await stack.project()
    other_project = await stack.project()
    stack_id = await _stack_id(stack)
    editor = await stack.user_with_role("project_editor", project.id)
    viewer = await stack.user_with_role("project_viewer", project.id)
    outsider = await stack.member()

    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(workspace_id=ws, project_id=project.id, pipeline=pp.Pipeline(name="p")),
        metadata=editor.metadata,
    )
    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=ws, project_id=project.id, pipeline_id=pipeline.id, snapshot=_diamond(stack_id)
        ),
        metadata=editor.metadata,
    )
    run = await runs.CreateRun(
        rp.CreateRunRequest(workspace_id=ws, project_id=project.id, snapshot_id=snapshot.id),
        metadata=editor.metadata,
    )
    assert run.trigger.principal_id == editor.id

    listed = await runs.ListRuns(
        rp.ListRunsRequest(workspace_id=ws, project_id=project.id), metadata=viewer.metadata
    )
    assert [r.id for r in listed.runs] == [run.id]
    report = rp.UpdateRunStatusRequest(
        workspace_id=ws, project_id=project.id, run_id=run.id, status=Status.QUEUED, request_id="q"
    )
    with pytest.raises(grpc.aio.AioRpcError) as viewer_report:
        await runs.UpdateRunStatus(report, metadata=viewer.metadata)
    assert viewer_report.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await runs.UpdateRunStatus(report, metadata=editor.metadata)).applied
    with pytest.raises(grpc.aio.AioRpcError) as outsider_list:
        await runs.ListRuns(
            rp.ListRunsRequest(workspace_id=ws, project_id=project.id), metadata=outsider.metadata
        )
    assert outsider_list.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A run named under another project is not found there, even for the organization admin.
    with pytest.raises(grpc.aio.AioRpcError) as elsewhere:
        await runs.GetRun(
            rp.GetRunRequest(workspace_id=ws, project_id=other_project.id, run_id=run.id),
            metadata=stack.owner.metadata,
        )
    assert elsewhere.value.code() == grpc.StatusCode.NOT_FOUND


async def _next(stream: object) -> rp.RunEvent:
    """The next message of a WatchRun stream (never its end: these watches outlive the test's reads)."""
    event = await stream.read()  # type: ignore[attr-defined]
    assert isinstance(event, rp.RunEvent)
    return event


async def test_watch_run_streams_each_change_over_grpc_and_resumes_from_a_cursor(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    owner = stack.owner.metadata
    ws = stack.workspace_id
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    runs = rp_grpc.RunServiceStub(stack.channel)
    project = await stack.project()
    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(workspace_id=ws, project_id=project.id, pipeline=pp.Pipeline(name="p")),
        metadata=owner,
    )
    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=ws,
            project_id=project.id,
            pipeline_id=pipeline.id,
            snapshot=_diamond(await _stack_id(stack)),
        ),
        metadata=owner,
    )
    run = await runs.CreateRun(
        rp.CreateRunRequest(workspace_id=ws, project_id=project.id, snapshot_id=snapshot.id), metadata=owner
    )
    watch = rp.WatchRunRequest(workspace_id=ws, project_id=project.id, run_id=run.id)

    outsider = await stack.member()  # no role on the workspace's data
    denied = runs.WatchRun(watch, metadata=outsider.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _next(denied)
    stream = runs.WatchRun(watch, metadata=owner)
    first = await _next(stream)
    await runs.UpdateStepStatus(
        rp.UpdateStepStatusRequest(
            workspace_id=ws,
            project_id=project.id,
            run_id=run.id,
            step_name="load",
            status=StepStatus.RUNNING,
            request_id="w-1",
        ),
        metadata=owner,
    )
    snapshots = []
    change = await _next(stream)
    while change.kind == rp.RunEvent.SNAPSHOT:  # the run's and each step's current state come first
        snapshots.append(change)
        change = await _next(stream)
    stream.cancel()
    await runs.UpdateStepStatus(
        rp.UpdateStepStatusRequest(
            workspace_id=ws,
            project_id=project.id,
            run_id=run.id,
            step_name="load",
            status=StepStatus.COMPLETED,
            request_id="w-2",
        ),
        metadata=owner,
    )
    resumed = runs.WatchRun(
        rp.WatchRunRequest(workspace_id=ws, project_id=project.id, run_id=run.id, after_cursor=change.cursor),
        metadata=owner,
    )
    missed = [await _next(resumed)]
    while missed[-1].step_run.status != StepStatus.COMPLETED and len(missed) < 5:
        missed.append(await _next(resumed))
    resumed.cancel()

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (first.kind, first.run.status) == (rp.RunEvent.SNAPSHOT, Status.INITIALIZING)
    assert len(snapshots) <= 4  # at most one per step
    assert (change.kind, change.step_run.name, change.step_run.status) == (
        rp.RunEvent.CHANGE,
        "load",
        StepStatus.RUNNING,
    )
    # After the cursor: the run following its first running step, then the step's completion.
    assert [(e.kind, e.run.status, e.step_run.name, e.step_run.status) for e in missed] == [
        (rp.RunEvent.CHANGE, Status.RUNNING, "", StepStatus.STATUS_UNSPECIFIED),
        (rp.RunEvent.CHANGE, Status.RUNNING, "load", StepStatus.COMPLETED),
    ]
    cursors = [change.cursor] + [e.cursor for e in missed]
    assert cursors == sorted(set(cursors))


async def _owned(stack: MetadataStack, resource_type: str = "run") -> dict[str, str]:
    """Every ownership of this type RBAC holds for the organization: resource id → owner id."""
    async with stack.orgs.rbac.domain.store.transaction() as tx:
        rows = await tx.conn.execute(
            select(ownerships.c.resource_id, ownerships.c.owner_id).where(
                ownerships.c.organization_id == stack.organization_id,
                ownerships.c.resource_type == resource_type,
            )
        )
        return {row.resource_id: row.owner_id for row in rows}


async def _project_with_snapshot(stack: MetadataStack) -> tuple[str, str]:
    """A new project holding a pipeline with the diamond snapshot: (project id, snapshot id)."""
    project = await stack.project()
    return project.id, await _diamond_snapshot(stack, project.id)


async def _diamond_snapshot(stack: MetadataStack, project_id: str) -> str:
    """A pipeline with the diamond snapshot in the project; the snapshot's id."""
    pipelines = pp_grpc.PipelineServiceStub(stack.channel)
    pipeline = await pipelines.CreatePipeline(
        pp.CreatePipelineRequest(
            workspace_id=stack.workspace_id, project_id=project_id, pipeline=pp.Pipeline(name="p")
        ),
        metadata=stack.owner.metadata,
    )
    snapshot = await pipelines.CreateSnapshot(
        pp.CreateSnapshotRequest(
            workspace_id=stack.workspace_id,
            project_id=project_id,
            pipeline_id=pipeline.id,
            snapshot=_diamond(await _stack_id(stack)),
        ),
        metadata=stack.owner.metadata,
    )
    return str(snapshot.id)


async def test_create_run_records_its_owner_once_and_nothing_for_a_failed_create_or_a_retry(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    owner = stack.owner.metadata
    runs = rp_grpc.RunServiceStub(stack.channel)
    project_id, snapshot_id = await _project_with_snapshot(stack)

    def create(snapshot_id: str, request_id: str) -> rp.CreateRunRequest:
        return rp.CreateRunRequest(
            workspace_id=stack.workspace_id,
            project_id=project_id,
            snapshot_id=snapshot_id,
            trigger=rp.RunTrigger(kind=rp.RunTrigger.USER),
            request_id=request_id,
        )

    run = await runs.CreateRun(create(snapshot_id, "first"), metadata=owner)
    again = await runs.CreateRun(create(snapshot_id, "first"), metadata=owner)  # a retry
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await runs.CreateRun(create(str(uuid.uuid4()), "second"), metadata=owner)

    assert again.id == run.id
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    # Ownership is recorded while the run is written: the retry's and the failed create's claims
    # (on ids that never became runs) were forgotten.
    assert await _owned(stack) == {run.id: stack.owner.id}


def _outputs_batch(
    stack: MetadataStack, project_id: str, run_id: str, request_id: str
) -> rp.RecordRunCallbacksRequest:
    """RUNNING, one output and COMPLETED for the diamond's first two steps."""

    def step(name: str, status: int) -> rp.RunCallback:
        return rp.RunCallback(step_status=rp.RunCallback.StepStatus(step_name=name, status=status))  # type: ignore[arg-type]

    def output(name: str) -> rp.RunCallback:
        produced = ap.StepOutput(
            name="out",
            artifact_name=f"data.{name}",
            artifact_version=ap.ArtifactVersion(uri=f"s3://b/{run_id}/{name}"),
        )
        return rp.RunCallback(step_outputs=rp.RunCallback.StepOutputs(step_name=name, outputs=[produced]))

    callbacks = [
        callback
        for name in ("load", "train")
        for callback in (step(name, StepStatus.RUNNING), output(name), step(name, StepStatus.COMPLETED))
    ]
    return rp.RecordRunCallbacksRequest(
        workspace_id=stack.workspace_id,
        project_id=project_id,
        run_id=run_id,
        callbacks=callbacks,
        request_id=request_id,
    )


async def test_a_batch_owns_its_new_artifacts_and_versions_and_a_failed_one_leaves_none(
    metadata_stack: MetadataStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = metadata_stack
    owner = stack.owner.metadata
    runs = rp_grpc.RunServiceStub(stack.channel)
    project_id, snapshot_id = await _project_with_snapshot(stack)
    create = rp.CreateRunRequest(
        workspace_id=stack.workspace_id,
        project_id=project_id,
        snapshot_id=snapshot_id,
        trigger=rp.RunTrigger(kind=rp.RunTrigger.USER),
    )
    first, second = [await runs.CreateRun(create, metadata=owner) for _ in range(2)]

    answer = await runs.RecordRunCallbacks(_outputs_batch(stack, project_id, first.id, "b1"), metadata=owner)
    again = await runs.RecordRunCallbacks(_outputs_batch(stack, project_id, first.id, "b1"), metadata=owner)
    versions = {v.id for result in answer.results for v in result.artifact_versions}
    artifacts = {v.artifact_id for result in answer.results for v in result.artifact_versions}
    owned_versions, owned_artifacts = await _owned(stack, "artifact_version"), await _owned(stack, "artifact")

    # A batch failing after its outputs were planned: injected in the last write before the
    # change log.
    async def broken(*_args: object) -> None:
        raise RuntimeError("injected: the versions' insert failed")

    monkeypatch.setattr(st, "insert_numbered_versions", broken)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await runs.RecordRunCallbacks(_outputs_batch(stack, project_id, second.id, "b2"), metadata=owner)

    assert again == answer  # a retry: the first answer
    assert len(versions) == 2
    assert owned_versions == dict.fromkeys(versions, stack.owner.id)
    assert owned_artifacts == dict.fromkeys(artifacts, stack.owner.id)
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    # The failed batch owns nothing: RBAC holds the first batch's versions only.
    assert await _owned(stack, "artifact_version") == owned_versions
