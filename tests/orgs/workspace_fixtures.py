"""Fixtures of the workspace and registry tests: a migrated orgs database, and real RBAC + orgs servers.

Import `mesh_fixture` into a test module to use the `mesh` fixture; `orgs_store` comes from conftest.py.
Both servers verify tokens against the kit tests' key set, so tests mint access
tokens for any principal without running authn. The orgs server here serves only
the workspace services, wired as in production (kit interceptors, the RBAC-backed
permission checker, RBAC ownership with the caller's token).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.orgs.v1 import workspaces_pb2_grpc
from services.kit.clients import connect
from services.kit.db import create_engine
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.server import KeelServer
from services.kit.tokens import JwksCache, TokenVerifier
from services.orgs.registry import Registry, RegistrySweeper
from services.orgs.server import migrate
from services.orgs.settings import OrgsSettings
from services.orgs.store import ACTIVE, OUTBOX, OrganizationRecord, OrgsStore
from services.orgs.workspace_service import build_workspace_parts
from services.orgs.workspaces import Workspaces
from services.rbac.server import RbacService
from services.rbac.server import build_service as build_rbac
from services.rbac.settings import RbacSettings
from tests.clock import ManualClock
from tests.kit.conftest import AUDIENCE, ISSUER, KeySet

ADMIN = "admin-1"


async def migrate_orgs(engine: AsyncEngine) -> OrgsStore:
    """The orgs schema at head on the engine, and a store over it."""
    await migrate(engine, OrgsSettings())
    return OrgsStore(engine)


async def add_organization(store: OrgsStore, organization_id: str, clock: ManualClock) -> None:
    """An ACTIVE organization row (what CreateOrganization would leave)."""
    now = clock.now()
    async with store.transaction() as tx:
        await tx.insert_organization(
            OrganizationRecord(organization_id, f"Org {organization_id}", "", ACTIVE, now, now, 1)
        )


async def audit_events(store: OrgsStore) -> list[dict[str, Any]]:
    """Every event in the orgs outbox, oldest first, as its stored record."""
    async with store.transaction() as tx:
        rows = (await tx.conn.execute(select(OUTBOX.c.payload).order_by(OUTBOX.c.seq))).all()
    return [json.loads(row.payload) for row in rows]


@dataclass
class Mesh:
    """A running RBAC and an orgs server with the workspace services, on one backend."""

    store: OrgsStore
    clock: ManualClock
    rbac: RbacService
    workspaces: Workspaces
    registry: Registry
    sweeper: RegistrySweeper
    channel: grpc.aio.Channel
    keys: KeySet = field(repr=False)

    def token(self, subject: str = ADMIN) -> tuple[tuple[str, str], ...]:
        """Bearer metadata of a fresh user access token."""
        return (("authorization", f"Bearer {self.keys.mint(sub=subject, typ='user')}"),)

    @property
    def api(self) -> workspaces_pb2_grpc.WorkspaceServiceAsyncStub:
        return workspaces_pb2_grpc.WorkspaceServiceStub(self.channel)

    @property
    def servers(self) -> workspaces_pb2_grpc.WorkspaceRegistryServiceAsyncStub:
        return workspaces_pb2_grpc.WorkspaceRegistryServiceStub(self.channel)

    async def add_organization(self, organization_id: str, admin: str = ADMIN) -> None:
        """An organization in orgs, with `admin` as its organization admin in RBAC."""
        await add_organization(self.store, organization_id, self.clock)
        await self.rbac.domain.administration.bootstrap_organization_admin(organization_id, admin)

    async def owner_of(self, organization_id: str, workspace_id: str) -> str | None:
        """The subject id RBAC records as the workspace's owner, or None."""
        async with self.rbac.domain.store.transaction() as tx:
            owner = await tx.owner_of(organization_id, "workspace", workspace_id)
        return None if owner is None else owner.subject_id


@pytest.fixture(name="mesh")
async def mesh_fixture(database_url: str, tmp_path: Path) -> AsyncIterator[Mesh]:
    """RBAC and orgs (workspace services) running on the parametrized backend."""
    keys = KeySet()
    clock = ManualClock()
    common: dict[str, Any] = {
        "listen_address": "127.0.0.1:0",
        "drain_seconds": 0,
        "token_issuer": ISSUER,
        "token_audience": AUDIENCE,
        "data_dir": tmp_path,
    }
    rbac = build_rbac(
        RbacSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'rbac.db'}", **common),
        clock=clock,
        jwks=JwksCache(keys.fetch),
    )
    rbac_port = await rbac.start()
    settings = OrgsSettings(database_url=database_url, rbac_address=f"127.0.0.1:{rbac_port}", **common)
    engine = create_engine(database_url)
    rbac_channel = connect(settings.rbac_address)
    channel: grpc.aio.Channel | None = None
    server: KeelServer | None = None
    try:
        store = await migrate_orgs(engine)
        checker = RbacPermissionChecker(rbac_channel, clock)
        # The production wiring of the workspace part; its sweeper is driven by the tests, not started.
        parts = build_workspace_parts(settings, store, clock, rbac_channel, checker)
        verifier = TokenVerifier(JwksCache(keys.fetch), issuer=ISSUER, audience=AUDIENCE)
        server = KeelServer("orgs", settings, parts.registrations(), verifier, checker)
        port = await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        yield Mesh(store, clock, rbac, parts.workspaces, parts.registry, parts.sweeper, channel, keys)
    finally:
        if channel is not None:
            await channel.close(None)
        if server is not None:
            await server.stop()
        await rbac_channel.close(None)
        await engine.dispose()
        await rbac.stop()
