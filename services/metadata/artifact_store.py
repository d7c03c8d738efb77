"""Tables and queries of artifacts, artifact versions and step inputs/outputs; no gRPC, no clock, no policy.

Every query names the project, so a resource of another project is NOT_FOUND
like a missing one. Step runs belong to the run area (another module, built
alongside): links hold their ids as plain strings, checked by the caller,
with no foreign key across areas.

Version numbers come from a counter on the artifact row, bumped with
UPDATE ... RETURNING: on PostgreSQL the row lock serializes concurrent
creates of one artifact, on SQLite the write lock does, so numbers are
distinct and consecutive; the unique (artifact_id, number) index is the
backstop.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    bindparam,
    case,
    delete,
    exists,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import AnyField, FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.kit.prepared import Batch, Prepared
from services.kit.rbac_lookup import Lookup, lookup_condition
from services.metadata import annotation_store
from services.metadata.annotation_store import annotation_filters
from services.metadata.rows import values_of
from services.metadata.run_store import step_runs
from services.metadata.store import metadata

INPUT = "input"
OUTPUT = "output"

artifacts = Table(
    "metadata_artifacts",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    Column("type", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    # The number of the newest version: the counter version numbers come from.
    Column("latest_version_number", BigInteger, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_metadata_artifacts_project_name"),
    Index("ix_metadata_artifacts_project_create", "project_id", "create_time", "id"),
)

artifact_versions = Table(
    "metadata_artifact_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("artifact_id", String(36), nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("uri", String(2048), nullable=False),
    Column("type", String(100), nullable=False),
    Column("materializer", String(512), nullable=False),
    Column("content_hash", String(256), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    # '' when uploaded by hand; otherwise the step run (and its run) that produced it.
    Column("producer_step_run_id", String(36), nullable=False),
    Column("producer_run_id", String(36), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    UniqueConstraint("artifact_id", "number", name="uq_metadata_artifact_versions_number"),
    Index("ix_metadata_artifact_versions_project_artifact", "project_id", "artifact_id", "number"),
    Index("ix_metadata_artifact_versions_producer_run", "producer_run_id"),
)

# The lineage edges: a step run consumed (input) or produced (output) an artifact version.
step_artifacts = Table(
    "metadata_step_artifacts",
    metadata,
    Column("project_id", String(36), nullable=False),
    Column("step_run_id", String(36), nullable=False),
    Column("direction", String(8), nullable=False),
    Column("name", String(100), nullable=False),
    Column("artifact_version_id", String(36), nullable=False),
    Column("artifact_id", String(36), nullable=False),
    Column("run_id", String(36), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("step_run_id", "direction", "name", name="pk_metadata_step_artifacts"),
    # Lineage walks from versions to steps, and deletion asks whether a version is an input.
    Index("ix_metadata_step_artifacts_version", "artifact_version_id", "direction", "step_run_id"),
    Index("ix_metadata_step_artifacts_run", "run_id", "direction"),
)

ARTIFACT_FILTER: Mapping[str, AnyField] = {
    "name": FilterField(artifacts.c.name, "string"),
    "type": FilterField(artifacts.c.type, "string"),
    "create_time": FilterField(artifacts.c.create_time, "timestamp"),
    "update_time": FilterField(artifacts.c.update_time, "timestamp"),
    **annotation_filters("artifact", artifacts.c.id, artifacts.c.project_id),
}
ARTIFACT_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "create_time": artifacts.c.create_time,
    "name": artifacts.c.name,
}
VERSION_FILTER: Mapping[str, AnyField] = {
    "number": FilterField(artifact_versions.c.number, "int"),
    "type": FilterField(artifact_versions.c.type, "string"),
    "materializer": FilterField(artifact_versions.c.materializer, "string"),
    "content_hash": FilterField(artifact_versions.c.content_hash, "string"),
    "producer_run_id": FilterField(artifact_versions.c.producer_run_id, "string"),
    "create_time": FilterField(artifact_versions.c.create_time, "timestamp"),
    **annotation_filters("artifact_version", artifact_versions.c.id, artifact_versions.c.project_id),
}
VERSION_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "number": artifact_versions.c.number,
    "create_time": artifact_versions.c.create_time,
}


@dataclasses.dataclass(frozen=True)
class ArtifactRecord:
    """A row of metadata_artifacts."""

    id: str
    project_id: str
    name: str
    type: str
    description: str
    latest_version_number: int
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """A row of metadata_artifact_versions."""

    id: str
    project_id: str
    artifact_id: str
    number: int
    uri: str
    type: str
    materializer: str
    content_hash: str
    size_bytes: int
    producer_step_run_id: str
    producer_run_id: str
    create_time: datetime


@dataclasses.dataclass(frozen=True)
class VersionInput:
    """What a caller supplies for a new version."""

    uri: str
    type: str = ""
    materializer: str = ""
    content_hash: str = ""
    size_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class LinkRecord:
    """A row of metadata_step_artifacts."""

    step_run_id: str
    direction: str
    name: str
    artifact_version_id: str
    artifact_id: str
    run_id: str
    create_time: datetime


@dataclasses.dataclass(frozen=True)
class ListQuery:
    """Paging, filtering and ordering of a List request, as sent."""

    page_size: int = 0
    page_token: str = ""
    filter: str = ""
    order_by: str = ""


class NameTaken(Exception):
    """Another artifact of the project has this name."""


class InUse(Exception):
    """An artifact version is a step's input; its message says which."""


