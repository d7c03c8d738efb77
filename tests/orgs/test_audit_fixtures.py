"""Fixtures of the audit log API tests (no tests here): a real AuditLogService beside a real RBAC.

Both servers listen on 127.0.0.1 ephemeral ports and share the parametrized
database (one database per plane, each service with its own tables). Tokens
are minted with the RBAC test server's key set, which both servers trust.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import services.orgs as orgs_package
from keel.orgs.v1 import audit_pb2_grpc
from services.kit.clients import connect
from services.kit.db import create_engine
from services.kit.migrations import upgrade_to_head
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.server import KeelServer, Registration
from services.kit.tokens import JwksCache, TokenVerifier
from services.orgs.api_audit import AuditLogApi
from services.orgs.audit_log import AuditLog
from services.orgs.settings import OrgsSettings
from services.orgs.store import OrgsStore
from tests.clock import ManualClock
from tests.kit.conftest import AUDIENCE, ISSUER
from tests.rbac.conftest import Server as RbacServer
from tests.rbac.conftest import server  # noqa: F401  (the real RBAC server fixture)

MIGRATIONS = Path(orgs_package.__file__).resolve().parent / "migrations"
VERSION_TABLE = "orgs_alembic_version"
MESH_ACCOUNT = "sa-mesh-1"


async def migrate_orgs(engine: AsyncEngine) -> None:
    """Brings the orgs schema (audit log included) to head."""
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE)


@dataclass
class AuditServer:
    """A running AuditLogService, its domain, its channel, and the RBAC beside it."""

    rbac: RbacServer
    log: AuditLog
    clock: ManualClock
    keel: KeelServer
    channel: grpc.aio.Channel
    checker: RbacPermissionChecker

    @property
    def stub(self) -> audit_pb2_grpc.AuditLogServiceAsyncStub:
        return audit_pb2_grpc.AuditLogServiceStub(self.channel)

    def token(self, subject: str, kind: str = "user") -> tuple[tuple[str, str], ...]:
        """Bearer metadata of a fresh access token that both servers accept."""
        return self.rbac.token(subject, kind)


@pytest.fixture
async def audit(server: RbacServer, database_url: str, tmp_path: Path) -> AsyncIterator[AuditServer]:  # noqa: F811
    """The audit log service on the parametrized backend, checking permissions with the real RBAC."""
    engine = create_engine(database_url)
    rbac_channel = connect(f"127.0.0.1:{server.service.port}")
    keel: KeelServer | None = None
    channel: grpc.aio.Channel | None = None
    try:
        await migrate_orgs(engine)
        clock = ManualClock()
        settings = OrgsSettings(
            database_url=database_url,
            data_dir=tmp_path,
            listen_address="127.0.0.1:0",
            drain_seconds=0,
            token_issuer=ISSUER,
            token_audience=AUDIENCE,
            mesh_service_accounts=f"{MESH_ACCOUNT}, sa-other-mesh",
        )
        log = AuditLog(OrgsStore(engine), clock)
        checker = RbacPermissionChecker(rbac_channel, clock)
        keel = KeelServer(
            "orgs",
            settings,
            [
                Registration(
                    "keel.orgs.v1.AuditLogService",
                    audit_pb2_grpc.add_AuditLogServiceServicer_to_server,
                    AuditLogApi(log, clock, settings.mesh_service_account_ids),
                )
            ],
            TokenVerifier(JwksCache(server.keys.fetch), issuer=ISSUER, audience=AUDIENCE),
            checker,
        )
        port = await keel.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        yield AuditServer(server, log, clock, keel, channel, checker)
    finally:
        if channel is not None:
            await channel.close(None)
        if keel is not None:
            await keel.stop()
        await rbac_channel.close(None)
        await engine.dispose()
