"""/openapi.json (valid OpenAPI 3.1 listing every annotated RPC with its authorization rule, streams as
Server-Sent Events), /healthz, /readyz, the settings, and `python -m gateway` as a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from gateway.app import build_gateway
from gateway.bindings import bindings_of, http_rule, keel_services
from gateway.openapi import build_document, load_comments
from gateway.settings import GatewaySettings
from services.kit.config import ConfigurationError, load_settings
from tests.gateway.conftest import TESTING_PACKAGE, EchoBackend, StartGateway

CONTROL_PLANE = ("keel.authn.v1", "keel.rbac.v1", "keel.orgs.v1")


def _operations(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [operation for item in document["paths"].values() for operation in item.values()]


def _annotated_served_rpcs(packages: tuple[str, ...]) -> set[str]:
    """Annotated unary and server-streaming RPCs (client streams are not served)."""
    return {
        f"/{service.full_name}/{method.name}"
        for service in keel_services(packages)
        for method in service.methods
        if http_rule(method) is not None and not method.client_streaming
    }


async def _control_plane_document() -> dict[str, Any]:
    """/openapi.json of the default gateway: the control plane and the workspace server's RPCs."""
    gateway = build_gateway(GatewaySettings())
    try:
        document: dict[str, Any] = json.loads(gateway.openapi)
    finally:
        await gateway.backends.close()
    return document


def _operation_of(document: dict[str, Any], rpc: str) -> tuple[str, dict[str, Any]]:
    """(path, operation) of the one operation of an RPC (a "/pkg.Service/Method" path)."""
    found = [
        (path, operation)
        for path, item in document["paths"].items()
        for operation in item.values()
        if operation["x-keel-rpc"] == rpc
    ]
    assert len(found) == 1, f"{rpc}: {len(found)} operations"
    return found[0]


async def test_openapi_json_is_valid_and_documents_every_served_rpc(echo_gateway: httpx.AsyncClient) -> None:
    response = await echo_gateway.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    operations = _operations(document)
    assert {operation["x-keel-rpc"] for operation in operations} == _annotated_served_rpcs((TESTING_PACKAGE,))
    # One operation per binding: the additional bindings are documented too.
    expected = sum(len(bindings_of(service)) for service in keel_services([TESTING_PACKAGE]))
    assert len(operations) == expected
    echo = document["paths"]["/v1/echo"]["post"]
    assert echo["summary"] == "Returns the message unchanged; the raw-ceiling benchmark call"
    assert "**Authorization:** Public (test service: measures the call path" in echo["description"]
    assert echo["x-keel-authorization"]["kind"] == "public"
    thing = document["paths"]["/v1/organizations/{organization_id}/things/{thing_id}"]["get"]
    assert "Requires the permission `thing.read`" in thing["description"]
    assert thing["x-keel-authorization"]["permission"] == "thing.read"
    assert thing["security"] == [{"bearer": []}]
    listing = document["paths"]["/v1/probeSets/{parent_id}/probes"]["get"]
    query = {parameter["name"] for parameter in listing["parameters"] if parameter["in"] == "query"}
    assert {"pageSize", "tags", "readMask", "createdAfter", "example.inner.count", "example.color"} <= query
    assert "example.labels" not in query
    assert "example.attributes" not in query
    probe = document["components"]["schemas"]["keel.testing.v1.Probe"]
    assert probe["properties"]["int64Value"]["type"] == "string"
    assert probe["properties"]["time"]["format"] == "date-time"
    assert probe["properties"]["createTime"]["readOnly"] is True
    assert probe["properties"]["color"]["$ref"] == "#/components/schemas/keel.testing.v1.Probe.Color"
    assert document["components"]["schemas"]["Error"]["properties"]["error"]["required"] == [
        "code",
        "status",
        "message",
        "details",
    ]


async def test_the_control_plane_document_lists_every_annotated_rpc_with_its_rule() -> None:
    document = await _control_plane_document()
    validate(document)
    operations = _operations(document)
    # By default the workspace server's RPCs are served too (routed through orgs' registry), streams included.
    served = _annotated_served_rpcs((*CONTROL_PLANE, "keel.metadata.v1"))
    assert {operation["x-keel-rpc"] for operation in operations} == served
    for operation in operations:
        assert "**Authorization:**" in operation["description"], operation["operationId"]
        assert operation["summary"], operation["operationId"]
    update_team = document["paths"]["/v1/organizations/{organization_id}/teams/{team_id}"]["patch"]
    renamed = {p["name"]: p.get("x-keel-field") for p in update_team["parameters"] if p["in"] == "path"}
    assert renamed == {"organization_id": "team.organization_id", "team_id": "team.id"}


def test_the_document_of_every_keel_service_is_valid() -> None:
    bindings = [
        binding
        for service in keel_services()
        for streaming in (False, True)
        for binding in bindings_of(service, streaming=streaming)
    ]
    validate(build_document(bindings, load_comments()))


