"""gRPC servicer of keel.orgs.v1.AuditLogService: request proto → AuditLog → response proto; no SQL.

The kit interceptor has already enforced each RPC's rule: (audit_log, read) at
the organization for List and Verify, an authenticated caller for Ingest.
Ingest additionally admits only the control plane's own service accounts
(KEEL_MESH_SERVICE_ACCOUNTS): any other caller could forge history.
"""

from __future__ import annotations

from typing import Any

import grpc

from keel.orgs.v1 import audit_pb2, audit_pb2_grpc
from services.kit.audit import AuditEvent, event_for_request
from services.kit.audit_proto import event_from_proto, event_to_proto
from services.kit.clock import Clock
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument, PermissionDenied
from services.orgs.audit_log import AuditLog
from services.orgs.audit_store import MAX_ORGANIZATION_ID

Context = grpc.aio.ServicerContext[Any, Any]

# The most events one IngestAuditEvents call may carry (services.kit.audit_sink.MAX_BATCH).
MAX_INGEST = 500


def _organization_id(value: str) -> str:
    if not value:
        raise InvalidArgument("organization_id", "is required")
    if len(value) > MAX_ORGANIZATION_ID:
        raise InvalidArgument("organization_id", f"is longer than {MAX_ORGANIZATION_ID} characters")
    return value


def _ingested(messages: Any) -> list[AuditEvent]:
    if len(messages) > MAX_INGEST:
        raise InvalidArgument("audit_events", f"holds more than {MAX_INGEST} events; send them in batches")
    events = []
    for index, message in enumerate(messages):
        if len(message.organization_id) > MAX_ORGANIZATION_ID:
            raise InvalidArgument(
                f"audit_events[{index}].organization_id", f"is longer than {MAX_ORGANIZATION_ID} characters"
            )
        try:
            events.append(event_from_proto(message))
        except ValueError as error:  # the kit event's checks, secrets included; never echo values
            raise InvalidArgument(f"audit_events[{index}]", str(error)) from None
    return events


class AuditLogApi(audit_pb2_grpc.AuditLogServiceServicer):
    """AuditLogService over the domain's AuditLog."""

    def __init__(self, log: AuditLog, clock: Clock, mesh_service_account_ids: frozenset[str]) -> None:
        self._log = log
        self._clock = clock
        self._mesh = mesh_service_account_ids

    async def ListAuditEvents(
        self, request: audit_pb2.ListAuditEventsRequest, context: Context
    ) -> audit_pb2.ListAuditEventsResponse:
        events, token = await self._log.list(
            _organization_id(request.organization_id),
            filter_text=request.filter,
            order_by=request.order_by,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return audit_pb2.ListAuditEventsResponse(
            audit_events=[
                event_to_proto(
                    logged.event,
                    sequence=logged.sequence,
                    previous_hash=logged.previous_hash,
                    chained_hash=logged.hash,
                )
                for logged in events
            ],
            next_page_token=token,
        )

    async def VerifyAuditLog(
        self, request: audit_pb2.VerifyAuditLogRequest, context: Context
    ) -> audit_pb2.VerifyAuditLogResponse:
        result = await self._log.verify(_organization_id(request.organization_id))
        return audit_pb2.VerifyAuditLogResponse(
            intact=result.intact,
            checked_events=result.checked_events,
            first_broken_sequence=result.first_broken_sequence,
            first_broken_event_id=result.first_broken_event_id,
        )

    async def IngestAuditEvents(
        self, request: audit_pb2.IngestAuditEventsRequest, context: Context
    ) -> audit_pb2.IngestAuditEventsResponse:
        principal = require_principal()
        if principal.kind != "service_account" or principal.subject not in self._mesh:
            await self._log.record(
                event_for_request(
                    action="orgs.audit_log.ingest",
                    resource_type="audit_log",
                    resource_id="",
                    organization_id="",
                    occur_time=self._clock.now(),
                    outcome="DENIED",
                )
            )
            raise PermissionDenied("only the control plane's own service accounts may append audit events")
        appended = await self._log.append(_ingested(request.audit_events))
        return audit_pb2.IngestAuditEventsResponse(appended=appended)
