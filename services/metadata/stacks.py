"""Stacks and components: typed, flavor-validated components, and stacks naming one component per type.

Both carry `tags` as a field of the resource (workspace level, so not through
AnnotationService, whose rules are project-scoped): rows of `metadata_tags`
with project_id '' and the RBAC resource type as the kind, written and deleted
in the resource's own transaction, read with one query per Get or List page.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import literal
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit import errors
from services.kit.context import Principal
from services.kit.fieldmask import check_etag
from services.kit.filtering import AnyField, FilterField
from services.kit.rbac_lookup import lookup_condition
from services.metadata import annotation_store as ans
from services.metadata import flavors, rows, validation
from services.metadata.annotation_store import WORKSPACE_LEVEL, annotation_filters
from services.metadata.domain import MetadataDomain, create_owned, forget_quietly
from services.metadata.store import (
    COMPONENT_SORTABLE,
    STACK_SORTABLE,
    components,
    components_by_id,
    set_stack_components,
    stack_component_ids,
    stacks,
    stacks_using,
)

CREATE_STACK = "keel.metadata.v1.StackService/CreateStack"
CREATE_COMPONENT = "keel.metadata.v1.StackService/CreateComponent"
STACK_UPDATABLE = ("name", "description", "component_ids", "tags")
COMPONENT_UPDATABLE = ("name", "description", "configuration", "connector_id", "tags")
MAX_STACK_COMPONENTS = len(flavors.TYPES)
# Tag kinds: the RBAC resource types.
STACK_KIND = "stack"
COMPONENT_KIND = "component"

# `tags` correlates with project '' (a bound literal: the tables have no project column).
STACK_FILTERS: dict[str, AnyField] = {
    "name": FilterField(stacks.c.name, "string"),
    "create_time": FilterField(stacks.c.create_time, "timestamp"),
    **annotation_filters(STACK_KIND, stacks.c.id, literal(WORKSPACE_LEVEL)),
}
COMPONENT_FILTERS: dict[str, AnyField] = {
    "name": FilterField(components.c.name, "string"),
    "type": FilterField(components.c.type, "enum", {name: name for name in flavors.TYPES}),
    "flavor": FilterField(components.c.flavor, "string"),
    "connector_id": FilterField(components.c.connector_id, "string"),
    "create_time": FilterField(components.c.create_time, "timestamp"),
    **annotation_filters(COMPONENT_KIND, components.c.id, literal(WORKSPACE_LEVEL)),
}


@dataclass(frozen=True)
class ComponentInput:
    """The client-settable fields of a component (type and flavor only on create)."""

    name: str = ""
    type: str = ""
    flavor: str = ""
    configuration: Mapping[str, Any] = field(default_factory=dict)
    connector_id: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StackInput:
    """The client-settable fields of a stack."""

    name: str = ""
    description: str = ""
    component_ids: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()


def _component_checks(fields: ComponentInput, flavor: flavors.Flavor) -> dict[str, Any]:
    return {
        "name": lambda: validation.name(fields.name, "component.name"),
        "description": lambda: validation.description(fields.description, "component.description"),
        "configuration": lambda: flavors.validate_configuration(
            flavor, fields.configuration, "component.configuration"
        ),
        "connector_id": lambda: validation.reference(fields.connector_id, "component.connector_id"),
        "tags": lambda: validation.tags(fields.tags, "component.tags"),
    }


async def _members(conn: AsyncConnection, component_ids: tuple[str, ...]) -> list[tuple[str, str]]:
    """(type, component id) of a stack's components, in type order; INVALID_ARGUMENT naming the bad entry."""
    if len(component_ids) > MAX_STACK_COMPONENTS:
        raise errors.InvalidArgument("stack.component_ids", f"at most {MAX_STACK_COMPONENTS} components")
    found = await components_by_id(conn, list(component_ids))
    by_type: dict[str, str] = {}
    for index, component_id in enumerate(component_ids):
        where = f"stack.component_ids[{index}]"
        component = found.get(component_id)
        if component is None:
            raise errors.InvalidArgument(where, "no component with this id in the workspace")
        if component["type"] in by_type:
            raise errors.InvalidArgument(where, f"the stack already has a {component['type']} component")
        by_type[component["type"]] = component_id
    for required in flavors.REQUIRED_IN_STACK:
        if required not in by_type:
            raise errors.InvalidArgument("stack.component_ids", f"a stack needs an {required} component")
    return [(type_, by_type[type_]) for type_ in flavors.TYPES if type_ in by_type]


