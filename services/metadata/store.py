"""Tables and the transaction of the metadata service (SQLAlchemy Core).

`metadata` is the one MetaData of the service: every `services/metadata`
store module defines its tables on it (pipelines and runs, artifacts and
models in their own modules) and takes the `AsyncConnection` of
`MetadataStore.transaction()` so one transaction spans them. No gRPC, no
clock, no policy here.

One workspace per server: rows carry no workspace id (the server answers
NOT_FOUND for any other workspace before reaching the store); project-level
rows carry their project id and every query names it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    delete,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.kit import idempotency as kit_idempotency
from services.kit.db import UtcDateTime
from services.kit.filtering import FilterField

metadata = MetaData()

# The identity of this workspace server (one row): learnt from the registry, kept for restarts
# during a control-plane outage.
workspace = Table(
    "metadata_workspace",
    metadata,
    Column("workspace_id", String(36), primary_key=True),
    Column("organization_id", String(64), nullable=False),
    Column("register_time", UtcDateTime, nullable=False),
)

projects = Table(
    "metadata_projects",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("display_name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("name", name="uq_metadata_projects_name"),
    Index("ix_metadata_projects_create", "create_time", "id"),
)

components = Table(
    "metadata_components",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    # ORCHESTRATOR, ARTIFACT_STORE, ... (the proto enum's names).
    Column("type", String(32), nullable=False),
    Column("flavor", String(64), nullable=False),
    # The flavor-validated configuration (a JSON object); never a secret (connector_id points at those).
    Column("configuration", JSON, nullable=False),
    # Id of a service connector in the credentials service ('' for none).
    Column("connector_id", String(64), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("type", "name", name="uq_metadata_components_type_name"),
    Index("ix_metadata_components_create", "create_time", "id"),
)

stacks = Table(
    "metadata_stacks",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("name", name="uq_metadata_stacks_name"),
    Index("ix_metadata_stacks_create", "create_time", "id"),
)

# One component per type per stack; the component index answers "is it used by a stack?".
stack_components = Table(
    "metadata_stack_components",
    metadata,
    Column("stack_id", String(36), ForeignKey("metadata_stacks.id", ondelete="CASCADE"), primary_key=True),
    Column("type", String(32), primary_key=True),
    # RESTRICT: a component a stack uses cannot be deleted, even by a concurrent transaction.
    Column("component_id", String(36), ForeignKey("metadata_components.id"), nullable=False),
    Index("ix_metadata_stack_components_component", "component_id"),
)

code_repositories = Table(
    "metadata_code_repositories",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("project_id", String(36), ForeignKey("metadata_projects.id"), nullable=False),
    Column("name", String(100), nullable=False),
    # GITHUB, GITLAB, ... (the proto enum's names).
    Column("type", String(32), nullable=False),
    Column("url", String(2048), nullable=False),
    # Id of a secret or service connector holding the access credentials ('' for none); never the secret.
    Column("credentials_ref", String(256), nullable=False),
    Column("description", String(1000), nullable=False),
    Column("create_time", UtcDateTime, nullable=False),
    Column("update_time", UtcDateTime, nullable=False),
    Column("version", Integer, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_metadata_code_repositories_project_name"),
    Index("ix_metadata_code_repositories_project_create", "project_id", "create_time", "id"),
)

idempotency = kit_idempotency.idempotency_table(metadata, "metadata_request_ids")


@dataclass(frozen=True)
class RequestKey:
    """A request's idempotency key in this service's table; without a request id both calls do nothing."""

    method: str
    principal: str
    request_id: str

    async def recall(self, conn: AsyncConnection) -> bytes | None:
        """The first answer to this request, or None when it is new (or carries no request id)."""
        if not self.request_id:
            return None
        return await kit_idempotency.recall(
            conn, idempotency, method=self.method, principal=self.principal, request_id=self.request_id
        )

    async def remember(self, conn: AsyncConnection, response: bytes, now: datetime) -> None:
        """Keeps the answer, in the caller's transaction."""
        if self.request_id:
            await kit_idempotency.remember(
                conn,
                idempotency,
                method=self.method,
                principal=self.principal,
                request_id=self.request_id,
                response=response,
                now=now,
            )


# "Does this project still hold anything?" checks the other store modules register (pipelines,
# runs, artifacts, models): each answers the name of what it found, or None. Deleting a project
# runs them all in the delete's transaction.
ProjectContentCheck = Callable[[AsyncConnection, str], Awaitable[str | None]]
PROJECT_CONTENT_CHECKS: list[ProjectContentCheck] = []


