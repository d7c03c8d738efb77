"""Generic row operations of the metadata tables: insert, get, versioned update, delete, keyset list.

Every project-level query names the project (`scope` = {"project_id": ...}), so
a row of another project is indistinguishable from a missing one. Rows come
back as plain dicts of column values. A unique constraint refusing a write is
`Conflict`; a foreign key refusing it (a row still referenced) is `InUse`.
Either leaves the transaction unusable: the caller raises and it rolls back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.filtering import AnyField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint

Row = dict[str, Any]


def values_of(record: Any) -> dict[str, Any]:
    """The fields of a flat record dataclass as a new dict (no deep copy, unlike dataclasses.asdict)."""
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


class Conflict(Exception):
    """A unique constraint refused the write (a name taken)."""


class InUse(Exception):
    """A foreign key refused the write (the row is still referenced)."""


@dataclass(frozen=True)
class ListQuery:
    """The paging, filtering and ordering parameters of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


def _integrity(error: IntegrityError) -> Exception:
    text = str(error.orig).lower()
    if "foreign key" in text:
        return InUse()
    return Conflict()


def _where(table: Table, row_id: str, scope: Mapping[str, str]) -> list[ColumnElement[bool]]:
    return [table.c.id == row_id, *(table.c[name] == value for name, value in scope.items())]


async def insert_row(conn: AsyncConnection, table: Table, values: Mapping[str, Any]) -> None:
    """Inserts a row; Conflict (name taken) or InUse (a referenced row is missing)."""
    try:
        await conn.execute(insert(table).values(**values))
    except IntegrityError as error:
        raise _integrity(error) from None


async def get_row(
    conn: AsyncConnection, table: Table, row_id: str, scope: Mapping[str, str] | None = None
) -> Row | None:
    """The row with this id (in this scope), or None."""
    row = (await conn.execute(select(table).where(*_where(table, row_id, scope or {})))).first()
    return None if row is None else dict(row._mapping)


async def update_row(
    conn: AsyncConnection,
    table: Table,
    row_id: str,
    version: int,
    values: Mapping[str, Any],
    scope: Mapping[str, str] | None = None,
) -> Row | None:
    """Writes `values` and bumps the version if the row is still at `version`; the new row, else None."""
    try:
        result = await conn.execute(
            update(table)
            .where(*_where(table, row_id, scope or {}), table.c.version == version)
            .values(**values, version=version + 1)
        )
    except IntegrityError as error:
        raise _integrity(error) from None
    if result.rowcount != 1:
        return None
    return await get_row(conn, table, row_id, scope)


async def delete_row(
    conn: AsyncConnection, table: Table, row_id: str, version: int, scope: Mapping[str, str] | None = None
) -> bool:
    """Deletes the row if still at `version`; whether it did. InUse when still referenced."""
    try:
        result = await conn.execute(
            delete(table).where(*_where(table, row_id, scope or {}), table.c.version == version)
        )
    except IntegrityError as error:
        raise _integrity(error) from None
    return bool(result.rowcount == 1)


async def list_rows(
    conn: AsyncConnection,
    table: Table,
    query: ListQuery,
    *,
    method: str,
    filter_fields: Mapping[str, AnyField],
    sortable: Mapping[str, ColumnElement[Any]],
    visible: ColumnElement[bool],
    scope: Mapping[str, str] | None = None,
) -> tuple[list[Row], str]:
    """One keyset page of the rows the caller may see (`visible`) and the next page token."""
    scope = scope or {}
    condition = parse_filter(query.filter, filter_fields)
    order = parse_order_by(query.order_by, sortable, tie_breaker=table.c.id, default="create_time")
    stmt = select(table).where(visible, *(table.c[name] == value for name, value in scope.items()))
    if condition is not None:
        stmt = stmt.where(condition)
    fingerprint = query_fingerprint(
        method, filter_text=query.filter, scope="/".join(f"{k}={v}" for k, v in sorted(scope.items()))
    )
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(query.page_size),
        page_token=query.page_token,
        fingerprint=fingerprint,
    )
    return [dict(row._mapping) for row in page.rows], page.next_page_token