class LinkConflict(Exception):
    """A step already has an input/output of this name pointing elsewhere."""


def _artifact(values: Mapping[Any, Any]) -> ArtifactRecord:
    return ArtifactRecord(**{f.name: values[f.name] for f in dataclasses.fields(ArtifactRecord)})


def _version(values: Mapping[Any, Any]) -> VersionRecord:
    return VersionRecord(**{f.name: values[f.name] for f in dataclasses.fields(VersionRecord)})


def _link(values: Mapping[Any, Any]) -> LinkRecord:
    return LinkRecord(**{f.name: values[f.name] for f in dataclasses.fields(LinkRecord)})


# The statements of recording outputs (callbacks), prepared: services/kit/prepared.py.
_ARTIFACTS_BY_NAMES = Prepared(
    select(artifacts).where(
        artifacts.c.project_id == bindparam("project_id"),
        artifacts.c.name.in_(bindparam("names", expanding=True)),
    )
)
# The columns of a new version the batch gives (number and project come from the statement).
_NEW_VERSIONS = Batch(
    {
        "id": "varchar",
        "artifact_id": "varchar",
        "k": "bigint",  # the version's place among the batch's new versions of its artifact, from 0
        "uri": "varchar",
        "type": "varchar",
        "materializer": "varchar",
        "content_hash": "varchar",
        "size_bytes": "bigint",
        "producer_step_run_id": "varchar",
        "producer_run_id": "varchar",
        "create_time": "timestamptz",
    },
    prefix="v_",
)
_STORED_VERSION_COLUMNS = [name for name in _NEW_VERSIONS.columns if name != "k"]
# Numbers and inserts new versions in one statement, so the artifacts' counters (every run of a
# pipeline moves the same ones, each holding them until it commits) are held for one round trip
# and the COMMIT. The counters are locked in id order: FOR UPDATE keeps the sub-select a unit of
# its own (never merged into the join), which locks its rows sorted by id when the join first
# reads it, so two batches over the same artifacts cannot deadlock.
_NUMBER_AND_INSERT_VERSIONS = Prepared(
    text(
        "WITH moved AS (UPDATE metadata_artifacts AS a"  # noqa: S608 - fixed text, values bound
        " SET latest_version_number = a.latest_version_number + c.n"
        " FROM unnest(CAST(:ids AS varchar[]), CAST(:counts AS bigint[])) AS c(id, n)"
        " WHERE a.id = c.id AND a.id IN (SELECT id FROM metadata_artifacts"
        " WHERE project_id = :project_id AND id = ANY(CAST(:ids AS varchar[])) ORDER BY id FOR UPDATE)"
        " RETURNING a.id, a.latest_version_number - c.n AS base)"
        f" INSERT INTO metadata_artifact_versions (project_id, number, {', '.join(_STORED_VERSION_COLUMNS)})"
        " SELECT :project_id, moved.base + v.k + 1, "
        + ", ".join(f"v.{name}" for name in _STORED_VERSION_COLUMNS)
        + f" FROM {_NEW_VERSIONS.source('v')} JOIN moved ON moved.id = v.artifact_id"
        " RETURNING id, number"
    ).columns(id=String, number=BigInteger)
)
_INSERT_VERSIONS = Prepared(insert(artifact_versions))
_VERSIONS_BY_IDS = Prepared(
    select(artifact_versions).where(
        artifact_versions.c.project_id == bindparam("project_id"),
        artifact_versions.c.id.in_(bindparam("ids", expanding=True)),
    )
)
_INSERT_LINKS = Prepared(insert(step_artifacts))
_LINKS_OF_STEPS = Prepared(
    select(step_artifacts).where(
        step_artifacts.c.project_id == bindparam("project_id"),
        step_artifacts.c.direction == bindparam("direction"),
        step_artifacts.c.step_run_id.in_(bindparam("step_ids", expanding=True)),
    )
)


