"""Tables and queries of annotations: typed metadata, tags and log pointers; no gRPC, no clock, no policy.

An annotation names its target by kind and id (no foreign key: targets live
in several store modules). `target_exists` checks a target against its own
table, always within the project. Targets deleted elsewhere drop their
annotations with `delete_for_targets` in the delete's transaction.

Workspace-level resources (stacks, components) carry their tags as a field
of the resource: the same `metadata_tags` rows with project_id
`WORKSPACE_LEVEL` (''), written by `replace_tags` in the resource's own
transaction and read a page at a time by `tags_by_target`. Their kinds are
not in TARGET_TABLES: AnnotationService does not reach them.

`annotation_filters` gives a List's AIP-160 filter the fields `tags` and
`metadata.KEY`, each an EXISTS subquery correlated with the listed row, so a
filtered page is still one statement (served by ix_metadata_tags_project_tag
and ix_metadata_entries_project_key, or the primary keys).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Exists,
    Index,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    case,
    delete,
    exists,
    insert,
    not_,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField, FilterValue, PredicateField
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.metadata.store import metadata

# Target kinds and the table each lives in (every one has `id` and, except projects, `project_id`).
TARGET_TABLES = {
    "run": "metadata_runs",
    "step": "metadata_step_runs",
    "artifact_version": "metadata_artifact_versions",
    "model_version": "metadata_model_versions",
    "artifact": "metadata_artifacts",
    "model": "metadata_models",
    "pipeline": "metadata_pipelines",
    "snapshot": "metadata_snapshots",
    "code_repository": "metadata_code_repositories",
    "project": "metadata_projects",
}
# The project_id of the tags of workspace-level resources (stacks, components).
WORKSPACE_LEVEL = ""
# The kinds that carry typed metadata (the others only tags).
METADATA_KINDS = ("run", "step", "artifact_version", "model_version")
MAX_KEY = 256

metadata_entries = Table(
    "metadata_entries",
    metadata,
    Column("project_id", String(36), nullable=False),
    Column("target_kind", String(32), nullable=False),
    Column("target_id", String(36), nullable=False),
    Column("key", String(256), nullable=False),
    # number, string, bool, json or uri; `value` holds the JSON form of the value.
    Column("value_kind", String(8), nullable=False),
    Column("value", JSON, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("target_kind", "target_id", "key", name="pk_metadata_entries"),
    # Filtering lists by metadata keys (a later wave) walks keys within a project.
    Index("ix_metadata_entries_project_key", "project_id", "target_kind", "key"),
)

tags = Table(
    "metadata_tags",
    metadata,
    Column("project_id", String(36), nullable=False),
    Column("target_kind", String(32), nullable=False),
    Column("target_id", String(36), nullable=False),
    Column("tag", String(100), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("target_kind", "target_id", "tag", name="pk_metadata_tags"),
    # `tags:"x"` filters of lists (a later wave) find the tagged ids of a kind.
    Index("ix_metadata_tags_project_tag", "project_id", "target_kind", "tag", "target_id"),
)

log_pointers = Table(
    "metadata_log_pointers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("target_kind", String(32), nullable=False),
    Column("target_id", String(36), nullable=False),
    Column("uri", String(2048), nullable=False),
    Column("label", String(100), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    UniqueConstraint("target_kind", "target_id", "label", "uri", name="uq_metadata_log_pointers_target"),
    Index("ix_metadata_log_pointers_target", "target_kind", "target_id", "create_time", "id"),
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One metadata key of a target: its kind and JSON-form value."""

    key: str
    value_kind: str
    value: Any
    update_time: datetime


@dataclasses.dataclass(frozen=True)
class LogPointerRecord:
    """A row of metadata_log_pointers."""

    id: str
    project_id: str
    target_kind: str
    target_id: str
    uri: str
    label: str
    create_time: datetime


class PointerTaken(Exception):
    """The target already has a pointer with this label and URI."""


async def target_exists(conn: AsyncConnection, project_id: str, kind: str, target_id: str) -> bool:
    """Whether the target exists in the project (a kind whose table is not defined: False)."""
    table = metadata.tables.get(TARGET_TABLES.get(kind, ""))
    if table is None:
        return False
    if kind == "project":
        if target_id != project_id:
            return False
        condition = table.c.id == target_id
    else:
        condition = (table.c.id == target_id) & (table.c.project_id == project_id)
    return (await conn.execute(select(table.c.id).where(condition))).first() is not None


def _target(project_id: str, kind: str, target_id: str) -> Any:
    return lambda table: (
        (table.c.project_id == project_id) & (table.c.target_kind == kind) & (table.c.target_id == target_id)
    )


