"""Tables and queries of models, model versions (with stages) and their links; no gRPC, no clock, no policy.

Every query names the project. Version numbers come from a counter on the
model row (UPDATE ... RETURNING, as for artifacts). Promotion first takes the
model row's lock (`lock_model`), so promotions of one model run one after the
other; the partial unique index "one PRODUCTION version per model" makes a
second production version impossible even for a writer that skipped the lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Integer,
    Select,
    String,
    Table,
    UniqueConstraint,
    and_,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.db import UtcDateTime
from services.kit.filtering import AnyField, FilterField, parse_filter
from services.kit.pagination import page_size, paginate, parse_order_by, query_fingerprint
from services.kit.rbac_lookup import Lookup, lookup_condition
from services.metadata.annotation_store import annotation_filters
from services.metadata.store import metadata

NONE = "none"
STAGING = "staging"
PRODUCTION = "production"
ARCHIVED = "archived"
STAGES = (NONE, STAGING, PRODUCTION, ARCHIVED)

models = Table(
    "metadata_models",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    # The number of the newest version: the counter version numbers come from.
    Column("latest_version_number", BigInteger, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_metadata_models_project_name"),
    Index("ix_metadata_models_project_create", "project_id", "create_time", "id"),
)

model_versions = Table(
    "metadata_model_versions",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("model_id", String(36), nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("description", String(1000), nullable=False),
    Column("stage", String(16), nullable=False),
    Column("stage_time", UtcDateTime, nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("model_id", "number", name="uq_metadata_model_versions_number"),
    Index("ix_metadata_model_versions_project_model", "project_id", "model_id", "number"),
)
# At most one PRODUCTION version per model, whatever the code above does.
Index(
    "uq_metadata_model_versions_production",
    model_versions.c.model_id,
    unique=True,
    postgresql_where=model_versions.c.stage == PRODUCTION,
    sqlite_where=model_versions.c.stage == PRODUCTION,
)

model_version_links = Table(
    "metadata_model_version_links",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), nullable=False),
    Column("model_id", String(36), nullable=False),
    Column("model_version_id", String(36), nullable=False),
    # "artifact_version" or "run".
    Column("target_kind", String(16), nullable=False),
    Column("target_id", String(36), nullable=False),
    Column("name", String(100), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    UniqueConstraint(
        "model_version_id", "target_kind", "target_id", "name", name="uq_metadata_model_version_links_target"
    ),
    Index("ix_metadata_model_version_links_version", "model_version_id", "create_time", "id"),
    Index("ix_metadata_model_version_links_model", "model_id"),
)

_T = TypeVar("_T")

_production = model_versions.alias("production")

MODEL_FILTER: Mapping[str, AnyField] = {
    "name": FilterField(models.c.name, "string"),
    "create_time": FilterField(models.c.create_time, "timestamp"),
    "update_time": FilterField(models.c.update_time, "timestamp"),
    **annotation_filters("model", models.c.id, models.c.project_id),
}
MODEL_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "create_time": models.c.create_time,
    "name": models.c.name,
}
VERSION_FILTER: Mapping[str, AnyField] = {
    "number": FilterField(model_versions.c.number, "int"),
    "stage": FilterField(model_versions.c.stage, "enum", {stage.upper(): stage for stage in STAGES}),
    "create_time": FilterField(model_versions.c.create_time, "timestamp"),
    "stage_time": FilterField(model_versions.c.stage_time, "timestamp"),
    **annotation_filters("model_version", model_versions.c.id, model_versions.c.project_id),
}
VERSION_SORTABLE: Mapping[str, ColumnElement[Any]] = {
    "number": model_versions.c.number,
    "create_time": model_versions.c.create_time,
    "stage_time": model_versions.c.stage_time,
}


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A row of metadata_models, with the id of its production version ('' when none)."""

    id: str
    project_id: str
    name: str
    description: str
    latest_version_number: int
    create_time: datetime
    update_time: datetime
    version: int
    production_version_id: str = ""


@dataclasses.dataclass(frozen=True)
class ModelVersionRecord:
    """A row of metadata_model_versions."""

    id: str
    project_id: str
    model_id: str
    number: int
    description: str
    stage: str
    stage_time: datetime
    create_time: datetime
    update_time: datetime
    version: int


@dataclasses.dataclass(frozen=True)
class LinkRecord:
    """A row of metadata_model_version_links."""

    id: str
    project_id: str
    model_id: str
    model_version_id: str
    target_kind: str
    target_id: str
    name: str
    create_time: datetime


class NameTaken(Exception):
    """Another model of the project has this name."""


class LinkTaken(Exception):
    """The version already has this link."""


def _fields(cls: type[_T], row: Row[Any]) -> _T:
    mapping = row._mapping
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: mapping[name] for name in names if name in mapping})


def _model_select() -> Select[Any]:
    # The production version comes with the model in one query (the partial unique index keeps it single).
    return select(*models.c, _production.c.id.label("production_version_id")).select_from(
        models.outerjoin(
            _production, and_(_production.c.model_id == models.c.id, _production.c.stage == PRODUCTION)
        )
    )