async def insert_artifact(conn: AsyncConnection, record: ArtifactRecord) -> None:
    """Inserts an artifact; NameTaken when the project already has one of that name."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(artifacts).values(**values_of(record)))
    except IntegrityError:
        raise NameTaken(record.name) from None


async def get_artifact(conn: AsyncConnection, project_id: str, artifact_id: str) -> ArtifactRecord | None:
    """An artifact of the project, or None."""
    row = (
        await conn.execute(
            select(artifacts).where(artifacts.c.project_id == project_id, artifacts.c.id == artifact_id)
        )
    ).first()
    return None if row is None else _artifact(row._mapping)


async def get_artifact_by_name(conn: AsyncConnection, project_id: str, name: str) -> ArtifactRecord | None:
    """An artifact of the project by name, or None."""
    row = (
        await conn.execute(
            select(artifacts).where(artifacts.c.project_id == project_id, artifacts.c.name == name)
        )
    ).first()
    return None if row is None else _artifact(row._mapping)


async def get_artifacts_by_names(
    conn: AsyncConnection, project_id: str, names: Sequence[str]
) -> dict[str, ArtifactRecord]:
    """The artifacts of the project among `names`, by name (one query)."""
    if not names:
        return {}
    rows = await _ARTIFACTS_BY_NAMES.rows(conn, {"project_id": project_id, "names": sorted(set(names))})
    return {record.name: record for record in map(_artifact, rows)}


async def list_artifacts(
    conn: AsyncConnection, project_id: str, query: ListQuery, readable: Lookup
) -> tuple[list[ArtifactRecord], str]:
    """One page of the project's artifacts the caller may read."""
    order = parse_order_by(
        query.order_by, ARTIFACT_SORTABLE, tie_breaker=artifacts.c.id, default="create_time desc"
    )
    stmt = select(artifacts).where(
        artifacts.c.project_id == project_id,
        lookup_condition(readable, artifacts.c.id, artifacts.c.project_id),
    )
    condition = parse_filter(query.filter, ARTIFACT_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(query.page_size),
        page_token=query.page_token,
        fingerprint=query_fingerprint("ListArtifacts", filter_text=query.filter, scope=project_id),
    )
    return [_artifact(row._mapping) for row in page.rows], page.next_page_token


async def update_artifact(
    conn: AsyncConnection, project_id: str, artifact_id: str, values: Mapping[str, Any], now: datetime
) -> ArtifactRecord | None:
    """Writes `values`, bumps the row version; the new record, or None when missing."""
    row = (
        await conn.execute(
            update(artifacts)
            .where(artifacts.c.project_id == project_id, artifacts.c.id == artifact_id)
            .values(**values, update_time=now, version=artifacts.c.version + 1)
            .returning(*artifacts.c)
        )
    ).first()
    return None if row is None else _artifact(row._mapping)


