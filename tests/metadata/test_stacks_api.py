"""StackService (stacks, components, flavors) through the real workspace server."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2

from keel.metadata.v1 import stacks_pb2 as pb
from keel.metadata.v1 import stacks_pb2_grpc as pb_grpc
from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.status import rich_status_of
from tests.metadata.conftest import MetadataStack
from tests.orgs.conftest import User

ORCHESTRATOR = pb.Component.ORCHESTRATOR
ARTIFACT_STORE = pb.Component.ARTIFACT_STORE


def _stub(stack: MetadataStack) -> pb_grpc.StackServiceAsyncStub:
    return pb_grpc.StackServiceStub(stack.channel)


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _bad_field(error: grpc.aio.AioRpcError) -> str:
    status = rich_status_of(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return str(bad.field_violations[0].field)
    raise AssertionError("no BadRequest detail")


async def _component(
    stack: MetadataStack,
    type_: Any,
    flavor: str,
    configuration: dict[str, Any],
    user: User | None = None,
    name: str | None = None,
) -> pb.Component:
    return await _stub(stack).CreateComponent(
        pb.CreateComponentRequest(
            workspace_id=stack.workspace_id,
            component=pb.Component(
                name=name or f"c-{uuid.uuid4().hex[:6]}",
                type=type_,
                flavor=flavor,
                configuration=_struct(configuration),
            ),
        ),
        metadata=(user or stack.owner).metadata,
    )


async def _basic_stack(stack: MetadataStack, name: str = "prod", user: User | None = None) -> pb.Stack:
    orchestrator = await _component(stack, ORCHESTRATOR, "kubernetes", {"namespace": "ml"}, user)
    store = await _component(stack, ARTIFACT_STORE, "s3", {"path": "s3://bucket/keel"}, user)
    return await _stub(stack).CreateStack(
        pb.CreateStackRequest(
            workspace_id=stack.workspace_id,
            stack=pb.Stack(name=name, component_ids=[store.id, orchestrator.id]),
        ),
        metadata=(user or stack.owner).metadata,
    )


async def test_flavors_are_listed_and_carry_schemas(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    every = await _stub(stack).ListFlavors(
        pb.ListFlavorsRequest(workspace_id=stack.workspace_id), metadata=stack.owner.metadata
    )
    names = {(flavor.type, flavor.name) for flavor in every.flavors}
    assert (ORCHESTRATOR, "kubernetes") in names
    assert (ARTIFACT_STORE, "gcs") in names
    stores = await _stub(stack).ListFlavors(
        pb.ListFlavorsRequest(workspace_id=stack.workspace_id, type=ARTIFACT_STORE),
        metadata=stack.owner.metadata,
    )
    assert [flavor.name for flavor in stores.flavors] == ["gcs", "local", "s3"]
    s3 = await _stub(stack).GetFlavor(
        pb.GetFlavorRequest(workspace_id=stack.workspace_id, type=ARTIFACT_STORE, flavor="s3"),
        metadata=stack.owner.metadata,
    )
    assert s3.config_schema["required"] == ["path"]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _stub(stack).GetFlavor(
            pb.GetFlavorRequest(workspace_id=stack.workspace_id, type=ORCHESTRATOR, flavor="s3"),
            metadata=stack.owner.metadata,
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_component_configuration_is_validated_against_the_flavor(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await _component(
        stack, ORCHESTRATOR, "kubernetes", {"namespace": "ml", "step_timeout_seconds": 60}
    )
    assert created.configuration["namespace"] == "ml"
    cases: list[tuple[Any, str, dict[str, Any], str]] = [
        (ORCHESTRATOR, "kubernetes", {}, "component.configuration"),
        (ORCHESTRATOR, "kubernetes", {"namespace": "ml", "typo": 1}, "component.configuration"),
        (
            ORCHESTRATOR,
            "kubernetes",
            {"namespace": "ml", "step_timeout_seconds": 0},
            "component.configuration",
        ),
        (ARTIFACT_STORE, "s3", {"path": "gs://wrong-scheme"}, "component.configuration.path"),
        (ARTIFACT_STORE, "azure", {"path": "x"}, "component.flavor"),
        (pb.Component.TYPE_UNSPECIFIED, "local", {}, "component.type"),
    ]
    for type_, flavor, configuration, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await _component(stack, type_, flavor, configuration)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (flavor, configuration)
        assert _bad_field(bad.value).startswith(field), (flavor, configuration, _bad_field(bad.value))


async def test_component_update_revalidates_and_keeps_type_and_flavor(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await _component(stack, ARTIFACT_STORE, "s3", {"path": "s3://a/b"})
    updated = await _stub(stack).UpdateComponent(
        pb.UpdateComponentRequest(
            workspace_id=stack.workspace_id,
            component=pb.Component(
                id=created.id,
                configuration=_struct({"path": "s3://c/d", "region": "eu-west-1"}),
                etag=created.etag,
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["configuration", "connector_id"]),
        ),
        metadata=stack.owner.metadata,
    )
    assert updated.configuration["region"] == "eu-west-1"
    assert (updated.type, updated.flavor, updated.connector_id) == (ARTIFACT_STORE, "s3", "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _stub(stack).UpdateComponent(
            pb.UpdateComponentRequest(
                workspace_id=stack.workspace_id,
                component=pb.Component(id=created.id, configuration=_struct({"path": "/tmp"})),
                update_mask=field_mask_pb2.FieldMask(paths=["configuration"]),
            ),
            metadata=stack.owner.metadata,
        )
    assert _bad_field(bad.value) == "component.configuration.path"
    with pytest.raises(grpc.aio.AioRpcError) as fixed:
        await _stub(stack).UpdateComponent(
            pb.UpdateComponentRequest(
                workspace_id=stack.workspace_id,
                component=pb.Component(id=created.id, flavor="gcs"),
                update_mask=field_mask_pb2.FieldMask(paths=["flavor"]),
            ),
            metadata=stack.owner.metadata,
        )
    assert _bad_field(fixed.value) == "update_mask"


async def test_a_stack_needs_an_orchestrator_and_an_artifact_store_once_each(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    created = await _basic_stack(stack)
    got = await _stub(stack).GetStack(
        pb.GetStackRequest(workspace_id=stack.workspace_id, stack_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert got == created
    orchestrator_id, store_id = created.component_ids  # returned in type order
    assert (
        await _stub(stack).GetComponent(
            pb.GetComponentRequest(workspace_id=stack.workspace_id, component_id=orchestrator_id),
            metadata=stack.owner.metadata,
        )
    ).type == ORCHESTRATOR
    other_orchestrator = await _component(stack, ORCHESTRATOR, "local", {})
    cases = [
        ([orchestrator_id], "stack.component_ids"),
        ([orchestrator_id, store_id, other_orchestrator.id], "stack.component_ids[2]"),
        ([orchestrator_id, str(uuid.uuid4())], "stack.component_ids[1]"),
    ]
    for ids, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await _stub(stack).CreateStack(
                pb.CreateStackRequest(
                    workspace_id=stack.workspace_id, stack=pb.Stack(name="x", component_ids=ids)
                ),
                metadata=stack.owner.metadata,
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _bad_field(bad.value) == field
    swapped = await _stub(stack).UpdateStack(
        pb.UpdateStackRequest(
            workspace_id=stack.workspace_id,
            stack=pb.Stack(id=created.id, component_ids=[other_orchestrator.id, store_id], etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["component_ids"]),
        ),
        metadata=stack.owner.metadata,
    )
    assert list(swapped.component_ids) == [other_orchestrator.id, store_id]
    assert swapped.etag != created.etag


async def test_a_component_in_use_cannot_be_deleted(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await _basic_stack(stack)
    orchestrator_id = created.component_ids[0]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _stub(stack).DeleteComponent(
            pb.DeleteComponentRequest(workspace_id=stack.workspace_id, component_id=orchestrator_id),
            metadata=stack.owner.metadata,
        )
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await _stub(stack).DeleteStack(
        pb.DeleteStackRequest(workspace_id=stack.workspace_id, stack_id=created.id),
        metadata=stack.owner.metadata,
    )
    deleted = await _stub(stack).DeleteComponent(
        pb.DeleteComponentRequest(workspace_id=stack.workspace_id, component_id=orchestrator_id),
        metadata=stack.owner.metadata,
    )
    assert deleted.id == orchestrator_id


async def test_a_share_on_one_stack_shows_only_that_stack(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    first = await _basic_stack(stack, "first")
    await _basic_stack(stack, "second")
    outsider, member = await stack.member(), await stack.member()
    # Separate users: a list answer is cached up to 4 s per caller (a share shows within 5 s).
    await stack.share(member, "stack", first.id, "workspace_viewer")
    listed = await _stub(stack).ListStacks(
        pb.ListStacksRequest(workspace_id=stack.workspace_id), metadata=member.metadata
    )
    assert [item.id for item in listed.stacks] == [first.id]
    empty = await _stub(stack).ListStacks(
        pb.ListStacksRequest(workspace_id=stack.workspace_id), metadata=outsider.metadata
    )
    assert list(empty.stacks) == []
    viewer = await stack.user_with_role("workspace_viewer")
    every = await _stub(stack).ListStacks(
        pb.ListStacksRequest(workspace_id=stack.workspace_id, order_by="name desc"), metadata=viewer.metadata
    )
    assert [item.name for item in every.stacks] == ["second", "first"]


async def test_lists_page_and_filter(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    for index in range(5):
        await _component(stack, ARTIFACT_STORE, "local", {"path": f"/data/{index}"}, name=f"store-{index}")
    await _component(stack, ORCHESTRATOR, "local", {}, name="runner")
    seen: list[str] = []
    token = ""
    while True:
        page = await _stub(stack).ListComponents(
            pb.ListComponentsRequest(
                workspace_id=stack.workspace_id,
                page_size=2,
                page_token=token,
                filter="type = ARTIFACT_STORE",
                order_by="name",
            ),
            metadata=stack.owner.metadata,
        )
        seen.extend(component.name for component in page.components)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"store-{index}" for index in range(5)]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _stub(stack).ListComponents(
            pb.ListComponentsRequest(workspace_id=stack.workspace_id, filter="secret = 1"),
            metadata=stack.owner.metadata,
        )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_no_role_is_denied_alike_for_existing_and_missing_stacks(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    created = await _basic_stack(stack)
    member = await stack.member()
    codes = []
    for stack_id in (created.id, str(uuid.uuid4())):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await _stub(stack).GetStack(
                pb.GetStackRequest(workspace_id=stack.workspace_id, stack_id=stack_id),
                metadata=member.metadata,
            )
        codes.append((denied.value.code(), denied.value.details()))
    assert codes[0] == codes[1]
    assert codes[0][0] == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as create:
        await _component(stack, ORCHESTRATOR, "local", {}, user=member)
    assert create.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_stack_names_only_components_its_creator_may_read(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    hidden = await _component(stack, ORCHESTRATOR, "local", {})
    visible = await _component(stack, ORCHESTRATOR, "local", {})
    store = await _component(stack, ARTIFACT_STORE, "local", {"path": "/d"})
    # A custom role that creates stacks but reads no component; two components shared one by one.
    role = await rbac_pb2_grpc.RoleServiceStub(stack.orgs.rbac_channel).CreateRole(
        rbac_pb2.CreateRoleRequest(
            organization_id=stack.organization_id,
            role=rbac_pb2.Role(
                display_name="Stack builder",
                level=rbac_pb2.WORKSPACE,
                permissions=[rbac_pb2.Permission(resource_type="stack", action="create")],
            ),
        ),
        metadata=stack.owner.metadata,
    )
    builder = await stack.user_with_role(role.id)
    for component in (visible, store):
        await stack.share(builder, "component", component.id, "workspace_viewer")

    async def create(ids: list[str]) -> pb.Stack:
        return await _stub(stack).CreateStack(
            pb.CreateStackRequest(
                workspace_id=stack.workspace_id, stack=pb.Stack(name="built", component_ids=ids)
            ),
            metadata=builder.metadata,
        )

    answers = []
    for unreadable in (hidden.id, str(uuid.uuid4())):  # not readable, or missing: the same answer
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create([unreadable, store.id])
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        answers.append((_bad_field(refused.value), refused.value.details()))
    assert answers[0] == answers[1]
    assert answers[0][0] == "stack.component_ids[0]"
    created = await create([visible.id, store.id])
    assert list(created.component_ids) == [visible.id, store.id]
