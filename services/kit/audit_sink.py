"""The `AuditSink` that ships a service's outbox to the orgs audit log over gRPC.

    credential = ServiceCredential.from_settings(settings, clock)
    sink = GrpcAuditSink(connect(settings.orgs_address), credential.metadata)
    shipper = OutboxShipper(engine, OUTBOX, sink, clock)

Calls go out as the service's own mesh service account (the only callers
IngestAuditEvents accepts), never with a caller's token. A failure raises, so
the shipper rolls back and retries the batch; orgs skips event ids it already
holds, which makes the retry safe.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from keel.orgs.v1 import audit_pb2, audit_pb2_grpc
from services.kit.audit import AuditEvent
from services.kit.audit_proto import event_to_proto
from services.kit.service_identity import MetadataProvider

# The most events IngestAuditEvents takes in one call.
MAX_BATCH = 500


class GrpcAuditSink:
    """Delivers events, in order, to orgs' IngestAuditEvents in calls of at most `batch_size`."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        provider: MetadataProvider,
        *,
        batch_size: int = MAX_BATCH,
        timeout_seconds: float = 10.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH}")
        self._stub = audit_pb2_grpc.AuditLogServiceStub(channel)
        self._provider = provider
        self._batch_size = batch_size
        # The shipper holds its outbox rows locked during the call: it must not hang.
        self._timeout = timeout_seconds
        self.appended = 0  # events orgs reported as new (the rest it already had)

    async def __call__(self, events: Sequence[AuditEvent]) -> None:
        """Ships `events`; raises grpc.aio.AioRpcError (or the provider's error) when a call fails."""
        for start in range(0, len(events), self._batch_size):
            batch = events[start : start + self._batch_size]
            request = audit_pb2.IngestAuditEventsRequest(audit_events=[event_to_proto(e) for e in batch])
            response = await self._stub.IngestAuditEvents(
                request, metadata=await self._provider(), timeout=self._timeout
            )
            self.appended += response.appended