def register_project_content_check(check: ProjectContentCheck) -> ProjectContentCheck:
    """Adds a check run before a project is deleted (usable as a decorator)."""
    if check not in PROJECT_CONTENT_CHECKS:
        PROJECT_CONTENT_CHECKS.append(check)
    return check


class MetadataTx:
    """One open transaction; `conn` is shared by every metadata store module."""

    def __init__(self, conn: AsyncConnection) -> None:
        self.conn = conn


class MetadataStore:
    """Opens transactions on the service's engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        # The same pool; its connections are in autocommit while lent out (see `read`).
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[MetadataTx]:
        """A transaction: committed when the block ends normally, rolled back on an exception."""
        async with self.engine.begin() as conn:
            yield MetadataTx(conn)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[MetadataTx]:
        """A connection for ONE read statement, outside a transaction: on PostgreSQL no BEGIN and
        COMMIT round trips around it. A single statement sees one snapshot either way (READ
        COMMITTED); anything that reads twice or writes takes `transaction`."""
        async with self._autocommit.connect() as conn:
            yield MetadataTx(conn)


# Filterable and sortable fields of the lists (AIP-160 / AIP-132 allow-lists).
PROJECT_FILTERS: dict[str, FilterField] = {
    "name": FilterField(projects.c.name, "string"),
    "display_name": FilterField(projects.c.display_name, "string"),
    "create_time": FilterField(projects.c.create_time, "timestamp"),
}
PROJECT_SORTABLE: dict[str, ColumnElement[Any]] = {
    "create_time": projects.c.create_time,
    "name": projects.c.name,
}
STACK_SORTABLE: dict[str, ColumnElement[Any]] = {"create_time": stacks.c.create_time, "name": stacks.c.name}
COMPONENT_SORTABLE: dict[str, ColumnElement[Any]] = {
    "create_time": components.c.create_time,
    "name": components.c.name,
}
CODE_REPOSITORY_SORTABLE: dict[str, ColumnElement[Any]] = {
    "create_time": code_repositories.c.create_time,
    "name": code_repositories.c.name,
}


async def project_exists(conn: AsyncConnection, project_id: str) -> bool:
    """Whether the project exists (project-level creates check it in their transaction)."""
    found = await conn.execute(select(projects.c.id).where(projects.c.id == project_id))
    return found.first() is not None


async def project_content(conn: AsyncConnection, project_id: str) -> str | None:
    """What the project still holds (e.g. "code repositories"), or None when it is empty."""
    found = await conn.execute(
        select(code_repositories.c.id).where(code_repositories.c.project_id == project_id).limit(1)
    )
    if found.first() is not None:
        return "code repositories"
    for check in PROJECT_CONTENT_CHECKS:
        held = await check(conn, project_id)
        if held is not None:
            return held
    return None


async def stack_component_ids(
    conn: AsyncConnection, stack_ids: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """(type, component id) pairs of each stack, in one query."""
    result: dict[str, list[tuple[str, str]]] = {stack_id: [] for stack_id in stack_ids}
    if not stack_ids:
        return result
    rows = await conn.execute(
        select(stack_components.c.stack_id, stack_components.c.type, stack_components.c.component_id).where(
            stack_components.c.stack_id.in_(stack_ids)
        )
    )
    for row in rows:
        result[row.stack_id].append((row.type, row.component_id))
    return result


async def set_stack_components(conn: AsyncConnection, stack_id: str, members: list[tuple[str, str]]) -> None:
    """Replaces the (type, component id) pairs of a stack."""
    await conn.execute(delete(stack_components).where(stack_components.c.stack_id == stack_id))
    if members:
        await conn.execute(
            insert(stack_components),
            [{"stack_id": stack_id, "type": type_, "component_id": cid} for type_, cid in members],
        )


async def stacks_using(conn: AsyncConnection, component_id: str) -> list[str]:
    """Ids of the stacks that use a component (at most 10, for the error message)."""
    rows = await conn.execute(
        select(stack_components.c.stack_id).where(stack_components.c.component_id == component_id).limit(10)
    )
    return [row.stack_id for row in rows]


async def components_by_id(conn: AsyncConnection, component_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The components with these ids, by id (missing ids are absent)."""
    if not component_ids:
        return {}
    rows = await conn.execute(select(components).where(components.c.id.in_(component_ids)))
    return {row.id: dict(row._mapping) for row in rows}
