"""gRPC servicer of keel.metadata.v1.ModelService: messages in, domain calls, messages out; no SQL.

The creator of a model or model version owns it (the domain records the
ownership before the insert, `domain.create_owned`). Deleting a model forgets
the model's bindings.
"""

from __future__ import annotations

from typing import Any

import grpc

from keel.metadata.v1 import models_pb2 as pb
from keel.metadata.v1 import models_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import etag, resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.metadata import model_store as st
from services.metadata.artifact_store import ListQuery
from services.metadata.domain import MetadataDomain, forget_quietly, principal_key
from services.metadata.messages import timestamp
from services.metadata.model_store import LinkRecord, ModelRecord, ModelVersionRecord
from services.metadata.models import UPDATABLE, VERSION_UPDATABLE, Models

Context = grpc.aio.ServicerContext[Any, Any]

_OUTPUT_ONLY = (
    "id",
    "project_id",
    "name",
    "latest_version_number",
    "production_version_id",
    "create_time",
    "update_time",
    "etag",
)
# The stage moves only through PromoteModelVersion; the number never changes.
_VERSION_OUTPUT_ONLY = (
    "id",
    "project_id",
    "model_id",
    "number",
    "stage",
    "stage_time",
    "create_time",
    "update_time",
    "etag",
)
_STAGES = {
    st.NONE: pb.ModelVersion.NONE,
    st.STAGING: pb.ModelVersion.STAGING,
    st.PRODUCTION: pb.ModelVersion.PRODUCTION,
    st.ARCHIVED: pb.ModelVersion.ARCHIVED,
}
_STAGE_NAMES = {value: name for name, value in _STAGES.items()}


