"""`python -m services.orgs verify-audit`: a real process over the database, exit 0 intact, 1 broken."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
from pathlib import Path

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.audit import Actor, AuditEvent
from services.orgs.audit_log import AuditLog
from services.orgs.audit_store import audit_events
from services.orgs.store import OrgsStore
from tests.clock import ManualClock
from tests.orgs.test_audit_fixtures import migrate_orgs

ROOT = Path(__file__).resolve().parents[2]
START = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)


async def run_verify(database_url: str, data_dir: Path, organization_id: str) -> tuple[int, str]:
    env = {
        **os.environ,
        "KEEL_DATABASE_URL": database_url,
        "KEEL_DATA_DIR": str(data_dir),
        "KEEL_LOG_LEVEL": "WARNING",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.orgs",
        "verify-audit",
        "--organization-id",
        organization_id,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


async def test_verify_audit_exits_0_when_intact_and_1_at_the_first_broken_link(
    engine: AsyncEngine, database_url: str, tmp_path: Path
) -> None:
    await migrate_orgs(engine)
    log = AuditLog(OrgsStore(engine), ManualClock(START))
    events = [
        AuditEvent(
            organization_id="org-1",
            actor=Actor("user-1", "user"),
            action="orgs.team.create",
            resource_type="team",
            resource_id=f"t-{index}",
            outcome="SUCCESS",
            occur_time=START,
        )
        for index in range(4)
    ]
    await log.append(events)

    intact = await run_verify(database_url, tmp_path, "org-1")
    async with engine.begin() as conn:
        await conn.execute(delete(audit_events).where(audit_events.c.sequence == 2))
    broken = await run_verify(database_url, tmp_path, "org-1")

    assert intact == (0, "audit log of organization 'org-1': intact (4 events checked)\n")
    assert broken == (
        1,
        "audit log of organization 'org-1': BROKEN at sequence 2 (event missing); "
        "intact events before it: 1\n",
    )
