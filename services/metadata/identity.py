"""Which workspace this server serves: read from its credential, registered with the control plane.

The workspace server credential (`keel_wsc_<workspace id>_<secret>`, issued by
orgs) names the workspace; the registry's answer adds the organization. Both
are kept in `metadata_workspace` so a restart during a control-plane outage can
still authorize: the stored identity is used and registration is retried in
the background. With neither, the server refuses to start. The credential is
never logged, stored or echoed: errors name only the file.
"""

from __future__ import annotations

import asyncio
import logging
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from keel.orgs.v1 import workspaces_pb2, workspaces_pb2_grpc
from services.kit import errors
from services.kit.clock import Clock
from services.kit.periodic import PeriodicTask
from services.metadata.store import MetadataStore, workspace

logger = logging.getLogger(__name__)

_SHAPE = re.compile(r"keel_wsc_([0-9a-f-]{36})_[A-Za-z0-9_-]+")
# The registry could not be reached: keep serving on the stored identity and retry.
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# How long a background registration attempt waits for the control plane to become reachable.
RETRY_WAIT_SECONDS = 5.0


class IdentityError(Exception):
    """The server cannot know which workspace it serves; it must not start."""


@dataclass(frozen=True)
class WorkspaceIdentity:
    """The organization and workspace this server serves."""

    organization_id: str
    workspace_id: str


def workspace_id_of(credential: str) -> str:
    """The workspace id a credential names (IdentityError, without the credential, when malformed)."""
    match = _SHAPE.fullmatch(credential)
    if match is None:
        raise IdentityError("the workspace credential is malformed (expected keel_wsc_<workspace id>_<...>)")
    return match.group(1)


def read_credential_file(path: Path) -> str:
    """The credential in `path`; refuses a missing, empty or group/world-readable file."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise IdentityError(f"cannot read the workspace credential file {path}: {error.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(f"{path} must not be readable by group or others (chmod 600)")
    if not text:
        raise IdentityError(f"{path} is empty")
    return text


class ServedWorkspace:
    """The identity once known; handlers ask it whether a request is for this workspace."""

    def __init__(self, identity: WorkspaceIdentity | None = None) -> None:
        self._identity = identity

    @property
    def known(self) -> bool:
        """Whether the identity is set."""
        return self._identity is not None

    @property
    def identity(self) -> WorkspaceIdentity:
        """The identity (the server does not serve before it is set)."""
        if self._identity is None:
            raise errors.Unavailable("the workspace server has not established its identity yet")
        return self._identity

    @property
    def organization_id(self) -> str:
        """The organization of the workspace."""
        return self.identity.organization_id

    @property
    def workspace_id(self) -> str:
        """The workspace served."""
        return self.identity.workspace_id

    def set(self, identity: WorkspaceIdentity) -> None:
        """Sets the identity (once; the same identity again is a no-op)."""
        if self._identity is not None and self._identity != identity:
            raise IdentityError("the workspace identity cannot change while serving")
        self._identity = identity

    def require(self, workspace_id: str) -> None:
        """INVALID_ARGUMENT when empty, NOT_FOUND when it is not this server's workspace."""
        if not workspace_id:
            raise errors.InvalidArgument("workspace_id", "is required")
        if workspace_id != self.workspace_id:
            raise errors.NotFound(f"workspace {workspace_id!r} not found")


async def load_identity(conn: AsyncConnection) -> WorkspaceIdentity | None:
    """The stored identity, or None."""
    row = (await conn.execute(select(workspace.c.organization_id, workspace.c.workspace_id))).first()
    return None if row is None else WorkspaceIdentity(row.organization_id, row.workspace_id)


async def save_identity(conn: AsyncConnection, identity: WorkspaceIdentity, clock: Clock) -> None:
    """Replaces the stored identity (one row)."""
    await conn.execute(delete(workspace))
    await conn.execute(
        insert(workspace).values(
            workspace_id=identity.workspace_id,
            organization_id=identity.organization_id,
            register_time=clock.now(),
        )
    )


