"""The tamper-evident hash chain of an organization's audit log: pure functions, no I/O.

Each event's hash is SHA-256 over the canonical encoding of (previous hash,
event fields); the first event of a chain links to GENESIS. The audit log
(orgs) stores the hash beside each event; `verify_chain` recomputes the links
and reports the first one that does not hold.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.kit.audit import AuditEvent

GENESIS = "0" * 64
# Bumped if the encoding ever changes, so old and new links are never confused.
CHAIN_VERSION = 1


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits: one spelling per instant."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> dt.datetime:
    """The aware UTC datetime of a `format_time` string."""
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys, no whitespace, ASCII only, and no NaN or infinities."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def canonical_encoding(previous_hash: str, event: AuditEvent) -> bytes:
    """The bytes that are hashed for one link of the chain."""
    return canonical_json({"v": CHAIN_VERSION, "previous_hash": previous_hash, "event": event.to_record()})


def chain_hash(previous_hash: str, event: AuditEvent) -> str:
    """The hex SHA-256 of `event` linked to `previous_hash` (GENESIS for the first event)."""
    if len(previous_hash) != 64:
        raise ValueError("previous_hash must be a 64-character hex SHA-256")
    return hashlib.sha256(canonical_encoding(previous_hash, event)).hexdigest()


def verify_chain(
    events_with_hashes: Iterable[tuple[AuditEvent, str]], previous_hash: str = GENESIS
) -> int | None:
    """The index of the first event whose stored hash does not match its link, or None when intact.

    `previous_hash` lets a long log be verified in pages: pass the stored hash
    of the last event of the previous page. Each link is checked against the
    previous event's *stored* hash, so a deleted, inserted, reordered or
    altered event, or an altered hash, breaks the link at its position.
    """
    for index, (event, stored_hash) in enumerate(events_with_hashes):
        if chain_hash(previous_hash, event) != stored_hash:
            return index
        previous_hash = stored_hash
    return None
