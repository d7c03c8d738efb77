"""Shared fixtures: a fresh, empty database on each backend for every test that asks for one.

A test that takes `database_url` or `engine` runs twice, as `test_x[sqlite]` and
`test_x[postgresql]`. PostgreSQL gets a brand-new database per test (dropped
afterwards), so tests never see each other's tables or rows.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import NullPool, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.kit.db import create_engine

# The maintenance database of the test server; overridable for a server elsewhere.
POSTGRES_ADMIN_URL = os.environ.get(
    "KEEL_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def _administer(statement: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction, hence AUTOCOMMIT; NullPool: no idle
    # connection lingers to block the DROP.
    admin = create_async_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(statement))
    finally:
        await admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """SQLAlchemy URL of a fresh, empty database on the parametrized backend."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
        return
    # Generated from hex digits only, so quoting is all the escaping the name needs.
    name = f"keel_test_{secrets.token_hex(6)}"
    await _administer(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: a test that failed mid-way may leave connections open.
        await _administer(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A kit-configured engine on the fresh database, disposed after the test."""
    created = create_engine(database_url)
    try:
        yield created
    finally:
        await created.dispose()
