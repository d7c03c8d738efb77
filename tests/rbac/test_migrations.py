"""RBAC's Alembic chain: it builds exactly the store's tables, and 0003 moves "owner" bindings into
`rbac_ownerships` (and back on downgrade) without changing what anyone holds. Both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.migrations import alembic_config
from services.rbac.decisions import Decisions
from services.rbac.evaluator import Ref
from services.rbac.server import MIGRATIONS, VERSION_TABLE, migrate
from services.rbac.settings import RbacSettings
from services.rbac.store import RbacStore, metadata, ownerships, role_bindings
from tests.rbac.conftest import Ticker

ORG = "org-1"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _differences(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return [d for d in compare_metadata(context, metadata) if VERSION_TABLE not in repr(d)]


def _to(connection: Connection, target: str, *, down: bool = False) -> None:
    config = alembic_config(MIGRATIONS, version_table=VERSION_TABLE, connection=connection)
    (command.downgrade if down else command.upgrade)(config, target)


def _binding(
    binding_id: str, kind: str, subject: str, role_id: str, scope: Ref, created: datetime
) -> dict[str, Any]:
    return {
        "id": binding_id,
        "organization_id": ORG,
        "subject_kind": kind,
        "subject_id": subject,
        "role_id": role_id,
        "workspace_id": scope.workspace_id,
        "project_id": scope.project_id,
        "resource_type": scope.resource_type,
        "resource_id": scope.resource_id,
        "level": scope.level,
        "create_time": created,
        "revision": 1,
    }


async def test_the_migrations_match_the_store_tables(engine: AsyncEngine) -> None:
    await migrate(engine, RbacSettings())

    async with engine.connect() as conn:
        assert await conn.run_sync(_differences) == []


async def test_owner_bindings_become_ownerships_and_grant_what_they_granted(engine: AsyncEngine) -> None:
    run_1 = Ref(ORG, "ws-1", "p-1", "run", "r-1")
    run_2 = Ref(ORG, "ws-1", "p-1", "run", "r-2")
    pipeline = Ref(ORG, "ws-1", "p-1", "pipeline", "pl-1")
    rows = [
        _binding("b-1", "user", "alice", "owner", run_1, T0),
        # A second owner bound later through CreateRoleBinding: stays a share of the owner role.
        _binding("b-0", "user", "bob", "owner", run_1, T0 + timedelta(seconds=1)),
        _binding("b-3", "team", "team-1", "owner", run_2, T0),  # teams never own: stays a binding
        _binding("b-4", "service_account", "robot", "owner", pipeline, T0),
        _binding("b-5", "user", "alice", "project_editor", Ref(ORG, "ws-1", "p-1"), T0),
    ]
    async with engine.begin() as conn:
        await conn.run_sync(_to, "0002")
        await conn.execute(insert(role_bindings), rows)

    await migrate(engine, RbacSettings())

    async with engine.connect() as conn:
        moved = (await conn.execute(select(ownerships).order_by(ownerships.c.id))).all()
        kept = (await conn.execute(select(role_bindings.c.id).order_by(role_bindings.c.id))).scalars().all()
    assert [
        (r.id, r.resource_type, r.resource_id, r.owner_kind, r.owner_id, r.project_id) for r in moved
    ] == [
        ("b-1", "run", "r-1", "user", "alice", "p-1"),
        ("b-4", "pipeline", "pl-1", "service_account", "robot", "p-1"),
    ]
    assert kept == ["b-0", "b-3", "b-5"]
    decisions = Decisions(RbacStore(engine), monotonic=Ticker())
    for subject, permission, ref in (
        (("user", "alice"), ("run", "share"), run_1),
        (("user", "bob"), ("run", "share"), run_1),
        (("service_account", "robot"), ("pipeline", "share"), pipeline),
    ):
        assert (await decisions.check(subject, permission, ref))[0], subject

    async with engine.begin() as conn:
        await conn.run_sync(_to, "0002", down=True)
        back = (
            await conn.execute(
                select(role_bindings.c.id, role_bindings.c.role_id, role_bindings.c.level).order_by(
                    role_bindings.c.id
                )
            )
        ).all()
    assert [tuple(row) for row in back] == [
        ("b-0", "owner", "resource"),
        ("b-1", "owner", "resource"),
        ("b-3", "owner", "resource"),
        ("b-4", "owner", "resource"),
        ("b-5", "project_editor", "project"),
    ]
