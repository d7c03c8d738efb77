"""The workspace registry's rules: registration, heartbeats, and the sweeper driven by a ManualClock."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from services.kit.audit import SYSTEM
from services.kit.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from services.orgs import workspace_credentials as credentials
from services.orgs import workspace_store as ws
from services.orgs.registry import BAD_CREDENTIAL, Registry, RegistrySweeper
from services.orgs.store import OrgsStore
from tests.clock import ManualClock
from tests.orgs.workspace_fixtures import audit_events

INTERVAL = timedelta(seconds=10)


class Counter:
    """Counts audit_recorded() calls (the outbox shipper's notify in production)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


async def _new_workspace(
    store: OrgsStore, clock: ManualClock, organization_id: str = "org-a"
) -> tuple[str, str]:
    workspace_id = str(uuid.uuid4())
    issued = credentials.issue(workspace_id)
    now = clock.now()
    record = ws.WorkspaceRecord(
        workspace_id, organization_id, f"ws-{workspace_id[:8]}", "", "", ws.PROVISIONING, "", None, None,
        now, now, None, 1,
    )  # fmt: skip
    async with store.transaction() as tx:
        await ws.insert_workspace(tx.conn, record, issued.secret_hash)
    return workspace_id, issued.credential


async def _state(store: OrgsStore, workspace_id: str, organization_id: str = "org-a") -> str:
    async with store.transaction() as tx:
        record = await ws.get_workspace(tx.conn, organization_id, workspace_id)
    assert record is not None
    return record.state


def _sweeper(store: OrgsStore, clock: ManualClock, **options: object) -> RegistrySweeper:
    return RegistrySweeper(
        store,
        clock,
        heartbeat_interval=INTERVAL,
        missed_heartbeats=3,
        deleted_retention=timedelta(days=7),
        **options,  # type: ignore[arg-type]
    )


async def test_silent_server_is_degraded_after_missed_heartbeats_and_recovers(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    notified = Counter()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL, audit_recorded=notified)
    sweeper = _sweeper(orgs_store, clock, audit_recorded=notified)
    workspace_id, credential = await _new_workspace(orgs_store, clock)

    registered = await registry.register(credential, "ws.example.com:443", "1.4.0")
    assert registered.state == ws.ACTIVE
    assert registered.server_version == "1.4.0"
    assert registered.register_time == clock.now() == registered.last_heartbeat_time

    clock.advance(seconds=29)
    assert await sweeper.sweep_once() == 0
    assert (await registry.heartbeat(credential)).state == ws.ACTIVE  # in time: stays ACTIVE
    clock.advance(seconds=30)
    assert await sweeper.sweep_once() == 0  # exactly 3 intervals: not yet
    assert await _state(orgs_store, workspace_id) == ws.ACTIVE
    clock.advance(seconds=1)
    assert await sweeper.sweep_once() == 1
    assert await _state(orgs_store, workspace_id) == ws.DEGRADED
    assert await sweeper.sweep_once() == 0  # already DEGRADED: nothing moves twice

    clock.advance(minutes=10)
    assert (await registry.heartbeat(credential)).state == ws.ACTIVE
    assert await _state(orgs_store, workspace_id) == ws.ACTIVE
    assert await sweeper.sweep_once() == 0

    events = await audit_events(orgs_store)
    assert [event["action"] for event in events] == [
        "orgs.workspace.register",
        "orgs.workspace.degrade",
        "orgs.workspace.recover",
    ]
    register, degrade, recover = events
    assert register["actor"] == {"subject": f"workspace_server:{workspace_id}", "kind": "system"}
    assert register["details"]["server_version"] == "1.4.0"
    assert degrade["actor"] == {"subject": SYSTEM.subject, "kind": SYSTEM.kind}
    assert all(
        event["resource_id"] == workspace_id and event["organization_id"] == "org-a" for event in events
    )
    assert recover["details"] == {"previous_state": ws.DEGRADED}
    assert notified.calls == 3
    assert all(credential not in str(event) for event in events)


async def test_register_again_reactivates_and_updates_endpoint_and_version(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    _workspace_id, credential = await _new_workspace(orgs_store, clock)
    first = await registry.register(credential, "10.0.0.1:50060", "1.0.0")
    clock.advance(minutes=5)
    assert await _sweeper(orgs_store, clock).sweep_once() == 1
    again = await registry.register(credential, "https://ws.example.com/keel", "1.1.0")
    assert again.state == ws.ACTIVE
    assert again.endpoint == "https://ws.example.com/keel"
    assert again.server_version == "1.1.0"
    assert again.register_time == clock.now()
    assert again.version == first.version + 1


async def test_every_bad_credential_is_the_same_unauthenticated(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    workspace_id, credential = await _new_workspace(orgs_store, clock)
    deleted_id, deleted_credential = await _new_workspace(orgs_store, clock)
    unknown = credentials.issue(str(uuid.uuid4())).credential
    wrong_secret = credentials.issue(workspace_id).credential
    async with orgs_store.transaction() as tx:
        await ws.mark_deleting(tx.conn, "org-a", deleted_id, 1, clock.now())
    bad = ["", "keel_wsc_", "not a credential", credential + "x", unknown, wrong_secret, deleted_credential]
    for presented in bad:
        with pytest.raises(Unauthenticated) as register_error:
            await registry.register(presented, "h:1", "1.0")
        with pytest.raises(Unauthenticated) as heartbeat_error:
            await registry.heartbeat(presented)
        assert register_error.value.message == heartbeat_error.value.message == BAD_CREDENTIAL
    # A bad credential is refused before the request is looked at.
    with pytest.raises(Unauthenticated):
        await registry.register(unknown, "not an endpoint", "")
    assert await audit_events(orgs_store) == []


async def test_rotated_out_credential_stops_working_at_once(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    workspace_id, old = await _new_workspace(orgs_store, clock)
    await registry.register(old, "h:1", "1.0")
    new = credentials.issue(workspace_id)
    async with orgs_store.transaction() as tx:
        await ws.replace_credential(tx.conn, "org-a", workspace_id, new.secret_hash, clock.now())
    with pytest.raises(Unauthenticated):
        await registry.heartbeat(old)
    assert (await registry.heartbeat(new.credential)).state == ws.ACTIVE


async def test_heartbeat_before_registration_is_refused(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    workspace_id, credential = await _new_workspace(orgs_store, clock)
    with pytest.raises(FailedPrecondition) as refused:
        await registry.heartbeat(credential)
    assert refused.value.reason == "WORKSPACE_SERVER_NOT_REGISTERED"
    assert await _state(orgs_store, workspace_id) == ws.PROVISIONING


@pytest.mark.parametrize(
    ("endpoint", "server_version", "field"),
    [
        ("", "1.0", "endpoint"),
        ("ws.example.com", "1.0", "endpoint"),
        ("ws.example.com:0", "1.0", "endpoint"),
        ("ws.example.com:70000", "1.0", "endpoint"),
        ("ftp://ws.example.com", "1.0", "endpoint"),
        ("https://user:pw@ws.example.com", "1.0", "endpoint"),
        ("https://ws.example.com/?q=1", "1.0", "endpoint"),
        ("https://-bad-.example.com", "1.0", "endpoint"),
        ("999.1.1.1:80", "1.0", "endpoint"),
        ("[not:an:ip]:80", "1.0", "endpoint"),
        ("h:1", "", "server_version"),
        ("h:1", "1.0 beta", "server_version"),
        ("h:1", "v" * 129, "server_version"),
    ],
)
async def test_register_rejects_bad_input_naming_the_field(
    orgs_store: OrgsStore, endpoint: str, server_version: str, field: str
) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    _, credential = await _new_workspace(orgs_store, clock)
    with pytest.raises(InvalidArgument) as bad:
        await registry.register(credential, endpoint, server_version)
    assert [violation.field for violation in bad.value.violations] == [field]


@pytest.mark.parametrize(
    "endpoint",
    [
        "ws.example.com:443",
        "10.1.2.3:50060",
        "[::1]:50060",
        "http://localhost:8080",
        "https://ws.example.com/a/b",
    ],
)
async def test_register_accepts_host_port_and_http_urls(orgs_store: OrgsStore, endpoint: str) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    _, credential = await _new_workspace(orgs_store, clock)
    assert (await registry.register(credential, endpoint, "1.0")).endpoint == endpoint


async def test_sweeper_purges_deleting_rows_after_retention(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    sweeper = _sweeper(orgs_store, clock)
    workspace_id, _ = await _new_workspace(orgs_store, clock)
    async with orgs_store.transaction() as tx:
        await ws.mark_deleting(tx.conn, "org-a", workspace_id, 1, clock.now())
    clock.advance(days=6, hours=23)
    assert await sweeper.sweep_once() == 0
    clock.advance(hours=2)
    assert await sweeper.sweep_once() == 1
    async with orgs_store.transaction() as tx:
        assert await ws.get_workspace(tx.conn, "org-a", workspace_id) is None
    events = await audit_events(orgs_store)
    assert [(event["action"], event["actor"]["kind"]) for event in events] == [
        ("orgs.workspace.purge", "system")
    ]


async def test_sweeper_degrades_more_than_one_batch_per_pass(orgs_store: OrgsStore) -> None:
    clock = ManualClock()
    registry = Registry(orgs_store, clock, heartbeat_interval=INTERVAL)
    for _ in range(5):
        _, credential = await _new_workspace(orgs_store, clock)
        await registry.register(credential, "h:1", "1.0")
    clock.advance(minutes=1)
    assert await _sweeper(orgs_store, clock, batch_size=2).sweep_once() == 5
