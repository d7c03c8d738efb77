"""Keyset pagination for every List RPC (AIP-158) with AIP-132 `order_by`.

A List handler does, in its store:

    order = parse_order_by(request.order_by, SORTABLE, tie_breaker=runs.c.id, default="create_time desc")
    size = page_size(request.page_size)
    fingerprint = query_fingerprint("ListRuns", filter_text=request.filter, scope=workspace_id)
    rows, next_token = await paginate(conn, stmt, order=order, page_size=size,
                                      page_token=request.page_token, fingerprint=fingerprint)

Pages are found by seeking past the last row's sort key (never OFFSET), so a
page costs the same at any depth and rows inserted meanwhile do not shift
later pages. The unique `tie_breaker` column (the row id) is always the last
sort key, which makes the order total: every row appears exactly once.

Page tokens are URL-safe base64 of compact JSON: a format version, the
fingerprint of the query that made the token and the last row's sort-key
values, each tagged with its type so datetimes, ints, strings, ... round-trip
exactly. They are opaque to clients but not encrypted or signed: forging one
only lets a caller seek within results its filter and permissions already
allow, and every value is type-checked against its column and bound as a
parameter. A token from another query (method, filter, scope or order_by
differ) or a damaged one is INVALID_ARGUMENT on `page_token`.

NULLs sort as larger than every value (PostgreSQL's default): last in
ascending order, first in descending order, on both backends.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Row, Select, and_, false, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.errors import InvalidArgument

_TOKEN_VERSION = 1
# Longer than any real token (a few sort keys), short enough to bound decoding work.
_MAX_TOKEN_LENGTH = 4096
_ORDER_TERM = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)(?:\s+(asc|desc))?$", re.I)


def page_size(requested: int, *, default: int = 50, maximum: int = 500) -> int:
    """The page size to use: 0 means `default`, larger than `maximum` is capped (AIP-158)."""
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    if requested == 0:
        return default
    return min(requested, maximum)


@dataclass(frozen=True)
class OrderKey:
    """One sort key: the name the client used, its column and its direction."""

    name: str
    column: ColumnElement[Any]
    descending: bool


@dataclass(frozen=True)
class OrderBy:
    """A parsed, total ordering: the requested keys then the tie-breaker."""

    keys: tuple[OrderKey, ...]

    @property
    def canonical(self) -> str:
        """The normalized order_by text (e.g. "create_time desc, id"); tokens are bound to it."""
        return ", ".join(f"{key.name} desc" if key.descending else key.name for key in self.keys)

    def clauses(self) -> list[ColumnElement[Any]]:
        """ORDER BY clauses, with NULLs placed as the keyset predicate expects."""
        return [
            key.column.desc().nulls_first() if key.descending else key.column.asc().nulls_last()
            for key in self.keys
        ]


def parse_order_by(
    text: str,
    sortable: Mapping[str, ColumnElement[Any]],
    *,
    tie_breaker: ColumnElement[Any],
    tie_breaker_name: str = "id",
    default: str = "",
) -> OrderBy:
    """Parses AIP-132 `order_by` ("a", "a desc", "a desc, b") over the allow-list `sortable`.

    `text` empty uses `default` (itself order_by text, trusted). The unique
    `tie_breaker` column is appended unless the client already sorts by it.
    """
    source = text if text.strip() else default
    keys: list[OrderKey] = []
    if source.strip():
        for term in source.split(","):
            match = _ORDER_TERM.match(term.strip())
            if match is None:
                raise InvalidArgument(
                    "order_by", f"cannot parse {term.strip()!r}: expected 'field' or 'field desc'"
                )
            name, direction = match.group(1), (match.group(2) or "asc").lower()
            column = sortable.get(name)
            if column is None:
                allowed = ", ".join(sorted(sortable)) or "none"
                raise InvalidArgument("order_by", f"cannot sort by {name!r}; sortable fields: {allowed}")
            if any(key.name == name for key in keys):
                raise InvalidArgument("order_by", f"{name!r} appears more than once")
            keys.append(OrderKey(name, column, direction == "desc"))
    if not any(key.column is tie_breaker for key in keys):
        keys.append(OrderKey(tie_breaker_name, tie_breaker, False))
    return OrderBy(tuple(keys))


def query_fingerprint(method: str, *, filter_text: str = "", scope: str = "", **other: str) -> str:
    """A short hash of what defines a List query besides its ordering and page size.

    `scope` is the parent (e.g. the workspace id); put anything else that
    changes the result set (show_deleted=..., view=...) in `other`.
    """
    parts = [method, filter_text, scope, *(f"{name}={other[name]}" for name in sorted(other))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


class Page(NamedTuple):
    """One page of rows and the token of the next one ('' on the last page)."""

    rows: list[Row[Any]]
    next_page_token: str


async def paginate(
    conn: AsyncConnection,
    stmt: Select[Any],
    *,
    order: OrderBy,
    page_size: int,
    page_token: str,
    fingerprint: str,
) -> Page:
    """Runs `stmt` (already filtered and scoped, without ORDER BY/LIMIT) for one page.

    Every sort column must be in the select list: the next token is built
    from the last row's values.
    """
    if page_size < 1:
        raise ValueError("page_size must be at least 1; normalize it with page_size()")
    binding = _token_binding(fingerprint, order)
    if page_token:
        after = decode_page_token(page_token, binding, order)
        stmt = stmt.where(keyset_after(order, after))
    result = await conn.execute(stmt.order_by(*order.clauses()).limit(page_size + 1))
    rows = list(result.all())
    if len(rows) <= page_size:
        return Page(rows, "")
    rows = rows[:page_size]
    last = rows[-1]._mapping
    try:
        values = [last[key.column] for key in order.keys]
    except KeyError as missing:
        raise ValueError(f"sort column {missing} must be selected by the paginated statement") from None
    return Page(rows, encode_page_token(binding, values))


def keyset_after(order: OrderBy, values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after `values` in `order`.

    The row-value comparison (a, b) > (x, y) expanded into OR/AND terms, since
    a row value cannot mix directions and NULLs need their own terms.
    """
    alternatives: list[ColumnElement[bool]] = []
    equal_so_far: list[ColumnElement[bool]] = []
    for key, value in zip(order.keys, values, strict=True):
        alternatives.append(and_(*equal_so_far, _beyond(key, value)))
        equal_so_far.append(key.column.is_(None) if value is None else key.column == value)
    bound = _leading_bound(order.keys[0], values[0]) if order.keys else None
    return or_(*alternatives) if bound is None else and_(bound, or_(*alternatives))