def model_message(record: ModelRecord) -> pb.Model:
    """The Model message of a record."""
    return pb.Model(
        id=record.id,
        project_id=record.project_id,
        name=record.name,
        description=record.description,
        latest_version_number=record.latest_version_number,
        production_version_id=record.production_version_id,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def version_message(record: ModelVersionRecord) -> pb.ModelVersion:
    """The ModelVersion message of a record."""
    return pb.ModelVersion(
        id=record.id,
        project_id=record.project_id,
        model_id=record.model_id,
        number=record.number,
        description=record.description,
        stage=_STAGES[record.stage],
        stage_time=timestamp(record.stage_time),
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def link_message(record: LinkRecord) -> pb.ModelVersionLink:
    """The ModelVersionLink message of a record."""
    message = pb.ModelVersionLink(
        id=record.id,
        model_version_id=record.model_version_id,
        name=record.name,
        create_time=timestamp(record.create_time),
    )
    if record.target_kind == "run":
        message.run_id = record.target_id
    else:
        message.artifact_version_id = record.target_id
    return message


def _query(request: Any) -> ListQuery:
    return ListQuery(request.page_size, request.page_token, request.filter, request.order_by)


class ModelApi(pb_grpc.ModelServiceServicer):
    """ModelService of the workspace served."""

    def __init__(self, domain: MetadataDomain, models: Models | None = None) -> None:
        self._domain = domain
        self.models = models or Models(domain)

    async def CreateModel(self, request: pb.CreateModelRequest, context: Context) -> pb.Model:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        record = await self.models.create_model(
            require_principal(),
            request.project_id,
            request.model.name,
            request.model.description,
            request.request_id,
        )
        return model_message(record)

    async def GetModel(self, request: pb.GetModelRequest, context: Context) -> pb.Model:
        self._domain.workspace.require(request.workspace_id)
        return model_message(await self.models.get_model(request.project_id, request.model_id))

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        self._domain.workspace.require(request.workspace_id)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "model", "read", request.project_id
        )
        records, token = await self.models.list_models(request.project_id, readable, _query(request))
        return pb.ListModelsResponse(
            models=[model_message(record) for record in records], next_page_token=token
        )

    async def UpdateModel(self, request: pb.UpdateModelRequest, context: Context) -> pb.Model:
        self._domain.workspace.require(request.workspace_id)
        mask = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        model = request.model
        values = {name: getattr(model, name) for name in mask}
        return model_message(await self.models.update_model(request.project_id, model.id, model.etag, values))

    async def DeleteModel(self, request: pb.DeleteModelRequest, context: Context) -> pb.DeleteModelResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        deleted = await self.models.delete_model(request.project_id, request.model_id, request.etag)
        await forget_quietly(self._domain, principal, "model", request.model_id, request.project_id)
        return pb.DeleteModelResponse(deleted_versions=deleted)

    async def CreateModelVersion(
        self, request: pb.CreateModelVersionRequest, context: Context
    ) -> pb.ModelVersion:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        record = await self.models.create_version(
            require_principal(),
            request.project_id,
            request.model_id,
            request.model_version.description,
            request.request_id,
        )
        return version_message(record)

    async def GetModelVersion(self, request: pb.GetModelVersionRequest, context: Context) -> pb.ModelVersion:
        self._domain.workspace.require(request.workspace_id)
        record = await self.models.get_version(request.project_id, request.model_id, request.model_version_id)
        return version_message(record)

    async def ListModelVersions(
        self, request: pb.ListModelVersionsRequest, context: Context
    ) -> pb.ListModelVersionsResponse:
        self._domain.workspace.require(request.workspace_id)
        readable = await self._domain.lookup.readable_ids(
            require_principal(), "model_version", "read", request.project_id
        )
        records, token = await self.models.list_versions(
            request.project_id, request.model_id, readable, _query(request)
        )
        return pb.ListModelVersionsResponse(
            model_versions=[version_message(record) for record in records], next_page_token=token
        )

    async def UpdateModelVersion(
        self, request: pb.UpdateModelVersionRequest, context: Context
    ) -> pb.ModelVersion:
        self._domain.workspace.require(request.workspace_id)
        mask = resolve_update_mask(
            list(request.update_mask.paths), VERSION_UPDATABLE, output_only=_VERSION_OUTPUT_ONLY
        )
        version = request.model_version
        values = {name: getattr(version, name) for name in mask}
        record = await self.models.update_version(
            request.project_id, request.model_id, version.id, version.etag, values
        )
        return version_message(record)

    async def DeleteModelVersion(
        self, request: pb.DeleteModelVersionRequest, context: Context
    ) -> pb.DeleteModelVersionResponse:
        self._domain.workspace.require(request.workspace_id)
        principal = require_principal()
        await self.models.delete_version(request.project_id, request.model_id, request.model_version_id)
        await forget_quietly(
            self._domain, principal, "model_version", request.model_version_id, request.project_id
        )
        return pb.DeleteModelVersionResponse()

    async def PromoteModelVersion(
        self, request: pb.PromoteModelVersionRequest, context: Context
    ) -> pb.PromoteModelVersionResponse:
        self._domain.workspace.require(request.workspace_id)
        stage = _STAGE_NAMES.get(request.stage)
        if stage is None:
            raise InvalidArgument("stage", "must be NONE, STAGING, PRODUCTION or ARCHIVED")
        promotion = await self.models.promote(
            request.project_id, request.model_id, request.model_version_id, stage, request.etag
        )
        response = pb.PromoteModelVersionResponse(model_version=version_message(promotion.version))
        if promotion.demoted is not None:
            response.demoted.CopyFrom(version_message(promotion.demoted))
        return response

    async def CreateModelVersionLink(
        self, request: pb.CreateModelVersionLinkRequest, context: Context
    ) -> pb.ModelVersionLink:
        self._domain.workspace.require(request.workspace_id)
        validate_request_id(request.request_id)
        target = request.link.WhichOneof("target")
        kind = {"artifact_version_id": "artifact_version", "run_id": "run"}.get(target or "", "")
        record = await self.models.create_link(
            request.project_id,
            request.model_id,
            request.model_version_id,
            kind,
            getattr(request.link, target) if target else "",
            request.link.name,
            principal=principal_key(require_principal()),
            request_id=request.request_id,
        )
        return link_message(record)

    async def ListModelVersionLinks(
        self, request: pb.ListModelVersionLinksRequest, context: Context
    ) -> pb.ListModelVersionLinksResponse:
        self._domain.workspace.require(request.workspace_id)
        links, token = await self.models.list_links(
            request.project_id,
            request.model_id,
            request.model_version_id,
            request.page_size,
            request.page_token,
        )
        return pb.ListModelVersionLinksResponse(
            links=[link_message(link) for link in links], next_page_token=token
        )

    async def DeleteModelVersionLink(
        self, request: pb.DeleteModelVersionLinkRequest, context: Context
    ) -> pb.DeleteModelVersionLinkResponse:
        self._domain.workspace.require(request.workspace_id)
        await self.models.delete_link(
            request.project_id, request.model_id, request.model_version_id, request.link_id
        )
        return pb.DeleteModelVersionLinkResponse()
