"""gRPC servicer of keel.metadata.v1.PipelineService: messages in, domain calls, messages out; no SQL.

Ownership: the domain records the creator as owner before the insert and
forgets it again if the insert fails (`domain.create_owned`); a retry with the
same request_id returns the first result. Deletes forget the bindings afterwards.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2, json_format, struct_pb2, timestamp_pb2

from keel.metadata.v1 import pipelines_pb2, pipelines_pb2_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import etag, resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.kit.pagination import page_size
from services.metadata.domain import MetadataDomain, forget_quietly
from services.metadata.pipeline_store import PipelineRecord, SnapshotRecord
from services.metadata.pipelines import UPDATABLE, Pipelines
from services.metadata.snapshots import CodeReference, SnapshotInput, StepDefinition

Context = grpc.aio.ServicerContext[Any, Any]

_PIPELINE_OUTPUT_ONLY = ("id", "project_id", "create_time", "update_time")


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp of an aware datetime (None stays unset)."""
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def pipeline_message(record: PipelineRecord) -> pipelines_pb2.Pipeline:
    """The Pipeline message of a record."""
    return pipelines_pb2.Pipeline(
        id=record.id,
        project_id=record.project_id,
        name=record.name,
        description=record.description,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def step_message(step: StepDefinition) -> pipelines_pb2.StepSpec:
    """The StepSpec message of a stored step."""
    parameters = struct_pb2.Struct()
    parameters.update(dict(step.parameters))
    return pipelines_pb2.StepSpec(
        name=step.name,
        image=step.image,
        command=step.command,
        args=step.args,
        parameters=parameters,
        upstream_steps=step.upstream_steps,
        resources=pipelines_pb2.StepResources(cpu=step.cpu, memory_bytes=step.memory_bytes, gpu=step.gpu),
        cache_policy=pipelines_pb2.CachePolicy(
            enabled=step.cache_enabled, cache_key_inputs=step.cache_key_inputs
        ),
        heartbeat_timeout=duration_pb2.Duration(seconds=step.heartbeat_timeout_seconds),
    )


def snapshot_message(record: SnapshotRecord) -> pipelines_pb2.Snapshot:
    """The Snapshot message of a record (steps only when the record carries them)."""
    reference = record.code_reference
    return pipelines_pb2.Snapshot(
        id=record.id,
        project_id=record.project_id,
        pipeline_id=record.pipeline_id,
        description=record.description,
        steps=[step_message(step) for step in record.steps],
        stack_id=record.stack_id,
        code_reference=pipelines_pb2.CodeReference(
            code_repository_id=reference.code_repository_id,
            commit=reference.commit,
            subdirectory=reference.subdirectory,
        ),
        step_count=record.step_count,
        create_time=timestamp(record.create_time),
    )


def _heartbeat_seconds(duration: duration_pb2.Duration, field: str) -> int:
    if duration.nanos or duration.seconds < 0:
        raise InvalidArgument(field, "must be a whole, positive number of seconds")
    return int(duration.seconds)


def snapshot_input(message: pipelines_pb2.Snapshot) -> SnapshotInput:
    """The domain input of a Snapshot message (validated by the domain)."""
    steps = []
    for index, spec in enumerate(message.steps):
        steps.append(
            StepDefinition(
                name=spec.name,
                image=spec.image,
                command=tuple(spec.command),
                args=tuple(spec.args),
                parameters=json_format.MessageToDict(spec.parameters),
                upstream_steps=tuple(spec.upstream_steps),
                cpu=spec.resources.cpu,
                memory_bytes=spec.resources.memory_bytes,
                gpu=spec.resources.gpu,
                cache_enabled=spec.cache_policy.enabled,
                cache_key_inputs=tuple(spec.cache_policy.cache_key_inputs),
                heartbeat_timeout_seconds=_heartbeat_seconds(
                    spec.heartbeat_timeout, f"snapshot.steps[{index}].heartbeat_timeout"
                ),
            )
        )
    reference = message.code_reference
    return SnapshotInput(
        steps=tuple(steps),
        stack_id=message.stack_id,
        description=message.description,
        code_reference=CodeReference(reference.code_repository_id, reference.commit, reference.subdirectory),
    )


class PipelineServicer(pipelines_pb2_grpc.PipelineServiceServicer):
    """PipelineService over the Pipelines domain."""

    def __init__(self, domain: MetadataDomain, pipelines: Pipelines | None = None) -> None:
        self._domain = domain
        self._pipelines = pipelines or Pipelines(domain)

    async def CreatePipeline(
        self, request: pipelines_pb2.CreatePipelineRequest, context: Context
    ) -> pipelines_pb2.Pipeline:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        record = await self._pipelines.create_pipeline(
            require_principal(),
            request.project_id,
            request.pipeline.name,
            request.pipeline.description,
            request.request_id,
        )
        return pipeline_message(record)

    async def GetPipeline(
        self, request: pipelines_pb2.GetPipelineRequest, context: Context
    ) -> pipelines_pb2.Pipeline:
        self._domain.workspace.require(request.workspace_id)
        return pipeline_message(await self._pipelines.get_pipeline(request.project_id, request.pipeline_id))

    async def ListPipelines(
        self, request: pipelines_pb2.ListPipelinesRequest, context: Context
    ) -> pipelines_pb2.ListPipelinesResponse:
        self._domain.workspace.require(request.workspace_id)
        size = page_size(request.page_size)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "pipeline", "read", request.project_id
        )
        records, token = await self._pipelines.list_pipelines(
            request.project_id,
            readable,
            filter_text=request.filter,
            order_by=request.order_by,
            size=size,
            page_token=request.page_token,
        )
        return pipelines_pb2.ListPipelinesResponse(
            pipelines=[pipeline_message(record) for record in records], next_page_token=token
        )

    async def UpdatePipeline(
        self, request: pipelines_pb2.UpdatePipelineRequest, context: Context
    ) -> pipelines_pb2.Pipeline:
        self._domain.workspace.require(request.workspace_id)
        paths = resolve_update_mask(request.update_mask.paths, UPDATABLE, output_only=_PIPELINE_OUTPUT_ONLY)
        values = {path: getattr(request.pipeline, path) for path in paths}
        record = await self._pipelines.update_pipeline(
            request.project_id, request.pipeline.id, values, request.pipeline.etag
        )
        return pipeline_message(record)

    async def DeletePipeline(
        self, request: pipelines_pb2.DeletePipelineRequest, context: Context
    ) -> pipelines_pb2.Pipeline:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        record, snapshot_ids = await self._pipelines.delete_pipeline(
            request.project_id, request.pipeline_id, request.etag
        )
        await forget_quietly(self._domain, principal, "pipeline", record.id, record.project_id)
        for snapshot_id in snapshot_ids:
            await forget_quietly(self._domain, principal, "snapshot", snapshot_id, record.project_id)
        return pipeline_message(record)

    async def CreateSnapshot(
        self, request: pipelines_pb2.CreateSnapshotRequest, context: Context
    ) -> pipelines_pb2.Snapshot:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        record = await self._pipelines.create_snapshot(
            require_principal(),
            request.project_id,
            request.pipeline_id,
            snapshot_input(request.snapshot),
            request.request_id,
        )
        return snapshot_message(record)

    async def GetSnapshot(
        self, request: pipelines_pb2.GetSnapshotRequest, context: Context
    ) -> pipelines_pb2.Snapshot:
        self._domain.workspace.require(request.workspace_id)
        record = await self._pipelines.get_snapshot(
            request.project_id, request.pipeline_id, request.snapshot_id
        )
        return snapshot_message(record)

    async def ListSnapshots(
        self, request: pipelines_pb2.ListSnapshotsRequest, context: Context
    ) -> pipelines_pb2.ListSnapshotsResponse:
        self._domain.workspace.require(request.workspace_id)
        size = page_size(request.page_size)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "snapshot", "read", request.project_id
        )
        records, token = await self._pipelines.list_snapshots(
            request.project_id,
            request.pipeline_id,
            readable,
            filter_text=request.filter,
            order_by=request.order_by,
            size=size,
            page_token=request.page_token,
        )
        return pipelines_pb2.ListSnapshotsResponse(
            snapshots=[snapshot_message(record) for record in records], next_page_token=token
        )

    async def DeleteSnapshot(
        self, request: pipelines_pb2.DeleteSnapshotRequest, context: Context
    ) -> pipelines_pb2.Snapshot:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        record = await self._pipelines.delete_snapshot(
            request.project_id, request.pipeline_id, request.snapshot_id
        )
        await forget_quietly(self._domain, principal, "snapshot", record.id, record.project_id)
        return snapshot_message(record)