def _model(row: Row[Any]) -> ModelRecord:
    record = _fields(ModelRecord, row)
    return dataclasses.replace(record, production_version_id=row._mapping["production_version_id"] or "")


async def insert_model(conn: AsyncConnection, record: ModelRecord) -> None:
    """Inserts a model; NameTaken when the project already has one of that name."""
    values = dataclasses.asdict(record)
    values.pop("production_version_id")
    try:
        async with conn.begin_nested():
            await conn.execute(insert(models).values(**values))
    except IntegrityError:
        raise NameTaken(record.name) from None


async def get_model(conn: AsyncConnection, project_id: str, model_id: str) -> ModelRecord | None:
    """A model of the project, or None."""
    row = (
        await conn.execute(_model_select().where(models.c.project_id == project_id, models.c.id == model_id))
    ).first()
    return None if row is None else _model(row)


async def list_models(
    conn: AsyncConnection, project_id: str, query: Any, readable: Lookup
) -> tuple[list[ModelRecord], str]:
    """One page of the project's models the caller may read (`query`: an artifact_store.ListQuery)."""
    order = parse_order_by(
        query.order_by, MODEL_SORTABLE, tie_breaker=models.c.id, default="create_time desc"
    )
    stmt = _model_select().where(
        models.c.project_id == project_id, lookup_condition(readable, models.c.id, models.c.project_id)
    )
    condition = parse_filter(query.filter, MODEL_FILTER)
    if condition is not None:
        stmt = stmt.where(condition)
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(query.page_size),
        page_token=query.page_token,
        fingerprint=query_fingerprint("ListModels", filter_text=query.filter, scope=project_id),
    )
    return [_model(row) for row in page.rows], page.next_page_token


async def update_model(
    conn: AsyncConnection,
    project_id: str,
    model_id: str,
    values: Mapping[str, Any],
    now: datetime,
    *,
    expected_version: int | None = None,
) -> bool:
    """Writes `values`, bumps the row version (if still at `expected_version`, when given); False if not."""
    where = [models.c.project_id == project_id, models.c.id == model_id]
    if expected_version is not None:
        where.append(models.c.version == expected_version)
    result = await conn.execute(
        update(models).where(*where).values(**values, update_time=now, version=models.c.version + 1)
    )
    return bool(result.rowcount)


async def lock_model(conn: AsyncConnection, project_id: str, model_id: str, now: datetime) -> bool:
    """Takes the model row's write lock until commit (a stage change changes the model); False if missing."""
    return await update_model(conn, project_id, model_id, {}, now)


async def delete_model(conn: AsyncConnection, project_id: str, model_id: str) -> int:
    """Deletes a model, its versions and their links (three bounded statements); versions deleted."""
    await conn.execute(
        delete(model_version_links).where(
            model_version_links.c.project_id == project_id, model_version_links.c.model_id == model_id
        )
    )
    deleted = await conn.execute(
        delete(model_versions).where(
            model_versions.c.project_id == project_id, model_versions.c.model_id == model_id
        )
    )
    await conn.execute(delete(models).where(models.c.project_id == project_id, models.c.id == model_id))
    return int(deleted.rowcount)


def version_ids_of_model(project_id: str, model_id: str) -> Select[Any]:
    """The ids of a model's versions, as a subquery (annotations are deleted with them)."""
    return select(model_versions.c.id).where(
        model_versions.c.project_id == project_id, model_versions.c.model_id == model_id
    )


async def next_version_number(
    conn: AsyncConnection, project_id: str, model_id: str, now: datetime
) -> int | None:
    """Takes the model's next version number (locking its row until commit); None when missing."""
    number = (
        await conn.execute(
            update(models)
            .where(models.c.project_id == project_id, models.c.id == model_id)
            .values(latest_version_number=models.c.latest_version_number + 1, update_time=now)
            .returning(models.c.latest_version_number)
        )
    ).scalar_one_or_none()
    return None if number is None else int(number)


async def insert_version(conn: AsyncConnection, record: ModelVersionRecord) -> None:
    """Inserts a model version (numbered with next_version_number in the same transaction)."""
    await conn.execute(insert(model_versions).values(**dataclasses.asdict(record)))


async def get_version(
    conn: AsyncConnection, project_id: str, model_id: str, version_id: str
) -> ModelVersionRecord | None:
    """A version of a model of the project, or None."""
    row = (
        await conn.execute(
            select(model_versions).where(
                model_versions.c.project_id == project_id,
                model_versions.c.model_id == model_id,
                model_versions.c.id == version_id,
            )
        )
    ).first()
    return None if row is None else _fields(ModelVersionRecord, row)


