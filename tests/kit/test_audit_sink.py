"""GrpcAuditSink end to end: a service's kit outbox ships through a real AuditLogService into the chain.

The outbox is a table in the test database (a stand-in service's own), the
shipper is the kit's, and orgs is a real server on an ephemeral port whose
permission checks go to a real RBAC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.audit import Actor, AuditEvent, OutboxShipper, audit_outbox_table, record
from services.kit.audit_sink import MAX_BATCH, GrpcAuditSink
from services.kit.clients import connect
from services.kit.db import create_engine
from tests.clock import ManualClock
from tests.orgs.test_audit_fixtures import MESH_ACCOUNT, AuditServer, audit  # noqa: F401
from tests.rbac.conftest import server  # noqa: F401  (used by the audit fixture)

START = dt.datetime(2026, 11, 27, 8, 0, tzinfo=dt.UTC)
service_metadata = MetaData()
outbox = audit_outbox_table(service_metadata, "widgets_audit_outbox")
widgets = Table("widgets", service_metadata, Column("id", Integer, primary_key=True))


class TokenProvider:
    """A MetadataProvider handing out fresh access tokens of one principal; counts the calls."""

    def __init__(self, audit: AuditServer, subject: str, kind: str = "service_account") -> None:  # noqa: F811
        self._audit = audit
        self._subject = subject
        self._kind = kind
        self.calls = 0

    async def __call__(self) -> Sequence[tuple[str, str]]:
        self.calls += 1
        return self._audit.token(self._subject, self._kind)


@pytest.fixture
async def service_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    created = create_engine(database_url)
    try:
        async with created.begin() as conn:
            await conn.run_sync(service_metadata.create_all)
        yield created
    finally:
        await created.dispose()


@pytest.fixture
async def orgs_channel(audit: AuditServer) -> AsyncIterator[grpc.aio.Channel]:  # noqa: F811
    channel = connect(f"127.0.0.1:{audit.keel.port}")
    try:
        yield channel
    finally:
        await channel.close(None)


async def change_widgets(engine: AsyncEngine, organization_id: str, ids: range) -> list[AuditEvent]:
    """Creates widgets, each with its audit event in the same transaction; the events in order."""
    events = []
    for widget_id in ids:
        event = AuditEvent(
            organization_id=organization_id,
            actor=Actor("user-1", "user"),
            action="widgets.create",
            resource_type="widget",
            resource_id=str(widget_id),
            outcome="SUCCESS",
            occur_time=START + dt.timedelta(seconds=widget_id),
            details={"size": widget_id, "ratio": widget_id / 4},
        )
        async with engine.begin() as conn:
            await conn.execute(insert(widgets).values(id=widget_id))
            await record(conn, outbox, event)
        events.append(event)
    return events


async def unsent(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        rows = await conn.execute(select(outbox.c.event_id).where(outbox.c.sent_time.is_(None)))
        return len(rows.all())


async def test_the_outbox_ships_into_the_chain_in_order_and_only_once(
    audit: AuditServer,  # noqa: F811
    service_engine: AsyncEngine,
    orgs_channel: grpc.aio.Channel,
) -> None:
    ours = await change_widgets(service_engine, "org-1", range(0, 3))
    theirs = await change_widgets(service_engine, "org-2", range(3, 5))
    more = await change_widgets(service_engine, "org-1", range(5, 7))
    provider = TokenProvider(audit, MESH_ACCOUNT)
    sink = GrpcAuditSink(orgs_channel, provider, batch_size=2)
    shipper = OutboxShipper(service_engine, outbox, sink, ManualClock(START), batch_size=100)

    shipped = await shipper.ship_once()

    assert shipped == 7
    assert provider.calls == 4  # 7 events in calls of at most 2
    assert sink.appended == 7
    assert await unsent(service_engine) == 0
    logged, _ = await audit.log.list("org-1")
    assert [item.event for item in logged] == [*ours, *more]
    assert [item.sequence for item in logged] == [1, 2, 3, 4, 5]
    assert [item.event for item in (await audit.log.list("org-2"))[0]] == theirs
    assert (await audit.log.verify("org-1")).intact
    assert (await audit.log.verify("org-2")).intact

    # At least once: a crash after delivery but before marking re-delivers; the log stays as it was.
    async with service_engine.begin() as conn:
        await conn.execute(update(outbox).values(sent_time=None))
    assert await shipper.ship_once() == 7
    assert sink.appended == 7
    again, _ = await audit.log.list("org-1")
    assert [(item.sequence, item.hash) for item in again] == [(item.sequence, item.hash) for item in logged]


async def test_a_refused_delivery_leaves_the_outbox_to_retry(
    audit: AuditServer,  # noqa: F811
    service_engine: AsyncEngine,
    orgs_channel: grpc.aio.Channel,
) -> None:
    events = await change_widgets(service_engine, "org-1", range(3))
    # A service account that is not one of the mesh's own: orgs refuses, the shipper must not mark.
    outsider = OutboxShipper(
        service_engine,
        outbox,
        GrpcAuditSink(orgs_channel, TokenProvider(audit, "sa-outsider")),
        ManualClock(START),
    )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await outsider.ship_once()

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await unsent(service_engine) == 3
    assert (await audit.log.list("org-1"))[0] == []
    mesh = OutboxShipper(
        service_engine, outbox, GrpcAuditSink(orgs_channel, TokenProvider(audit, MESH_ACCOUNT)), ManualClock()
    )
    assert await mesh.ship_once() == 3
    assert [item.event for item in (await audit.log.list("org-1"))[0]] == events


async def test_a_batch_larger_than_one_call_is_split_into_calls_of_at_most_500(
    audit: AuditServer,  # noqa: F811
    service_engine: AsyncEngine,
    orgs_channel: grpc.aio.Channel,
) -> None:
    count = 2 * MAX_BATCH + 1
    async with service_engine.begin() as conn:
        for index in range(count):
            await record(
                conn,
                outbox,
                AuditEvent(
                    organization_id="org-1",
                    actor=Actor("user-1", "user"),
                    action="widgets.touch",
                    resource_type="widget",
                    resource_id=str(index),
                    outcome="SUCCESS",
                    occur_time=START,
                ),
            )
    provider = TokenProvider(audit, MESH_ACCOUNT)
    shipper = OutboxShipper(
        service_engine, outbox, GrpcAuditSink(orgs_channel, provider), ManualClock(), batch_size=count
    )

    assert await shipper.ship_once() == count
    assert provider.calls == 3
    verified = await audit.log.verify("org-1")
    assert (verified.intact, verified.checked_events) == (True, count)


async def test_batch_size_is_bounded_by_what_ingestion_takes() -> None:
    async def no_metadata() -> Sequence[tuple[str, str]]:
        return ()

    channel = grpc.aio.insecure_channel("127.0.0.1:1")
    try:
        with pytest.raises(ValueError, match="batch_size"):
            GrpcAuditSink(channel, no_metadata, batch_size=MAX_BATCH + 1)
        with pytest.raises(ValueError, match="batch_size"):
            GrpcAuditSink(channel, no_metadata, batch_size=0)
    finally:
        await channel.close(None)