def _leading_bound(key: OrderKey, value: Any) -> ColumnElement[bool] | None:
    # Implied by the alternatives, but a plain range an index scan can start from: with the OR
    # alone PostgreSQL filtered, so a page N pages deep read every row before it.
    if value is None:
        return None
    bound: ColumnElement[bool]
    if key.descending:
        bound = key.column <= value  # NULLs sort first in descending order: none come after a value
    elif getattr(key.column, "nullable", True):
        return None
    else:
        bound = key.column >= value
    return bound


def _beyond(key: OrderKey, value: Any) -> ColumnElement[bool]:
    # NULL is larger than every value: after it in ascending order, before it in descending order.
    column = key.column
    if key.descending:
        return column.is_not(None) if value is None else column < value
    return false() if value is None else or_(column > value, column.is_(None))


def _token_binding(fingerprint: str, order: OrderBy) -> str:
    # The ordering is part of the query a token belongs to, whatever the caller put in the fingerprint.
    return hashlib.sha256(f"{fingerprint}\x00{order.canonical}".encode()).hexdigest()[:16]


def encode_page_token(binding: str, values: Sequence[Any]) -> str:
    """The opaque token that resumes after a row with these sort-key values."""
    payload = {"v": _TOKEN_VERSION, "q": binding, "k": [_tag(value) for value in values]}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str, binding: str, order: OrderBy) -> list[Any]:
    """The sort-key values in `token`; INVALID_ARGUMENT when damaged or made by another query."""
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidArgument("page_token", "is not a page token returned by this List method")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
        if not isinstance(payload, dict) or payload.get("v") != _TOKEN_VERSION:
            raise ValueError("unknown token format")
        tagged = payload["k"]
        if not isinstance(tagged, list) or len(tagged) != len(order.keys):
            raise ValueError("wrong number of keys")
        query = payload["q"]
        values = [_untag(item) for item in tagged]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a page token returned by this List method") from None
    if query != binding:
        raise InvalidArgument(
            "page_token", "was made for a different query; keep filter and order_by the same across pages"
        )
    for key, value in zip(order.keys, values, strict=True):
        if value is not None and not _fits(key.column, value):
            raise InvalidArgument("page_token", "is not a page token returned by this List method")
    return values


def _tag(value: Any) -> list[Any]:
    # bool before int: bool is a subclass of int.
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["b", value]
    if isinstance(value, int):
        return ["i", str(value)]  # as text: JSON numbers may lose precision in other readers
    if isinstance(value, float):
        return ["f", value.hex()]
    if isinstance(value, str):
        return ["s", value]
    if isinstance(value, dt.datetime):
        return ["t", value.isoformat()]
    if isinstance(value, dt.date):
        return ["d", value.isoformat()]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, decimal.Decimal):
        return ["m", str(value)]
    if isinstance(value, bytes):
        return ["y", base64.urlsafe_b64encode(value).decode()]
    raise TypeError(f"cannot put a {type(value).__name__} sort key into a page token")


def _untag(item: Any) -> Any:
    if not isinstance(item, list) or not item or not isinstance(item[0], str):
        raise ValueError("malformed key")
    tag, rest = item[0], item[1:]
    if tag == "n" and not rest:
        return None
    if len(rest) != 1:
        raise ValueError("malformed key")
    value = rest[0]
    if tag == "b" and isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError("malformed key")
    decoders: dict[str, Any] = {
        "i": int,
        "f": float.fromhex,
        "s": str,
        "t": dt.datetime.fromisoformat,
        "d": dt.date.fromisoformat,
        "u": uuid.UUID,
        "m": decimal.Decimal,
        "y": lambda text: base64.urlsafe_b64decode(text.encode()),
    }
    decoder = decoders.get(tag)
    if decoder is None:
        raise ValueError("unknown key type")
    try:
        return decoder(value)
    except decimal.InvalidOperation as error:
        raise ValueError("malformed decimal") from error


def _fits(column: ColumnElement[Any], value: Any) -> bool:
    """Whether a decoded value has the Python type the column's type expects."""
    try:
        expected = column.type.python_type
    except NotImplementedError:
        return True  # a custom type without a declared Python type: let the database judge
    if expected is int and isinstance(value, bool):
        return False
    if expected is dt.date and isinstance(value, dt.datetime):
        return False
    return isinstance(value, expected)
