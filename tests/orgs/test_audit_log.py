"""The audit log on SQLite and PostgreSQL: chaining, idempotent append, listing, and tamper evidence."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

import services.orgs as orgs_package
from services.kit.audit import Actor, AuditEvent
from services.kit.audit_chain import GENESIS, canonical_json, chain_hash
from services.kit.audit_proto import event_from_proto, event_to_proto
from services.kit.errors import InvalidArgument
from services.kit.migrations import upgrade_to_head
from services.orgs.audit_log import AuditLog, VerifyResult
from services.orgs.audit_store import audit_events, audit_heads
from services.orgs.store import OrgsStore
from tests.clock import ManualClock

MIGRATIONS = Path(orgs_package.__file__).resolve().parent / "migrations"
START = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)
ORG = "org-1"
OTHER = "org-2"
POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def make_event(organization_id: str = ORG, index: int = 0, **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "organization_id": organization_id,
        "actor": Actor(f"user-{index % 3}", "user"),
        "action": "orgs.team.create" if index % 2 == 0 else "orgs.member.remove",
        "resource_type": "team" if index % 2 == 0 else "member",
        "resource_id": f"r-{index}",
        "outcome": "SUCCESS" if index % 4 != 3 else "DENIED",
        "request_id": f"req-{index}",
        "occur_time": START + dt.timedelta(seconds=index),
        "details": {"index": index},
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def log(engine: AsyncEngine) -> AuditLog:
    await upgrade_to_head(engine, MIGRATIONS, version_table="orgs_alembic_version")
    return AuditLog(OrgsStore(engine), ManualClock(START), verify_page=2)


async def stored_rows(engine: AsyncEngine, organization_id: str = ORG) -> list[dict[str, object]]:
    async with engine.connect() as conn:
        result = await conn.execute(
            select(audit_events)
            .where(audit_events.c.organization_id == organization_id)
            .order_by(audit_events.c.sequence)
        )
        return [dict(row._mapping) for row in result]


async def test_events_chain_per_organization_in_the_given_order(log: AuditLog, engine: AsyncEngine) -> None:
    events = [make_event(ORG, 0), make_event(OTHER, 1), make_event(ORG, 2), make_event("", 3)]

    appended = await log.append(events)

    assert appended == 4
    rows = await stored_rows(engine)
    assert [(row["sequence"], row["event_id"]) for row in rows] == [(1, events[0].id), (2, events[2].id)]
    assert rows[0]["previous_hash"] == GENESIS
    assert rows[0]["hash"] == chain_hash(GENESIS, events[0])
    assert rows[1]["previous_hash"] == rows[0]["hash"]
    assert rows[1]["hash"] == chain_hash(str(rows[0]["hash"]), events[2])
    assert rows[0]["record"] == canonical_json(events[0].to_record()).decode()
    assert [row["sequence"] for row in await stored_rows(engine, OTHER)] == [1]
    installation = await stored_rows(engine, "")
    assert [(row["sequence"], row["event_id"]) for row in installation] == [(1, events[3].id)]
    for organization_id in (ORG, OTHER, ""):
        assert (await log.verify(organization_id)).intact


async def test_append_skips_known_event_ids_without_rechaining(log: AuditLog, engine: AsyncEngine) -> None:
    first, second, third = make_event(index=0), make_event(index=1), make_event(index=2)
    assert await log.append([first, second]) == 2
    before = await stored_rows(engine)

    appended = await log.append([second, first, third, third])

    assert appended == 1
    rows = await stored_rows(engine)
    assert rows[:2] == before
    assert [(row["sequence"], row["event_id"]) for row in rows] == [
        (1, first.id),
        (2, second.id),
        (3, third.id),
    ]
    assert rows[2]["previous_hash"] == rows[1]["hash"]
    assert await log.verify(ORG) == VerifyResult(True, 3)


async def test_an_intact_log_verifies_across_pages(log: AuditLog) -> None:
    for start in range(0, 7, 3):
        await log.append([make_event(index=i) for i in range(start, min(start + 3, 7))])

    assert await log.verify(ORG) == VerifyResult(True, 7)
    assert await log.verify("org-without-events") == VerifyResult(True, 0)


async def test_a_tampered_record_is_reported_at_its_sequence(log: AuditLog, engine: AsyncEngine) -> None:
    events = [make_event(index=i) for i in range(5)]
    await log.append(events)
    rows = await stored_rows(engine)
    record = json.loads(str(rows[2]["record"]))
    record["details"] = {"index": 99}  # what an intruder might change: the event's meaning
    async with engine.begin() as conn:
        await conn.execute(
            update(audit_events)
            .where(audit_events.c.organization_id == ORG, audit_events.c.sequence == 3)
            .values(record=canonical_json(record).decode())
        )

    result = await log.verify(ORG)

    assert result == VerifyResult(False, 2, 3, events[2].id)


async def test_a_tampered_row_edited_with_plain_sql_is_reported(log: AuditLog, engine: AsyncEngine) -> None:
    events = [make_event(index=i) for i in range(5)]
    await log.append(events)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE orgs_audit_events SET record = REPLACE(record, '\"r-3\"', '\"r-x\"') "
                "WHERE organization_id = :org AND sequence = 4"
            ),
            {"org": ORG},
        )

    assert await log.verify(ORG) == VerifyResult(False, 3, 4, events[3].id)


async def test_an_edited_filter_column_is_a_broken_link(log: AuditLog, engine: AsyncEngine) -> None:
    # The record is intact, but a changed column would hide the event from filtered lists.
    events = [make_event(index=i) for i in range(3)]
    await log.append(events)
    async with engine.begin() as conn:
        await conn.execute(
            update(audit_events).where(audit_events.c.sequence == 2).values(actor_id="someone-else")
        )

    assert await log.verify(ORG) == VerifyResult(False, 1, 2, events[1].id)


async def test_an_edited_hash_is_reported(log: AuditLog, engine: AsyncEngine) -> None:
    events = [make_event(index=i) for i in range(3)]
    await log.append(events)
    async with engine.begin() as conn:
        await conn.execute(update(audit_events).where(audit_events.c.sequence == 1).values(hash="f" * 64))

    assert await log.verify(ORG) == VerifyResult(False, 0, 1, events[0].id)


async def test_a_deleted_row_is_reported_at_its_sequence(log: AuditLog, engine: AsyncEngine) -> None:
    await log.append([make_event(index=i) for i in range(5)])
    async with engine.begin() as conn:
        await conn.execute(delete(audit_events).where(audit_events.c.sequence == 3))

    assert await log.verify(ORG) == VerifyResult(False, 2, 3, "")


async def test_a_deleted_row_with_later_rows_renumbered_is_reported(
    log: AuditLog, engine: AsyncEngine
) -> None:
    events = [make_event(index=i) for i in range(4)]
    await log.append(events)
    async with engine.begin() as conn:
        await conn.execute(delete(audit_events).where(audit_events.c.sequence == 2))
        for sequence in (3, 4):
            await conn.execute(
                update(audit_events).where(audit_events.c.sequence == sequence).values(sequence=sequence - 1)
            )
        await conn.execute(update(audit_heads).values(last_sequence=3))

    assert await log.verify(ORG) == VerifyResult(False, 1, 2, events[2].id)


async def test_a_cut_tail_is_reported(log: AuditLog, engine: AsyncEngine) -> None:
    await log.append([make_event(index=i) for i in range(4)])
    async with engine.begin() as conn:
        await conn.execute(delete(audit_events).where(audit_events.c.sequence >= 3))

    assert await log.verify(ORG) == VerifyResult(False, 2, 3, "")


async def test_a_row_forged_beyond_the_head_is_reported(log: AuditLog, engine: AsyncEngine) -> None:
    await log.append([make_event(index=i) for i in range(2)])
    last = (await stored_rows(engine))[-1]
    forged = make_event(index=7)
    async with engine.begin() as conn:
        await conn.execute(
            insert(audit_events).values(
                organization_id=ORG,
                sequence=3,
                event_id=forged.id,
                record=canonical_json(forged.to_record()).decode(),
                actor_kind="user",
                actor_id=forged.actor.subject,
                action=forged.action,
                resource_type=forged.resource_type,
                resource_id=forged.resource_id,
                outcome=forged.outcome,
                request_id=forged.request_id,
                occur_time=forged.occur_time,
                previous_hash=last["hash"],
                hash=chain_hash(str(last["hash"]), forged),
                ingest_time=START,
            )
        )

    assert await log.verify(ORG) == VerifyResult(False, 2, 3, forged.id)


async def test_list_filters_orders_and_pages_within_one_organization(log: AuditLog) -> None:
    events = [make_event(index=i) for i in range(8)]
    await log.append([*events, make_event(OTHER, 0)])

    page, token = await log.list(ORG, page_size=3)
    collected = [logged.event for logged in page]
    while token:
        page, token = await log.list(ORG, page_size=3, page_token=token)
        collected.extend(logged.event for logged in page)
    assert collected == events

    newest, _ = await log.list(ORG, order_by="sequence desc", page_size=2)
    assert [(logged.sequence, logged.event.id) for logged in newest] == [(8, events[7].id), (7, events[6].id)]
    assert newest[0].previous_hash == newest[1].hash

    denied, _ = await log.list(ORG, filter_text='outcome = DENIED AND action = "orgs.member.remove"')
    assert [logged.event.id for logged in denied] == [events[3].id, events[7].id]
    by_actor, _ = await log.list(ORG, filter_text='actor_id = "user-1" AND actor_kind = user')
    assert [logged.event.id for logged in by_actor] == [events[1].id, events[4].id, events[7].id]
    late, _ = await log.list(
        ORG, filter_text=f'occur_time >= "{(START + dt.timedelta(seconds=6)).isoformat()}"'
    )
    assert [logged.event.id for logged in late] == [events[6].id, events[7].id]
    one, _ = await log.list(
        ORG, filter_text='resource_type = "team" resource_id = "r-2" request_id = "req-2"'
    )
    assert [logged.event.id for logged in one] == [events[2].id]
    assert (await log.list("org-unknown"))[0] == []


async def test_list_refuses_unknown_fields_orders_and_foreign_tokens(log: AuditLog) -> None:
    await log.append([make_event(index=i) for i in range(3)])
    _, token = await log.list(ORG, page_size=1)

    with pytest.raises(InvalidArgument) as bad_filter:
        await log.list(ORG, filter_text='source_address = "x"')
    with pytest.raises(InvalidArgument) as bad_order:
        await log.list(ORG, order_by="occur_time")
    with pytest.raises(InvalidArgument) as foreign:
        await log.list(OTHER, page_size=1, page_token=token)

    fields = [error.value.violations[0].field for error in (bad_filter, bad_order, foreign)]
    assert fields == [
        "filter",
        "order_by",
        "page_token",
    ]


async def test_in_process_and_grpc_arrivals_store_the_same_record(log: AuditLog, engine: AsyncEngine) -> None:
    direct = make_event(index=0, details={"whole": 3.0, "huge": 2**60})
    shipped = event_from_proto(event_to_proto(make_event(OTHER, 0, details={"whole": 3.0, "huge": 2**60})))

    await log.append([direct, shipped])

    ours = json.loads(str((await stored_rows(engine))[0]["record"]))["details"]
    theirs = json.loads(str((await stored_rows(engine, OTHER))[0]["record"]))["details"]
    assert ours == theirs == {"whole": 3, "huge": str(2**60)}
    assert (await log.verify(ORG)).intact


@POSTGRESQL_ONLY
async def test_concurrent_appenders_extend_one_chain(log: AuditLog, engine: AsyncEngine) -> None:
    batches = [[make_event(index=10 * b + i) for i in range(5)] for b in range(6)]
    # The same batch twice, as two shippers redelivering it would.
    batches.append(batches[0])

    counts = await asyncio.gather(*(log.append(batch) for batch in batches))

    assert sum(counts) == 30
    rows = await stored_rows(engine)
    assert [row["sequence"] for row in rows] == list(range(1, 31))
    assert await log.verify(ORG) == VerifyResult(True, 30)
