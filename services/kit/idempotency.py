"""AIP-155 `request_id`: a retried Create (or callback) returns the first result and changes nothing.

Each service adds `idempotency_table(metadata)` to its store and, in the
SAME transaction as the change:

    validate_request_id(request.request_id)          # before any work
    async with engine.begin() as conn:
        if request.request_id:
            first = await recall(conn, request_ids, method=..., principal=..., request_id=...)
            if first is not None:
                return Run.FromString(first)         # the retry: nothing changes
        run = ...create the run...
        if request.request_id:
            await remember(conn, request_ids, method=..., principal=..., request_id=...,
                           response=run.SerializeToString())

Both commit or neither does, so a failed create leaves no remembered
response and the retry runs it again. Keys are scoped by method and
principal: the same request_id from two callers is two requests.

Two concurrent requests with the same key: the second's INSERT hits the
primary key (on PostgreSQL it first waits for the first transaction), and
`remember` raises ABORTED with reason REQUEST_IN_PROGRESS, which rolls back
the second transaction; the client's retry then recalls the committed
response. If the create itself hits a unique constraint first (a
client-chosen name taken by the concurrent twin), the store may recall again
in a fresh transaction before reporting ALREADY_EXISTS.

Remembered responses are kept for a retention period (AIP-155 suggests at
least an hour; services decide) and removed by `purge_older_than`.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from sqlalchemy import (
    Column,
    DateTime,
    Index,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    bindparam,
    delete,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.errors import Aborted, InvalidArgument
from services.kit.prepared import Prepared

# Letters, digits, '_' and '-' cover UUIDs (36 characters) as well as shorter client keys.
_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def idempotency_table(metadata: MetaData, name: str = "request_ids") -> Table:
    """The table of remembered first responses, in a service's own metadata."""
    return Table(
        name,
        metadata,
        Column("method", String(200), nullable=False),
        Column("principal", String(255), nullable=False),
        Column("request_id", String(64), nullable=False),
        # The serialized first response, returned as-is to retries.
        Column("response", LargeBinary, nullable=False),
        Column("create_time", DateTime(timezone=True), nullable=False),
        PrimaryKeyConstraint("method", "principal", "request_id", name=f"pk_{name}"),
        Index(f"ix_{name}_create_time", "create_time"),
    )


def validate_request_id(value: str) -> None:
    """INVALID_ARGUMENT unless empty (no idempotency) or 1-64 of [A-Za-z0-9_-] (a UUID fits)."""
    if value and not _REQUEST_ID.fullmatch(value):
        raise InvalidArgument(
            "request_id", "must be a UUID or 1-64 characters of letters, digits, '_' and '-'"
        )


@functools.cache
def _statements(table: Table) -> tuple[Prepared, Prepared]:
    """Recall and remember for one table, prepared (every create and callback runs both)."""
    found = select(table.c.response).where(
        table.c.method == bindparam("method"),
        table.c.principal == bindparam("principal"),
        table.c.request_id == bindparam("request_id"),
    )
    return Prepared(found), Prepared(insert(table))


async def recall(
    conn: AsyncConnection, table: Table, *, method: str, principal: str, request_id: str
) -> bytes | None:
    """The response remembered for this key, or None when the request is new."""
    row = await _statements(table)[0].first(
        conn, {"method": method, "principal": principal, "request_id": request_id}
    )
    return None if row is None else bytes(row["response"])


async def remember(
    conn: AsyncConnection,
    table: Table,
    *,
    method: str,
    principal: str,
    request_id: str,
    response: bytes,
    now: dt.datetime | None = None,
) -> None:
    """Records the first response, in the caller's transaction.

    ABORTED (REQUEST_IN_PROGRESS) when a concurrent request with the same key
    got there first; the caller's transaction must then roll back.
    """
    validate_request_id(request_id)
    if not request_id:
        raise ValueError("remember needs a request_id; skip idempotency when the request has none")
    created = _utc(now or dt.datetime.now(dt.UTC))
    try:
        await _statements(table)[1].execute(
            conn,
            {
                "method": method,
                "principal": principal,
                "request_id": request_id,
                "response": response,
                "create_time": created,
            },
        )
    except IntegrityError:
        raise Aborted(
            "a request with the same request_id is in progress or just finished; retry it",
            reason="REQUEST_IN_PROGRESS",
        ) from None


async def purge_older_than(conn: AsyncConnection, table: Table, cutoff: dt.datetime) -> int:
    """Forgets responses remembered before `cutoff` (timezone-aware); returns how many."""
    result = await conn.execute(delete(table).where(table.c.create_time < _utc(cutoff)))
    return result.rowcount


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite stores the wall time without its offset, so everything is normalized to UTC first.
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC)