def _used_as_input(version_ids: Any) -> Any:
    return exists().where(
        step_artifacts.c.artifact_version_id.in_(version_ids), step_artifacts.c.direction == INPUT
    )


async def delete_artifact(conn: AsyncConnection, project_id: str, artifact_id: str) -> int:
    """Deletes an artifact, its versions and their output links (bounded statements); versions deleted.

    InUse when any version is a step's input: lineage would dangle, so nothing is deleted.
    """
    version_ids = select(artifact_versions.c.id).where(
        artifact_versions.c.project_id == project_id, artifact_versions.c.artifact_id == artifact_id
    )
    if (await conn.execute(select(_used_as_input(version_ids)))).scalar():
        raise InUse("a version of the artifact is an input of a step run")
    await conn.execute(delete(step_artifacts).where(step_artifacts.c.artifact_version_id.in_(version_ids)))
    deleted = await conn.execute(
        delete(artifact_versions).where(
            artifact_versions.c.project_id == project_id, artifact_versions.c.artifact_id == artifact_id
        )
    )
    await conn.execute(
        delete(artifacts).where(artifacts.c.project_id == project_id, artifacts.c.id == artifact_id)
    )
    return int(deleted.rowcount)


async def next_version_number(conn: AsyncConnection, project_id: str, artifact_id: str) -> int | None:
    """Takes the artifact's next version number (locking its row until commit); None when missing."""
    number = (
        await conn.execute(
            update(artifacts)
            .where(artifacts.c.project_id == project_id, artifacts.c.id == artifact_id)
            .values(latest_version_number=artifacts.c.latest_version_number + 1)
            .returning(artifacts.c.latest_version_number)
        )
    ).scalar_one_or_none()
    return None if number is None else int(number)


async def insert_numbered_versions(
    conn: AsyncConnection, project_id: str, records: Sequence[VersionRecord]
) -> list[VersionRecord]:
    """Inserts new versions of existing artifacts, numbered after each artifact's latest in the given
    order (their `number` is ignored); the versions as stored.

    The counters stay locked until the transaction ends, so numbers have no gaps
    and no repeats. On PostgreSQL one statement numbers and inserts (see above);
    SQLite has one writer at a time: one UPDATE … RETURNING, then the INSERT.
    """
    if not records:
        return []
    counts: Counter[str] = Counter()
    places = []
    for record in records:
        places.append(counts[record.artifact_id])
        counts[record.artifact_id] += 1
    ids = sorted(counts)
    if conn.dialect.name == "postgresql":
        rows = [{**values_of(record), "k": place} for record, place in zip(records, places, strict=True)]
        params = {"project_id": project_id, "ids": ids, "counts": [counts[i] for i in ids]}
        stored = await _NUMBER_AND_INSERT_VERSIONS.rows(conn, {**params, **_NEW_VERSIONS.params(rows)})
        numbers = {row["id"]: int(row["number"]) for row in stored}
        return [dataclasses.replace(record, number=numbers[record.id]) for record in records]
    step = case(counts, value=artifacts.c.id, else_=0)
    moved = await conn.execute(
        update(artifacts)
        .where(artifacts.c.project_id == project_id, artifacts.c.id.in_(ids))
        .values(latest_version_number=artifacts.c.latest_version_number + step)
        .returning(artifacts.c.id, artifacts.c.latest_version_number)
    )
    first = {row.id: int(row.latest_version_number) - counts[row.id] + 1 for row in moved}
    numbered = [
        dataclasses.replace(record, number=first[record.artifact_id] + place)
        for record, place in zip(records, places, strict=True)
    ]
    await _INSERT_VERSIONS.execute_many(conn, [values_of(record) for record in numbered])
    return numbered


