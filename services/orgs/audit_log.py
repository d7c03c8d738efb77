"""The audit log's rules: append idempotently in order, list, and verify the hash chain page by page.

No gRPC and no SQL here: the queries are in audit_store.py. `AuditLog` is also
the in-process sink of orgs' own outbox (`OutboxShipper(..., sink=audit_log)`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.kit import audit as kit_audit
from services.kit.audit import AuditEvent
from services.kit.audit_chain import GENESIS, canonical_json, verify_chain
from services.kit.audit_proto import wire_form
from services.kit.clock import Clock
from services.orgs import audit_store
from services.orgs.store import OUTBOX, OrgsStore

# Rows read per verification round trip: memory stays bounded whatever the log's length.
VERIFY_PAGE = 500


@dataclass(frozen=True)
class LoggedEvent:
    """An event at its place in its organization's chain."""

    event: AuditEvent
    sequence: int
    previous_hash: str
    hash: str


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of verifying one organization's chain."""

    intact: bool
    checked_events: int
    first_broken_sequence: int = 0  # 0 when intact
    first_broken_event_id: str = ""  # '' when intact or when that event is gone


class AuditLog:
    """One hash-chained audit log per organization ('' for installation-wide events)."""

    def __init__(
        self,
        store: OrgsStore,
        clock: Clock,
        *,
        verify_page: int = VERIFY_PAGE,
        audit_recorded: Callable[[], None] = lambda: None,
    ) -> None:
        if verify_page < 1:
            raise ValueError("verify_page must be at least 1")
        self._store = store
        self._clock = clock
        self._verify_page = verify_page
        self._audit_recorded = audit_recorded

    async def append(self, events: Sequence[AuditEvent]) -> int:
        """Appends events in the given order, skipping ids already logged; returns how many were new.

        Events are put in the wire form first, so one that arrives in process
        is stored (and hashed) exactly as it would be after a trip over gRPC.
        """
        if not events:
            return 0
        normalized = [wire_form(event) for event in events]
        async with self._store.transaction() as tx:
            return await audit_store.append_events(tx.conn, normalized, self._clock.now())

    async def __call__(self, events: Sequence[AuditEvent]) -> None:
        """The kit `AuditSink` of orgs' own outbox."""
        await self.append(events)

    async def record(self, event: AuditEvent) -> None:
        """Records an orgs event that comes with no change (a denial) through orgs' outbox."""
        async with self._store.transaction() as tx:
            await kit_audit.record(tx.conn, OUTBOX, event)
        self._audit_recorded()

    async def list(
        self,
        organization_id: str,
        *,
        filter_text: str = "",
        order_by: str = "",
        page_size: int = 0,
        page_token: str = "",
    ) -> tuple[list[LoggedEvent], str]:
        """One page of the organization's events and the next page's token ('' on the last page)."""
        async with self._store.engine.connect() as conn:
            rows, token = await audit_store.list_events(
                conn,
                organization_id,
                filter_text=filter_text,
                order_by=order_by,
                requested_page_size=page_size,
                page_token=page_token,
            )
        events = [
            LoggedEvent(
                AuditEvent.from_record(audit_store.decode_record(row.record)),
                row.sequence,
                row.previous_hash,
                row.hash,
            )
            for row in rows
        ]
        return events, token

    async def verify(self, organization_id: str) -> VerifyResult:
        """Recomputes the organization's chain up to its head and reports the first broken link.

        A link is broken when its row is missing (a gap in the sequence or a
        cut tail: reported with an empty event id), when its record does not
        parse or is not canonical, when a filter column disagrees with the
        record, or when its hash does not follow from the previous stored hash.
        """
        checked = 0
        async with self._store.engine.connect() as conn:
            head = await audit_store.read_head(conn, organization_id)
            previous_hash, expected, last_id = GENESIS, 1, ""
            while expected <= head.last_sequence:
                page = await audit_store.chain_page(
                    conn,
                    organization_id,
                    after_sequence=expected - 1,
                    up_to_sequence=head.last_sequence,
                    limit=self._verify_page,
                )
                if not page:
                    return VerifyResult(False, checked, expected)
                for row in page:
                    if row.sequence != expected:
                        return VerifyResult(False, checked, expected)
                    if not _link_holds(row, previous_hash):
                        return VerifyResult(False, checked, row.sequence, row.event_id)
                    previous_hash, last_id = row.hash, row.event_id
                    expected += 1
                    checked += 1
            if previous_hash != head.last_hash:
                # Every row is linked, but the chain does not end where the head says it does.
                return VerifyResult(False, checked, head.last_sequence, last_id)
            forged = await audit_store.first_event_beyond_head(conn, organization_id)
            if forged is not None:
                return VerifyResult(False, checked, forged.sequence, forged.event_id)
        return VerifyResult(True, checked)


def _link_holds(row: audit_store.StoredEvent, previous_hash: str) -> bool:
    try:
        event = AuditEvent.from_record(audit_store.decode_record(row.record))
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        return False
    if canonical_json(event.to_record()).decode("ascii") != row.record:
        return False  # the record was rewritten, even if it still means the same event
    if row.previous_hash != previous_hash or not audit_store.stored_columns_match(row, event):
        return False
    return verify_chain([(event, row.hash)], previous_hash) is None
