"""Workspace routing: one gateway in front of two real workspace servers, found through orgs' registry.

Each workspace's requests reach its own server; a stopped server is a fast
503, a restarted one (new port) is found again through the registry; a
degraded or unregistered workspace is a 503 naming its state; an unknown
workspace and a forbidden one answer alike.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from gateway.workspaces import grpc_target, token_organization
from keel.metadata.v1 import projects_pb2, projects_pb2_grpc
from services.metadata.server import MetadataService, build_service
from services.metadata.settings import MetadataSettings
from tests.clock import ManualClock
from tests.gateway.conftest import StartGateway
from tests.metadata.conftest import (  # noqa: F401  (fixtures)
    MetadataStack,
    create_workspace,
    metadata_database_url,
    metadata_settings,
    metadata_stack,
    write_secret_file,
)
from tests.orgs.conftest import OrgsStack, User

WORKSPACE_PACKAGES = ("keel.metadata.v1",)


@dataclass
class SecondServer:
    """Another workspace of the same organization, served by its own metadata server (SQLite)."""

    workspace_id: str
    settings: MetadataSettings
    service: MetadataService

    async def restart(self) -> None:
        """Stops the server and starts it again on a new port (it registers the new endpoint)."""
        await self.service.stop()
        self.service = build_service(self.settings, clock=ManualClock())
        await self.service.start()


@pytest.fixture
async def second_server(metadata_stack: MetadataStack, tmp_path: Path) -> AsyncIterator[SecondServer]:  # noqa: F811
    stack = metadata_stack
    workspace_id, credential = await create_workspace(stack.orgs, stack.organization_id, stack.owner)
    credential_file = write_secret_file(tmp_path / "second-credential", credential)
    settings = metadata_settings(
        stack.orgs,
        f"sqlite+aiosqlite:///{tmp_path / 'second.db'}",
        credential_file,
        tmp_path / "second",
    )
    server = SecondServer(workspace_id, settings, build_service(settings, clock=ManualClock()))
    await server.service.start()
    try:
        yield server
    finally:
        await server.service.stop()


async def workspace_gateway(orgs: OrgsStack, start_gateway: StartGateway) -> httpx.AsyncClient:
    """A gateway over the control plane that routes keel.metadata.v1 through the registry."""
    return await start_gateway(
        {
            "keel.authn.v1": orgs.authn_address,
            "keel.rbac.v1": orgs.rbac_address,
            "keel.orgs.v1": orgs.orgs_address,
        },
        workspace_packages=WORKSPACE_PACKAGES,
    )


def bearer(user: User) -> dict[str, str]:
    return {"authorization": f"Bearer {user.token}"}


def reason_of(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    return next(str(detail["reason"]) for detail in details if "reason" in detail)


async def test_each_workspace_is_served_by_its_own_server(
    metadata_stack: MetadataStack,  # noqa: F811
    second_server: SecondServer,
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    owner = bearer(stack.owner)
    names = {}
    for workspace_id in (stack.workspace_id, second_server.workspace_id):
        names[workspace_id] = f"p-{secrets.token_hex(3)}"
        created = await client.post(
            f"/v1/workspaces/{workspace_id}/projects", json={"name": names[workspace_id]}, headers=owner
        )
        assert created.status_code == 200, created.text
    for workspace_id in (stack.workspace_id, second_server.workspace_id):
        listed = await client.get(f"/v1/workspaces/{workspace_id}/projects", headers=owner)
        assert listed.status_code == 200, listed.text
        assert [project["name"] for project in listed.json()["projects"]] == [names[workspace_id]]
    # The first server holds only its own workspace's project (asked directly over gRPC).
    direct = await projects_pb2_grpc.ProjectServiceStub(stack.channel).ListProjects(
        projects_pb2.ListProjectsRequest(workspace_id=stack.workspace_id), metadata=stack.owner.metadata
    )
    assert [project.name for project in direct.projects] == [names[stack.workspace_id]]


async def test_a_stopped_server_is_a_fast_503_and_a_restarted_one_is_found_again(
    metadata_stack: MetadataStack,  # noqa: F811
    second_server: SecondServer,
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    owner = bearer(stack.owner)
    second = f"/v1/workspaces/{second_server.workspace_id}/projects"
    assert (await client.get(second, headers=owner)).status_code == 200  # cached from here on
    await second_server.service.stop()
    started = time.monotonic()
    stopped = await client.get(second, headers=owner)
    assert time.monotonic() - started < 3
    assert stopped.status_code == 503, stopped.text
    assert reason_of(stopped) == "WORKSPACE_UNAVAILABLE"
    assert second_server.workspace_id in stopped.json()["error"]["message"]
    # The other workspace is unaffected.
    first = await client.get(f"/v1/workspaces/{stack.workspace_id}/projects", headers=owner)
    assert first.status_code == 200, first.text
    # Restarted on another port, it registers a new endpoint; the gateway's cached one fails to connect,
    # so it asks the registry again and reaches the new server in the same request.
    await second_server.restart()
    again = await client.get(second, headers=owner)
    assert again.status_code == 200, again.text


async def test_a_degraded_or_unregistered_workspace_is_a_503_with_its_reason(
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    owner = bearer(stack.owner)
    unregistered, _ = await create_workspace(stack.orgs, stack.organization_id, stack.owner)
    answer = await client.get(f"/v1/workspaces/{unregistered}/projects", headers=owner)
    assert answer.status_code == 503, answer.text
    assert reason_of(answer) == "WORKSPACE_UNAVAILABLE"
    assert "PROVISIONING: workspace server not registered yet" in answer.json()["error"]["message"]

    registration = stack.service.registration
    assert registration is not None
    await registration.stop()
    stack.orgs.clock.advance(seconds=registration.heartbeat_seconds * 10)
    await stack.orgs.orgs.domain.workspace.sweeper.sweep_once()
    degraded = await client.get(f"/v1/workspaces/{stack.workspace_id}/projects", headers=owner)
    assert degraded.status_code == 503, degraded.text
    assert "DEGRADED: no heartbeat since" in degraded.json()["error"]["message"]
    # Not cached: heartbeats resuming make it routable at once.
    await registration.heartbeat_once()
    healthy = await client.get(f"/v1/workspaces/{stack.workspace_id}/projects", headers=owner)
    assert healthy.status_code == 200, healthy.text


async def test_an_unknown_workspace_and_a_forbidden_one_answer_alike(
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    stack = metadata_stack
    client = await workspace_gateway(stack.orgs, start_gateway)
    # A user of another organization, and one of none: neither may use the workspace.
    outsider = await stack.orgs.user()
    await stack.orgs.organization(outsider, "Elsewhere")
    loner = await stack.orgs.user()
    for user in (outsider, loner):
        answers = []
        for workspace_id in (stack.workspace_id, f"w-{secrets.token_hex(8)}"):
            response = await client.get(f"/v1/workspaces/{workspace_id}/projects", headers=bearer(user))
            answers.append((response.status_code, reason_of(response)))
        assert answers == [(403, "WORKSPACE_NOT_VISIBLE")] * 2, answers
    # Without a token: 401, whatever the workspace.
    anonymous = await client.get(f"/v1/workspaces/{stack.workspace_id}/projects")
    assert anonymous.status_code == 401, anonymous.text


def test_registered_endpoints_become_grpc_targets() -> None:
    assert grpc_target("10.0.0.5:7001") == ("10.0.0.5:7001", False)
    assert grpc_target("http://ws-1.internal:7001/ignored") == ("ws-1.internal:7001", False)
    assert grpc_target("https://ws-1.example.com") == ("ws-1.example.com:443", True)
    assert grpc_target("http://[::1]:7001") == ("[::1]:7001", False)


def test_the_token_organization_is_read_as_a_hint_only() -> None:
    def token(claims: object) -> str:
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"Bearer e30.{payload}.c2ln"

    assert token_organization([("authorization", token({"sub": "u", "org": "org-1"}))]) == "org-1"
    assert token_organization([("authorization", token({"sub": "u"}))]) == ""
    assert token_organization([("authorization", token({"org": 7}))]) == ""
    assert token_organization([("authorization", "Bearer not-a-jwt")]) == ""
    assert token_organization([("authorization", "Bearer a.%%%.c")]) == ""
    assert token_organization([]) == ""