async def _full_stack(conn: AsyncConnection, stack_id: str) -> rows.Row | None:
    """The stack's row with its component ids and tags."""
    found = await rows.get_row(conn, stacks, stack_id)
    if found is None:
        return None
    members = (await stack_component_ids(conn, [stack_id]))[stack_id]
    tagged = await ans.tags_by_target(conn, WORKSPACE_LEVEL, STACK_KIND, [stack_id])
    return {**found, "component_ids": _ordered_ids(members), "tags": tagged[stack_id]}


async def _full_component(conn: AsyncConnection, component_id: str) -> rows.Row | None:
    """The component's row with its tags."""
    found = await rows.get_row(conn, components, component_id)
    if found is None:
        return None
    tagged = await ans.tags_by_target(conn, WORKSPACE_LEVEL, COMPONENT_KIND, [component_id])
    return {**found, "tags": tagged[component_id]}


async def _with_tags(conn: AsyncConnection, kind: str, found: list[rows.Row]) -> list[rows.Row]:
    """A List page's rows with their tags, in one query."""
    tagged = await ans.tags_by_target(conn, WORKSPACE_LEVEL, kind, [row["id"] for row in found])
    return [{**row, "tags": tagged[row["id"]]} for row in found]


def _ordered_ids(members: list[tuple[str, str]]) -> list[str]:
    return [cid for _, cid in sorted(members, key=lambda member: flavors.TYPES.index(member[0]))]


class Components:
    """The component operations of one workspace server."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._domain = domain

    async def create(self, principal: Principal, fields: ComponentInput, request_id: str = "") -> rows.Row:
        """A new component owned by the caller; its configuration must satisfy the flavor's schema."""
        type_ = flavors.component_type(fields.type, "component.type")
        flavor = flavors.check_flavor(type_, fields.flavor, "component.flavor")
        values = {name: check() for name, check in _component_checks(fields, flavor).items()}
        tags = values.pop("tags")
        component_id = str(uuid.uuid4())
        now = self._domain.clock.now()

        async def write(conn: AsyncConnection) -> None:
            await rows.insert_row(
                conn,
                components,
                {
                    "id": component_id,
                    "type": type_,
                    "flavor": flavor.name,
                    **values,
                    "create_time": now,
                    "update_time": now,
                    "version": 1,
                },
            )
            if tags:
                await ans.replace_tags(conn, WORKSPACE_LEVEL, COMPONENT_KIND, component_id, tags, now)

        return await create_owned(
            self._domain,
            principal,
            method=CREATE_COMPONENT,
            request_id=request_id,
            resource_type=COMPONENT_KIND,
            resource_id=component_id,
            what="component of this type",
            fetch=_full_component,
            write=write,
        )

    async def get(self, component_id: str) -> rows.Row:
        """The component; NOT_FOUND when missing."""
        validation.resource_id(component_id, "component_id", "component")
        async with self._domain.store.transaction() as tx:
            found = await _full_component(tx.conn, component_id)
        if found is None:
            raise errors.NotFound("component not found")
        return found

    async def list(self, principal: Principal, query: rows.ListQuery) -> tuple[list[rows.Row], str]:
        """One page of the components the caller may read, with their tags (one query for all)."""
        readable = await self._domain.lookup.readable_ids(
            principal, COMPONENT_KIND, "read", self._domain.workspace.workspace_id
        )
        async with self._domain.store.transaction() as tx:
            found, token = await rows.list_rows(
                tx.conn,
                components,
                query,
                method="ListComponents",
                filter_fields=COMPONENT_FILTERS,
                sortable=COMPONENT_SORTABLE,
                visible=lookup_condition(readable, components.c.id),
            )
            return await _with_tags(tx.conn, COMPONENT_KIND, found), token

    async def update(
        self, component_id: str, fields: ComponentInput, mask: Collection[str], etag: str
    ) -> rows.Row:
        """Writes the masked fields (configuration re-validated against the flavor, tags replaced whole)."""
        validation.resource_id(component_id, "component.id", "component")
        async with self._domain.store.transaction() as tx:
            current = await _full_component(tx.conn, component_id)
            if current is None:
                raise errors.NotFound("component not found")
            check_etag(etag, current["version"])
            flavor = flavors.get_flavor(current["type"], current["flavor"])
            checks = _component_checks(fields, flavor)
            values = {name: checks[name]() for name in COMPONENT_UPDATABLE if name in mask}
            if all(current[name] == value for name, value in values.items()):
                return current
            tags = values.pop("tags", None)
            now = self._domain.clock.now()
            try:
                updated = await rows.update_row(
                    tx.conn, components, component_id, current["version"], {**values, "update_time": now}
                )
            except rows.Conflict:
                raise errors.AlreadyExists("a component of this type with this name already exists") from None
            if updated is None:
                raise errors.Aborted("the component changed concurrently; retry", reason="CONCURRENT_UPDATE")
            if tags is not None:
                await ans.replace_tags(tx.conn, WORKSPACE_LEVEL, COMPONENT_KIND, component_id, tags, now)
        return {**updated, "tags": current["tags"] if tags is None else tags}

    async def delete(self, principal: Principal, component_id: str, etag: str) -> rows.Row:
        """Deletes a component no stack uses (FAILED_PRECONDITION otherwise)."""
        validation.resource_id(component_id, "component_id", "component")
        async with self._domain.store.transaction() as tx:
            current = await _full_component(tx.conn, component_id)
            if current is None:
                raise errors.NotFound("component not found")
            check_etag(etag, current["version"])
            users = await stacks_using(tx.conn, component_id)
            if users:
                raise errors.FailedPrecondition(
                    f"the component is used by stacks {', '.join(users)}", reason="COMPONENT_IN_USE"
                )
            try:
                deleted = await rows.delete_row(tx.conn, components, component_id, current["version"])
            except rows.InUse:  # a stack took it up concurrently
                raise errors.FailedPrecondition(
                    "the component is used by a stack", reason="COMPONENT_IN_USE"
                ) from None
            if not deleted:
                raise errors.Aborted("the component changed concurrently; retry", reason="CONCURRENT_UPDATE")
            await ans.delete_for_targets(tx.conn, COMPONENT_KIND, [component_id])
        await forget_quietly(self._domain, principal, COMPONENT_KIND, component_id)
        return current


