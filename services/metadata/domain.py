"""What every metadata domain module is built from, and the create/delete steps they share.

Create: validate → (retry? return the first result) → record the caller's
ownership in RBAC → insert and remember the request id in one transaction; if
the insert fails the ownership is forgotten again, so no binding outlives a
failed create. Delete: the row goes in one transaction, then its bindings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import errors
from services.kit.clock import Clock
from services.kit.context import Principal
from services.kit.idempotency import validate_request_id
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.rbac_lookup import RbacLookup
from services.metadata.identity import ServedWorkspace
from services.metadata.ownership import Ownership
from services.metadata.rows import Conflict, InUse
from services.metadata.settings import MetadataSettings
from services.metadata.store import MetadataStore, RequestKey

logger = logging.getLogger(__name__)


@dataclass
class MetadataDomain:
    """What every metadata servicer is built from: store, clock, workspace, authorization helpers."""

    settings: MetadataSettings
    engine: AsyncEngine
    store: MetadataStore
    clock: Clock
    # The organization and workspace served (known once the service started).
    workspace: ServedWorkspace
    checker: RbacPermissionChecker
    # LookupResources for List RPCs: `await domain.lookup.readable_ids(principal, type, "read", scope_id)`.
    lookup: RbacLookup
    # RecordOwnership on create, ForgetResource on delete.
    ownership: Ownership
    channels: list[grpc.aio.Channel] = field(default_factory=list)


def principal_key(principal: Principal) -> str:
    """The caller as an idempotency key part: two callers' equal request ids are two requests."""
    return f"{principal.kind}:{principal.subject}"


# What a create returns: a Row for most resources, a domain record for others.
Created = TypeVar("Created")
Write = Callable[[AsyncConnection], Awaitable[None]]


async def create_owned(
    domain: MetadataDomain,
    principal: Principal,
    *,
    method: str,
    request_id: str,
    resource_type: str,
    resource_id: str,
    what: str,
    fetch: Callable[[AsyncConnection, str], Awaitable[Created | None]],
    write: Write,
    precheck: Write | None = None,
    project_id: str = "",
) -> Created:
    """Creates a resource the caller owns; a retry with the same request id returns the first one."""
    validate_request_id(request_id)
    key = RequestKey(method, principal_key(principal), request_id)
    async with domain.store.transaction() as tx:
        known = await key.recall(tx.conn)
        if known is not None:
            first = await fetch(tx.conn, known.decode())
            if first is None:
                raise errors.NotFound(f"the {what} this request created was deleted since")
            return first
        if precheck is not None:
            await precheck(tx.conn)
    # Ownership first: if it fails nothing exists; if the insert then fails, it is forgotten.
    recorded = await domain.ownership.record(principal, resource_type, resource_id, project_id)
    try:
        async with domain.store.transaction() as tx:
            await write(tx.conn)
            await key.remember(tx.conn, resource_id.encode(), domain.clock.now())
            created = await fetch(tx.conn, resource_id)
    except BaseException as error:
        if recorded:
            await forget_quietly(domain, principal, resource_type, resource_id, project_id)
        if isinstance(error, Conflict):
            raise errors.AlreadyExists(f"a {what} with this name already exists") from None
        if isinstance(error, InUse):
            raise errors.FailedPrecondition(f"what the {what} refers to no longer exists") from None
        raise
    assert created is not None  # written in this very transaction
    return created


async def while_owning(
    domain: MetadataDomain,
    principal: Principal,
    resource_type: str,
    resource_id: str,
    project_id: str,
    write: Coroutine[Any, Any, Created],
) -> Created:
    """Runs `write` (which creates `resource_id`) while RBAC records the caller as its owner.

    The two take about as long, so a create costs the longer of them, not their
    sum (the run-recording path). A failed write forgets the ownership; a failed
    ownership fails the call after the write, whose retry (same request id)
    records it again.
    """
    claim = asyncio.ensure_future(domain.ownership.record(principal, resource_type, resource_id, project_id))
    try:
        written = await write
    except BaseException:
        try:
            recorded = await claim
        except errors.KeelError:
            recorded = False
        if recorded:
            await forget_quietly(domain, principal, resource_type, resource_id, project_id)
        raise
    await claim
    return written


async def forget_quietly(
    domain: MetadataDomain, principal: Principal, resource_type: str, resource_id: str, project_id: str = ""
) -> None:
    """ForgetResource after a delete (or a failed create); a failure leaves bindings on a dead id, logged."""
    try:
        await domain.ownership.forget(principal, resource_type, resource_id, project_id)
    except errors.KeelError as error:
        logger.warning("could not forget the bindings of %s %s: %s", resource_type, resource_id, error)
