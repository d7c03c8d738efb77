"""gRPC servicer of keel.metadata.v1.ArtifactService: messages in, domain calls, messages out; no SQL.

Creators own what they create: after a create commits (and again on a
retry: RecordOwnership is idempotent) the caller owns the artifact or
version; RecordStepOutputs makes the caller own the artifacts and versions
it created. Deleting an artifact forgets the artifact's bindings; its
versions' bindings (shares of single versions are rare) stay on dead ids.
"""

from __future__ import annotations

from typing import Any

import grpc

from keel.metadata.v1 import artifacts_pb2 as pb
from keel.metadata.v1 import artifacts_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import etag, resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.metadata import lineage as ln
from services.metadata.artifact_store import (
    ArtifactRecord,
    LinkRecord,
    ListQuery,
    VersionInput,
    VersionRecord,
)
from services.metadata.artifacts import UPDATABLE, Artifacts, StepOutput
from services.metadata.domain import MetadataDomain, forget_quietly, principal_key
from services.metadata.messages import timestamp

Context = grpc.aio.ServicerContext[Any, Any]

_OUTPUT_ONLY = ("id", "project_id", "name", "latest_version_number", "create_time", "update_time", "etag")
_DIRECTIONS = {pb.StepArtifact.INPUT: "input", pb.StepArtifact.OUTPUT: "output"}
_DIRECTION_VALUES = {"input": pb.StepArtifact.INPUT, "output": pb.StepArtifact.OUTPUT}
_WALKS = {pb.GetLineageRequest.UPSTREAM: ln.UPSTREAM, pb.GetLineageRequest.DOWNSTREAM: ln.DOWNSTREAM}
_KINDS = {ln.ARTIFACT_VERSION: pb.Lineage.Node.ARTIFACT_VERSION, ln.STEP_RUN: pb.Lineage.Node.STEP_RUN}


