"""Fixtures of the RBAC tests: a migrated store on both backends, and a real server on an ephemeral port.

The server verifies tokens against a test JwksCache fed with the kit tests' key
set, so tests mint access tokens for any principal without running authn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.rbac.v1 import rbac_pb2_grpc
from services.kit.tokens import JwksCache
from services.rbac.administration import Administration
from services.rbac.decisions import Decisions
from services.rbac.ownership import Ownerships
from services.rbac.server import RbacService, build_service, migrate
from services.rbac.settings import RbacSettings
from services.rbac.store import RbacStore
from tests.clock import ManualClock
from tests.kit.conftest import AUDIENCE, ISSUER, KeySet


class Ticker:
    """A controllable monotonic clock for the revision poll."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Rbac:
    """The domain of RBAC over a migrated database, with a controllable poll clock."""

    store: RbacStore
    decisions: Decisions
    administration: Administration
    ownerships: Ownerships
    ticker: Ticker


@pytest.fixture
async def rbac(engine: AsyncEngine) -> Rbac:
    """The RBAC domain on the parametrized backend."""
    await migrate(engine, RbacSettings())
    store = RbacStore(engine)
    ticker = Ticker()
    decisions = Decisions(store, poll_seconds=0.1, monotonic=ticker)
    clock = ManualClock()
    return Rbac(
        store, decisions, Administration(store, decisions, clock), Ownerships(store, decisions, clock), ticker
    )


@dataclass
class Server:
    """A running RBAC server, its channel and a minting key set."""

    service: RbacService
    channel: grpc.aio.Channel
    keys: KeySet = field(repr=False)

    def token(self, subject: str, kind: str = "user") -> tuple[tuple[str, str], ...]:
        """Bearer metadata of a fresh access token for the subject."""
        return (("authorization", f"Bearer {self.keys.mint(sub=subject, typ=kind)}"),)

    @property
    def permissions(self) -> rbac_pb2_grpc.PermissionServiceAsyncStub:
        return rbac_pb2_grpc.PermissionServiceStub(self.channel)

    @property
    def roles(self) -> rbac_pb2_grpc.RoleServiceAsyncStub:
        return rbac_pb2_grpc.RoleServiceStub(self.channel)

    @property
    def bindings(self) -> rbac_pb2_grpc.RoleBindingServiceAsyncStub:
        return rbac_pb2_grpc.RoleBindingServiceStub(self.channel)

    @property
    def teams(self) -> rbac_pb2_grpc.TeamMembershipServiceAsyncStub:
        return rbac_pb2_grpc.TeamMembershipServiceStub(self.channel)


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A running RBAC on the parametrized backend."""
    keys = KeySet()
    settings = RbacSettings(
        database_url=database_url,
        data_dir=tmp_path,
        listen_address="127.0.0.1:0",
        drain_seconds=0,
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
    )
    service = build_service(settings, clock=ManualClock(), jwks=JwksCache(keys.fetch))
    port = await service.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Server(service, channel, keys)
    finally:
        await channel.close(None)
        await service.stop()
