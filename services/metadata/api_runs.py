"""gRPC servicer of keel.metadata.v1.RunService: messages in, domain calls, messages out; no SQL.

The creator of a run becomes its owner (after the create commits, again on a
retry: RecordOwnership is idempotent for the same owner); step runs are parts
of their run and carry no bindings of their own. The trigger's principal is
always the caller, never a client-supplied id.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import duration_pb2

from keel.metadata.v1 import runs_pb2, runs_pb2_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.pagination import page_size
from services.metadata import run_callbacks as rcb
from services.metadata.api_artifacts import version_input, version_message
from services.metadata.api_pipelines import timestamp
from services.metadata.artifacts import StepOutput
from services.metadata.domain import MetadataDomain, forget_quietly, principal_key, while_owning
from services.metadata.run_callbacks import RunCallbacks
from services.metadata.run_store import RunRecord, StepRunRecord
from services.metadata.runs import Runs
from services.metadata.watch import CHANGE, DELETED, HEARTBEAT, SNAPSHOT, ChangeHub, Watches, WatchEvent

Context = grpc.aio.ServicerContext[Any, Any]

_TRIGGERS = {
    runs_pb2.RunTrigger.KIND_UNSPECIFIED: "user",
    runs_pb2.RunTrigger.USER: "user",
    runs_pb2.RunTrigger.SCHEDULE: "schedule",
    runs_pb2.RunTrigger.DASHBOARD: "dashboard",
}
_TRIGGER_KINDS = {
    "user": runs_pb2.RunTrigger.USER,
    "schedule": runs_pb2.RunTrigger.SCHEDULE,
    "dashboard": runs_pb2.RunTrigger.DASHBOARD,
}
MAX_STEP_PAGE = 1000


def _run_status(value: str) -> int:
    return int(runs_pb2.Run.Status.Value(value.upper()))


def _step_status(value: str) -> int:
    return int(runs_pb2.StepRun.Status.Value(value.upper()))


def run_message(record: RunRecord) -> runs_pb2.Run:
    """The Run message of a record."""
    return runs_pb2.Run(
        id=record.id,
        project_id=record.project_id,
        pipeline_id=record.pipeline_id,
        snapshot_id=record.snapshot_id,
        status=_run_status(record.status),  # type: ignore[arg-type]
        status_reason=record.status_reason,
        orchestrator_run_id=record.orchestrator_run_id,
        trigger=runs_pb2.RunTrigger(
            kind=_TRIGGER_KINDS[record.trigger], principal_id=record.trigger_principal_id
        ),
        step_count=record.step_count,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
    )


def step_run_message(record: StepRunRecord) -> runs_pb2.StepRun:
    """The StepRun message of a record."""
    return runs_pb2.StepRun(
        id=record.id,
        run_id=record.run_id,
        name=record.name,
        status=_step_status(record.status),  # type: ignore[arg-type]
        status_reason=record.status_reason,
        attempt_count=record.attempt_count,
        cache_key=record.cache_key,
        parents=record.parents,
        create_time=timestamp(record.create_time),
        start_time=timestamp(record.start_time),
        end_time=timestamp(record.end_time),
        last_heartbeat_time=timestamp(record.last_heartbeat_time),
        heartbeat_timeout=duration_pb2.Duration(seconds=record.heartbeat_timeout_seconds),
    )


def _reported(enum: Any, value: int, field: str = "status") -> str:
    if value == 0 or value not in enum.values():
        raise InvalidArgument(field, "must be set to a status")
    return str(enum.Name(value)).lower()


def _callback(message: runs_pb2.RunCallback, index: int) -> rcb.Callback:
    """The domain form of one callback of a batch (INVALID_ARGUMENT naming the field)."""
    where = f"callbacks[{index}]"
    kind = message.WhichOneof("callback")
    if kind == "run_status":
        run = message.run_status
        return rcb.RunStatusReport(
            _reported(runs_pb2.Run.Status, run.status, f"{where}.run_status.status"),
            run.status_reason,
            run.orchestrator_run_id,
        )
    if kind == "step_status":
        step = message.step_status
        return rcb.StepStatusReport(
            step.step_name,
            _reported(runs_pb2.StepRun.Status, step.status, f"{where}.step_status.status"),
            step.status_reason,
            step.cache_key,
        )
    if kind == "step_heartbeat":
        return rcb.StepHeartbeatReport(message.step_heartbeat.step_name)
    if kind == "step_outputs":
        outputs = message.step_outputs
        return rcb.StepOutputsReport(
            outputs.step_name,
            [
                StepOutput(item.name, item.artifact_name, version_input(item.artifact_version))
                for item in outputs.outputs
            ],
        )
    raise InvalidArgument(where, "must hold one callback")


class RunServicer(runs_pb2_grpc.RunServiceServicer):
    """RunService over the Runs domain."""

    def __init__(
        self, domain: MetadataDomain, runs: Runs | None = None, hub: ChangeHub | None = None
    ) -> None:
        self._domain = domain
        self.hub = hub or ChangeHub()
        self.runs = runs or Runs(domain.store, domain.clock, notify=self.hub.notify)
        self.watches = Watches(domain.store, self.hub)
        self.callbacks = RunCallbacks(domain.store, domain.clock, notify=self.hub.notify)

    async def CreateRun(self, request: runs_pb2.CreateRunRequest, context: Context) -> runs_pb2.Run:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        trigger = _TRIGGERS.get(request.trigger.kind)
        if trigger is None:
            raise InvalidArgument("trigger.kind", "must be USER, SCHEDULE or DASHBOARD")
        run_id = str(uuid.uuid4())
        record, _ = await while_owning(
            self._domain,
            principal,
            "run",
            run_id,
            request.project_id,
            self.runs.create_run(
                request.project_id,
                request.snapshot_id,
                trigger=trigger,
                principal=principal_key(principal),
                orchestrator_run_id=request.orchestrator_run_id,
                request_id=request.request_id,
                triggered_by=principal.subject,
                run_id=run_id,
            ),
        )
        if record.id != run_id:  # a retry, answered with the first request's run
            await forget_quietly(self._domain, principal, "run", run_id, record.project_id)
            await self._domain.ownership.record(principal, "run", record.id, record.project_id)
        return run_message(record)

    async def GetRun(self, request: runs_pb2.GetRunRequest, context: Context) -> runs_pb2.Run:
        self._domain.workspace.require(request.workspace_id)
        return run_message(await self.runs.get_run(request.project_id, request.run_id))

    async def ListRuns(
        self, request: runs_pb2.ListRunsRequest, context: Context
    ) -> runs_pb2.ListRunsResponse:
        self._domain.workspace.require(request.workspace_id)
        size = page_size(request.page_size)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "run", "read", request.project_id
        )
        records, token = await self.runs.list_runs(
            request.project_id,
            readable,
            filter_text=request.filter,
            order_by=request.order_by,
            size=size,
            page_token=request.page_token,
        )
        return runs_pb2.ListRunsResponse(
            runs=[run_message(record) for record in records], next_page_token=token
        )

    async def DeleteRun(self, request: runs_pb2.DeleteRunRequest, context: Context) -> runs_pb2.Run:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        record = await self.runs.delete_run(request.project_id, request.run_id)
        await forget_quietly(self._domain, principal, "run", record.id, record.project_id)
        return run_message(record)

    async def GetRunDag(self, request: runs_pb2.GetRunDagRequest, context: Context) -> runs_pb2.RunDag:
        self._domain.workspace.require(request.workspace_id)
        dag = await self.runs.run_dag(request.project_id, request.run_id)
        edges = [
            runs_pb2.RunDagEdge(upstream=parent, downstream=step.name)
            for step in dag.steps
            for parent in step.parents
        ]
        return runs_pb2.RunDag(
            run=run_message(dag.run), steps=[step_run_message(step) for step in dag.steps], edges=edges
        )

    async def ListStepRuns(
        self, request: runs_pb2.ListStepRunsRequest, context: Context
    ) -> runs_pb2.ListStepRunsResponse:
        self._domain.workspace.require(request.workspace_id)
        size = page_size(request.page_size, maximum=MAX_STEP_PAGE)
        records, token = await self.runs.list_step_runs(
            request.project_id,
            request.run_id,
            filter_text=request.filter,
            size=size,
            page_token=request.page_token,
        )
        return runs_pb2.ListStepRunsResponse(
            step_runs=[step_run_message(record) for record in records], next_page_token=token
        )

    async def GetStepRun(self, request: runs_pb2.GetStepRunRequest, context: Context) -> runs_pb2.StepRun:
        self._domain.workspace.require(request.workspace_id)
        record = await self.runs.get_step_run(request.project_id, request.run_id, request.step_run_id)
        return step_run_message(record)

    async def UpdateRunStatus(
        self, request: runs_pb2.UpdateRunStatusRequest, context: Context
    ) -> runs_pb2.UpdateRunStatusResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        answer = await self.runs.update_run_status(
            request.project_id,
            request.run_id,
            _reported(runs_pb2.Run.Status, request.status),
            reason=request.status_reason,
            orchestrator_run_id=request.orchestrator_run_id,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        return runs_pb2.UpdateRunStatusResponse(applied=answer.applied, run=run_message(answer.run))

    async def UpdateStepStatus(
        self, request: runs_pb2.UpdateStepStatusRequest, context: Context
    ) -> runs_pb2.UpdateStepStatusResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        answer = await self.runs.update_step_status(
            request.project_id,
            request.run_id,
            request.step_name,
            _reported(runs_pb2.StepRun.Status, request.status),
            reason=request.status_reason,
            cache_key=request.cache_key,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        return runs_pb2.UpdateStepStatusResponse(
            applied=answer.applied,
            step_run=step_run_message(answer.step),
            run_status=_run_status(answer.run_status),  # type: ignore[arg-type]
        )

    async def SendStepHeartbeat(
        self, request: runs_pb2.SendStepHeartbeatRequest, context: Context
    ) -> runs_pb2.SendStepHeartbeatResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        answer = await self.runs.heartbeat(
            request.project_id,
            request.run_id,
            request.step_name,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        return runs_pb2.SendStepHeartbeatResponse(
            applied=answer.applied,
            status=_step_status(answer.status),  # type: ignore[arg-type]
        )

    async def RecordRunCallbacks(
        self, request: runs_pb2.RecordRunCallbacksRequest, context: Context
    ) -> runs_pb2.RecordRunCallbacksResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        callbacks = [_callback(message, i) for i, message in enumerate(request.callbacks)]
        creates = any(isinstance(callback, rcb.StepOutputsReport) for callback in callbacks)
        # Outputs create artifact versions: the caller must be allowed to (it becomes their owner).
        if creates and not await self._domain.checker.check(
            principal, "artifact_version", "create", "", request.project_id
        ):
            raise PermissionDenied("permission denied", metadata={"permission": "artifact_version.create"})
        batch = await self.callbacks.apply(
            request.project_id,
            request.run_id,
            callbacks,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        # After the commit, as RecordStepOutputs: a retry (same request id) records them again, idempotently.
        for artifact_id in batch.new_artifact_ids:
            await self._domain.ownership.record(principal, "artifact", artifact_id, request.project_id)
        await self._domain.ownership.record_many(
            principal, "artifact_version", batch.new_version_ids, request.project_id
        )
        return runs_pb2.RecordRunCallbacksResponse(
            results=[
                runs_pb2.RunCallbackResult(
                    applied=result.applied,
                    artifact_versions=[version_message(version) for version in result.versions],
                )
                for result in batch.results
            ],
            run=run_message(batch.run),
        )

    async def WatchRun(
        self, request: runs_pb2.WatchRunRequest, context: Context
    ) -> AsyncIterator[runs_pb2.RunEvent]:
        self._domain.workspace.require(request.workspace_id)
        events = self.watches.watch_run(request.project_id, request.run_id, request.after_cursor)
        async for event in events:
            yield event_message(event)

    async def WatchRuns(
        self, request: runs_pb2.WatchRunsRequest, context: Context
    ) -> AsyncIterator[runs_pb2.RunEvent]:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()

        async def readable() -> Any:
            return await self._domain.lookup.readable_ids(principal, "run", "read", request.project_id)

        events = self.watches.watch_runs(
            request.project_id, readable, request.after_cursor, filter_text=request.filter
        )
        async for event in events:
            yield event_message(event)


_EVENT_KINDS = {
    CHANGE: runs_pb2.RunEvent.CHANGE,
    DELETED: runs_pb2.RunEvent.DELETED,
    HEARTBEAT: runs_pb2.RunEvent.HEARTBEAT,
    SNAPSHOT: runs_pb2.RunEvent.SNAPSHOT,
}


def event_message(event: WatchEvent) -> runs_pb2.RunEvent:
    """The RunEvent message of a watch event."""
    message = runs_pb2.RunEvent(kind=_EVENT_KINDS[event.kind], cursor=event.cursor)
    if event.run is not None:
        message.run.CopyFrom(run_message(event.run))
    if event.step is not None:
        message.step_run.CopyFrom(step_run_message(event.step))
    stamp = timestamp(event.change_time)
    if stamp is not None:
        message.change_time.CopyFrom(stamp)
    return message
