"""Tables and queries of the audit log (SQLAlchemy Core): hash-chained events per organization.

Each organization's log is a chain: event n stores the hash of event n-1 and
its own hash over that and its canonical record (services.kit.audit_chain).
`orgs_audit_heads` holds each chain's last sequence and hash; appenders lock
it (FOR UPDATE on PostgreSQL; SQLite has one writer) so concurrent ingesters
extend a chain one after the other. The stored `record` is exactly what was
hashed; the other event columns are copies of it for filtering.
Installation-wide events (organization_id '') chain under ''.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.audit import ACTOR_KINDS, OUTCOMES, AuditEvent
from services.kit.audit_chain import GENESIS, canonical_json, chain_hash
from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.orgs.store import metadata

# Longest organization id the log takes (the outbox column's width).
MAX_ORGANIZATION_ID = 64
_FIELD = 512  # the kit event's limit on its string fields
_IN_CHUNK = 500  # ids per IN (...) when looking up known events

audit_events = Table(
    "orgs_audit_events",
    metadata,
    Column("organization_id", String(MAX_ORGANIZATION_ID), primary_key=True),
    Column("sequence", BigInteger, primary_key=True, autoincrement=False),
    Column("event_id", String(36), nullable=False, unique=True),
    # The event's `to_record()` as canonical JSON: the input of `hash`, and what List returns.
    Column("record", Text, nullable=False),
    Column("actor_kind", String(32), nullable=False),
    Column("actor_id", String(_FIELD), nullable=False),
    Column("action", String(_FIELD), nullable=False),
    Column("resource_type", String(_FIELD), nullable=False),
    Column("resource_id", String(_FIELD), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("request_id", String(_FIELD), nullable=False),
    Column("occur_time", UtcDateTime, nullable=False),
    Column("previous_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("ingest_time", UtcDateTime, nullable=False),
    # Keyset listing walks the primary key (organization_id, sequence) in either direction;
    # these serve the common filters within an organization.
    Index("ix_orgs_audit_events_resource", "organization_id", "resource_type", "resource_id"),
    Index("ix_orgs_audit_events_actor", "organization_id", "actor_id"),
    Index("ix_orgs_audit_events_occur_time", "organization_id", "occur_time"),
)

audit_heads = Table(
    "orgs_audit_heads",
    metadata,
    Column("organization_id", String(MAX_ORGANIZATION_ID), primary_key=True),
    Column("last_sequence", BigInteger, nullable=False),
    Column("last_hash", String(64), nullable=False),
)

_OUTCOME_VALUES = {name: name for name in OUTCOMES}
FILTER_FIELDS = {
    "actor_id": FilterField(audit_events.c.actor_id, "string"),
    "actor_kind": FilterField(audit_events.c.actor_kind, "enum", {kind: kind for kind in ACTOR_KINDS}),
    "action": FilterField(audit_events.c.action, "string"),
    "resource_type": FilterField(audit_events.c.resource_type, "string"),
    "resource_id": FilterField(audit_events.c.resource_id, "string"),
    "outcome": FilterField(audit_events.c.outcome, "enum", _OUTCOME_VALUES),
    "request_id": FilterField(audit_events.c.request_id, "string"),
    "occur_time": FilterField(audit_events.c.occur_time, "timestamp"),
}


@dataclass(frozen=True)
class StoredEvent:
    """One row of the log as stored (the record is not parsed: verification must see it raw)."""

    organization_id: str
    sequence: int
    event_id: str
    record: str
    actor_kind: str
    actor_id: str
    action: str
    resource_type: str
    resource_id: str
    outcome: str
    request_id: str
    occur_time: datetime
    previous_hash: str
    hash: str


@dataclass(frozen=True)
class Head:
    """The end of an organization's chain (sequence 0 and GENESIS before its first event)."""

    last_sequence: int
    last_hash: str


def indexed_columns(event: AuditEvent) -> dict[str, Any]:
    """The filter columns of an event, as they must be stored beside its record."""
    return {
        "organization_id": event.organization_id,
        "event_id": event.id,
        "actor_kind": event.actor.kind,
        "actor_id": event.actor.subject,
        "action": event.action,
        "resource_type": event.resource_type,
        "resource_id": event.resource_id,
        "outcome": event.outcome,
        "request_id": event.request_id,
        "occur_time": event.occur_time,
    }


async def append_events(conn: AsyncConnection, events: Sequence[AuditEvent], ingest_time: datetime) -> int:
    """Chains the events not yet in the log onto their organizations' logs, in the given order.

    Returns how many were appended; an event id already in the log (or earlier
    in `events`) is skipped. Heads are locked in organization order, so two
    appenders never deadlock, and known ids are read only once the locks are
    held, so a concurrent append of the same event is seen and skipped.
    """
    by_organization: dict[str, list[AuditEvent]] = {}
    seen: set[str] = set()
    for event in events:
        if event.id in seen:
            continue
        seen.add(event.id)
        if len(event.organization_id) > MAX_ORGANIZATION_ID:
            raise ValueError(f"organization_id is longer than {MAX_ORGANIZATION_ID} characters")
        by_organization.setdefault(event.organization_id, []).append(event)
    heads = {
        organization_id: await _lock_head(conn, organization_id)
        for organization_id in sorted(by_organization)
    }
    known = await _known_ids(conn, list(seen))
    appended = 0
    for organization_id, pending in by_organization.items():
        head = heads[organization_id]
        sequence, previous = head.last_sequence, head.last_hash
        rows = []
        for event in pending:
            if event.id in known:
                continue
            sequence += 1
            link = chain_hash(previous, event)
            rows.append(
                {
                    **indexed_columns(event),
                    "sequence": sequence,
                    "record": canonical_json(event.to_record()).decode("ascii"),
                    "previous_hash": previous,
                    "hash": link,
                    "ingest_time": ingest_time,
                }
            )
            previous = link
        if rows:
            await conn.execute(insert(audit_events), rows)
            await conn.execute(
                update(audit_heads)
                .where(audit_heads.c.organization_id == organization_id)
                .values(last_sequence=sequence, last_hash=previous)
            )
            appended += len(rows)
    return appended


