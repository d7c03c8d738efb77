"""RbacLookup against a real RBAC server on an ephemeral port (both backends), and lookup_condition in SQL."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import grpc
import pytest
from sqlalchemy import Column, MetaData, String, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.clients import connect
from services.kit.context import Principal
from services.kit.errors import Unavailable
from services.kit.rbac_client import workspace_scope
from services.kit.rbac_lookup import EVERYTHING, NOTHING, Lookup, RbacLookup, lookup_condition
from services.rbac.evaluator import Ref
from tests.clock import ManualClock
from tests.rbac.conftest import Server, server  # noqa: F401  (the real RBAC server fixture)

ORG = "org-1"
WS = "ws-1"
ADMIN = "admin-1"
SCOPE = workspace_scope(ORG, WS)


@pytest.fixture
async def rbac_channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:  # noqa: F811
    channel = connect(f"127.0.0.1:{server.service.port}")
    try:
        yield channel
    finally:
        await channel.close(None)


def _principal(server: Server, subject: str) -> Principal:  # noqa: F811
    return Principal(subject, "user", token=server.keys.mint(sub=subject, typ="user"))


async def _member(server: Server, subject: str, role_id: str = "", scope: Ref | None = None) -> Principal:  # noqa: F811
    administration = server.service.domain.administration
    await administration.create_binding(ORG, ("user", subject), "organization_member", Ref(ORG))
    if role_id:
        await administration.create_binding(ORG, ("user", subject), role_id, scope or Ref(ORG, WS))
    return _principal(server, subject)


async def test_roles_and_shares_become_all_or_ids(server: Server, rbac_channel: grpc.aio.Channel) -> None:  # noqa: F811
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    lookup = RbacLookup(rbac_channel, ManualClock(), SCOPE)

    viewer = await _member(server, "viewer", "workspace_viewer")
    assert await lookup.readable_ids(viewer, "stack", "read", WS) == EVERYTHING

    sharee = await _member(server, "sharee")
    assert await lookup.readable_ids(sharee, "stack", "read", WS) == NOTHING
    await administration.share_resource(
        ("user", ADMIN), Ref(ORG, WS, "", "stack", "s-1"), ("user", "sharee"), "workspace_viewer"
    )
    fresh = RbacLookup(rbac_channel, ManualClock(), SCOPE)
    assert await fresh.readable_ids(sharee, "stack", "read", WS) == Lookup(all=False, ids=frozenset({"s-1"}))

    # A project role: everything of the project's types inside it, and the project itself among projects.
    project_viewer = await _member(server, "pv", "project_viewer", Ref(ORG, WS, "p-1"))
    assert await lookup.readable_ids(project_viewer, "run", "read", "p-1") == EVERYTHING
    assert await lookup.readable_ids(project_viewer, "run", "read", "p-2") == NOTHING
    projects = await lookup.readable_ids(project_viewer, "project", "read", WS)
    assert not projects.all
    assert "p-1" in projects.ids
    runs = await lookup.readable_ids(project_viewer, "run", "read", WS)
    assert runs.project_ids == frozenset({"p-1"})

    # Workloads and empty scopes never ask.
    assert await lookup.readable_ids(Principal("w", "workload"), "stack", "read", WS) == NOTHING
    assert await lookup.readable_ids(viewer, "stack", "read", "") == NOTHING


async def test_answers_are_cached_up_to_the_ttl_and_a_noted_revision_refreshes(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
) -> None:
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    clock = ManualClock()
    lookup = RbacLookup(rbac_channel, clock, SCOPE)
    sharee = await _member(server, "sharee")
    assert await lookup.readable_ids(sharee, "stack", "read", WS) == NOTHING

    share = await administration.share_resource(
        ("user", ADMIN), Ref(ORG, WS, "", "stack", "s-1"), ("user", "sharee"), "workspace_viewer"
    )
    clock.advance(seconds=3.9)
    assert await lookup.readable_ids(sharee, "stack", "read", WS) == NOTHING  # cached
    clock.advance(seconds=0.2)
    assert (await lookup.readable_ids(sharee, "stack", "read", WS)).ids == frozenset({"s-1"})

    revision = await administration.delete_binding(ORG, share.id)
    assert (await lookup.readable_ids(sharee, "stack", "read", WS)).ids == frozenset({"s-1"})  # cached
    lookup.note_revision(revision)
    assert await lookup.readable_ids(sharee, "stack", "read", WS) == NOTHING
    lookup.invalidate()
    with pytest.raises(ValueError, match="cache_ttl_seconds"):
        RbacLookup(rbac_channel, clock, SCOPE, cache_ttl_seconds=5)


async def test_rbac_unreachable_fails_closed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = connect(f"127.0.0.1:{port}")
    try:
        lookup = RbacLookup(channel, ManualClock(), SCOPE, timeout_seconds=2)
        with pytest.raises(Unavailable):
            await lookup.readable_ids(Principal("u", "user", token="t"), "stack", "read", WS)
    finally:
        await channel.close(None)


async def test_lookup_condition_selects_the_readable_rows(engine: AsyncEngine) -> None:
    metadata = MetaData()
    rows = Table(
        "lookup_rows", metadata, Column("id", String(8), primary_key=True), Column("project", String(8))
    )
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
        await conn.execute(
            insert(rows),
            [{"id": "a", "project": "p1"}, {"id": "b", "project": "p2"}, {"id": "c", "project": "p3"}],
        )

    async def visible(lookup: Lookup) -> list[str]:
        async with engine.connect() as conn:
            stmt = (
                select(rows.c.id)
                .where(lookup_condition(lookup, rows.c.id, rows.c.project))
                .order_by(rows.c.id)
            )
            return list((await conn.execute(stmt)).scalars())

    assert await visible(EVERYTHING) == ["a", "b", "c"]
    assert await visible(NOTHING) == []
    assert await visible(Lookup(all=False, ids=frozenset({"b"}))) == ["b"]
    assert await visible(Lookup(all=False, ids=frozenset({"a"}), project_ids=frozenset({"p3"}))) == ["a", "c"]
