"""Async SQLAlchemy engine factory for the embedded SQLite default and PostgreSQL.

SQLite (aiosqlite): WAL journal, foreign keys on, a busy timeout. PostgreSQL
(asyncpg): a bounded pool, a statement timeout, and the service's own schema
first on the search path.

Pooled PostgreSQL connections are checked on checkout without a round trip:
asyncpg reads every connection all the time, so a connection the server closed
(a restart, a terminated backend, an idle timeout) is already marked closed
and the pool replaces it. SQLAlchemy's pre-ping would instead cost three round
trips per transaction (BEGIN, a ping, ROLLBACK: a fifth of all the round
trips of recording a run). What neither catches, a silently dropped network
path, fails the statement; the pool then discards that connection
(disconnect errors invalidate it) and callers retry with their request ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Dialect, event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from services.kit.config import ServiceSettings


def database_url(settings: ServiceSettings, service: str) -> str:
    """The configured URL, or the embedded SQLite file of this service."""
    if settings.database_url:
        return settings.database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{Path(settings.data_dir).resolve() / f'{service}.db'}"


def is_sqlite(engine: AsyncEngine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


def create_engine(
    url: str,
    *,
    schema: str = "",
    pool_size: int = 10,
    statement_timeout_ms: int = 10_000,
) -> AsyncEngine:
    """An engine configured for the URL's backend. `schema` applies to PostgreSQL only."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"unsupported database backend: {parsed.get_backend_name()}")
    server_settings: dict[str, Any] = {"statement_timeout": str(statement_timeout_ms)}
    if schema:
        server_settings["search_path"] = schema
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args={"server_settings": server_settings},
    )
    _configure_postgresql(engine)
    return engine


def _configure_postgresql(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise exc.DisconnectionError("the pooled PostgreSQL connection was closed by the server")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


def create_engine_from_settings(settings: ServiceSettings, service: str) -> AsyncEngine:
    """The engine of one service from its settings."""
    return create_engine(
        database_url(settings, service),
        schema=settings.database_schema,
        pool_size=settings.database_pool_size,
        statement_timeout_ms=settings.database_statement_timeout_ms,
    )


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite drops the zone; this puts it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        value = value.astimezone(UTC)
        # SQLite compares datetimes as text: store one canonical naive-UTC form.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
