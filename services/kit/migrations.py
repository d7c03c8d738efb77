"""Applies a service's Alembic migrations, at start-up or from a migrate command.

Each service keeps its own `migrations/` folder (env.py + versions/) and its own
version table; no alembic.ini is needed because the configuration is built here.
A service's `migrations/env.py` is one call::

    from services.kit.migrations import run_env
    from services.runs.store import metadata

    run_env(metadata)

`upgrade_to_head` runs every pending revision in ONE transaction on the
connection it hands to env.py (PostgreSQL has transactional DDL, so a failed
migration leaves nothing half-applied). On PostgreSQL it first takes a
transaction-scoped advisory lock keyed by the schema and version table, so
replicas starting together apply each revision once: the others wait, then
find the database at head. The `schema` argument applies to PostgreSQL only
(SQLite has one namespace per file, like `services.kit.db.create_engine`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import Connection, MetaData, func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

# Identifiers are interpolated into DDL (CREATE SCHEMA, SET search_path), so only plain names pass.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def alembic_config(
    script_location: str | Path,
    *,
    version_table: str = "alembic_version",
    schema: str = "",
    connection: Connection | None = None,
) -> Config:
    """An Alembic configuration built in code, for `alembic.command` calls (revision, history, ...)."""
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.attributes["version_table"] = version_table
    config.attributes["version_table_schema"] = schema or None
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def advisory_lock_key(version_table: str, schema: str = "") -> int:
    """The signed 64-bit PostgreSQL advisory lock key that serializes upgrades of one version table."""
    digest = hashlib.sha256(f"keel-migrations:{schema}.{version_table}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def upgrade_to_head(
    engine: AsyncEngine,
    script_location: str | Path,
    *,
    version_table: str = "alembic_version",
    schema: str = "",
) -> None:
    """Applies every pending revision under `script_location`; a no-op when already at head."""
    if not _IDENTIFIER.fullmatch(version_table):
        raise ValueError(f"invalid version table name: {version_table!r}")
    if schema and not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"invalid schema name: {schema!r}")
    async with engine.begin() as conn:
        is_postgresql = conn.dialect.name == "postgresql"
        if is_postgresql:
            # Lock before CREATE SCHEMA: two concurrent CREATE SCHEMA IF NOT EXISTS can still collide.
            await conn.execute(select(func.pg_advisory_xact_lock(advisory_lock_key(version_table, schema))))
            if schema:
                await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
                # Unqualified tables in the revisions land in the service's schema whatever the
                # engine's search_path; LOCAL ends with this transaction.
                await conn.execute(text(f'SET LOCAL search_path TO "{schema}"'))
        await conn.run_sync(
            _upgrade,
            script_location,
            version_table,
            schema if is_postgresql else "",
        )


def _upgrade(connection: Connection, script_location: str | Path, version_table: str, schema: str) -> None:
    config = alembic_config(
        script_location, version_table=version_table, schema=schema, connection=connection
    )
    command.upgrade(config, "head")


def run_env(target_metadata: MetaData | None) -> None:
    """The body of every service's `migrations/env.py`.

    Online mode uses the connection that `upgrade_to_head` passes in
    `config.attributes["connection"]`, already inside its transaction. Offline
    (`--sql`) mode renders SQL for the URL in the `sqlalchemy.url` option.
    """
    config = context.config
    options: dict[str, Any] = {
        "target_metadata": target_metadata,
        "version_table": config.attributes.get("version_table", "alembic_version"),
        "version_table_schema": config.attributes.get("version_table_schema"),
    }
    if context.is_offline_mode():
        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("offline migrations need the sqlalchemy.url option")
        context.configure(url=url, literal_binds=True, **options)
    else:
        connection = config.attributes.get("connection")
        if connection is None:
            raise RuntimeError(
                "run migrations through services.kit.migrations.upgrade_to_head, "
                "which passes the connection in config.attributes['connection']"
            )
        # Batch mode lets autogenerated ALTERs work on SQLite, which rebuilds tables to alter them.
        context.configure(
            connection=connection,
            render_as_batch=connection.dialect.name == "sqlite",
            **options,
        )
    with context.begin_transaction():
        context.run_migrations()