async def list_versions(
    conn: AsyncConnection, project_id: str, model_id: str, query: Any, readable: Lookup
) -> tuple[list[ModelVersionRecord], str]:
    """One page of a model's versions the caller may read."""
    order = parse_order_by(
        query.order_by, VERSION_SORTABLE, tie_breaker=model_versions.c.id, default="number desc"
    )
    stmt = select(model_versions).where(
        model_versions.c.project_id == project_id,
        model_versions.c.model_id == model_id,
        lookup_condition(readable, model_versions.c.id, model_versions.c.project_id),
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
            "ListModelVersions", filter_text=query.filter, scope=f"{project_id}/{model_id}"
        ),
    )
    return [_fields(ModelVersionRecord, row) for row in page.rows], page.next_page_token


async def update_version(
    conn: AsyncConnection,
    record: ModelVersionRecord,
    values: Mapping[str, Any],
    now: datetime,
    *,
    expected_version: int | None,
) -> ModelVersionRecord | None:
    """Writes `values` (if still at `expected_version`, when given); the new row, None if it changed."""
    where = [model_versions.c.project_id == record.project_id, model_versions.c.id == record.id]
    if expected_version is not None:
        where.append(model_versions.c.version == expected_version)
    row = (
        await conn.execute(
            update(model_versions)
            .where(*where)
            .values(**values, update_time=now, version=model_versions.c.version + 1)
            .returning(*model_versions.c)
        )
    ).first()
    return None if row is None else _fields(ModelVersionRecord, row)


async def set_stage(
    conn: AsyncConnection, project_id: str, model_id: str, version_id: str, stage: str, now: datetime
) -> ModelVersionRecord:
    """Moves one version to `stage` (the caller holds the model lock and checked the version exists)."""
    row = (
        await conn.execute(
            update(model_versions)
            .where(
                model_versions.c.project_id == project_id,
                model_versions.c.model_id == model_id,
                model_versions.c.id == version_id,
            )
            .values(stage=stage, stage_time=now, update_time=now, version=model_versions.c.version + 1)
            .returning(*model_versions.c)
        )
    ).one()
    return _fields(ModelVersionRecord, row)


async def demote_production(
    conn: AsyncConnection, project_id: str, model_id: str, to_stage: str, now: datetime
) -> ModelVersionRecord | None:
    """Moves the model's PRODUCTION version (if any) to `to_stage`; the demoted version."""
    row = (
        await conn.execute(
            update(model_versions)
            .where(
                model_versions.c.project_id == project_id,
                model_versions.c.model_id == model_id,
                model_versions.c.stage == PRODUCTION,
            )
            .values(stage=to_stage, stage_time=now, update_time=now, version=model_versions.c.version + 1)
            .returning(*model_versions.c)
        )
    ).first()
    return None if row is None else _fields(ModelVersionRecord, row)


async def delete_version(conn: AsyncConnection, project_id: str, model_id: str, version_id: str) -> bool:
    """Deletes a model version and its links; False when missing."""
    await conn.execute(
        delete(model_version_links).where(
            model_version_links.c.project_id == project_id,
            model_version_links.c.model_version_id == version_id,
        )
    )
    result = await conn.execute(
        delete(model_versions).where(
            model_versions.c.project_id == project_id,
            model_versions.c.model_id == model_id,
            model_versions.c.id == version_id,
        )
    )
    return bool(result.rowcount)


async def insert_link(conn: AsyncConnection, record: LinkRecord) -> None:
    """Inserts a link; LinkTaken when the version already has the same one."""
    try:
        async with conn.begin_nested():
            await conn.execute(insert(model_version_links).values(**dataclasses.asdict(record)))
    except IntegrityError:
        raise LinkTaken(record.target_id) from None


async def list_links(
    conn: AsyncConnection, project_id: str, version_id: str, requested_size: int, page_token: str
) -> tuple[list[LinkRecord], str]:
    """One page of a model version's links, oldest first."""
    order = parse_order_by(
        "",
        {"create_time": model_version_links.c.create_time},
        tie_breaker=model_version_links.c.id,
        default="create_time",
    )
    stmt = select(model_version_links).where(
        model_version_links.c.project_id == project_id, model_version_links.c.model_version_id == version_id
    )
    page = await paginate(
        conn,
        stmt,
        order=order,
        page_size=page_size(requested_size),
        page_token=page_token,
        fingerprint=query_fingerprint("ListModelVersionLinks", scope=f"{project_id}/{version_id}"),
    )
    return [_fields(LinkRecord, row) for row in page.rows], page.next_page_token


async def delete_link(conn: AsyncConnection, project_id: str, version_id: str, link_id: str) -> bool:
    """Deletes one link of a version; False when missing."""
    result = await conn.execute(
        delete(model_version_links).where(
            model_version_links.c.project_id == project_id,
            model_version_links.c.model_version_id == version_id,
            model_version_links.c.id == link_id,
        )
    )
    return bool(result.rowcount)


async def project_has_models(conn: AsyncConnection, project_id: str) -> str | None:
    """'models' when the project still holds one (the project delete check), else None."""
    found = (
        await conn.execute(select(models.c.id).where(models.c.project_id == project_id).limit(1))
    ).first()
    return None if found is None else "models"
