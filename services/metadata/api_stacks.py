"""StackService: gRPC ⇄ the Stacks and Components domains and the flavor catalogue (no SQL, no policy)."""

from __future__ import annotations

from typing import Any

import grpc

from keel.metadata.v1 import stacks_pb2 as pb
from keel.metadata.v1 import stacks_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import etag, resolve_update_mask
from services.metadata import flavors
from services.metadata.domain import MetadataDomain
from services.metadata.messages import from_struct, list_query, struct, timestamp
from services.metadata.rows import Row
from services.metadata.stacks import (
    COMPONENT_UPDATABLE,
    STACK_UPDATABLE,
    ComponentInput,
    Components,
    StackInput,
    Stacks,
)

Context = grpc.aio.ServicerContext[Any, Any]
_STACK_OUTPUT_ONLY = ("id", "create_time", "update_time", "etag")
_COMPONENT_OUTPUT_ONLY = ("id", "type", "flavor", "create_time", "update_time", "etag")


def stack_message(row: Row) -> pb.Stack:
    """The Stack message of a row (with its component ids and tags)."""
    return pb.Stack(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        component_ids=row["component_ids"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["version"]),
        tags=row["tags"],
    )


def component_message(row: Row) -> pb.Component:
    """The Component message of a row (with its tags)."""
    return pb.Component(
        id=row["id"],
        name=row["name"],
        type=pb.Component.Type.Value(row["type"]),
        flavor=row["flavor"],
        configuration=struct(row["configuration"]),
        connector_id=row["connector_id"],
        description=row["description"],
        create_time=timestamp(row["create_time"]),
        update_time=timestamp(row["update_time"]),
        etag=etag(row["version"]),
        tags=row["tags"],
    )


def flavor_message(flavor: flavors.Flavor) -> pb.Flavor:
    """The Flavor message of a built-in flavor."""
    return pb.Flavor(
        type=pb.Component.Type.Value(flavor.type),
        name=flavor.name,
        display_name=flavor.display_name,
        description=flavor.description,
        config_schema=struct(dict(flavor.schema)),
    )


def _type_name(value: pb.Component.Type.ValueType) -> str:
    return pb.Component.Type.Name(value) if value else ""


def _component_input(message: pb.Component) -> ComponentInput:
    return ComponentInput(
        name=message.name,
        type=_type_name(message.type),
        flavor=message.flavor,
        configuration=from_struct(message.configuration),
        connector_id=message.connector_id,
        description=message.description,
        tags=tuple(message.tags),
    )


def _stack_input(message: pb.Stack) -> StackInput:
    return StackInput(message.name, message.description, tuple(message.component_ids), tuple(message.tags))


class StackApi(pb_grpc.StackServiceServicer):
    """StackService of the workspace served."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._workspace = domain.workspace
        self._stacks = Stacks(domain)
        self._components = Components(domain)

    async def CreateStack(self, request: pb.CreateStackRequest, context: Context) -> pb.Stack:
        self._workspace.require(request.workspace_id)
        created = await self._stacks.create(
            require_principal(), _stack_input(request.stack), request.request_id
        )
        return stack_message(created)

    async def GetStack(self, request: pb.GetStackRequest, context: Context) -> pb.Stack:
        self._workspace.require(request.workspace_id)
        return stack_message(await self._stacks.get(request.stack_id))

    async def ListStacks(self, request: pb.ListStacksRequest, context: Context) -> pb.ListStacksResponse:
        self._workspace.require(request.workspace_id)
        found, token = await self._stacks.list(require_principal(), list_query(request))
        return pb.ListStacksResponse(stacks=[stack_message(row) for row in found], next_page_token=token)

    async def UpdateStack(self, request: pb.UpdateStackRequest, context: Context) -> pb.Stack:
        self._workspace.require(request.workspace_id)
        mask = resolve_update_mask(
            list(request.update_mask.paths), STACK_UPDATABLE, output_only=_STACK_OUTPUT_ONLY
        )
        stack = request.stack
        return stack_message(
            await self._stacks.update(require_principal(), stack.id, _stack_input(stack), mask, stack.etag)
        )

    async def DeleteStack(self, request: pb.DeleteStackRequest, context: Context) -> pb.Stack:
        self._workspace.require(request.workspace_id)
        return stack_message(await self._stacks.delete(require_principal(), request.stack_id, request.etag))

    async def CreateComponent(self, request: pb.CreateComponentRequest, context: Context) -> pb.Component:
        self._workspace.require(request.workspace_id)
        created = await self._components.create(
            require_principal(), _component_input(request.component), request.request_id
        )
        return component_message(created)

    async def GetComponent(self, request: pb.GetComponentRequest, context: Context) -> pb.Component:
        self._workspace.require(request.workspace_id)
        return component_message(await self._components.get(request.component_id))

    async def ListComponents(
        self, request: pb.ListComponentsRequest, context: Context
    ) -> pb.ListComponentsResponse:
        self._workspace.require(request.workspace_id)
        found, token = await self._components.list(require_principal(), list_query(request))
        return pb.ListComponentsResponse(
            components=[component_message(row) for row in found], next_page_token=token
        )

    async def UpdateComponent(self, request: pb.UpdateComponentRequest, context: Context) -> pb.Component:
        self._workspace.require(request.workspace_id)
        mask = resolve_update_mask(
            list(request.update_mask.paths), COMPONENT_UPDATABLE, output_only=_COMPONENT_OUTPUT_ONLY
        )
        component = request.component
        updated = await self._components.update(
            component.id, _component_input(component), mask, component.etag
        )
        return component_message(updated)

    async def DeleteComponent(self, request: pb.DeleteComponentRequest, context: Context) -> pb.Component:
        self._workspace.require(request.workspace_id)
        deleted = await self._components.delete(require_principal(), request.component_id, request.etag)
        return component_message(deleted)

    async def ListFlavors(self, request: pb.ListFlavorsRequest, context: Context) -> pb.ListFlavorsResponse:
        self._workspace.require(request.workspace_id)
        return pb.ListFlavorsResponse(
            flavors=[flavor_message(flavor) for flavor in flavors.list_flavors(_type_name(request.type))]
        )

    async def GetFlavor(self, request: pb.GetFlavorRequest, context: Context) -> pb.Flavor:
        self._workspace.require(request.workspace_id)
        if not request.type:
            raise InvalidArgument("type", "is required")
        if not request.flavor:
            raise InvalidArgument("flavor", "is required")
        return flavor_message(flavors.get_flavor(_type_name(request.type), request.flavor))
