"""Tables and queries of workspaces and their registry (SQLAlchemy Core); no gRPC, no clock, no policy.

Every function takes the caller's `AsyncConnection`, so the organization code
can call them inside its own transaction (DeleteOrganization). Every query
that serves a request names the organization: a workspace of another
organization is indistinguishable from a missing one.

The row `version` (the etag) moves with what an admin can change (display
name, description, endpoint) and with lifecycle changes an admin or a
registration makes; heartbeats and the sweeper's health transitions leave it
alone, so a server's heartbeat every few seconds never turns an admin's etag
stale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CTE,
    Column,
    ColumnElement,
    Index,
    Integer,
    String,
    Table,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.orgs.store import metadata

PROVISIONING = "provisioning"
ACTIVE = "active"
DEGRADED = "degraded"
DELETING = "deleting"
STATES = (PROVISIONING, ACTIVE, DEGRADED, DELETING)

workspaces = Table(
    "orgs_workspaces",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("organization_id", String(64), nullable=False),
    Column("display_name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    # '' until an admin sets it or the server registers.
    Column("endpoint", String(512), nullable=False),
    Column("state", String(16), nullable=False),
    Column("server_version", String(128), nullable=False),
    Column("register_time", UtcDateTime, nullable=True),
    Column("last_heartbeat_time", UtcDateTime, nullable=True),
    # Hex SHA-256 of the secret part of the workspace server credential; NULL once revoked.
    Column("credential_hash", String(64), nullable=True),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    # When DeleteWorkspace (or DeleteOrganization) made it DELETING; the purge counts from here.
    Column("delete_time", UtcDateTime, nullable=True),
    Column("version", Integer, nullable=False),
)
# Names are unique among the live workspaces of an organization; a DELETING one frees its name.
Index(
    "uq_orgs_workspaces_live_name",
    workspaces.c.organization_id,
    workspaces.c.display_name,
    unique=True,
    postgresql_where=workspaces.c.state != DELETING,
    sqlite_where=workspaces.c.state != DELETING,
)
Index("ix_orgs_workspaces_org_create", workspaces.c.organization_id, workspaces.c.create_time)
# The sweeper's two scans: ACTIVE by heartbeat age, DELETING by delete time.
Index("ix_orgs_workspaces_state_heartbeat", workspaces.c.state, workspaces.c.last_heartbeat_time)
Index("ix_orgs_workspaces_state_delete", workspaces.c.state, workspaces.c.delete_time)

_LIVE = workspaces.c.state != DELETING

FILTER_FIELDS: Mapping[str, FilterField] = {
    "display_name": FilterField(workspaces.c.display_name, "string"),
    "state": FilterField(workspaces.c.state, "enum", {state.upper(): state for state in STATES}),
    "server_version": FilterField(workspaces.c.server_version, "string"),
    "create_time": FilterField(workspaces.c.create_time, "timestamp"),
}
SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "create_time": workspaces.c.create_time,
    "display_name": workspaces.c.display_name,
}


@dataclasses.dataclass(frozen=True)
class WorkspaceRecord:
    """A row of `orgs_workspaces` (without the credential hash, which never leaves the store)."""

    id: str
    organization_id: str
    display_name: str
    description: str
    endpoint: str
    state: str
    server_version: str
    register_time: datetime | None
    last_heartbeat_time: datetime | None
    create_time: datetime
    update_time: datetime
    delete_time: datetime | None
    version: int


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """The paging, filtering and ordering parameters of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


@dataclasses.dataclass(frozen=True)
class StateChange:
    """A workspace the sweeper moved (degraded or purged): enough for its audit event."""

    id: str
    organization_id: str
    last_heartbeat_time: datetime | None


class NameTaken(Exception):
    """Another live workspace of the organization has this display name."""


_RECORD_COLUMNS = [workspaces.c[field.name] for field in dataclasses.fields(WorkspaceRecord)]


def _record(row: Row[Any]) -> WorkspaceRecord:
    mapping = row._mapping
    return WorkspaceRecord(
        **{field.name: mapping[field.name] for field in dataclasses.fields(WorkspaceRecord)}
    )


# --------------------------------------------------------------------- for DeleteOrganization (helper A)


async def count_live_workspaces(conn: AsyncConnection, organization_id: str) -> int:
    """How many workspaces of the organization are not DELETING."""
    result = await conn.execute(
        select(func.count())
        .select_from(workspaces)
        .where(workspaces.c.organization_id == organization_id, _LIVE)
    )
    return int(result.scalar_one())


async def delete_organization_workspaces(conn: AsyncConnection, organization_id: str, now: datetime) -> int:
    """Marks every live workspace of the organization DELETING and revokes its credential; how many."""
    result = await conn.execute(
        update(workspaces)
        .where(workspaces.c.organization_id == organization_id, _LIVE)
        .values(
            state=DELETING,
            credential_hash=None,
            delete_time=now,
            update_time=now,
            version=workspaces.c.version + 1,
        )
    )
    return int(result.rowcount)