async def insert_version(conn: AsyncConnection, record: VersionRecord) -> None:
    """Inserts an artifact version (its number taken with next_version_number in the same transaction)."""
    await conn.execute(insert(artifact_versions).values(**values_of(record)))


async def get_version(
    conn: AsyncConnection, project_id: str, version_id: str, artifact_id: str = ""
) -> VersionRecord | None:
    """A version of the project (and of `artifact_id` when given), or None."""
    stmt = select(artifact_versions).where(
        artifact_versions.c.project_id == project_id, artifact_versions.c.id == version_id
    )
    if artifact_id:
        stmt = stmt.where(artifact_versions.c.artifact_id == artifact_id)
    row = (await conn.execute(stmt)).first()
    return None if row is None else _version(row._mapping)


async def get_versions(
    conn: AsyncConnection, project_id: str, version_ids: Sequence[str]
) -> list[VersionRecord]:
    """The versions of the project among `version_ids` (one query)."""
    if not version_ids:
        return []
    rows = await _VERSIONS_BY_IDS.rows(conn, {"project_id": project_id, "ids": sorted(set(version_ids))})
    return [_version(row) for row in rows]


async def list_versions(
    conn: AsyncConnection, project_id: str, artifact_id: str, query: ListQuery, readable: Lookup
) -> tuple[list[VersionRecord], str]:
    """One page of an artifact's versions the caller may read."""
    order = parse_order_by(
        query.order_by, VERSION_SORTABLE, tie_breaker=artifact_versions.c.id, default="number desc"
    )
    stmt = select(artifact_versions).where(
        artifact_versions.c.project_id == project_id,
        artifact_versions.c.artifact_id == artifact_id,
        lookup_condition(readable, artifact_versions.c.id, artifact_versions.c.project_id),
    )
    condition = parse_filter(query.filter, VERSION_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(query.page_size),
        page_token=query.page_token,
        fingerprint=query_fingerprint(
            "ListArtifactVersions", filter_text=query.filter, scope=f"{project_id}/{artifact_id}"
        ),
    )
    return [_version(row._mapping) for row in page.rows], page.next_page_token


async def delete_version(conn: AsyncConnection, project_id: str, artifact_id: str, version_id: str) -> bool:
    """Deletes a version and its output link; False when missing, InUse when a step's input."""
    if await get_version(conn, project_id, version_id, artifact_id) is None:
        return False
    if (await conn.execute(select(_used_as_input([version_id])))).scalar():
        raise InUse(f"artifact version {version_id} is an input of a step run")
    await conn.execute(delete(step_artifacts).where(step_artifacts.c.artifact_version_id == version_id))
    await conn.execute(delete(artifact_versions).where(artifact_versions.c.id == version_id))
    return True


async def record_links(conn: AsyncConnection, project_id: str, links: Sequence[LinkRecord]) -> None:
    """Records step inputs/outputs; an identical one is kept, a different one is LinkConflict."""
    if not links:
        return
    step_ids = sorted({link.step_run_id for link in links})
    existing = {
        (row.step_run_id, row.direction, row.name): row.artifact_version_id
        for row in await conn.execute(
            select(step_artifacts).where(
                step_artifacts.c.project_id == project_id, step_artifacts.c.step_run_id.in_(step_ids)
            )
        )
    }
    fresh: list[LinkRecord] = []
    for link in links:
        current = existing.get((link.step_run_id, link.direction, link.name))
        if current is None:
            fresh.append(link)
        elif current != link.artifact_version_id:
            raise LinkConflict(
                f"{link.direction} {link.name!r} of step run {link.step_run_id} is already recorded"
            )
    await insert_links(conn, project_id, fresh)


async def insert_links(conn: AsyncConnection, project_id: str, links: Sequence[LinkRecord]) -> None:
    """Inserts links known to be new (one statement); LinkConflict when a concurrent writer won.

    No savepoint: a conflict ends the caller's transaction, which rolls back.
    """
    if not links:
        return
    try:
        await _INSERT_LINKS.execute_many(
            conn, [{"project_id": project_id, **values_of(link)} for link in links]
        )
    except IntegrityError:
        raise LinkConflict("an input or output of the step was recorded concurrently") from None


