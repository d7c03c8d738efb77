"""Workspaces of an organization: create, read, list, update, delete, rotate the server credential, lookup.

Rules and state only: no gRPC, no SQL. Ownership in RBAC goes through the
`WorkspaceOwnership` port; every mutation records its audit event in the
transaction of the change.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.audit import event_for_request, looks_like_credential, record
from services.kit.clock import Clock
from services.kit.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KeelError,
    NotFound,
)
from services.kit.fieldmask import check_etag
from services.kit.idempotency import recall, remember
from services.orgs import workspace_credentials as credentials
from services.orgs import workspace_store as ws
from services.orgs.store import ACTIVE as ACTIVE_ORGANIZATION
from services.orgs.store import OUTBOX, OrgsStore, OrgsTx, idempotency

MAX_NAME = 100
MAX_DESCRIPTION = 1000
MAX_ENDPOINT = 512
MAX_ID = 64
UPDATABLE = ("display_name", "description", "endpoint")

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})")
_URL = re.compile(
    r"(?P<scheme>https?)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?"
    r"(?P<path>/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*)?"
)


class WorkspaceOwnership(Protocol):
    """RBAC's record of who owns a workspace (the creator), kept by the API layer."""

    async def record(self, organization_id: str, workspace_id: str) -> None:
        """Binds the caller as owner of the workspace."""
        ...

    async def forget(self, organization_id: str, workspace_id: str) -> None:
        """Removes every share and ownership of the workspace."""
        ...


@dataclass(frozen=True)
class RequestKey:
    """Idempotency key of a create: method (with the organization), caller, request_id."""

    method: str
    principal: str
    request_id: str


@dataclass(frozen=True)
class WorkspaceInput:
    """What a client may set on a workspace."""

    display_name: str = ""
    description: str = ""
    endpoint: str = ""


@dataclass(frozen=True)
class WithCredential:
    """A workspace and its server credential, shown only this once ('' on a Create retry)."""

    workspace: ws.WorkspaceRecord
    credential: str


@dataclass(frozen=True)
class Location:
    """Where a workspace's server is, its state and why it is not ACTIVE."""

    workspace: ws.WorkspaceRecord
    state_reason: str


def _noop() -> None:
    return None


def _new_id() -> str:
    return str(uuid.uuid4())