# ------------------------------------------------------------------------------------ workspaces


async def insert_workspace(conn: AsyncConnection, record: WorkspaceRecord, credential_hash: str) -> None:
    """Inserts a new workspace; NameTaken when a live one of the organization has its name."""
    # No savepoint: a refused insert ends the caller's transaction, which then rolls back.
    try:
        await conn.execute(
            insert(workspaces).values(**dataclasses.asdict(record), credential_hash=credential_hash)
        )
    except IntegrityError:
        raise NameTaken(record.display_name) from None


async def live_name_taken(
    conn: AsyncConnection, organization_id: str, display_name: str, *, other_than: str = ""
) -> bool:
    """Whether a live workspace of the organization (other than `other_than`) has this name."""
    stmt = select(workspaces.c.id).where(
        workspaces.c.organization_id == organization_id, workspaces.c.display_name == display_name, _LIVE
    )
    if other_than:
        stmt = stmt.where(workspaces.c.id != other_than)
    return (await conn.execute(stmt.limit(1))).first() is not None


async def get_workspace(
    conn: AsyncConnection, organization_id: str, workspace_id: str, *, for_update: bool = False
) -> WorkspaceRecord | None:
    """The workspace (any state) if it belongs to the organization."""
    stmt = select(*_RECORD_COLUMNS).where(
        workspaces.c.organization_id == organization_id, workspaces.c.id == workspace_id
    )
    if for_update:
        stmt = stmt.with_for_update()
    row = (await conn.execute(stmt)).first()
    return None if row is None else _record(row)


async def list_workspaces(
    conn: AsyncConnection, organization_id: str, query: ListQuery
) -> tuple[list[WorkspaceRecord], str]:
    """One page of the organization's workspaces (every state) and the next page token."""
    condition = parse_filter(query.filter, FILTER_FIELDS)
    order = parse_order_by(query.order_by, SORTABLE, tie_breaker=workspaces.c.id, default="create_time")
    stmt = select(*_RECORD_COLUMNS).where(workspaces.c.organization_id == organization_id)
    if condition is not None:
        stmt = stmt.where(condition)
    fingerprint = query_fingerprint("ListWorkspaces", filter_text=query.filter, scope=organization_id)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(query.page_size),
        page_token=query.page_token,
        fingerprint=fingerprint,
    )
    return [_record(row) for row in page.rows], page.next_page_token


async def update_workspace(
    conn: AsyncConnection,
    organization_id: str,
    workspace_id: str,
    expected_version: int,
    values: Mapping[str, Any],
    now: datetime,
) -> WorkspaceRecord | None:
    """Writes `values` if the row is still live at `expected_version`; the new row, else None.

    NameTaken when the new display name belongs to another live workspace.
    """
    try:
        result = await conn.execute(
            update(workspaces)
            .where(
                workspaces.c.organization_id == organization_id,
                workspaces.c.id == workspace_id,
                workspaces.c.version == expected_version,
                _LIVE,
            )
            .values(**values, update_time=now, version=workspaces.c.version + 1)
        )
    except IntegrityError:
        raise NameTaken(str(values.get("display_name", ""))) from None
    if result.rowcount != 1:
        return None
    return await get_workspace(conn, organization_id, workspace_id)


async def mark_deleting(
    conn: AsyncConnection, organization_id: str, workspace_id: str, expected_version: int, now: datetime
) -> WorkspaceRecord | None:
    """DELETING with its credential revoked, if still live at `expected_version`; the row, else None."""
    result = await conn.execute(
        update(workspaces)
        .where(
            workspaces.c.organization_id == organization_id,
            workspaces.c.id == workspace_id,
            workspaces.c.version == expected_version,
            _LIVE,
        )
        .values(
            state=DELETING,
            credential_hash=None,
            delete_time=now,
            update_time=now,
            version=workspaces.c.version + 1,
        )
    )
    if result.rowcount != 1:
        return None
    return await get_workspace(conn, organization_id, workspace_id)


async def replace_credential(
    conn: AsyncConnection, organization_id: str, workspace_id: str, credential_hash: str, now: datetime
) -> WorkspaceRecord | None:
    """Stores a new credential hash for a live workspace (the old one stops working); the row, else None."""
    result = await conn.execute(
        update(workspaces)
        .where(workspaces.c.organization_id == organization_id, workspaces.c.id == workspace_id, _LIVE)
        .values(credential_hash=credential_hash, update_time=now)
    )
    if result.rowcount != 1:
        return None
    return await get_workspace(conn, organization_id, workspace_id)


# -------------------------------------------------------------------------------------- registry


async def credential_hash_of(conn: AsyncConnection, workspace_id: str) -> str | None:
    """The stored credential hash of a live workspace; None when unknown, DELETING or revoked."""
    result = await conn.execute(
        select(workspaces.c.credential_hash).where(workspaces.c.id == workspace_id, _LIVE)
    )
    value = result.scalar_one_or_none()
    return None if value is None else str(value)


