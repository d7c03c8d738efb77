"""`python -m services.orgs verify-audit --organization-id O`: verify one organization's audit chain.

Reads the database directly (no server, no token), so an operator can check
the log even when the services are down; it never writes. Exit status 0 when
every link holds, 1 at the first broken one.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.cli import with_engine
from services.kit.clock import SystemClock
from services.orgs.audit_log import AuditLog, VerifyResult
from services.orgs.settings import OrgsSettings
from services.orgs.store import OrgsStore

SERVICE_NAME = "orgs"


def describe(organization_id: str, result: VerifyResult) -> str:
    """One line for an operator."""
    name = f"organization {organization_id!r}" if organization_id else "installation-wide events"
    if result.intact:
        return f"audit log of {name}: intact ({result.checked_events} events checked)"
    event = result.first_broken_event_id or "missing"
    return (
        f"audit log of {name}: BROKEN at sequence {result.first_broken_sequence} (event {event}); "
        f"intact events before it: {result.checked_events}"
    )


async def verify_audit(engine: AsyncEngine, organization_id: str) -> VerifyResult:
    """Verifies the organization's chain in the database of `engine`."""
    return await AuditLog(OrgsStore(engine), SystemClock()).verify(organization_id)


def verify_audit_command(settings: OrgsSettings, organization_id: str, out: TextIO | None = None) -> int:
    """Verifies the chain, prints the result and returns the exit status (1 on a broken chain)."""
    result = asyncio.run(
        with_engine(settings, SERVICE_NAME, lambda engine: verify_audit(engine, organization_id))
    )
    stream = out or sys.stdout
    stream.write(describe(organization_id, result) + "\n")
    stream.flush()
    return 0 if result.intact else 1
