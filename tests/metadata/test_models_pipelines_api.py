"""UpdateModelVersion, tag filters and owned creates of models and pipelines (real authn, RBAC, orgs)."""

from __future__ import annotations

import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2

from keel.metadata.v1 import annotations_pb2 as an
from keel.metadata.v1 import annotations_pb2_grpc as an_grpc
from keel.metadata.v1 import models_pb2 as mo
from keel.metadata.v1 import models_pb2_grpc as mo_grpc
from services.kit.context import Principal
from services.kit.errors import AlreadyExists, FailedPrecondition, NotFound
from services.kit.rbac_lookup import EVERYTHING
from services.metadata.models import Models
from services.metadata.pipelines import Pipelines
from tests.metadata.conftest import MetadataStack, field_of
from tests.orgs.conftest import User


async def _owner_of(stack: MetadataStack, resource_type: str, resource_id: str) -> str | None:
    async with stack.orgs.rbac.domain.store.transaction() as tx:
        owner = await tx.owner_of(stack.organization_id, resource_type, resource_id)
    return None if owner is None else str(owner.subject_id)


async def test_update_model_version_and_tag_filters_through_the_server(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    ws = stack.workspace_id
    models = mo_grpc.ModelServiceStub(stack.channel)
    notes = an_grpc.AnnotationServiceStub(stack.channel)
    p = (await stack.project()).id
    editor = await stack.user_with_role("project_editor", p)
    viewer = await stack.user_with_role("project_viewer", p)
    model = await models.CreateModel(
        mo.CreateModelRequest(workspace_id=ws, project_id=p, model=mo.Model(name="churn")),
        metadata=editor.metadata,
    )
    version = await models.CreateModelVersion(
        mo.CreateModelVersionRequest(
            workspace_id=ws,
            project_id=p,
            model_id=model.id,
            model_version=mo.ModelVersion(description="first"),
        ),
        metadata=editor.metadata,
    )

    def update(
        paths: list[str], description: str = "retrained", etag: str = "", version_id: str = ""
    ) -> mo.UpdateModelVersionRequest:
        return mo.UpdateModelVersionRequest(
            workspace_id=ws,
            project_id=p,
            model_id=model.id,
            model_version=mo.ModelVersion(
                id=version_id or version.id,
                description=description,
                etag=etag,
                stage=mo.ModelVersion.PRODUCTION,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )

    updated = await models.UpdateModelVersion(
        update(["description"], etag=version.etag), metadata=editor.metadata
    )
    # The stage in the body is ignored: it moves only by PromoteModelVersion.
    assert (updated.description, updated.stage, updated.number) == ("retrained", mo.ModelVersion.NONE, 1)
    assert updated.etag != version.etag
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await models.UpdateModelVersion(update(["description"], etag=version.etag), metadata=editor.metadata)
    assert stale.value.code() == grpc.StatusCode.ABORTED
    for paths in (["stage"], ["number"], [""], ["bogus"], ["description", "*"]):
        with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
            await models.UpdateModelVersion(update(paths), metadata=editor.metadata)
        assert bad_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT, paths
        assert field_of(bad_mask.value) == "update_mask"
    with pytest.raises(grpc.aio.AioRpcError) as too_long:
        await models.UpdateModelVersion(update([], description="x" * 1001), metadata=editor.metadata)
    assert field_of(too_long.value) == "model_version.description"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await models.UpdateModelVersion(update(["description"]), metadata=viewer.metadata)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await models.UpdateModelVersion(
            update([], version_id=str(uuid.uuid4())), metadata=stack.owner.metadata
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    # ListModelVersions / ListModels filter on tags and metadata in SQL.
    await notes.AddTags(
        an.AddTagsRequest(
            workspace_id=ws,
            project_id=p,
            target=an.AnnotationTarget(kind=an.AnnotationTarget.MODEL_VERSION, id=version.id),
            tags=["prod"],
        ),
        metadata=editor.metadata,
    )
    await notes.PutMetadata(
        an.PutMetadataRequest(
            workspace_id=ws,
            project_id=p,
            target=an.AnnotationTarget(kind=an.AnnotationTarget.MODEL_VERSION, id=version.id),
            entries=[an.MetadataEntry(key="accuracy", value=an.MetadataValue(number_value=0.93))],
        ),
        metadata=editor.metadata,
    )
    second = await models.CreateModelVersion(
        mo.CreateModelVersionRequest(workspace_id=ws, project_id=p, model_id=model.id),
        metadata=editor.metadata,
    )

    async def versions(filter_text: str) -> list[str]:
        listed = await models.ListModelVersions(
            mo.ListModelVersionsRequest(workspace_id=ws, project_id=p, model_id=model.id, filter=filter_text),
            metadata=viewer.metadata,
        )
        return [v.id for v in listed.model_versions]

    assert await versions('tags:"prod" AND metadata.accuracy > 0.9') == [version.id]
    assert await versions("NOT metadata.accuracy:*") == [second.id]
    listed = await models.ListModels(
        mo.ListModelsRequest(workspace_id=ws, project_id=p, filter='tags:"prod"'), metadata=viewer.metadata
    )
    assert list(listed.models) == []
    with pytest.raises(grpc.aio.AioRpcError) as bad_filter:
        await versions('metadata.accuracy > "high"')
    assert bad_filter.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(bad_filter.value) == "filter"


def _principal(user: User, token: str | None = None) -> Principal:
    return Principal(subject=user.id, kind="user", token=user.token if token is None else token)


async def test_creates_record_ownership_first_and_a_failed_insert_forgets_it(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    p = (await stack.project()).id
    editor = _principal(await stack.user_with_role("project_editor", p))
    made: list[str] = []

    def new_id() -> str:
        made.append(str(uuid.uuid4()))
        return made[-1]

    domain = stack.service.domain
    pipelines, models = Pipelines(domain, new_id=new_id), Models(domain, new_id=new_id)
    pipeline = await pipelines.create_pipeline(editor, p, "nightly", "")
    model = await models.create_model(editor, p, "churn", "")
    version = await models.create_version(editor, p, model.id, "")
    for kind, created in (("pipeline", pipeline.id), ("model", model.id), ("model_version", version.id)):
        assert await _owner_of(stack, kind, created) == editor.subject, kind

    # A name conflict is found by the insert, after RecordOwnership: the ownership goes again.
    with pytest.raises(AlreadyExists):
        await pipelines.create_pipeline(editor, p, "nightly", "")
    assert await _owner_of(stack, "pipeline", made[-1]) is None
    with pytest.raises(AlreadyExists):
        await models.create_model(editor, p, "churn", "")
    assert await _owner_of(stack, "model", made[-1]) is None

    # RBAC refusing the ownership leaves nothing behind: the insert never runs.
    stranger = _principal(await stack.member(), token="not-a-token")
    with pytest.raises(FailedPrecondition):
        await pipelines.create_pipeline(stranger, p, "other", "")
    with pytest.raises(NotFound):
        await pipelines.get_pipeline(p, made[-1])
    listed, _ = await pipelines.list_pipelines(
        p, EVERYTHING, filter_text="", order_by="", size=10, page_token=""
    )
    assert [found.name for found in listed] == ["nightly"]