def _holding(workspace_id: str, credential_hash: str) -> ColumnElement[bool]:
    # Conditions of every registry write: a rotation or deletion committed meanwhile wins.
    return and_(workspaces.c.id == workspace_id, workspaces.c.credential_hash == credential_hash, _LIVE)


async def register_server(
    conn: AsyncConnection,
    workspace_id: str,
    credential_hash: str,
    endpoint: str,
    server_version: str,
    now: datetime,
) -> tuple[str, WorkspaceRecord] | None:
    """ACTIVE with the new endpoint and version; (the previous state, the row), or None if revoked."""
    previous = (
        await conn.execute(
            select(workspaces.c.state).where(_holding(workspace_id, credential_hash)).with_for_update()
        )
    ).scalar_one_or_none()
    if previous is None:
        return None
    result = await conn.execute(
        update(workspaces)
        .where(_holding(workspace_id, credential_hash))
        .values(
            state=ACTIVE,
            endpoint=endpoint,
            server_version=server_version,
            register_time=now,
            last_heartbeat_time=now,
            update_time=now,
            version=workspaces.c.version + 1,
        )
    )
    if result.rowcount != 1:
        return None
    row = (await conn.execute(select(*_RECORD_COLUMNS).where(workspaces.c.id == workspace_id))).one()
    return str(previous), _record(row)


async def record_heartbeat(
    conn: AsyncConnection, workspace_id: str, credential_hash: str, now: datetime
) -> tuple[str, WorkspaceRecord] | None:
    """Notes a heartbeat of a registered server, DEGRADED → ACTIVE; (previous state, row) or None.

    A PROVISIONING workspace is returned unchanged: its server must register first.
    """
    recovered = await conn.execute(
        update(workspaces)
        .where(_holding(workspace_id, credential_hash), workspaces.c.state == DEGRADED)
        .values(state=ACTIVE, last_heartbeat_time=now, update_time=now)
    )
    previous = DEGRADED
    if recovered.rowcount != 1:
        previous = ACTIVE
        beat = await conn.execute(
            update(workspaces)
            .where(_holding(workspace_id, credential_hash), workspaces.c.state == ACTIVE)
            .values(last_heartbeat_time=now)
        )
        if beat.rowcount != 1:
            previous = PROVISIONING
    row = (
        await conn.execute(select(*_RECORD_COLUMNS).where(_holding(workspace_id, credential_hash)))
    ).first()
    if row is None:
        return None
    return previous, _record(row)


def _batch(name: str, condition: ColumnElement[bool], oldest_first: ColumnElement[Any], limit: int) -> CTE:
    # MATERIALIZED: evaluated exactly once. As a plain IN (subquery) PostgreSQL may re-run it per
    # row, and a LIMIT over tied sort keys can then pick different rows each time.
    return (
        select(workspaces.c.id)
        .where(condition)
        .order_by(oldest_first, workspaces.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
        .cte(name)
        .prefix_with("MATERIALIZED")
    )


async def degrade_silent(
    conn: AsyncConnection, cutoff: datetime, now: datetime, limit: int
) -> list[StateChange]:
    """ACTIVE workspaces whose last heartbeat is before `cutoff` become DEGRADED; at most `limit`.

    One UPDATE. Its WHERE repeats the conditions, so a replica sweeping at the
    same time, or a heartbeat committed meanwhile, makes a row simply not match
    (PostgreSQL re-checks them on the locked row; SKIP LOCKED lets concurrent
    sweepers share the work instead of queueing).
    """
    silent = and_(workspaces.c.state == ACTIVE, workspaces.c.last_heartbeat_time < cutoff)
    batch = _batch("silent_batch", silent, workspaces.c.last_heartbeat_time, limit)
    result = await conn.execute(
        update(workspaces)
        .where(workspaces.c.id.in_(select(batch.c.id)), silent)
        .values(state=DEGRADED, update_time=now)
        .returning(workspaces.c.id, workspaces.c.organization_id, workspaces.c.last_heartbeat_time)
    )
    return [StateChange(row.id, row.organization_id, row.last_heartbeat_time) for row in result]


async def purge_deleted(conn: AsyncConnection, cutoff: datetime, limit: int) -> list[StateChange]:
    """Deletes the rows of workspaces DELETING since before `cutoff`; at most `limit`."""
    expired = and_(workspaces.c.state == DELETING, workspaces.c.delete_time < cutoff)
    batch = _batch("expired_batch", expired, workspaces.c.delete_time, limit)
    result = await conn.execute(
        delete(workspaces)
        .where(workspaces.c.id.in_(select(batch.c.id)), expired)
        .returning(workspaces.c.id, workspaces.c.organization_id, workspaces.c.last_heartbeat_time)
    )
    return [StateChange(row.id, row.organization_id, row.last_heartbeat_time) for row in result]