class Workspaces:
    """The workspace rules over the orgs store."""

    def __init__(
        self,
        store: OrgsStore,
        clock: Clock,
        ownership: WorkspaceOwnership,
        *,
        audit_recorded: Callable[[], None] = _noop,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._store = store
        self._clock = clock
        self._ownership = ownership
        self._audit_recorded = audit_recorded
        self._new_id = new_id

    async def create(
        self, organization_id: str, fields: WorkspaceInput, *, request_key: RequestKey | None = None
    ) -> WithCredential:
        """A new PROVISIONING workspace and its credential; a retry with the same key returns the first."""
        organization_id = check_id(organization_id, "organization_id")
        name = check_name(fields.display_name, "workspace.display_name")
        description = check_description(fields.description, "workspace.description")
        endpoint = check_endpoint(fields.endpoint, "workspace.endpoint", required=False)
        async with self._store.transaction() as tx:
            if request_key is not None:
                known = await recall(
                    tx.conn,
                    idempotency,
                    method=request_key.method,
                    principal=request_key.principal,
                    request_id=request_key.request_id,
                )
                if known is not None:
                    return WithCredential(await _existing(tx.conn, organization_id, known.decode()), "")
            # Refused early, before anything is written to RBAC; checked again under lock below.
            if (await tx.get_organization(organization_id)) is None:
                raise NotFound("organization not found")
            if await ws.live_name_taken(tx.conn, organization_id, name):
                raise _name_taken(name)
        workspace_id = self._new_id()
        now = self._clock.now()
        issued = credentials.issue(workspace_id)
        workspace = ws.WorkspaceRecord(
            id=workspace_id,
            organization_id=organization_id,
            display_name=name,
            description=description,
            endpoint=endpoint,
            state=ws.PROVISIONING,
            server_version="",
            register_time=None,
            last_heartbeat_time=None,
            create_time=now,
            update_time=now,
            delete_time=None,
            version=1,
        )
        # Ownership first: if it fails nothing exists; if the insert then fails, it is forgotten.
        await self._ownership.record(organization_id, workspace_id)
        try:
            async with self._store.transaction() as tx:
                await _lock_live_organization(tx, organization_id)
                await ws.insert_workspace(tx.conn, workspace, issued.secret_hash)
                if request_key is not None:
                    await remember(
                        tx.conn,
                        idempotency,
                        method=request_key.method,
                        principal=request_key.principal,
                        request_id=request_key.request_id,
                        response=workspace_id.encode(),
                        now=now,
                    )
                await _audit(tx.conn, "create", workspace, now, {"display_name": name, "endpoint": endpoint})
        except ws.NameTaken:
            await self._forget_quietly(organization_id, workspace_id)
            raise _name_taken(name) from None
        except KeelError:
            await self._forget_quietly(organization_id, workspace_id)
            raise
        self._audit_recorded()
        return WithCredential(workspace, issued.credential)

    async def get(self, organization_id: str, workspace_id: str) -> ws.WorkspaceRecord:
        """The workspace (any state) of the organization."""
        organization_id = check_id(organization_id, "organization_id")
        workspace_id = check_id(workspace_id, "workspace_id")
        async with self._store.transaction() as tx:
            return await _existing(tx.conn, organization_id, workspace_id)

    async def list(self, organization_id: str, query: ws.ListQuery) -> tuple[list[ws.WorkspaceRecord], str]:
        """One page of the organization's workspaces and the next page token."""
        organization_id = check_id(organization_id, "organization_id")
        async with self._store.transaction() as tx:
            return await ws.list_workspaces(tx.conn, organization_id, query)

    async def update(
        self,
        organization_id: str,
        workspace_id: str,
        fields: WorkspaceInput,
        mask: Collection[str],
        etag: str,
    ) -> ws.WorkspaceRecord:
        """Writes the masked fields of a live workspace; ABORTED on a stale etag."""
        organization_id = check_id(organization_id, "workspace.organization_id")
        workspace_id = check_id(workspace_id, "workspace.id")
        values: dict[str, Any] = {}
        if "display_name" in mask:
            values["display_name"] = check_name(fields.display_name, "workspace.display_name")
        if "description" in mask:
            values["description"] = check_description(fields.description, "workspace.description")
        if "endpoint" in mask:
            values["endpoint"] = check_endpoint(fields.endpoint, "workspace.endpoint", required=False)
        now = self._clock.now()
        try:
            async with self._store.transaction() as tx:
                current = await _existing(tx.conn, organization_id, workspace_id, for_update=True)
                _refuse_deleting(current)
                check_etag(etag, current.version)
                updated = await ws.update_workspace(
                    tx.conn, organization_id, workspace_id, current.version, values, now
                )
                if updated is None:  # changed between the locked read and the write (SQLite has no lock)
                    raise _stale()
                await _audit(tx.conn, "update", updated, now, {"fields": sorted(values)})
        except ws.NameTaken:
            raise _name_taken(str(values.get("display_name", ""))) from None
        self._audit_recorded()
        return updated

    async def delete(self, organization_id: str, workspace_id: str, etag: str) -> ws.WorkspaceRecord:
        """DELETING at once, credential revoked; RBAC forgets its shares and ownership.

        Deleting a DELETING workspace again returns it and only repeats the RBAC
        clean-up, so a retry after a failed RBAC call completes the deletion.
        """
        organization_id = check_id(organization_id, "organization_id")
        workspace_id = check_id(workspace_id, "workspace_id")
        now = self._clock.now()
        recorded = False
        async with self._store.transaction() as tx:
            current = await _existing(tx.conn, organization_id, workspace_id, for_update=True)
            if current.state == ws.DELETING:
                deleted = current
            else:
                check_etag(etag, current.version)
                marked = await ws.mark_deleting(tx.conn, organization_id, workspace_id, current.version, now)
                if marked is None:
                    raise _stale()
                deleted = marked
                await _audit(tx.conn, "delete", deleted, now, {"display_name": deleted.display_name})
                recorded = True
        if recorded:
            self._audit_recorded()
        await self._ownership.forget(organization_id, workspace_id)
        return deleted

    async def rotate_credential(self, organization_id: str, workspace_id: str) -> WithCredential:
        """A new credential for a live workspace; the previous one stops working at once."""
        organization_id = check_id(organization_id, "organization_id")
        workspace_id = check_id(workspace_id, "workspace_id")
        now = self._clock.now()
        issued = credentials.issue(workspace_id)
        async with self._store.transaction() as tx:
            current = await _existing(tx.conn, organization_id, workspace_id, for_update=True)
            _refuse_deleting(current)
            rotated = await ws.replace_credential(
                tx.conn, organization_id, workspace_id, issued.secret_hash, now
            )
            if rotated is None:
                raise _stale()
            await _audit(tx.conn, "rotate_credential", rotated, now, {})
        self._audit_recorded()
        return WithCredential(rotated, issued.credential)

    async def lookup(self, organization_id: str, workspace_id: str) -> Location:
        """Where the workspace's server is and, unless ACTIVE, why not to route to it."""
        workspace = await self.get(organization_id, workspace_id)
        return Location(workspace, state_reason(workspace))

    async def _forget_quietly(self, organization_id: str, workspace_id: str) -> None:
        # The id was never committed, so a leftover owner binding names nothing; log-free best effort.
        with contextlib.suppress(KeelError):
            await self._ownership.forget(organization_id, workspace_id)


def state_reason(workspace: ws.WorkspaceRecord) -> str:
    """Why a router must not send traffic to the workspace ('' when ACTIVE)."""
    if workspace.state == ws.PROVISIONING:
        return "workspace server not registered yet"
    if workspace.state == ws.DEGRADED:
        since = workspace.last_heartbeat_time
        return f"no heartbeat since {since.isoformat() if since else 'registration'}"
    if workspace.state == ws.DELETING:
        return "workspace is being deleted"
    return ""


async def _existing(
    conn: AsyncConnection, organization_id: str, workspace_id: str, *, for_update: bool = False
) -> ws.WorkspaceRecord:
    found = await ws.get_workspace(conn, organization_id, workspace_id, for_update=for_update)
    if found is None:
        raise NotFound("workspace not found")
    return found


async def _lock_live_organization(tx: OrgsTx, organization_id: str) -> None:
    # Write-locks the organization row until commit, so a concurrent DeleteOrganization either
    # runs first (and this create finds no live organization) or sees the new workspace.
    organization = await tx.lock_organization(organization_id)
    if organization is None or organization.state != ACTIVE_ORGANIZATION:
        raise NotFound("organization not found")


def _refuse_deleting(workspace: ws.WorkspaceRecord) -> None:
    if workspace.state == ws.DELETING:
        raise FailedPrecondition("the workspace is being deleted", reason="WORKSPACE_DELETING")


def _name_taken(name: str) -> AlreadyExists:
    return AlreadyExists(f"a workspace named {name!r} exists in the organization")


def _stale() -> Aborted:
    return Aborted("the workspace changed meanwhile; read it again and retry", reason="ETAG_MISMATCH")


async def _audit(
    conn: AsyncConnection,
    verb: str,
    workspace: ws.WorkspaceRecord,
    now: datetime,
    details: Mapping[str, Any],
) -> None:
    await record(
        conn,
        OUTBOX,
        event_for_request(
            action=f"orgs.workspace.{verb}",
            resource_type="workspace",
            resource_id=workspace.id,
            organization_id=workspace.organization_id,
            occur_time=now,
            details=details,
        ),
    )


# ---------------------------------------------------------------------------------------- validation


def check_id(value: str, field: str) -> str:
    """A required id of at most 64 characters."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID:
        raise InvalidArgument(field, f"must be at most {MAX_ID} characters")
    return value


def check_name(value: str, field: str) -> str:
    """A display name: 1 to 100 characters, no control characters, no surrounding spaces."""
    if not value.strip():
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(field, f"must be at most {MAX_NAME} characters")
    if value != value.strip() or not value.isprintable():
        raise InvalidArgument(field, "must not have surrounding spaces or control characters")
    _refuse_credential_shape(value, field)
    return value


def check_description(value: str, field: str) -> str:
    """Free text of at most 1,000 characters."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"must be at most {MAX_DESCRIPTION} characters")
    return value


def check_endpoint(value: str, field: str, *, required: bool) -> str:
    """host:port, or http(s)://host[:port][/path]; '' only when not required."""
    if not value:
        if required:
            raise InvalidArgument(field, "is required")
        return value
    problem = _endpoint_problem(value)
    if problem:
        raise InvalidArgument(field, f"{problem}; expected host:port or http(s)://host[:port][/path]")
    _refuse_credential_shape(value, field)
    return value


def _refuse_credential_shape(value: str, field: str) -> None:
    # Names and endpoints go into audit events, which refuse credential-shaped text: refuse it here,
    # as bad input, rather than fail the change later.
    if looks_like_credential(value):
        raise InvalidArgument(field, "must not contain a credential")


def _endpoint_problem(value: str) -> str:
    if len(value) > MAX_ENDPOINT:
        return f"must be at most {MAX_ENDPOINT} characters"
    match = _URL.fullmatch(value) or _HOST_PORT.fullmatch(value)
    if match is None:
        return "is not a valid endpoint"
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        return "has a port outside 1-65535"
    if not _valid_host(match.group("host")):
        return "has an invalid host"
    return ""


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    if len(host) > 253:
        return False
    labels = host.split(".")
    if all(label.isdigit() for label in labels):  # looks numeric: must be a real IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return all(_LABEL.fullmatch(label) for label in labels)
