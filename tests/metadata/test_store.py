"""The metadata store on SQLite and PostgreSQL: migrations, versioned rows, constraints, project emptiness."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import inspect, true
from sqlalchemy.ext.asyncio import AsyncConnection

from services.metadata import rows
from services.metadata.identity import WorkspaceIdentity, load_identity, save_identity
from services.metadata.store import (
    PROJECT_CONTENT_CHECKS,
    PROJECT_FILTERS,
    PROJECT_SORTABLE,
    MetadataStore,
    code_repositories,
    components,
    project_content,
    projects,
    register_project_content_check,
    set_stack_components,
    stacks,
    stacks_using,
)
from tests.clock import ManualClock

CLOCK = ManualClock()


def _project(name: str) -> dict[str, Any]:
    now = CLOCK.now()
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "display_name": "",
        "description": "",
        "create_time": now,
        "update_time": now,
        "version": 1,
    }


def _component(name: str, type_: str = "ORCHESTRATOR") -> dict[str, Any]:
    now = CLOCK.now()
    return {
        "id": str(uuid.uuid4()),
        "name": name,
        "type": type_,
        "flavor": "local",
        "configuration": {"nested": {"k": [1, "two"]}},
        "connector_id": "",
        "description": "",
        "create_time": now,
        "update_time": now,
        "version": 1,
    }


async def test_migrations_create_every_table(metadata_store: MetadataStore) -> None:
    async with metadata_store.engine.connect() as conn:
        names = await conn.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert {
        "metadata_workspace",
        "metadata_projects",
        "metadata_components",
        "metadata_stacks",
        "metadata_stack_components",
        "metadata_code_repositories",
        "metadata_request_ids",
        "metadata_alembic_version",
    } <= names


async def test_identity_is_one_row(metadata_store: MetadataStore) -> None:
    async with metadata_store.transaction() as tx:
        assert await load_identity(tx.conn) is None
        await save_identity(tx.conn, WorkspaceIdentity("org-1", "ws-1"), CLOCK)
        await save_identity(tx.conn, WorkspaceIdentity("org-1", "ws-1"), CLOCK)
    async with metadata_store.transaction() as tx:
        assert await load_identity(tx.conn) == WorkspaceIdentity("org-1", "ws-1")


async def test_versioned_update_and_unique_names(metadata_store: MetadataStore) -> None:
    first, second = _project("a"), _project("b")
    async with metadata_store.transaction() as tx:
        await rows.insert_row(tx.conn, projects, first)
        await rows.insert_row(tx.conn, projects, second)
    with pytest.raises(rows.Conflict):
        async with metadata_store.transaction() as tx:
            await rows.insert_row(tx.conn, projects, {**_project("a")})
    with pytest.raises(rows.Conflict):
        async with metadata_store.transaction() as tx:
            await rows.update_row(tx.conn, projects, second["id"], 1, {"name": "a"})
    async with metadata_store.transaction() as tx:
        updated = await rows.update_row(tx.conn, projects, first["id"], 1, {"description": "d"})
        stale = await rows.update_row(tx.conn, projects, first["id"], 1, {"description": "e"})
    assert updated is not None
    assert (updated["description"], updated["version"]) == ("d", 2)
    assert stale is None
    async with metadata_store.transaction() as tx:
        assert not await rows.delete_row(tx.conn, projects, first["id"], 1)
        assert await rows.delete_row(tx.conn, projects, first["id"], 2)
        assert await rows.get_row(tx.conn, projects, first["id"]) is None


async def test_json_configuration_round_trips(metadata_store: MetadataStore) -> None:
    component = _component("runner")
    async with metadata_store.transaction() as tx:
        await rows.insert_row(tx.conn, components, component)
        stored = await rows.get_row(tx.conn, components, component["id"])
    assert stored is not None
    assert stored["configuration"] == {"nested": {"k": [1, "two"]}}


async def test_a_component_a_stack_uses_cannot_be_deleted(metadata_store: MetadataStore) -> None:
    component = _component("runner")
    now = CLOCK.now()
    stack: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "name": "s",
        "description": "",
        "create_time": now,
        "update_time": now,
    }
    async with metadata_store.transaction() as tx:
        await rows.insert_row(tx.conn, components, component)
        await rows.insert_row(tx.conn, stacks, {**stack, "version": 1})
        await set_stack_components(tx.conn, stack["id"], [("ORCHESTRATOR", component["id"])])
        assert await stacks_using(tx.conn, component["id"]) == [stack["id"]]
    # The foreign key refuses it even when the application check is skipped (a concurrent stack).
    with pytest.raises(rows.InUse):
        async with metadata_store.transaction() as tx:
            await rows.delete_row(tx.conn, components, component["id"], 1)
    async with metadata_store.transaction() as tx:
        assert await rows.delete_row(tx.conn, stacks, stack["id"], 1)  # its memberships go with it
        assert await stacks_using(tx.conn, component["id"]) == []
        assert await rows.delete_row(tx.conn, components, component["id"], 1)


async def test_project_content_checks_run_before_delete(metadata_store: MetadataStore) -> None:
    project = _project("p")
    async with metadata_store.transaction() as tx:
        await rows.insert_row(tx.conn, projects, project)
        assert await project_content(tx.conn, project["id"]) is None

    async def holds_pipelines(conn: AsyncConnection, project_id: str) -> str | None:
        return "pipelines" if project_id == project["id"] else None

    register_project_content_check(holds_pipelines)
    try:
        async with metadata_store.transaction() as tx:
            assert await project_content(tx.conn, project["id"]) == "pipelines"
    finally:
        PROJECT_CONTENT_CHECKS.remove(holds_pipelines)
    now = CLOCK.now()
    repository = {
        "id": str(uuid.uuid4()),
        "project_id": project["id"],
        "name": "r",
        "type": "GIT",
        "url": "https://example.test/r.git",
        "credentials_ref": "",
        "description": "",
        "create_time": now,
        "update_time": now,
        "version": 1,
    }
    async with metadata_store.transaction() as tx:
        await rows.insert_row(tx.conn, code_repositories, repository)
        assert await project_content(tx.conn, project["id"]) == "code repositories"
    with pytest.raises(rows.InUse):
        async with metadata_store.transaction() as tx:
            await rows.delete_row(tx.conn, projects, project["id"], 1)


async def test_keyset_pages_cover_every_visible_row_once(metadata_store: MetadataStore) -> None:
    made = [_project(f"p{index:02d}") for index in range(7)]
    async with metadata_store.transaction() as tx:
        for project in made:
            await rows.insert_row(tx.conn, projects, project)
    seen: list[str] = []
    token = ""
    while True:
        async with metadata_store.transaction() as tx:
            page, token = await rows.list_rows(
                tx.conn,
                projects,
                rows.ListQuery(page_size=3, page_token=token, order_by="name desc", filter='name != "p03"'),
                method="ListProjects",
                filter_fields=PROJECT_FILTERS,
                sortable=PROJECT_SORTABLE,
                visible=true(),
            )
        seen.extend(row["name"] for row in page)
        if not token:
            break
    assert seen == [f"p{index:02d}" for index in (6, 5, 4, 2, 1, 0)]


async def _server_in_transaction(conn: AsyncConnection) -> bool:
    """Whether the database itself has a transaction open on this connection (PostgreSQL's
    ReadyForQuery status as asyncpg reports it; SQLite's own flag)."""
    raw = await conn.get_raw_connection()
    driver = raw.dbapi_connection
    assert driver is not None
    if conn.dialect.name == "postgresql":
        return bool(driver._connection.is_in_transaction())
    return bool(driver._connection.in_transaction)


async def test_a_read_runs_outside_a_transaction_and_leaves_the_pool_transactional(
    metadata_store: MetadataStore,
) -> None:
    project = _project("read-path")
    async with metadata_store.transaction() as tx:
        await tx.conn.execute(projects.insert().values(project))
        assert await _server_in_transaction(tx.conn)
    async with metadata_store.read() as tx:
        found = (await tx.conn.execute(projects.select().where(projects.c.id == project["id"]))).first()
        # No BEGIN was sent: the read's statement was its own (autocommitted) transaction.
        assert not await _server_in_transaction(tx.conn)
    assert found is not None
    assert found.name == "read-path"
    # The connection went back to the pool in its usual mode: a transaction after it is one.
    async with metadata_store.transaction() as tx:
        await tx.conn.execute(projects.update().values(description="after the read"))
        assert await _server_in_transaction(tx.conn)
