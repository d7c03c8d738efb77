"""gRPC servicer of keel.metadata.v1.AnnotationService: messages in, domain calls, messages out; no SQL.

The contract rule lets in callers who may read the project; each handler then
checks the permission on the target itself (read for lists, update for
changes) with the same checker as the interceptor, before looking the target
up, so a target the caller may not see is denied whether or not it exists.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from keel.metadata.v1 import annotations_pb2 as pb
from keel.metadata.v1 import annotations_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.idempotency import validate_request_id
from services.metadata.annotation_store import Entry, LogPointerRecord
from services.metadata.annotations import Annotations, Target
from services.metadata.domain import MetadataDomain, principal_key
from services.metadata.messages import timestamp

Context = grpc.aio.ServicerContext[Any, Any]

_KINDS = {
    pb.AnnotationTarget.RUN: "run",
    pb.AnnotationTarget.STEP_RUN: "step",
    pb.AnnotationTarget.ARTIFACT_VERSION: "artifact_version",
    pb.AnnotationTarget.MODEL_VERSION: "model_version",
    pb.AnnotationTarget.ARTIFACT: "artifact",
    pb.AnnotationTarget.MODEL: "model",
    pb.AnnotationTarget.PIPELINE: "pipeline",
    pb.AnnotationTarget.SNAPSHOT: "snapshot",
    pb.AnnotationTarget.CODE_REPOSITORY: "code_repository",
    pb.AnnotationTarget.PROJECT: "project",
}
_KIND_VALUES = {name: value for value, name in _KINDS.items()}
_VALUE_FIELDS = {
    "number_value": "number",
    "string_value": "string",
    "bool_value": "bool",
    "json_value": "json",
    "uri_value": "uri",
}


def _target(message: pb.AnnotationTarget, field: str = "target") -> Target:
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(f"{field}.kind", "is required")
    return Target(kind, message.id)


def _value(message: pb.MetadataValue, field: str) -> tuple[str, Any]:
    which = message.WhichOneof("value")
    if which is None:
        raise InvalidArgument(field, "is required")
    kind = _VALUE_FIELDS[which]
    if kind == "json":
        return kind, json_format.MessageToDict(message.json_value)
    return kind, getattr(message, which)


def value_message(kind: str, value: Any) -> pb.MetadataValue:
    """The MetadataValue message of a stored (kind, JSON-form value)."""
    if kind == "json":
        return pb.MetadataValue(json_value=json_format.ParseDict(value, struct_pb2.Value()))
    field = next(name for name, k in _VALUE_FIELDS.items() if k == kind)
    return pb.MetadataValue(**{field: value})


def entry_message(entry: Entry) -> pb.MetadataEntry:
    """The MetadataEntry message of an entry."""
    return pb.MetadataEntry(
        key=entry.key,
        value=value_message(entry.value_kind, entry.value),
        update_time=timestamp(entry.update_time),
    )


def log_pointer_message(record: LogPointerRecord) -> pb.LogPointer:
    """The LogPointer message of a record."""
    return pb.LogPointer(
        id=record.id,
        target=pb.AnnotationTarget(kind=_KIND_VALUES[record.target_kind], id=record.target_id),
        uri=record.uri,
        label=record.label,
        create_time=timestamp(record.create_time),
    )


class AnnotationApi(pb_grpc.AnnotationServiceServicer):
    """AnnotationService of the workspace served."""

    def __init__(self, domain: MetadataDomain, annotations: Annotations | None = None) -> None:
        self._domain = domain
        self.annotations = annotations or Annotations(domain.store, domain.clock)

    async def _allow(self, project_id: str, target: Target, action: str) -> None:
        if not target.id or not project_id:
            return  # the domain names the missing field
        allowed = await self._domain.checker.check(
            require_principal(), target.kind, action, target.id, project_id
        )
        if not allowed:
            raise PermissionDenied("permission denied", metadata={"permission": f"{target.kind}.{action}"})

    async def PutMetadata(self, request: pb.PutMetadataRequest, context: Context) -> pb.PutMetadataResponse:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        target = _target(request.target)
        entries = []
        for i, entry in enumerate(request.entries):
            kind, value = _value(entry.value, f"entries[{i}].value")
            entries.append((entry.key, kind, value))
        await self._allow(request.project_id, target, "update")
        written = await self.annotations.put_metadata(
            request.project_id,
            target,
            entries,
            principal=principal_key(require_principal()),
            request_id=request.request_id,
        )
        return pb.PutMetadataResponse(entries=[entry_message(entry) for entry in written])

    async def ListMetadata(
        self, request: pb.ListMetadataRequest, context: Context
    ) -> pb.ListMetadataResponse:
        self._domain.workspace.require(request.workspace_id)
        target = _target(request.target)
        await self._allow(request.project_id, target, "read")
        found, token = await self.annotations.list_metadata(
            request.project_id, target, request.page_size, request.page_token
        )
        return pb.ListMetadataResponse(
            entries=[entry_message(entry) for entry in found], next_page_token=token
        )

    async def AddTags(self, request: pb.AddTagsRequest, context: Context) -> pb.AddTagsResponse:
        self._domain.workspace.require(request.workspace_id)
        target = _target(request.target)
        await self._allow(request.project_id, target, "update")
        await self.annotations.add_tags(request.project_id, target, list(request.tags))
        return pb.AddTagsResponse()

    async def RemoveTags(self, request: pb.RemoveTagsRequest, context: Context) -> pb.RemoveTagsResponse:
        self._domain.workspace.require(request.workspace_id)
        target = _target(request.target)
        await self._allow(request.project_id, target, "update")
        await self.annotations.remove_tags(request.project_id, target, list(request.tags))
        return pb.RemoveTagsResponse()

    async def ListTags(self, request: pb.ListTagsRequest, context: Context) -> pb.ListTagsResponse:
        self._domain.workspace.require(request.workspace_id)
        target = _target(request.target)
        await self._allow(request.project_id, target, "read")
        tags, token = await self.annotations.list_tags(
            request.project_id, target, request.page_size, request.page_token
        )
        return pb.ListTagsResponse(tags=tags, next_page_token=token)

    async def CreateLogPointer(self, request: pb.CreateLogPointerRequest, context: Context) -> pb.LogPointer:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        pointer = request.log_pointer
        target = _target(pointer.target, "log_pointer.target")
        await self._allow(request.project_id, target, "update")
        record = await self.annotations.create_log_pointer(
            request.project_id,
            target,
            pointer.uri,
            pointer.label,
            principal=principal_key(require_principal()),
            request_id=request.request_id,
        )
        return log_pointer_message(record)

    async def ListLogPointers(
        self, request: pb.ListLogPointersRequest, context: Context
    ) -> pb.ListLogPointersResponse:
        self._domain.workspace.require(request.workspace_id)
        target = _target(request.target)
        await self._allow(request.project_id, target, "read")
        found, token = await self.annotations.list_log_pointers(
            request.project_id, target, request.page_size, request.page_token
        )
        return pb.ListLogPointersResponse(
            log_pointers=[log_pointer_message(record) for record in found], next_page_token=token
        )