def artifact_message(record: ArtifactRecord) -> pb.Artifact:
    """The Artifact message of a record."""
    return pb.Artifact(
        id=record.id,
        project_id=record.project_id,
        name=record.name,
        type=record.type,
        description=record.description,
        latest_version_number=record.latest_version_number,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def version_message(record: VersionRecord) -> pb.ArtifactVersion:
    """The ArtifactVersion message of a record."""
    return pb.ArtifactVersion(
        id=record.id,
        project_id=record.project_id,
        artifact_id=record.artifact_id,
        number=record.number,
        uri=record.uri,
        type=record.type,
        materializer=record.materializer,
        content_hash=record.content_hash,
        size_bytes=record.size_bytes,
        producer_step_run_id=record.producer_step_run_id,
        producer_run_id=record.producer_run_id,
        create_time=timestamp(record.create_time),
    )


def link_message(record: LinkRecord) -> pb.StepArtifact:
    """The StepArtifact message of a link."""
    return pb.StepArtifact(
        step_run_id=record.step_run_id,
        run_id=record.run_id,
        direction=_DIRECTION_VALUES[record.direction],
        name=record.name,
        artifact_version_id=record.artifact_version_id,
        artifact_id=record.artifact_id,
        create_time=timestamp(record.create_time),
    )


def lineage_message(graph: ln.Graph) -> pb.Lineage:
    """The Lineage message of a graph."""
    return pb.Lineage(
        nodes=[
            pb.Lineage.Node(
                kind=_KINDS[node.kind],
                id=node.id,
                run_id=node.run_id,
                artifact_id=node.artifact_id,
                depth=node.depth,
            )
            for node in graph.nodes
        ],
        edges=[
            pb.Lineage.Edge(
                step_run_id=edge.step_run_id,
                artifact_version_id=edge.artifact_version_id,
                direction=_DIRECTION_VALUES[edge.direction],
                name=edge.name,
            )
            for edge in graph.edges
        ],
        truncated=graph.truncated,
    )


def version_input(message: pb.ArtifactVersion) -> VersionInput:
    return VersionInput(
        uri=message.uri,
        type=message.type,
        materializer=message.materializer,
        content_hash=message.content_hash,
        size_bytes=message.size_bytes,
    )


def _query(request: Any) -> ListQuery:
    return ListQuery(request.page_size, request.page_token, request.filter, request.order_by)


class ArtifactApi(pb_grpc.ArtifactServiceServicer):
    """ArtifactService of the workspace served."""

    def __init__(self, domain: MetadataDomain, artifacts: Artifacts | None = None) -> None:
        self._domain = domain
        self.artifacts = artifacts or Artifacts(domain.store, domain.clock)
        self.lineages = ln.Lineages(domain.store)

    async def CreateArtifact(self, request: pb.CreateArtifactRequest, context: Context) -> pb.Artifact:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        principal = require_principal()
        record, _ = await self.artifacts.create_artifact(
            request.project_id,
            request.artifact.name,
            request.artifact.type,
            request.artifact.description,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        await self._domain.ownership.record(principal, "artifact", record.id, record.project_id)
        return artifact_message(record)

    async def GetArtifact(self, request: pb.GetArtifactRequest, context: Context) -> pb.Artifact:
        self._domain.workspace.require(request.workspace_id)
        return artifact_message(await self.artifacts.get_artifact(request.project_id, request.artifact_id))

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: Context
    ) -> pb.ListArtifactsResponse:
        self._domain.workspace.require(request.workspace_id)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "artifact", "read", request.project_id
        )
        records, token = await self.artifacts.list_artifacts(request.project_id, readable, _query(request))
        return pb.ListArtifactsResponse(
            artifacts=[artifact_message(record) for record in records], next_page_token=token
        )

    async def UpdateArtifact(self, request: pb.UpdateArtifactRequest, context: Context) -> pb.Artifact:
        self._domain.workspace.require(request.workspace_id)
        mask = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        artifact = request.artifact
        values = {name: getattr(artifact, name) for name in mask}
        updated = await self.artifacts.update_artifact(request.project_id, artifact.id, artifact.etag, values)
        return artifact_message(updated)

    async def DeleteArtifact(
        self, request: pb.DeleteArtifactRequest, context: Context
    ) -> pb.DeleteArtifactResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        deleted = await self.artifacts.delete_artifact(request.project_id, request.artifact_id, request.etag)
        await forget_quietly(self._domain, principal, "artifact", request.artifact_id, request.project_id)
        return pb.DeleteArtifactResponse(deleted_versions=deleted)

    async def CreateArtifactVersion(
        self, request: pb.CreateArtifactVersionRequest, context: Context
    ) -> pb.ArtifactVersion:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        principal = require_principal()
        record, _ = await self.artifacts.create_version(
            request.project_id,
            request.artifact_id,
            version_input(request.artifact_version),
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        await self._domain.ownership.record(principal, "artifact_version", record.id, record.project_id)
        return version_message(record)

    async def GetArtifactVersion(
        self, request: pb.GetArtifactVersionRequest, context: Context
    ) -> pb.ArtifactVersion:
        self._domain.workspace.require(request.workspace_id)
        record = await self.artifacts.get_version(
            request.project_id, request.artifact_id, request.artifact_version_id
        )
        return version_message(record)

    async def ListArtifactVersions(
        self, request: pb.ListArtifactVersionsRequest, context: Context
    ) -> pb.ListArtifactVersionsResponse:
        self._domain.workspace.require(request.workspace_id)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "artifact_version", "read", request.project_id
        )
        records, token = await self.artifacts.list_versions(
            request.project_id, request.artifact_id, readable, _query(request)
        )
        return pb.ListArtifactVersionsResponse(
            artifact_versions=[version_message(record) for record in records], next_page_token=token
        )

    async def DeleteArtifactVersion(
        self, request: pb.DeleteArtifactVersionRequest, context: Context
    ) -> pb.DeleteArtifactVersionResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        await self.artifacts.delete_version(
            request.project_id, request.artifact_id, request.artifact_version_id
        )
        await forget_quietly(
            self._domain, principal, "artifact_version", request.artifact_version_id, request.project_id
        )
        return pb.DeleteArtifactVersionResponse()

    async def RecordStepInputs(
        self, request: pb.RecordStepInputsRequest, context: Context
    ) -> pb.RecordStepInputsResponse:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        links = await self.artifacts.record_inputs(
            request.project_id,
            request.step_run_id,
            [(item.name, item.artifact_version_id) for item in request.inputs],
            principal=principal_key(require_principal()),
            request_id=request.request_id,
        )
        return pb.RecordStepInputsResponse(links=[link_message(link) for link in links])

    async def RecordStepOutputs(
        self, request: pb.RecordStepOutputsRequest, context: Context
    ) -> pb.RecordStepOutputsResponse:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        principal = require_principal()
        outputs = [
            StepOutput(item.name, item.artifact_name, version_input(item.artifact_version))
            for item in request.outputs
        ]
        recorded = await self.artifacts.record_outputs(
            request.project_id,
            request.step_run_id,
            outputs,
            principal=principal_key(principal),
            request_id=request.request_id,
        )
        for artifact_id in recorded.new_artifact_ids:
            await self._domain.ownership.record(principal, "artifact", artifact_id, request.project_id)
        for version_id in recorded.new_version_ids:
            await self._domain.ownership.record(principal, "artifact_version", version_id, request.project_id)
        return pb.RecordStepOutputsResponse(artifact_versions=[version_message(v) for v in recorded.versions])

    async def ListStepArtifacts(
        self, request: pb.ListStepArtifactsRequest, context: Context
    ) -> pb.ListStepArtifactsResponse:
        self._domain.workspace.require(request.workspace_id)
        direction = _DIRECTIONS.get(request.direction, "")
        links, token = await self.artifacts.list_step_links(
            request.project_id, request.step_run_id, direction, request.page_size, request.page_token
        )
        return pb.ListStepArtifactsResponse(
            links=[link_message(link) for link in links], next_page_token=token
        )

    async def GetLineage(self, request: pb.GetLineageRequest, context: Context) -> pb.Lineage:
        self._domain.workspace.require(request.workspace_id)
        direction = _WALKS.get(request.direction)
        if direction is None:
            raise InvalidArgument("direction", "must be UPSTREAM or DOWNSTREAM")
        graph = await self.lineages.lineage(
            request.project_id,
            artifact_version_id=request.artifact_version_id,
            run_id=request.run_id,
            direction=direction,
            depth=request.depth,
        )
        principal, lookup = require_principal(), self._domain.lookup
        versions = await lookup.readable_ids(principal, "artifact_version", "read", request.project_id)
        runs = await lookup.readable_ids(principal, "run", "read", request.project_id)
        return lineage_message(ln.readable_part(graph, request.project_id, versions, runs))