async def put_entries(
    conn: AsyncConnection,
    project_id: str,
    kind: str,
    target_id: str,
    entries: Sequence[tuple[str, str, Any]],
    now: datetime,
) -> list[Entry]:
    """Upserts (key, value_kind, value) entries of a target: update the existing keys, insert the rest."""
    keys = [key for key, _, _ in entries]
    where = _target(project_id, kind, target_id)(metadata_entries)
    existing = set(
        (await conn.execute(select(metadata_entries.c.key).where(where, metadata_entries.c.key.in_(keys))))
        .scalars()
        .all()
    )
    fresh = [
        {
            "project_id": project_id,
            "target_kind": kind,
            "target_id": target_id,
            "key": key,
            "value_kind": value_kind,
            "value": value,
            "update_time": now,
        }
        for key, value_kind, value in entries
        if key not in existing
    ]
    for key, value_kind, value in entries:
        if key in existing:
            await conn.execute(
                update(metadata_entries)
                .where(where, metadata_entries.c.key == key)
                .values(value_kind=value_kind, value=value, update_time=now)
            )
    if fresh:
        await conn.execute(insert(metadata_entries), fresh)
    return [Entry(key, value_kind, value, now) for key, value_kind, value in entries]


async def list_entries(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, requested_size: int, page_token: str
) -> tuple[list[Entry], str]:
    """One page of a target's metadata, by key."""
    stmt = select(metadata_entries).where(_target(project_id, kind, target_id)(metadata_entries))
    order = parse_order_by("", {}, tie_breaker=metadata_entries.c.key, tie_breaker_name="key")
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(requested_size),
        page_token=page_token,
        fingerprint=query_fingerprint("ListMetadata", scope=f"{project_id}/{kind}/{target_id}"),
    )
    return [_entry(row) for row in page.rows], page.next_page_token


def _entry(row: Row[Any]) -> Entry:
    m = row._mapping
    return Entry(m["key"], m["value_kind"], m["value"], m["update_time"])


async def add_tags(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, names: Sequence[str], now: datetime
) -> None:
    """Attaches tags; those already attached stay as they are."""
    where = _target(project_id, kind, target_id)(tags)
    present = set(
        (await conn.execute(select(tags.c.tag).where(where, tags.c.tag.in_(names)))).scalars().all()
    )
    fresh = [
        {
            "project_id": project_id,
            "target_kind": kind,
            "target_id": target_id,
            "tag": name,
            "create_time": now,
        }
        for name in dict.fromkeys(names)
        if name not in present
    ]
    if fresh:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(tags), fresh)
        except IntegrityError:
            # A concurrent AddTags attached some of them first: attach what is still missing, one by one.
            for row in fresh:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(tags).values(**row))
                except IntegrityError:
                    pass


async def remove_tags(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, names: Sequence[str]
) -> int:
    """Detaches tags; how many were attached."""
    result = await conn.execute(
        delete(tags).where(_target(project_id, kind, target_id)(tags), tags.c.tag.in_(names))
    )
    return int(result.rowcount)


async def list_tags(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, requested_size: int, page_token: str
) -> tuple[list[str], str]:
    """One page of a target's tags, alphabetically."""
    stmt = select(tags.c.tag).where(_target(project_id, kind, target_id)(tags))
    order = parse_order_by("", {}, tie_breaker=tags.c.tag, tie_breaker_name="tag")
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(requested_size),
        page_token=page_token,
        fingerprint=query_fingerprint("ListTags", scope=f"{project_id}/{kind}/{target_id}"),
    )
    return [row.tag for row in page.rows], page.next_page_token


async def tags_by_target(
    conn: AsyncConnection, project_id: str, kind: str, target_ids: Sequence[str]
) -> dict[str, list[str]]:
    """The tags of each target (alphabetically; [] for an untagged one), in one query for a whole page."""
    result: dict[str, list[str]] = {target_id: [] for target_id in target_ids}
    if not target_ids:
        return result
    found = await conn.execute(
        select(tags.c.target_id, tags.c.tag)
        .where(tags.c.project_id == project_id, tags.c.target_kind == kind, tags.c.target_id.in_(target_ids))
        .order_by(tags.c.target_id, tags.c.tag)
    )
    for row in found:
        result[row.target_id].append(row.tag)
    return result


async def replace_tags(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, names: Sequence[str], now: datetime
) -> None:
    """Makes `names` the target's whole tag set; tags it keeps keep their create_time.

    For a resource's `tags` field, written in the transaction that creates or
    versions the resource (its row version serializes concurrent replacements).
    """
    stale = delete(tags).where(_target(project_id, kind, target_id)(tags))
    await conn.execute(stale.where(tags.c.tag.not_in(names)) if names else stale)
    if names:
        await add_tags(conn, project_id, kind, target_id, names, now)


