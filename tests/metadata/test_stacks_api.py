"""StackService (stacks, components, flavors) through the real workspace server."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2
from google.rpc import error_details_pb2
from sqlalchemy import insert, select

from keel.metadata.v1 import stacks_pb2 as pb
from keel.metadata.v1 import stacks_pb2_grpc as pb_grpc
from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.status import rich_status_of
from services.metadata.annotation_store import tags as tag_rows
from tests.metadata.conftest import MetadataStack
from tests.orgs.conftest import User
from tests.statements import counting_statements

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


# Tags: a field of stacks and components (rows of metadata_tags with project '' and kind stack/component).


async def _parts(stack: MetadataStack) -> list[str]:
    """Ids of an orchestrator and an artifact store that any number of stacks may share."""
    orchestrator = await _component(stack, ORCHESTRATOR, "local", {})
    store = await _component(stack, ARTIFACT_STORE, "local", {"path": "/d"})
    return [orchestrator.id, store.id]


async def _tagged_stack(stack: MetadataStack, name: str, tags: list[str], parts: list[str]) -> pb.Stack:
    return await _stub(stack).CreateStack(
        pb.CreateStackRequest(
            workspace_id=stack.workspace_id, stack=pb.Stack(name=name, component_ids=parts, tags=tags)
        ),
        metadata=stack.owner.metadata,
    )


async def _tagged_component(stack: MetadataStack, name: str, tags: list[str]) -> pb.Component:
    return await _stub(stack).CreateComponent(
        pb.CreateComponentRequest(
            workspace_id=stack.workspace_id,
            component=pb.Component(name=name, type=ORCHESTRATOR, flavor="local", tags=tags),
        ),
        metadata=stack.owner.metadata,
    )


async def _stored_tags(stack: MetadataStack, kind: str, target_id: str) -> list[tuple[str, str]]:
    """(project_id, tag) of the metadata_tags rows of a target, read straight from the table."""
    async with stack.service.domain.engine.connect() as conn:
        found = await conn.execute(
            select(tag_rows.c.project_id, tag_rows.c.tag)
            .where(tag_rows.c.target_kind == kind, tag_rows.c.target_id == target_id)
            .order_by(tag_rows.c.tag)
        )
        return [(row.project_id, row.tag) for row in found]


async def _stack_names(stack: MetadataStack, filter_text: str) -> list[str]:
    listed = await _stub(stack).ListStacks(
        pb.ListStacksRequest(workspace_id=stack.workspace_id, filter=filter_text, order_by="name"),
        metadata=stack.owner.metadata,
    )
    return [item.name for item in listed.stacks]


async def _component_names(stack: MetadataStack, filter_text: str) -> list[str]:
    listed = await _stub(stack).ListComponents(
        pb.ListComponentsRequest(
            workspace_id=stack.workspace_id,
            filter=f"type = ORCHESTRATOR AND ({filter_text})",
            order_by="name",
        ),
        metadata=stack.owner.metadata,
    )
    return [item.name for item in listed.components]


async def test_stack_tags_are_set_at_create_and_returned_sorted_by_get_and_list(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    created = await _tagged_stack(
        stack, "tagged", ["zeta", "gpu", "team:ml/core", "gpu"], await _parts(stack)
    )
    assert list(created.tags) == ["gpu", "team:ml/core", "zeta"]
    got = await _stub(stack).GetStack(
        pb.GetStackRequest(workspace_id=stack.workspace_id, stack_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert list(got.tags) == ["gpu", "team:ml/core", "zeta"]
    await _tagged_stack(stack, "plain", [], list(created.component_ids))
    listed = await _stub(stack).ListStacks(
        pb.ListStacksRequest(workspace_id=stack.workspace_id, order_by="name"), metadata=stack.owner.metadata
    )
    assert [(item.name, list(item.tags)) for item in listed.stacks] == [
        ("plain", []),
        ("tagged", ["gpu", "team:ml/core", "zeta"]),
    ]
    assert await _stored_tags(stack, "stack", created.id) == [("", "gpu"), ("", "team:ml/core"), ("", "zeta")]


async def test_component_tags_are_set_at_create_and_returned_by_get_and_list(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    created = await _tagged_component(stack, "runner", ["b", "a"])
    assert list(created.tags) == ["a", "b"]
    got = await _stub(stack).GetComponent(
        pb.GetComponentRequest(workspace_id=stack.workspace_id, component_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert list(got.tags) == ["a", "b"]
    await _tagged_component(stack, "untagged", [])
    assert await _component_names(stack, "tags:*") == ["runner"]
    listed = await _stub(stack).ListComponents(
        pb.ListComponentsRequest(workspace_id=stack.workspace_id, order_by="name"),
        metadata=stack.owner.metadata,
    )
    assert [(item.name, list(item.tags)) for item in listed.components] == [
        ("runner", ["a", "b"]),
        ("untagged", []),
    ]
    assert await _stored_tags(stack, "component", created.id) == [("", "a"), ("", "b")]


async def test_stack_update_replaces_tags_only_when_the_mask_names_them(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    created = await _tagged_stack(stack, "prod", ["keep", "old"], await _parts(stack))

    async def update(paths: list[str], **fields: Any) -> pb.Stack:
        return await _stub(stack).UpdateStack(
            pb.UpdateStackRequest(
                workspace_id=stack.workspace_id,
                stack=pb.Stack(id=created.id, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=stack.owner.metadata,
        )

    described = await update(["description"], description="about", tags=["ignored"])
    assert (described.description, list(described.tags)) == ("about", ["keep", "old"])
    retagged = await update(["tags"], tags=["new", "keep"], description="ignored")
    assert (retagged.description, list(retagged.tags)) == ("about", ["keep", "new"])
    assert retagged.etag != described.etag
    assert list(retagged.component_ids) == list(created.component_ids)
    got = await _stub(stack).GetStack(
        pb.GetStackRequest(workspace_id=stack.workspace_id, stack_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert list(got.tags) == ["keep", "new"]
    assert await _stored_tags(stack, "stack", created.id) == [("", "keep"), ("", "new")]
    cleared = await update(["tags"])
    assert list(cleared.tags) == []
    assert await _stored_tags(stack, "stack", created.id) == []


async def test_component_update_replaces_tags_only_when_the_mask_names_them(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    created = await _tagged_component(stack, "runner", ["old"])

    async def update(paths: list[str], **fields: Any) -> pb.Component:
        return await _stub(stack).UpdateComponent(
            pb.UpdateComponentRequest(
                workspace_id=stack.workspace_id,
                component=pb.Component(id=created.id, **fields),
                update_mask=field_mask_pb2.FieldMask(paths=paths),
            ),
            metadata=stack.owner.metadata,
        )

    described = await update(["description"], description="about", tags=["ignored"])
    assert (described.description, list(described.tags)) == ("about", ["old"])
    retagged = await update(["tags"], tags=["x", "y"])
    assert (retagged.description, list(retagged.tags)) == ("about", ["x", "y"])
    assert retagged.etag != described.etag
    got = await _stub(stack).GetComponent(
        pb.GetComponentRequest(workspace_id=stack.workspace_id, component_id=created.id),
        metadata=stack.owner.metadata,
    )
    assert list(got.tags) == ["x", "y"]
    assert await _stored_tags(stack, "component", created.id) == [("", "x"), ("", "y")]


async def test_lists_filter_stacks_and_components_by_tags(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    parts = await _parts(stack)
    prod = await _tagged_stack(stack, "a-prod", ["prod", "gpu"], parts)
    await _tagged_stack(stack, "b-dev", ["dev"], parts)
    bare = await _tagged_stack(stack, "c-bare", [], parts)
    # A project-level tag row on the same id and kind must not count: the filter correlates with project ''.
    async with stack.service.domain.engine.begin() as conn:
        await conn.execute(
            insert(tag_rows).values(
                project_id=str(uuid.uuid4()),
                target_kind="stack",
                target_id=bare.id,
                tag="prod-elsewhere",
                create_time=stack.clock.now(),
            )
        )
    assert await _stack_names(stack, 'tags:"prod"') == ["a-prod"]
    assert await _stack_names(stack, "tags:*") == ["a-prod", "b-dev"]
    assert await _stack_names(stack, '-tags:"prod"') == ["b-dev", "c-bare"]
    assert await _stack_names(stack, "NOT tags:*") == ["c-bare"]
    assert await _stack_names(stack, 'tags:"prod-elsewhere"') == []
    assert await _stack_names(stack, 'tags:"gpu" AND name = "a-prod"') == [prod.name]
    await _tagged_component(stack, "r-gpu", ["gpu"])
    await _tagged_component(stack, "r-cpu", ["cpu"])
    assert await _component_names(stack, 'tags:"gpu"') == ["r-gpu"]
    negated = await _component_names(stack, '-tags:"gpu"')  # r-cpu and the untagged part
    assert len(negated) == 2
    assert "r-cpu" in negated
    assert "r-gpu" not in negated
    assert await _component_names(stack, "tags:*") == ["r-cpu", "r-gpu"]
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await _stack_names(stack, 'tags = "prod"')
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_field(bad.value) == "filter"


async def test_invalid_tags_are_invalid_argument_naming_the_field(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    parts = await _parts(stack)
    created = await _tagged_stack(stack, "valid", ["ok"], parts)
    component = await _tagged_component(stack, "runner", ["ok"])
    bad_stacks: list[tuple[list[str], str]] = [
        (["ok", "a", "b", "with space"], "stack.tags[3]"),
        (["-leading"], "stack.tags[0]"),
        (["x" * 101], "stack.tags[0]"),
        ([""], "stack.tags[0]"),
        ([f"t{index}" for index in range(51)], "stack.tags"),
    ]
    for tags, field in bad_stacks:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await _tagged_stack(stack, f"s-{uuid.uuid4().hex[:6]}", tags, parts)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, tags
        assert _bad_field(bad.value) == field, tags
        with pytest.raises(grpc.aio.AioRpcError) as bad_update:
            await _stub(stack).UpdateStack(
                pb.UpdateStackRequest(
                    workspace_id=stack.workspace_id,
                    stack=pb.Stack(id=created.id, tags=tags),
                    update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
                ),
                metadata=stack.owner.metadata,
            )
        assert bad_update.value.code() == grpc.StatusCode.INVALID_ARGUMENT, tags
        assert _bad_field(bad_update.value) == field, tags
    with pytest.raises(grpc.aio.AioRpcError) as bad_component:
        await _tagged_component(stack, "other", ["fine", "no*star"])
    assert bad_component.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _bad_field(bad_component.value) == "component.tags[1]"
    with pytest.raises(grpc.aio.AioRpcError) as bad_component_update:
        await _stub(stack).UpdateComponent(
            pb.UpdateComponentRequest(
                workspace_id=stack.workspace_id,
                component=pb.Component(id=component.id, tags=["é"]),
                update_mask=field_mask_pb2.FieldMask(paths=["tags"]),
            ),
            metadata=stack.owner.metadata,
        )
    assert _bad_field(bad_component_update.value) == "component.tags[0]"
    # Nothing was written by the refused calls; 50 tags is the limit, not an error.
    assert await _stack_names(stack, "") == ["valid"]
    assert await _stored_tags(stack, "stack", created.id) == [("", "ok")]
    fifty = await _tagged_stack(stack, "fifty", [f"t{index:02d}" for index in range(50)], parts)
    assert len(fifty.tags) == 50


async def test_deleting_a_stack_or_component_deletes_its_tag_rows(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    parts = await _parts(stack)
    doomed = await _tagged_stack(stack, "doomed", ["a", "b"], parts)
    kept = await _tagged_stack(stack, "kept", ["a"], parts)
    runner = await _tagged_component(stack, "runner", ["c"])
    assert len(await _stored_tags(stack, "stack", doomed.id)) == 2
    deleted = await _stub(stack).DeleteStack(
        pb.DeleteStackRequest(workspace_id=stack.workspace_id, stack_id=doomed.id),
        metadata=stack.owner.metadata,
    )
    assert list(deleted.tags) == ["a", "b"]
    assert await _stored_tags(stack, "stack", doomed.id) == []
    assert await _stored_tags(stack, "stack", kept.id) == [("", "a")]
    await _stub(stack).DeleteComponent(
        pb.DeleteComponentRequest(workspace_id=stack.workspace_id, component_id=runner.id),
        metadata=stack.owner.metadata,
    )
    assert await _stored_tags(stack, "component", runner.id) == []


def _tag_or_listed_table(statement: str) -> bool:
    # Only the list's own tables: background work of the server (run sweeping) never touches them.
    return any(table in statement for table in ("metadata_stacks", "metadata_components", "metadata_tags"))


async def test_a_list_page_loads_tags_in_one_query_whatever_the_number_of_tagged_rows(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    engine = stack.service.domain.engine
    parts = await _parts(stack)

    async def list_statements() -> tuple[int, int, int]:
        with counting_statements(engine) as seen:
            stacks_page = await _stub(stack).ListStacks(
                pb.ListStacksRequest(workspace_id=stack.workspace_id), metadata=stack.owner.metadata
            )
            components_page = await _stub(stack).ListComponents(
                pb.ListComponentsRequest(workspace_id=stack.workspace_id), metadata=stack.owner.metadata
            )
        tagged = sum(1 for item in stacks_page.stacks if item.tags)
        tagged += sum(1 for part in components_page.components if part.tags)
        return len([statement for statement in seen if _tag_or_listed_table(statement)]), len(seen), tagged

    await _tagged_stack(stack, "s-0", ["t0", "common"], parts)
    await _tagged_component(stack, "c-0", ["t0"])
    one_relevant, one_total, one_tagged = await list_statements()
    for index in range(1, 6):
        await _tagged_stack(stack, f"s-{index}", [f"t{index}", "common"], parts)
        await _tagged_component(stack, f"c-{index}", [f"t{index}"])
    many_relevant, many_total, many_tagged = await list_statements()
    assert (one_tagged, many_tagged) == (2, 12)
    assert many_relevant == one_relevant
    assert many_total == one_total
