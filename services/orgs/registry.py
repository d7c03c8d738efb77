"""The workspace registry: servers register and send heartbeats; the sweeper marks silent ones DEGRADED.

Rules and state only: no gRPC, no SQL. A server proves itself with its
workspace credential; every way a credential can fail (malformed, unknown
workspace, rotated out, workspace DELETING) is the same UNAUTHENTICATED, and
the credential is never logged or stored.

States: PROVISIONING → ACTIVE (register) → DEGRADED (no heartbeat for
interval x missed heartbeats, by the sweeper) → ACTIVE (heartbeat or
register); DELETING is terminal and its row is purged after the retention.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.audit import SYSTEM, Actor, AuditEvent, event_for_request, record
from services.kit.audit_chain import format_time
from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from services.orgs import workspace_credentials as credentials
from services.orgs import workspace_store as ws
from services.orgs.store import OUTBOX, OrgsStore
from services.orgs.workspaces import check_endpoint

logger = logging.getLogger(__name__)

MAX_SERVER_VERSION = 128
# The one answer to every bad credential: which check failed is never revealed.
BAD_CREDENTIAL = "invalid workspace credential"


def _noop() -> None:
    return None


def server_actor(workspace_id: str) -> Actor:
    """The audit actor of a workspace server: the platform's own component, named by its workspace."""
    return Actor(f"workspace_server:{workspace_id}", "system")


@dataclass(frozen=True)
class Heartbeat:
    """The workspace's state after a heartbeat."""

    state: str


class Registry:
    """Registration and heartbeats of workspace servers."""

    def __init__(
        self,
        store: OrgsStore,
        clock: Clock,
        *,
        heartbeat_interval: timedelta,
        audit_recorded: Callable[[], None] = _noop,
    ) -> None:
        self._store = store
        self._clock = clock
        self.heartbeat_interval = heartbeat_interval
        self._audit_recorded = audit_recorded

    async def register(self, credential: str, endpoint: str, server_version: str) -> ws.WorkspaceRecord:
        """Records the server's endpoint and version; the workspace becomes ACTIVE."""
        presented = await self._authenticate(credential)
        endpoint = check_endpoint(endpoint, "endpoint", required=True)
        server_version = check_server_version(server_version)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            registered = await ws.register_server(
                tx.conn, presented.workspace_id, presented.secret_hash, endpoint, server_version, now
            )
            if registered is None:  # rotated or deleted since the check
                raise Unauthenticated(BAD_CREDENTIAL)
            previous, workspace = registered
            await _audit_server(
                tx.conn,
                "register",
                workspace,
                now,
                {"endpoint": endpoint, "server_version": server_version, "previous_state": previous},
            )
        self._audit_recorded()
        return workspace

    async def heartbeat(self, credential: str) -> Heartbeat:
        """Notes that the server is alive; a DEGRADED workspace is ACTIVE again."""
        presented = await self._authenticate(credential)
        now = self._clock.now()
        async with self._store.transaction() as tx:
            beat = await ws.record_heartbeat(tx.conn, presented.workspace_id, presented.secret_hash, now)
            if beat is None:
                raise Unauthenticated(BAD_CREDENTIAL)
            previous, workspace = beat
            if previous == ws.PROVISIONING:
                raise FailedPrecondition(
                    "the workspace server has not registered; call RegisterWorkspaceServer first",
                    reason="WORKSPACE_SERVER_NOT_REGISTERED",
                )
            if previous == ws.DEGRADED:
                await _audit_server(tx.conn, "recover", workspace, now, {"previous_state": previous})
        if previous == ws.DEGRADED:
            self._audit_recorded()
        return Heartbeat(workspace.state)

    async def _authenticate(self, credential: str) -> credentials.PresentedCredential:
        presented = credentials.parse(credential)
        stored: str | None = None
        if presented is not None:
            async with self._store.transaction() as tx:
                stored = await ws.credential_hash_of(tx.conn, presented.workspace_id)
        if presented is None or not credentials.matches(presented, stored):
            raise Unauthenticated(BAD_CREDENTIAL)
        return presented


def check_server_version(value: str) -> str:
    """A version string: 1 to 128 printable characters without spaces."""
    if not value:
        raise InvalidArgument("server_version", "is required")
    if len(value) > MAX_SERVER_VERSION:
        raise InvalidArgument("server_version", f"must be at most {MAX_SERVER_VERSION} characters")
    if not value.isprintable() or any(char.isspace() for char in value):
        raise InvalidArgument("server_version", "must be printable characters without spaces")
    return value


class RegistrySweeper:
    """Marks workspaces whose servers went silent DEGRADED and purges long-DELETING rows.

    Safe with several orgs replicas sweeping at once: each transition is one
    bounded, conditional UPDATE (see `workspace_store.degrade_silent`), so a
    row moves at most once and its audit event is recorded once.
    """

    def __init__(
        self,
        store: OrgsStore,
        clock: Clock,
        *,
        heartbeat_interval: timedelta,
        missed_heartbeats: int,
        deleted_retention: timedelta,
        audit_recorded: Callable[[], None] = _noop,
        batch_size: int = 500,
    ) -> None:
        if missed_heartbeats < 1 or batch_size < 1:
            raise ValueError("missed_heartbeats and batch_size must be at least 1")
        self._store = store
        self._clock = clock
        self._interval = heartbeat_interval
        self._silence = heartbeat_interval * missed_heartbeats
        self._retention = deleted_retention
        self._audit_recorded = audit_recorded
        self._batch_size = batch_size

    @property
    def interval_seconds(self) -> float:
        """How often the sweeper should run: every heartbeat interval."""
        return self._interval.total_seconds()

    async def sweep_once(self) -> int:
        """One pass: degrade silent workspaces, purge expired DELETING ones; how many rows changed."""
        changed = 0
        while True:
            now = self._clock.now()
            async with self._store.transaction() as tx:
                degraded = await ws.degrade_silent(tx.conn, now - self._silence, now, self._batch_size)
                await _audit_system(tx.conn, "degrade", degraded, now)
            changed += len(degraded)
            if degraded:
                self._audit_recorded()
            if len(degraded) < self._batch_size:
                break
        while True:
            now = self._clock.now()
            async with self._store.transaction() as tx:
                purged = await ws.purge_deleted(tx.conn, now - self._retention, self._batch_size)
                await _audit_system(tx.conn, "purge", purged, now)
            changed += len(purged)
            if purged:
                self._audit_recorded()
            if len(purged) < self._batch_size:
                break
        return changed


async def _audit_server(
    conn: AsyncConnection, verb: str, workspace: ws.WorkspaceRecord, now: datetime, details: Mapping[str, Any]
) -> None:
    # The request's id and source address, with the workspace server (not "anonymous") as actor.
    event = event_for_request(
        action=f"orgs.workspace.{verb}",
        resource_type="workspace",
        resource_id=workspace.id,
        organization_id=workspace.organization_id,
        occur_time=now,
        details=details,
    )
    await record(conn, OUTBOX, dataclasses.replace(event, actor=server_actor(workspace.id)))


async def _audit_system(
    conn: AsyncConnection, verb: str, changes: Sequence[ws.StateChange], now: datetime
) -> None:
    for change in changes:
        heartbeat = change.last_heartbeat_time
        event = AuditEvent(
            organization_id=change.organization_id,
            actor=SYSTEM,
            action=f"orgs.workspace.{verb}",
            resource_type="workspace",
            resource_id=change.id,
            outcome="SUCCESS",
            occur_time=now,
            details={"last_heartbeat_time": format_time(heartbeat) if heartbeat else ""},
        )
        await record(conn, OUTBOX, event)
