"""RBAC ships its outbox to the audit log as its own mesh service account when it has a credential.

Real processes' parts end to end: a real authn issues the service account's
token, RBAC's shipper delivers over gRPC through the kit's GrpcAuditSink to a
real AuditLogService endpoint (a minimal one that keeps what it receives and
verifies the caller's token at that authn).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import select

from keel.orgs.v1 import audit_pb2, audit_pb2_grpc
from services.authn.api_keys import IssuedApiKey
from services.kit.audit import AuditEvent
from services.kit.audit_proto import event_from_proto
from services.kit.context import Principal
from services.kit.tokens import JwksCache
from services.rbac.server import build_service
from services.rbac.settings import RbacSettings
from services.rbac.store import audit_outbox
from tests.authn.conftest import start_authn, stop_authn
from tests.clock import ManualClock
from tests.kit.conftest import KeySet


class AuditLogEndpoint(audit_pb2_grpc.AuditLogServiceServicer):
    """IngestAuditEvents that keeps the events and the verified caller of each call."""

    def __init__(self, verify: Any) -> None:
        self._verify = verify
        self.events: list[AuditEvent] = []
        self.callers: list[Principal] = []
        self.arrived = asyncio.Event()

    async def IngestAuditEvents(
        self, request: audit_pb2.IngestAuditEventsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> audit_pb2.IngestAuditEventsResponse:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        token = str(metadata.get("authorization", "")).removeprefix("Bearer ")
        self.callers.append(await self._verify(token))
        self.events.extend(event_from_proto(message) for message in request.audit_events)
        self.arrived.set()
        return audit_pb2.IngestAuditEventsResponse(appended=len(request.audit_events))


async def test_rbac_ships_its_events_as_its_own_service_account(tmp_path: Path) -> None:
    clock = ManualClock()
    authn = await start_authn(f"sqlite+aiosqlite:///{tmp_path / 'authn.db'}", tmp_path, clock)
    ingest = grpc.aio.server()
    rbac = None
    try:
        domain = authn.service.domain
        account = await domain.service_accounts.create("rbac", "the RBAC service", creator_id="")
        issued = await domain.api_keys.create(account.id, "rbac key", None)
        key_file = tmp_path / "rbac.key"
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            assert isinstance(issued, IssuedApiKey)
            handle.write(issued.secret)
        # Only IngestAuditEvents is served: the reads belong to the orgs service.
        endpoint = AuditLogEndpoint(authn.service.verifier.verify_access_token)  # type: ignore[abstract]
        audit_pb2_grpc.add_AuditLogServiceServicer_to_server(endpoint, ingest)
        ingest_port = ingest.add_insecure_port("127.0.0.1:0")
        await ingest.start()

        settings = RbacSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'rbac.db'}",
            data_dir=tmp_path,
            drain_seconds=0,
            authn_address=f"127.0.0.1:{authn.service.port}",
            orgs_address=f"127.0.0.1:{ingest_port}",
            service_api_key_file=key_file,
        )
        rbac = build_service(settings, clock=clock, jwks=JwksCache(KeySet().fetch))
        await rbac.start()
        await rbac.domain.administration.bootstrap_organization_admin("org-1", "admin-1")

        await asyncio.wait_for(endpoint.arrived.wait(), 10)  # a deadline for a failure only

        [event] = endpoint.events
        assert (event.action, event.organization_id) == ("rbac.role_binding.create", "org-1")
        assert [(c.subject, c.kind) for c in endpoint.callers] == [(account.id, "service_account")]
        for _ in range(100):  # the shipper marks the row sent right after the call returns
            async with rbac.domain.engine.connect() as conn:
                sent = (await conn.execute(select(audit_outbox.c.sent_time))).scalars().all()
            if sent == [sent[0]] and sent[0] is not None:
                break
            await asyncio.sleep(0.01)
        assert len(sent) == 1
        assert sent[0] is not None
    finally:
        if rbac is not None:
            await rbac.stop()
        await ingest.stop(None)
        await stop_authn(authn)