async def list_step_links(
    conn: AsyncConnection,
    project_id: str,
    step_run_id: str,
    direction: str,
    requested_size: int,
    page_token: str,
) -> tuple[list[LinkRecord], str]:
    """One page of a step run's links, by direction then name ('' direction: both)."""
    stmt = select(step_artifacts).where(
        step_artifacts.c.project_id == project_id, step_artifacts.c.step_run_id == step_run_id
    )
    if direction:
        stmt = stmt.where(step_artifacts.c.direction == direction)
    order = parse_order_by(
        "direction, name",
        {"direction": step_artifacts.c.direction, "name": step_artifacts.c.name},
        tie_breaker=step_artifacts.c.step_run_id,
        tie_breaker_name="step_run_id",
    )
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(requested_size),
        page_token=page_token,
        fingerprint=query_fingerprint("ListStepArtifacts", scope=f"{project_id}/{step_run_id}", d=direction),
    )
    return [_link(row._mapping) for row in page.rows], page.next_page_token


async def _links(
    conn: AsyncConnection, project_id: str, direction: str, condition: ColumnElement[bool]
) -> list[LinkRecord]:
    rows = await conn.execute(
        select(step_artifacts).where(
            step_artifacts.c.project_id == project_id, step_artifacts.c.direction == direction, condition
        )
    )
    return [_link(row._mapping) for row in rows]


async def links_of_versions(
    conn: AsyncConnection, project_id: str, version_ids: Sequence[str], direction: str
) -> list[LinkRecord]:
    """Links of these versions in one direction (one query)."""
    if not version_ids:
        return []
    in_versions = step_artifacts.c.artifact_version_id.in_(sorted(set(version_ids)))
    return await _links(conn, project_id, direction, in_versions)


async def links_of_steps(
    conn: AsyncConnection, project_id: str, step_ids: Sequence[str], direction: str
) -> list[LinkRecord]:
    """Links of these step runs in one direction (one query)."""
    if not step_ids:
        return []
    rows = await _LINKS_OF_STEPS.rows(
        conn, {"project_id": project_id, "direction": direction, "step_ids": sorted(set(step_ids))}
    )
    return [_link(row) for row in rows]


async def links_of_run(
    conn: AsyncConnection, project_id: str, run_id: str, direction: str
) -> list[LinkRecord]:
    """Links of every step of a run in one direction (one query)."""
    return await _links(conn, project_id, direction, step_artifacts.c.run_id == run_id)


async def forget_runs(conn: AsyncConnection, run_ids: Sequence[str]) -> int:
    """What deleted runs leave here: their steps' input/output links, the runs' and steps' annotations.

    The run area's deletion hook (run_store.register_run_deletion), in its transaction, before
    the step rows go; bounded statements, no loop over rows. Versions the runs produced stay
    (they may be used elsewhere); their producer ids then name a deleted run. How many links went.
    """
    result = await conn.execute(delete(step_artifacts).where(step_artifacts.c.run_id.in_(run_ids)))
    step_ids = select(step_runs.c.id).where(step_runs.c.run_id.in_(run_ids))
    await annotation_store.delete_for_targets(conn, "run", run_ids)
    await annotation_store.delete_for_targets(conn, "step", step_ids)
    return int(result.rowcount)


async def project_has_artifacts(conn: AsyncConnection, project_id: str) -> str | None:
    """'artifacts' when the project still holds one (the project delete check), else None."""
    found = (
        await conn.execute(select(artifacts.c.id).where(artifacts.c.project_id == project_id).limit(1))
    ).first()
    return None if found is None else "artifacts"


def version_ids_of_artifact(project_id: str, artifact_id: str) -> Any:
    """The ids of an artifact's versions, as a subquery (annotations are deleted with them)."""
    return select(artifact_versions.c.id).where(
        artifact_versions.c.project_id == project_id, artifact_versions.c.artifact_id == artifact_id
    )
