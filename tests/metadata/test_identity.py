"""Workspace identity: registration and heartbeats against a real orgs, restarts during an outage."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from keel.metadata.v1 import projects_pb2 as pb
from keel.metadata.v1 import projects_pb2_grpc as pb_grpc
from keel.orgs.v1 import workspaces_pb2
from services.metadata.identity import IdentityError, read_credential_file, workspace_id_of
from services.metadata.server import build_service
from tests.clock import ManualClock
from tests.metadata.conftest import MetadataStack, write_secret_file

# Nothing listens here: the control plane is unreachable.
UNREACHABLE = "127.0.0.1:1"


async def _state(stack: MetadataStack) -> int:
    workspace = await stack.workspaces.GetWorkspace(
        workspaces_pb2.GetWorkspaceRequest(
            organization_id=stack.organization_id, workspace_id=stack.workspace_id
        ),
        metadata=stack.owner.metadata,
    )
    return int(workspace.state)


async def test_heartbeats_keep_the_workspace_active_and_silence_degrades_it(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    registration = stack.service.registration
    assert registration is not None
    assert registration.registered
    # Drive heartbeats by hand from here on: the background task must not interfere.
    await registration.stop()
    sweeper = stack.orgs.orgs.domain.workspace.sweeper
    orgs_clock = stack.orgs.clock
    interval = registration.heartbeat_seconds
    assert interval > 0
    orgs_clock.advance(seconds=interval * 2)
    assert await registration.heartbeat_once() == workspaces_pb2.ACTIVE
    orgs_clock.advance(seconds=interval * 2)
    await sweeper.sweep_once()
    assert await _state(stack) == workspaces_pb2.ACTIVE
    orgs_clock.advance(seconds=interval * 10)
    await sweeper.sweep_once()
    assert await _state(stack) == workspaces_pb2.DEGRADED
    # Heartbeats resuming bring it back.
    assert await registration.heartbeat_once() == workspaces_pb2.ACTIVE
    assert await _state(stack) == workspaces_pb2.ACTIVE


async def test_a_restart_during_an_outage_serves_on_the_stored_identity(
    metadata_stack: MetadataStack,
) -> None:
    stack = metadata_stack
    project = await stack.project("kept")
    await stack.stop_metadata()
    restarted = build_service(stack.restart_settings(orgs_address=UNREACHABLE), clock=ManualClock())
    await restarted.start()
    try:
        assert restarted.registration is not None
        assert not restarted.registration.registered  # retrying in the background
        assert restarted.workspace.organization_id == stack.organization_id
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            got = await pb_grpc.ProjectServiceStub(channel).GetProject(
                pb.GetProjectRequest(workspace_id=stack.workspace_id, project_id=project.id),
                metadata=stack.owner.metadata,
            )
        assert got.id == project.id
    finally:
        await restarted.stop()


async def test_without_stored_identity_and_control_plane_it_refuses_to_start(
    metadata_stack: MetadataStack, tmp_path: Path
) -> None:
    stack = metadata_stack
    fresh = stack.restart_settings(
        orgs_address=UNREACHABLE, database_url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    )
    service = build_service(fresh, clock=ManualClock())
    with pytest.raises(IdentityError, match="no workspace identity is stored"):
        await service.start()


async def test_a_refused_credential_stops_the_start(metadata_stack: MetadataStack, tmp_path: Path) -> None:
    stack = metadata_stack
    forged = stack.credential[:-4] + "AAAA"
    settings = stack.restart_settings(
        workspace_credential_file=write_secret_file(tmp_path / "forged", forged),
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'forged.db'}",
    )
    service = build_service(settings, clock=ManualClock())
    with pytest.raises(IdentityError, match="refused") as refused:
        await service.start()
    assert forged not in str(refused.value)
    assert stack.credential not in str(refused.value)


def test_the_credential_file_must_be_private_and_well_formed(tmp_path: Path) -> None:
    good = "keel_wsc_0b6f7a3e-58e4-4c8b-9a7e-2f0f1b9d7c11_" + "s" * 43
    assert workspace_id_of(good) == "0b6f7a3e-58e4-4c8b-9a7e-2f0f1b9d7c11"
    with pytest.raises(IdentityError) as malformed:
        workspace_id_of("keel_wsc_nope_secret-value")
    assert "secret-value" not in str(malformed.value)
    shared = tmp_path / "shared"
    shared.write_text(good, encoding="utf-8")
    os.chmod(shared, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        read_credential_file(shared)
    with pytest.raises(IdentityError, match="cannot read"):
        read_credential_file(tmp_path / "missing")
    assert read_credential_file(write_secret_file(tmp_path / "ok", good + "\n")) == good


class Gate:
    """A TCP relay to orgs that can be closed (connections refused at once) and opened again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_after_an_outage_registration_is_retried_until_it_works(metadata_stack: MetadataStack) -> None:
    stack = metadata_stack
    await stack.stop_metadata()
    gate = Gate(stack.orgs.orgs.port)
    await gate.start()
    restarted = build_service(
        stack.restart_settings(orgs_address=f"127.0.0.1:{gate.port}"), clock=ManualClock()
    )
    try:
        await restarted.start()
        registration = restarted.registration
        assert registration is not None
        assert not registration.registered
        await registration.stop()  # the test drives the steps
        gate.open = True
        await registration.tick()
        assert registration.registered
        assert await registration.heartbeat_once() == workspaces_pb2.ACTIVE
    finally:
        await restarted.stop()
        await gate.stop()