class Stacks:
    """The stack operations of one workspace server."""

    def __init__(self, domain: MetadataDomain) -> None:
        self._domain = domain

    async def _readable(self, principal: Principal, component_ids: tuple[str, ...]) -> None:
        """A stack names only components the caller may read: any other is refused like a missing one."""
        workspace_id = self._domain.workspace.workspace_id
        for index, component_id in enumerate(component_ids):
            if not await self._domain.checker.check(
                principal, "component", "read", component_id, workspace_id
            ):
                raise errors.InvalidArgument(
                    f"stack.component_ids[{index}]", "no component with this id in the workspace"
                )

    async def create(self, principal: Principal, fields: StackInput, request_id: str = "") -> rows.Row:
        """A new stack owned by the caller, from existing components it may read."""
        name = validation.name(fields.name, "stack.name")
        description = validation.description(fields.description, "stack.description")
        tags = validation.tags(fields.tags, "stack.tags")
        await self._readable(principal, fields.component_ids)
        stack_id = str(uuid.uuid4())
        now = self._domain.clock.now()

        async def precheck(conn: AsyncConnection) -> None:
            await _members(conn, fields.component_ids)

        async def write(conn: AsyncConnection) -> None:
            members = await _members(conn, fields.component_ids)
            await rows.insert_row(
                conn,
                stacks,
                {
                    "id": stack_id,
                    "name": name,
                    "description": description,
                    "create_time": now,
                    "update_time": now,
                    "version": 1,
                },
            )
            try:
                await set_stack_components(conn, stack_id, members)
            except Exception as error:  # a component deleted concurrently: the foreign key refused it
                raise rows.InUse() from error
            if tags:
                await ans.replace_tags(conn, WORKSPACE_LEVEL, STACK_KIND, stack_id, tags, now)

        return await create_owned(
            self._domain,
            principal,
            method=CREATE_STACK,
            request_id=request_id,
            resource_type=STACK_KIND,
            resource_id=stack_id,
            what="stack",
            fetch=_full_stack,
            write=write,
            precheck=precheck,
        )

    async def get(self, stack_id: str) -> rows.Row:
        """The stack with its component ids; NOT_FOUND when missing."""
        validation.resource_id(stack_id, "stack_id", "stack")
        async with self._domain.store.transaction() as tx:
            found = await _full_stack(tx.conn, stack_id)
        if found is None:
            raise errors.NotFound("stack not found")
        return found

    async def list(self, principal: Principal, query: rows.ListQuery) -> tuple[list[rows.Row], str]:
        """One page of the stacks the caller may read, with their component ids and tags (a query each)."""
        readable = await self._domain.lookup.readable_ids(
            principal, STACK_KIND, "read", self._domain.workspace.workspace_id
        )
        async with self._domain.store.transaction() as tx:
            found, token = await rows.list_rows(
                tx.conn,
                stacks,
                query,
                method="ListStacks",
                filter_fields=STACK_FILTERS,
                sortable=STACK_SORTABLE,
                visible=lookup_condition(readable, stacks.c.id),
            )
            members = await stack_component_ids(tx.conn, [row["id"] for row in found])
            found = await _with_tags(tx.conn, STACK_KIND, found)
        return [{**row, "component_ids": _ordered_ids(members[row["id"]])} for row in found], token

    async def update(
        self, principal: Principal, stack_id: str, fields: StackInput, mask: Collection[str], etag: str
    ) -> rows.Row:
        """Writes the masked fields; new component ids must again form a valid stack the caller may read."""
        validation.resource_id(stack_id, "stack.id", "stack")
        if "component_ids" in mask:
            await self._readable(principal, fields.component_ids)
        values: dict[str, Any] = {}
        if "name" in mask:
            values["name"] = validation.name(fields.name, "stack.name")
        if "description" in mask:
            values["description"] = validation.description(fields.description, "stack.description")
        tags = validation.tags(fields.tags, "stack.tags") if "tags" in mask else None
        async with self._domain.store.transaction() as tx:
            current = await _full_stack(tx.conn, stack_id)
            if current is None:
                raise errors.NotFound("stack not found")
            check_etag(etag, current["version"])
            members = await _members(tx.conn, fields.component_ids) if "component_ids" in mask else None
            same_members = members is None or _ordered_ids(members) == current["component_ids"]
            same_tags = tags is None or tags == current["tags"]
            if same_members and same_tags and all(current[name] == value for name, value in values.items()):
                return current
            now = self._domain.clock.now()
            try:
                updated = await rows.update_row(
                    tx.conn, stacks, stack_id, current["version"], {**values, "update_time": now}
                )
            except rows.Conflict:
                raise errors.AlreadyExists("a stack with this name already exists") from None
            if updated is None:
                raise errors.Aborted("the stack changed concurrently; retry", reason="CONCURRENT_UPDATE")
            if members is not None:
                await set_stack_components(tx.conn, stack_id, members)
            if tags is not None:
                await ans.replace_tags(tx.conn, WORKSPACE_LEVEL, STACK_KIND, stack_id, tags, now)
            result = await _full_stack(tx.conn, stack_id)
        assert result is not None
        return result

    async def delete(self, principal: Principal, stack_id: str, etag: str) -> rows.Row:
        """Deletes a stack (its components stay) and forgets its bindings."""
        validation.resource_id(stack_id, "stack_id", "stack")
        async with self._domain.store.transaction() as tx:
            current = await _full_stack(tx.conn, stack_id)
            if current is None:
                raise errors.NotFound("stack not found")
            check_etag(etag, current["version"])
            await set_stack_components(tx.conn, stack_id, [])
            if not await rows.delete_row(tx.conn, stacks, stack_id, current["version"]):
                raise errors.Aborted("the stack changed concurrently; retry", reason="CONCURRENT_UPDATE")
            await ans.delete_for_targets(tx.conn, STACK_KIND, [stack_id])
        await forget_quietly(self._domain, principal, STACK_KIND, stack_id)
        return current