async def test_the_watch_streams_are_documented_as_server_sent_events() -> None:
    document = await _control_plane_document()
    validate(document)
    watches = {
        "WatchRun": "/v1/workspaces/{workspace_id}/projects/{project_id}/runs/{run_id}:watch",
        "WatchRuns": "/v1/workspaces/{workspace_id}/projects/{project_id}/runs:watch",
    }
    for name, expected_path in watches.items():
        path, operation = _operation_of(document, f"/keel.metadata.v1.RunService/{name}")
        assert path == expected_path
        assert operation["operationId"] == f"keel.metadata.v1.RunService.{name}"
        success = operation["responses"]["200"]
        assert list(success["content"]) == ["text/event-stream"]
        assert success["content"]["text/event-stream"]["schema"] == {"type": "string"}
        assert "Each event's `data` is keel.metadata.v1.RunEvent" in success["description"]
        # The rest is a unary operation's: parameters, authorization rule, errors, security.
        assert operation["responses"]["default"] == {"$ref": "#/components/responses/Error"}
        assert operation["security"] == [{"bearer": []}]
        assert "**Authorization:** Requires the permission" in operation["description"]
        located = {(parameter["in"], parameter["name"]): parameter for parameter in operation["parameters"]}
        assert {"workspace_id", "project_id"} <= {named for place, named in located if place == "path"}
        assert ("query", "afterCursor") in located
        resume = located[("header", "Last-Event-ID")]
        assert resume["required"] is False
        assert resume["schema"]["type"] == "string"
        assert "resume cursor" in resume["description"]
    _, watch_run = _operation_of(document, "/keel.metadata.v1.RunService/WatchRun")
    assert watch_run["x-keel-authorization"]["permission"] == "run.read"


async def test_the_event_schema_of_a_stream_is_a_component() -> None:
    document = await _control_plane_document()
    _, operation = _operation_of(document, "/keel.metadata.v1.RunService/WatchRuns")
    event = operation["responses"]["200"]["content"]["text/event-stream"]["x-keel-event-schema"]
    prefix = "#/components/schemas/"
    assert event == {"$ref": prefix + "keel.metadata.v1.RunEvent"}
    # The validator does not follow references inside extensions: the component must be there anyway.
    schema = document["components"]["schemas"][event["$ref"].removeprefix(prefix)]
    assert {"kind", "cursor", "run"} <= set(schema["properties"])


async def test_healthz_and_readyz_follow_the_backends(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await start_gateway({TESTING_PACKAGE: echo_backend.address})
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.head("/healthz")).status_code == 200
    # Another method on a probe's path is an API path like any other: the JSON 404, with a request id.
    posted = await client.post("/healthz")
    assert posted.status_code == 404
    assert posted.json()["error"]["status"] == "NOT_FOUND"
    assert posted.headers["x-request-id"]
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "backends": {TESTING_PACKAGE: "SERVING"}}
    await echo_backend.server.stop()
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json() == {"status": "not ready", "backends": {TESTING_PACKAGE: "UNREACHABLE"}}
    assert (await client.get("/healthz")).status_code == 200


def test_invalid_settings_stop_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEEL_GATEWAY_BACKENDS", "keel.testing.v1")
    with pytest.raises(ConfigurationError, match="KEEL_GATEWAY_BACKENDS"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("KEEL_GATEWAY_BACKENDS", "keel.testing.v1=127.0.0.1:6000, keel.orgs.v1=orgs:7000")
    settings = load_settings(GatewaySettings)
    assert settings.backend_addresses()["keel.testing.v1"] == "127.0.0.1:6000"
    assert settings.backend_addresses()["keel.orgs.v1"] == "orgs:7000"
    monkeypatch.setenv("KEEL_LISTEN_ADDRESS", "nowhere")
    with pytest.raises(ConfigurationError, match="KEEL_LISTEN_ADDRESS"):
        load_settings(GatewaySettings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_python_m_gateway_serves_until_sigterm(echo_backend: EchoBackend) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "KEEL_LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "KEEL_GATEWAY_BACKENDS": f"{TESTING_PACKAGE}={echo_backend.address}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.returncode is None, "the gateway exited early"
                assert asyncio.get_running_loop().time() < deadline, "the gateway did not start"
                await asyncio.sleep(0.1)
            echoed = await client.post("/v1/echo", json={"message": "from a process"})
            assert echoed.json() == {"message": "from a process"}
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_python_m_gateway_openapi_prints_the_document() -> None:
    env = {**os.environ, "KEEL_GATEWAY_BACKENDS": f"{TESTING_PACKAGE}=127.0.0.1:1"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "openapi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    document = json.loads(result.stdout)
    assert "/v1/echo" in document["paths"]
    assert "/v1/users" in document["paths"]