class WorkspaceRegistration:
    """Registers with orgs' WorkspaceRegistryService and keeps the heartbeats going.

    One `PeriodicTask` at a time: registration retries (while the control plane
    is unreachable) or heartbeats at the interval the registry answers.
    """

    def __init__(
        self,
        credential: str,
        store: MetadataStore,
        connect_orgs: Callable[[], grpc.aio.Channel],
        clock: Clock,
        served: ServedWorkspace,
        *,
        endpoint: Callable[[], str],
        server_version: str,
        retry_seconds: float = 5.0,
    ) -> None:
        self.workspace_id = workspace_id_of(credential)
        self._credential = credential
        self._store = store
        # Owned here: a retry after a failure reconnects on a fresh channel rather than waiting
        # out the failed channel's reconnection backoff.
        self._connect = connect_orgs
        self._channel = connect_orgs()
        self._stub: Any = workspaces_pb2_grpc.WorkspaceRegistryServiceStub(self._channel)
        self._clock = clock
        self._served = served
        self._endpoint = endpoint
        self._server_version = server_version
        self._retry_seconds = retry_seconds
        self.registered = False
        self.heartbeat_seconds = 0.0
        self.last_state = workspaces_pb2.WORKSPACE_STATE_UNSPECIFIED
        self._task: PeriodicTask | None = None
        self._switch: asyncio.Task[None] | None = None
        self._closing = False

    def __repr__(self) -> str:  # never show the credential
        return f"WorkspaceRegistration(workspace_id={self.workspace_id!r}, registered={self.registered})"

    async def establish(self) -> WorkspaceIdentity:
        """Registers, or falls back to the stored identity; IdentityError when neither works."""
        async with self._store.transaction() as tx:
            stored = await load_identity(tx.conn)
        if stored is not None and stored.workspace_id != self.workspace_id:
            raise IdentityError(
                f"the database belongs to workspace {stored.workspace_id}, "
                f"the credential to {self.workspace_id}"
            )
        try:
            identity = await self.register_once()
        except grpc.aio.AioRpcError as error:
            if error.code() not in _TRANSIENT:
                raise IdentityError(
                    f"the control plane refused the registration of workspace {self.workspace_id}: "
                    f"{error.code().name} {error.details()}"
                ) from None
            if stored is None:
                raise IdentityError(
                    f"the control plane is unreachable ({error.code().name}) and no workspace identity is "
                    "stored yet: the first start needs the control plane"
                ) from None
            logger.warning(
                "control plane unreachable (%s); serving workspace %s on the stored identity and retrying "
                "registration in the background",
                error.code().name,
                self.workspace_id,
            )
            self._served.set(stored)
            self._run(self._retry_seconds)
            return stored
        self._run(self.heartbeat_seconds)
        return identity

    async def register_once(self, *, wait_seconds: float = 0.0) -> WorkspaceIdentity:
        """One RegisterWorkspaceServer call; stores and serves the identity it answers.

        `wait_seconds` > 0 waits up to that long for the channel to (re)connect
        instead of failing fast: background retries use it, because a channel that
        failed backs off before reconnecting and would otherwise fail at once.
        """
        options: dict[str, Any] = {"wait_for_ready": True, "timeout": wait_seconds} if wait_seconds else {}
        response = await self._stub.RegisterWorkspaceServer(
            workspaces_pb2.RegisterWorkspaceServerRequest(
                credential=self._credential,
                endpoint=self._endpoint(),
                server_version=self._server_version,
            ),
            **options,
        )
        answered = response.workspace
        if answered.id != self.workspace_id:
            raise IdentityError("the registry answered for another workspace")
        identity = WorkspaceIdentity(answered.organization_id, answered.id)
        async with self._store.transaction() as tx:
            stored = await load_identity(tx.conn)
            if stored is not None and stored != identity:
                raise IdentityError("the registry answered another organization than the stored one")
            if stored is None:
                await save_identity(tx.conn, identity, self._clock)
        self._served.set(identity)
        self.registered = True
        self.heartbeat_seconds = response.heartbeat_interval.ToTimedelta().total_seconds() or 10.0
        self.last_state = answered.state
        logger.info("registered workspace %s with the control plane", identity.workspace_id)
        return identity

    async def heartbeat_once(self) -> int:
        """One SendHeartbeat call; the workspace state the registry answered."""
        response = await self._stub.SendHeartbeat(
            workspaces_pb2.SendHeartbeatRequest(credential=self._credential)
        )
        self.last_state = response.state
        interval = response.heartbeat_interval.ToTimedelta().total_seconds()
        if interval and interval != self.heartbeat_seconds:
            self.heartbeat_seconds = interval
            self._later(interval)
        return int(response.state)

    async def tick(self) -> None:
        """One step of the background task: register (until it worked), then heartbeat."""
        if self._closing:
            return
        try:
            if self.registered:
                await self.heartbeat_once()
                return
            await self._reconnect()
            await self.register_once(wait_seconds=RETRY_WAIT_SECONDS)
        except asyncio.CancelledError:
            if self._closing:  # close() cancelled the call by closing its channel
                return
            raise
        self._later(self.heartbeat_seconds)

    async def _reconnect(self) -> None:
        old, self._channel = self._channel, self._connect()
        self._stub = workspaces_pb2_grpc.WorkspaceRegistryServiceStub(self._channel)
        await old.close(None)

    def _run(self, interval: float) -> None:
        name = "metadata-heartbeat" if self.registered else "metadata-register-retry"
        self._task = PeriodicTask(name, self.tick, interval)
        self._task.start()

    def _later(self, interval: float) -> None:
        # Called from inside the task's own step: the swap must wait for that step to end.
        async def swap() -> None:
            if self._task is not None:
                await self._task.stop()
            self._run(interval)

        self._switch = asyncio.create_task(swap(), name="metadata-heartbeat-swap")

    async def stop(self) -> None:
        """Stops the heartbeats (or the registration retries)."""
        if self._switch is not None:
            await self._switch
            self._switch = None
        if self._task is not None:
            await self._task.stop()
            self._task = None

    async def close(self) -> None:
        """Stops the background task and closes the channel to orgs.

        The channel closes first: that cancels a registration attempt waiting for an
        unreachable control plane, so stopping never waits it out.
        """
        self._closing = True
        await self._channel.close(None)
        await self.stop()
        await self._channel.close(None)  # one the step in progress may have opened meanwhile
