"""Audit events and the transactional outbox: recorded with the change, shipped at least once, in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.audit import (
    ANONYMOUS,
    REDACTED,
    SYSTEM,
    Actor,
    AuditEvent,
    AuditOutbox,
    OutboxDenialRecorder,
    OutboxShipper,
    audit_outbox_table,
    claim_batch,
    denial_event,
    event_for_request,
    mark_sent,
    purge_sent,
    record,
    redact_credentials,
    service_event,
)
from services.kit.context import Principal, peer_var, principal_var, request_id_var
from services.kit.interceptors import Denial
from tests.clock import ManualClock

metadata = MetaData()
audit_outbox = audit_outbox_table(metadata)
widgets = Table("widgets", metadata, Column("id", Integer, primary_key=True))

START = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)

POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


class Sink:
    """Collects delivered batches; fails while `failing` is set."""

    def __init__(self) -> None:
        self.batches: list[list[AuditEvent]] = []
        self.failing = False

    async def __call__(self, events: Sequence[AuditEvent]) -> None:
        if self.failing:
            raise ConnectionError("audit log unreachable")
        self.batches.append(list(events))

    @property
    def delivered(self) -> list[AuditEvent]:
        return [event for batch in self.batches for event in batch]


def make_event(organization_id: str = "org-1", resource_id: str = "w-1", **changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "organization_id": organization_id,
        "actor": Actor("user-1", "user"),
        "action": "widgets.create",
        "resource_type": "widget",
        "resource_id": resource_id,
        "outcome": "SUCCESS",
        "occur_time": START,
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(engine: AsyncEngine) -> AsyncEngine:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    return engine


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


async def record_committed(store: AsyncEngine, *events: AuditEvent) -> None:
    async with store.begin() as conn:
        for each in events:
            await record(conn, audit_outbox, each)


async def unsent_count(store: AsyncEngine) -> int:
    async with store.connect() as conn:
        counted = await conn.execute(
            select(func.count()).select_from(audit_outbox).where(audit_outbox.c.sent_time.is_(None))
        )
        return int(counted.scalar_one())


# ------------------------------------------------------------------------------------ the outbox


async def test_event_recorded_in_a_rolled_back_transaction_is_never_shipped(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    async with store.connect() as conn:
        transaction = await conn.begin()
        await conn.execute(insert(widgets).values(id=1))
        await record(conn, audit_outbox, make_event())
        await transaction.rollback()  # the change failed
    assert await OutboxShipper(store, audit_outbox, sink, clock).ship_once() == 0
    assert sink.batches == []


async def test_committed_event_ships_once_with_every_field_intact(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    original = make_event(
        on_behalf_of="user-9",
        request_id="req-1",
        source_address="ipv4:10.0.0.7:5123",
        details={"name": "first", "labels": ["a", "b"], "size": 3, "ratio": 0.5, "on": True, "none": None},
        occur_time=START + dt.timedelta(microseconds=123),
    )
    async with store.begin() as conn:
        await conn.execute(insert(widgets).values(id=1))
        await record(conn, audit_outbox, original)
    shipper = OutboxShipper(store, audit_outbox, sink, clock)
    assert await shipper.ship_once() == 1
    assert await shipper.ship_once() == 0
    assert sink.delivered == [original]
    assert await unsent_count(store) == 0


async def test_sent_rows_are_purged_after_the_retention_and_unsent_ones_never(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    async with store.begin() as conn:
        await record(conn, audit_outbox, make_event(resource_id="shipped"))
    shipper = OutboxShipper(
        store, audit_outbox, sink, clock, retention=dt.timedelta(days=7), purge_interval=dt.timedelta(hours=1)
    )
    await shipper.ship_once()
    sink.failing = True
    async with store.begin() as conn:
        await record(conn, audit_outbox, make_event(resource_id="stuck"))

    first = await shipper.purge_if_due()  # nothing is 7 days old yet
    clock.advance(days=7, seconds=1)
    due = await shipper.purge_if_due()  # the shipped row is now past the retention
    clock.advance(minutes=30)
    async with store.begin() as conn:
        await record(conn, audit_outbox, make_event(resource_id="later"))
    not_due = await shipper.purge_if_due()

    async with store.connect() as conn:
        payloads = (await conn.execute(select(audit_outbox.c.payload).order_by(audit_outbox.c.seq))).scalars()
        remaining = [json.loads(payload)["resource_id"] for payload in payloads]
    assert (first, due, not_due) == (0, 1, 0)
    assert remaining == ["stuck", "later"]


async def test_failing_sink_marks_nothing_and_the_batch_is_retried(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    events = [make_event(resource_id=f"w-{n}") for n in range(3)]
    await record_committed(store, *events)
    shipper = OutboxShipper(store, audit_outbox, sink, clock)
    sink.failing = True
    with pytest.raises(ConnectionError):
        await shipper.ship_once()
    assert await unsent_count(store) == 3
    sink.failing = False
    assert await shipper.ship_once() == 3
    assert await shipper.ship_once() == 0
    assert sink.delivered == events


async def test_batches_respect_the_batch_size_and_the_outbox_order(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    events = [make_event(organization_id=f"org-{n % 3}", resource_id=f"w-{n}") for n in range(7)]
    for each in events:
        await record_committed(store, each)
    shipper = OutboxShipper(store, audit_outbox, sink, clock, batch_size=3)
    assert [await shipper.ship_once() for _ in range(4)] == [3, 3, 1, 0]
    assert [len(batch) for batch in sink.batches] == [3, 3, 1]
    assert sink.delivered == events


async def test_mark_sent_records_the_time_and_ignores_already_sent_events(
    store: AsyncEngine, clock: ManualClock
) -> None:
    first, second = make_event(resource_id="w-1"), make_event(resource_id="w-2")
    await record_committed(store, first, second)
    async with store.begin() as conn:
        assert await mark_sent(conn, audit_outbox, [first.id], clock.now()) == 1
        assert await mark_sent(conn, audit_outbox, [first.id, second.id], clock.now()) == 1
        assert await mark_sent(conn, audit_outbox, [], clock.now()) == 0
        sent = (await conn.execute(select(audit_outbox.c.sent_time))).scalars().all()
    assert [moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment for moment in sent] == [
        START,
        START,
    ]


async def test_purge_removes_only_events_sent_before_the_cutoff(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    shipper = OutboxShipper(store, audit_outbox, sink, clock)
    await record_committed(store, make_event(resource_id="old"))
    await shipper.ship_once()
    clock.advance(days=2)
    await record_committed(store, make_event(resource_id="recent"))
    await shipper.ship_once()
    await record_committed(store, make_event(resource_id="unsent"))
    async with store.begin() as conn:
        assert await purge_sent(conn, audit_outbox, clock.now() - dt.timedelta(days=1)) == 1
        left = (await conn.execute(select(audit_outbox.c.payload).order_by(audit_outbox.c.seq))).scalars()
        assert [AuditEvent.from_record(json.loads(p)).resource_id for p in left] == [
            "recent",
            "unsent",
        ]
    async with store.begin() as conn:
        assert await purge_sent(conn, audit_outbox, clock.now() + dt.timedelta(days=1)) == 1
    assert await unsent_count(store) == 1


# Row locks are PostgreSQL's: SQLite has a single writer and one shipper per process.
@POSTGRESQL_ONLY
async def test_claimed_rows_are_held_by_one_postgresql_shipper_at_a_time(
    store: AsyncEngine, database_url: str
) -> None:
    # Organizations in contiguous runs: o1 o1 o2 o2 o3 o3 o4 o4 (outbox seq 1..8).
    events = [make_event(organization_id=f"o{n // 2 + 1}", resource_id=f"w-{n}") for n in range(8)]
    await record_committed(store, *events)
    async with store.connect() as first, store.connect() as second:
        await first.begin()
        await second.begin()
        claimed_first = await claim_batch(first, audit_outbox, 3)  # o1 o1 o2
        claimed_second = await claim_batch(second, audit_outbox, 8)  # o2's 2nd is held back: o2 is split
        assert claimed_first == events[:3]
        assert claimed_second == events[4:]
        await first.rollback()
        await second.rollback()


# Row locks are PostgreSQL's: SQLite has a single writer and one shipper per process.
@POSTGRESQL_ONLY
async def test_concurrent_postgresql_shippers_never_deliver_a_row_twice(
    store: AsyncEngine, database_url: str, clock: ManualClock
) -> None:
    events = [make_event(organization_id=f"o{n // 3}", resource_id=f"w-{n}") for n in range(12)]
    await record_committed(store, *events)
    first_inside, release_first = asyncio.Event(), asyncio.Event()
    first_batches: list[list[AuditEvent]] = []

    async def slow_sink(batch: Sequence[AuditEvent]) -> None:
        first_batches.append(list(batch))
        first_inside.set()
        await release_first.wait()

    second_sink = Sink()
    first = OutboxShipper(store, audit_outbox, slow_sink, clock, batch_size=6)
    second = OutboxShipper(store, audit_outbox, second_sink, clock, batch_size=100)
    first_round = asyncio.create_task(first.ship_once())
    await first_inside.wait()  # the first shipper holds its batch's row locks, mid-delivery
    assert await second.ship_once() == 6
    release_first.set()
    assert await first_round == 6
    delivered_ids = [e.id for e in first_batches[0]] + [e.id for e in second_sink.delivered]
    assert sorted(delivered_ids) == sorted(e.id for e in events)
    assert first_batches[0] == events[:6]
    assert second_sink.delivered == events[6:]
    assert await unsent_count(store) == 0


# Row locks are PostgreSQL's: SQLite has a single writer and one shipper per process.
@POSTGRESQL_ONLY
async def test_order_is_preserved_per_organization_across_concurrent_shippers(
    store: AsyncEngine, database_url: str, clock: ManualClock
) -> None:
    # Interleaved organizations: whoever holds an organization's earliest unsent event ships it first.
    events = [make_event(organization_id=f"o{n % 2}", resource_id=f"w-{n}") for n in range(8)]
    await record_committed(store, *events)
    async with store.connect() as first, store.connect() as second:
        await first.begin()
        await second.begin()
        assert await claim_batch(first, audit_outbox, 1) == events[:1]  # o0's first
        assert await claim_batch(second, audit_outbox, 100) == events[1::2]  # o1 only
        await first.rollback()
        await second.rollback()


async def test_order_is_preserved_per_organization_across_rounds(
    store: AsyncEngine, clock: ManualClock
) -> None:
    sink = Sink()
    events = [make_event(organization_id=f"o{n % 3}", resource_id=f"w-{n}") for n in range(9)]
    await record_committed(store, *events)
    shipper = OutboxShipper(store, audit_outbox, sink, clock, batch_size=2)
    while await shipper.ship_once():
        pass
    for organization in ("o0", "o1", "o2"):
        assert [e for e in sink.delivered if e.organization_id == organization] == [
            e for e in events if e.organization_id == organization
        ]


async def test_running_shipper_ships_when_notified_and_stops(store: AsyncEngine, clock: ManualClock) -> None:
    arrived = asyncio.Event()
    delivered: list[AuditEvent] = []

    async def sink(batch: Sequence[AuditEvent]) -> None:
        delivered.extend(batch)
        arrived.set()

    shipper = OutboxShipper(store, audit_outbox, sink, clock, idle_interval=3600)
    running = asyncio.create_task(shipper.run())
    try:
        committed = make_event()
        await record_committed(store, committed)
        shipper.notify()
        await asyncio.wait_for(arrived.wait(), 10)  # a deadline for a failure, not a wait for success
        assert delivered == [committed]
    finally:
        shipper.stop()
        await asyncio.wait_for(running, 10)


async def test_running_shipper_survives_a_failing_sink(store: AsyncEngine, clock: ManualClock) -> None:
    failed, arrived = asyncio.Event(), asyncio.Event()

    async def flaky(batch: Sequence[AuditEvent]) -> None:
        if not failed.is_set():
            failed.set()
            raise ConnectionError("audit log unreachable")
        arrived.set()

    await record_committed(store, make_event())
    shipper = OutboxShipper(store, audit_outbox, flaky, clock, idle_interval=3600)
    running = asyncio.create_task(shipper.run())
    try:
        await asyncio.wait_for(failed.wait(), 10)
        shipper.notify()  # instead of waiting out the hour-long retry interval
        await asyncio.wait_for(arrived.wait(), 10)
    finally:
        shipper.stop()
        await asyncio.wait_for(running, 10)
    assert await unsent_count(store) == 0


# ------------------------------------------------------------------------------------ the events


def test_event_refuses_unknown_outcomes_naive_times_and_bad_ids() -> None:
    with pytest.raises(ValueError, match="outcome"):
        make_event(outcome="MAYBE")
    with pytest.raises(ValueError, match="aware"):
        make_event(occur_time=dt.datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="UUID"):
        make_event(id="not-a-uuid")
    with pytest.raises(ValueError, match="kind"):
        Actor("x", "robot")


def test_each_event_gets_its_own_uuid() -> None:
    assert make_event().id != make_event().id


def test_event_round_trips_through_its_record() -> None:
    original = make_event(details={"nested": {"list": [1, "two", None]}})
    assert AuditEvent.from_record(original.to_record()) == original


def test_event_for_request_takes_actor_request_id_and_peer_from_the_context() -> None:
    tokens = (
        principal_var.set(Principal(subject="user-7", kind="service_account", token="secret-not-stored")),
        request_id_var.set("req-42"),
        peer_var.set("ipv6:[::1]:50000"),
    )
    try:
        built = event_for_request(
            action="/keel.authn.v1.UserService/DeactivateUser",
            resource_type="user",
            resource_id="user-8",
            organization_id="",
            occur_time=START,
            details={"reason": "left"},
        )
    finally:
        principal_var.reset(tokens[0])
        request_id_var.reset(tokens[1])
        peer_var.reset(tokens[2])
    assert built.actor == Actor("user-7", "service_account")
    assert (built.request_id, built.source_address, built.outcome) == (
        "req-42",
        "ipv6:[::1]:50000",
        "SUCCESS",
    )
    assert "secret-not-stored" not in str(built.to_record())


def test_event_for_request_outside_a_request_is_anonymous() -> None:
    built = event_for_request(
        action="authn.tokens.create",
        resource_type="token",
        resource_id="",
        organization_id="",
        occur_time=START,
        outcome="DENIED",
    )
    assert (built.actor, built.request_id, built.source_address) == (ANONYMOUS, "", "")


@pytest.mark.parametrize(
    "key",
    ["password", "new_password", "clientSecret", "client_secret", "refresh_token", "accessToken", "api_key",
     "apiKey", "private_key", "signing-key", "key_material", "Authorization", "cookie", "credentials"],
)  # fmt: skip
def test_details_keys_naming_credentials_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="credential"):
        make_event(details={key: "x"})
    with pytest.raises(ValueError, match="credential"):
        make_event(details={"outer": [{key: "x"}]})


@pytest.mark.parametrize(
    "key", ["token_id", "api_key_prefix", "secret_name", "key_id", "role", "display_name"]
)
def test_details_keys_that_identify_rather_than_hold_credentials_are_allowed(key: str) -> None:
    assert make_event(details={key: "k-1"}).details == {key: "k-1"}


@pytest.mark.parametrize(
    "value",
    [
        "keel_rt_" + "A" * 43,
        "keel_ak_0123abcd_" + "b" * 43,
        "keel_wsc_0b0e3f52-51c4-4a31-9d43-1f0e7a2c9b11_" + "c" * 43,
        "keel_inv_0b0e3f52-51c4-4a31-9d43-1f0e7a2c9b11_" + "d" * 43,
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl",
        "Bearer abcdefghijklmnopqrstuvwxyz",
        "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----",
        "the key was keel_rt_" + "x" * 43 + " yesterday",
        "AKIAIOSFODNN7EXAMPLE",
    ],
)
def test_credential_shaped_values_are_refused_anywhere(value: str) -> None:
    with pytest.raises(ValueError, match="credential"):
        make_event(details={"note": value})
    with pytest.raises(ValueError, match="credential"):
        make_event(details={"notes": ["fine", {"deeper": value}]})
    with pytest.raises(ValueError, match="credential"):
        make_event(resource_id=value)


def test_public_api_key_prefix_and_hashes_are_allowed() -> None:
    details = {
        "prefix": "keel_ak_0123abcd",
        "digest": "a3f1" * 16,
        "name": "WorkspaceRegistryService/Register",
    }
    assert make_event(details=details).details == details


def test_details_must_be_small_json() -> None:
    with pytest.raises(ValueError, match="limit"):
        make_event(details={"blob": "x" * 5000})
    with pytest.raises(ValueError, match="JSON"):
        make_event(details={"when": START})
    with pytest.raises(ValueError, match="finite"):
        make_event(details={"ratio": float("nan")})
    with pytest.raises(ValueError, match="deeper"):
        make_event(details={"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}})


def test_details_are_a_private_copy() -> None:
    given = {"labels": ["a"]}
    built = make_event(details=given)
    given["labels"].append("b")
    assert built.details == {"labels": ["a"]}


# ------------------------------------------------------------------------- denials and wiring


def _denial(**changes: object) -> Denial:
    fields: dict[str, object] = {
        "method": "/keel.rbac.v1.RoleService/CreateRole",
        "principal": Principal("user-9", "user"),
        "resource_type": "role",
        "action": "create",
        "resource_id": "",
        "scope_id": "org-4",
        "request_id": "req-9",
        "peer": "ipv4:10.0.0.9:5000",
    }
    fields.update(changes)
    return Denial(**fields)  # type: ignore[arg-type]


async def test_denial_recorder_commits_a_denied_event_and_wakes_the_shipper(
    store: AsyncEngine, clock: ManualClock
) -> None:
    woken: list[bool] = []
    recorder = OutboxDenialRecorder(store, audit_outbox, clock, lambda: woken.append(True))

    await recorder(_denial())

    async with store.connect() as conn:
        payloads = (await conn.execute(select(audit_outbox.c.payload))).scalars().all()
    [event] = [AuditEvent.from_record(json.loads(payload)) for payload in payloads]
    assert event.outcome == "DENIED"
    assert event.actor == Actor("user-9", "user")
    assert event.action == "/keel.rbac.v1.RoleService/CreateRole"
    assert (event.organization_id, event.resource_type, event.resource_id) == ("org-4", "role", "")
    assert (event.request_id, event.source_address) == ("req-9", "ipv4:10.0.0.9:5000")
    assert event.occur_time == START
    assert event.details == {"permission": "role.create"}
    assert woken == [True]


def test_denial_event_drops_caller_values_an_event_would_refuse() -> None:
    jwt_like = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln"
    event = denial_event(_denial(resource_id=jwt_like, scope_id="o" * 65), START)

    assert (event.resource_id, event.organization_id) == ("", "")
    assert event.details["dropped_fields"] == ["organization_id", "resource_id"]
    assert event.outcome == "DENIED"


def test_redact_credentials_replaces_credential_shaped_text_only() -> None:
    token = "keel_rt_" + "a" * 43
    value = {"name": "Bearer abcdefghijklmnopqrstuvwxyz", "ids": ["ok", token], "count": 3}

    assert redact_credentials(value) == {"name": REDACTED, "ids": ["ok", REDACTED], "count": 3}
    assert redact_credentials("keel_ak_0123abcd") == "keel_ak_0123abcd"  # the public prefix stays


async def test_audit_outbox_without_a_sink_ships_nothing_and_says_so_once(
    store: AsyncEngine, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = AuditOutbox(store, audit_outbox, clock, service_name="widgets")
    await record_committed(store, make_event())

    with caplog.at_level("WARNING", logger="services.kit.audit"):
        outbox.start()
    outbox.notify()
    await outbox.stop()

    assert outbox.shipper is None
    assert await unsent_count(store) == 1
    assert [r.getMessage() for r in caplog.records if "outbox" in r.getMessage()] == [
        "widgets has no service credential (KEEL_SERVICE_API_KEY_FILE): audit events stay in its "
        "outbox until it runs with one"
    ]


async def test_audit_outbox_with_a_sink_ships_after_notify_and_stops(
    store: AsyncEngine, clock: ManualClock
) -> None:
    arrived = asyncio.Event()
    delivered: list[AuditEvent] = []
    closed: list[bool] = []

    async def sink(batch: Sequence[AuditEvent]) -> None:
        delivered.extend(batch)
        arrived.set()

    async def close() -> None:
        closed.append(True)

    outbox = AuditOutbox(store, audit_outbox, clock, sink, close=close, idle_interval=3600)
    outbox.start()
    try:
        event = make_event()
        await record_committed(store, event)
        outbox.notify()
        await asyncio.wait_for(arrived.wait(), 10)  # a deadline for a failure, not a wait for success
    finally:
        await outbox.stop()

    assert delivered == [event]
    assert closed == [True]


def test_service_event_is_systems_outside_a_request_and_redacts_caller_text() -> None:
    leaked = "keel_ak_0123abcd_" + "b" * 43
    outside = service_event(
        action="widgets.create",
        resource_type="widget",
        resource_id=f"named {leaked}",
        organization_id="org-1",
        occur_time=START,
        details={"display_name": leaked},
    )
    request_token = request_id_var.set("req-7")
    principal_token = principal_var.set(Principal("user-1", "user"))
    try:
        inside = service_event(
            action="widgets.create", resource_type="widget", resource_id="w-1", organization_id="org-1",
            occur_time=START,
        )  # fmt: skip
    finally:
        principal_var.reset(principal_token)
        request_id_var.reset(request_token)

    assert outside.actor == SYSTEM
    assert leaked not in outside.resource_id
    assert REDACTED in outside.resource_id
    assert outside.details == {"display_name": REDACTED}
    assert (inside.actor, inside.request_id) == (Actor("user-1", "user"), "req-7")