async def insert_log_pointer(conn: AsyncConnection, record: LogPointerRecord) -> None:
    """Records a log pointer; PointerTaken when the target has the same label and URI."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(log_pointers).values(**dataclasses.asdict(record)))
    except IntegrityError:
        raise PointerTaken(record.uri) from None


async def list_log_pointers(
    conn: AsyncConnection, project_id: str, kind: str, target_id: str, requested_size: int, page_token: str
) -> tuple[list[LogPointerRecord], str]:
    """One page of a target's log pointers, oldest first."""
    stmt = select(log_pointers).where(_target(project_id, kind, target_id)(log_pointers))
    order = parse_order_by(
        "", {"create_time": log_pointers.c.create_time}, tie_breaker=log_pointers.c.id, default="create_time"
    )
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(requested_size),
        page_token=page_token,
        fingerprint=query_fingerprint("ListLogPointers", scope=f"{project_id}/{kind}/{target_id}"),
    )
    rows = [
        LogPointerRecord(**{f.name: row._mapping[f.name] for f in dataclasses.fields(LogPointerRecord)})
        for row in page.rows
    ]
    return rows, page.next_page_token


async def delete_for_targets(conn: AsyncConnection, kind: str, target_ids: Any) -> None:
    """Deletes every annotation of these targets (a list or a subquery): one statement per table."""
    for table in (metadata_entries, tags, log_pointers):
        await conn.execute(
            delete(table).where(table.c.target_kind == kind, table.c.target_id.in_(target_ids))
        )


def annotation_filters(
    kind: str, id_column: ColumnElement[Any], project_column: ColumnElement[Any]
) -> dict[str, FilterField | PredicateField]:
    """The filter fields `tags` (every kind) and `metadata.KEY` (kinds with metadata) of a List of `kind`.

    `id_column` and `project_column` are the listed row's id and project (a
    project's own: its id), which the EXISTS subqueries correlate with.
    """
    fields: dict[str, FilterField | PredicateField] = {
        "tags": PredicateField(_tag_restriction(kind, id_column, project_column))
    }
    if kind in METADATA_KINDS:
        fields["metadata"] = PredicateField(
            _metadata_restriction(kind, id_column, project_column), keyed=True
        )
    return fields


Restriction = Callable[[str, str, FilterValue], ColumnElement[bool]]


def _tag_restriction(
    kind: str, id_column: ColumnElement[Any], project_column: ColumnElement[Any]
) -> Restriction:
    # tags:"x" (AIP-160's has on a repeated field) and tags:* (tagged at all).
    def build(_key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
        if op != ":" or value.kind not in ("string", "present"):
            raise ValueError('takes tags:"TAG" (has the tag) or tags:* (has any tag)')
        tagged = exists().where(
            tags.c.project_id == project_column, tags.c.target_kind == kind, tags.c.target_id == id_column
        )
        return tagged.where(tags.c.tag == value.value) if value.kind == "string" else tagged

    return build


# Which stored value kinds a literal compares with, how the JSON value is read, which operators apply.
_NUMBER_OPS = ("=", ":", "!=", "<", "<=", ">", ">=")
_EQUALITY_OPS = ("=", ":", "!=")
_OPERATORS: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    ":": operator.eq,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _metadata_restriction(
    kind: str, id_column: ColumnElement[Any], project_column: ColumnElement[Any]
) -> Restriction:
    def build(key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
        if not key:
            # metadata:"KEY" (AIP-160's has on a map): the key is present.
            if op == ":" and value.kind == "string":
                return _has_key(str(value.value))
            raise ValueError('name a key: metadata.KEY:*, metadata.KEY = VALUE or metadata:"KEY"')
        if len(key) > MAX_KEY:
            raise ValueError(f"keys are at most {MAX_KEY} characters")
        if value.kind == "present":
            return _has_key(key)
        if op == "!=":
            # Two-valued, as on columns: true when the key is missing or holds another value.
            return not_(_value_matches(key, "=", value))
        return _value_matches(key, op, value)

    def _has_key(key: str) -> Exists:
        return exists().where(
            metadata_entries.c.project_id == project_column,
            metadata_entries.c.target_kind == kind,
            metadata_entries.c.key == key,
            metadata_entries.c.target_id == id_column,
        )

    def _value_matches(key: str, op: str, value: FilterValue) -> ColumnElement[bool]:
        allowed: tuple[str, ...]
        if value.kind == "number":
            stored = _stored(("number",), metadata_entries.c.value[()].as_float())
            allowed = _NUMBER_OPS
        elif value.kind == "string":
            stored = _stored(("string", "uri"), metadata_entries.c.value[()].as_string())
            allowed = _EQUALITY_OPS
        else:
            stored = _stored(("bool",), metadata_entries.c.value[()].as_boolean())
            allowed = _EQUALITY_OPS
        if op not in allowed:
            raise ValueError(f"compares {value.kind} values with {', '.join(allowed)} only")
        compare = _OPERATORS[op]
        return _has_key(key).where(compare(stored, value.value))

    return build


def _stored(kinds: tuple[str, ...], reading: ColumnElement[Any]) -> ColumnElement[Any]:
    # CASE, not AND: PostgreSQL may evaluate a cast before a sibling condition, and "abc"::float fails.
    return case((metadata_entries.c.value_kind.in_(kinds), reading), else_=None)