async def _lock_head(conn: AsyncConnection, organization_id: str) -> Head:
    # Create the head if missing without failing on a concurrent creator, then lock it. On SQLite
    # this first write also makes the transaction the single writer before anything is read.
    values = {"organization_id": organization_id, "last_sequence": 0, "last_hash": GENESIS}
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(audit_heads).values(**values).on_conflict_do_nothing())
    row = (
        await conn.execute(
            select(audit_heads.c.last_sequence, audit_heads.c.last_hash)
            .where(audit_heads.c.organization_id == organization_id)
            .with_for_update()
        )
    ).one()
    return Head(row.last_sequence, row.last_hash)


async def _known_ids(conn: AsyncConnection, ids: list[str]) -> set[str]:
    known: set[str] = set()
    for start in range(0, len(ids), _IN_CHUNK):
        chunk = ids[start : start + _IN_CHUNK]
        result = await conn.execute(select(audit_events.c.event_id).where(audit_events.c.event_id.in_(chunk)))
        known.update(result.scalars())
    return known


async def read_head(conn: AsyncConnection, organization_id: str) -> Head:
    """The end of the organization's chain, without locking."""
    row = (
        await conn.execute(
            select(audit_heads.c.last_sequence, audit_heads.c.last_hash).where(
                audit_heads.c.organization_id == organization_id
            )
        )
    ).one_or_none()
    return Head(0, GENESIS) if row is None else Head(row.last_sequence, row.last_hash)


async def list_events(
    conn: AsyncConnection,
    organization_id: str,
    *,
    filter_text: str,
    order_by: str,
    requested_page_size: int,
    page_token: str,
) -> tuple[list[StoredEvent], str]:
    """One page of the organization's events (filter and order_by as in ListAuditEvents)."""
    column = audit_events.c.sequence
    order = parse_order_by(order_by, {"sequence": column}, tie_breaker=column, tie_breaker_name="sequence")
    statement = select(audit_events).where(audit_events.c.organization_id == organization_id)
    condition = parse_filter(filter_text, FILTER_FIELDS)
    if condition is not None:
        statement = statement.where(condition)
    rows, token = await paginate(
        conn,
        statement,
        order=order,
        page_size=page_size(requested_page_size),
        page_token=page_token,
        fingerprint=query_fingerprint(
            "keel.orgs.v1.AuditLogService.ListAuditEvents", filter_text=filter_text, scope=organization_id
        ),
    )
    return [_stored(row) for row in rows], token


async def chain_page(
    conn: AsyncConnection, organization_id: str, *, after_sequence: int, up_to_sequence: int, limit: int
) -> list[StoredEvent]:
    """Up to `limit` events of the organization in sequence order, after and up to the given ones."""
    rows = await conn.execute(
        select(audit_events)
        .where(
            audit_events.c.organization_id == organization_id,
            audit_events.c.sequence > after_sequence,
            audit_events.c.sequence <= up_to_sequence,
        )
        .order_by(audit_events.c.sequence)
        .limit(limit)
    )
    return [_stored(row) for row in rows]


async def first_event_beyond_head(conn: AsyncConnection, organization_id: str) -> StoredEvent | None:
    """The first event whose sequence is past the chain's head: only a forged row can be there.

    One statement, so the head and the rows are read from the same snapshot.
    """
    head_sequence = (
        select(audit_heads.c.last_sequence)
        .where(audit_heads.c.organization_id == organization_id)
        .scalar_subquery()
    )
    row = (
        await conn.execute(
            select(audit_events)
            .where(
                audit_events.c.organization_id == organization_id,
                audit_events.c.sequence > func.coalesce(head_sequence, 0),
            )
            .order_by(audit_events.c.sequence)
            .limit(1)
        )
    ).one_or_none()
    return None if row is None else _stored(row)


def decode_record(text: str) -> dict[str, Any]:
    """The record dict of a stored row; ValueError when it is not a JSON object."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("the stored record is not a JSON object")
    return value


def _stored(row: Row[Any]) -> StoredEvent:
    return StoredEvent(
        organization_id=row.organization_id,
        sequence=row.sequence,
        event_id=row.event_id,
        record=row.record,
        actor_kind=row.actor_kind,
        actor_id=row.actor_id,
        action=row.action,
        resource_type=row.resource_type,
        resource_id=row.resource_id,
        outcome=row.outcome,
        request_id=row.request_id,
        occur_time=row.occur_time,
        previous_hash=row.previous_hash,
        hash=row.hash,
    )


def stored_columns_match(stored: StoredEvent, event: AuditEvent) -> bool:
    """Whether the row's filter columns agree with its record (an edited column hides events)."""
    expected = indexed_columns(event)
    actual = {name: getattr(stored, name) for name in expected}
    return actual == expected
