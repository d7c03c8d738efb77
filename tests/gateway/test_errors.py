"""gRPC status → HTTP: the status code, the google.rpc.Status body with its details, and the headers."""

from __future__ import annotations

import socket

import httpx
import pytest

from services.kit.server import KeelServer
from tests.gateway.conftest import TESTING_PACKAGE, EchoBackend, StartGateway
from tests.kit.conftest import RecordingChecker, kit_settings
from tests.kit.echo_service import EchoServicer, echo_registration

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


@pytest.mark.parametrize(
    ("kind", "http_status", "status"),
    [
        ("INVALID_ARGUMENT", 400, "INVALID_ARGUMENT"),
        ("FAILED_PRECONDITION", 400, "FAILED_PRECONDITION"),
        ("OUT_OF_RANGE", 400, "OUT_OF_RANGE"),
        ("UNAUTHENTICATED", 401, "UNAUTHENTICATED"),
        ("PERMISSION_DENIED", 403, "PERMISSION_DENIED"),
        ("NOT_FOUND", 404, "NOT_FOUND"),
        ("ALREADY_EXISTS", 409, "ALREADY_EXISTS"),
        ("ABORTED", 409, "ABORTED"),
        ("RESOURCE_EXHAUSTED", 429, "RESOURCE_EXHAUSTED"),
        ("CANCELLED", 499, "CANCELLED"),
        ("UNIMPLEMENTED", 501, "UNIMPLEMENTED"),
        ("UNAVAILABLE", 503, "UNAVAILABLE"),
        ("DEADLINE_EXCEEDED", 504, "DEADLINE_EXCEEDED"),
        ("DATA_LOSS", 500, "DATA_LOSS"),
        ("UNEXPECTED", 500, "INTERNAL"),
    ],
)
async def test_every_grpc_code_maps_to_its_http_status_with_the_status_body(
    echo_gateway: httpx.AsyncClient, kind: str, http_status: int, status: str
) -> None:
    response = await echo_gateway.post(
        "/v1/echo:fail",
        json={"error": kind, "message": "it went wrong", "field": "name", "retryAfterSeconds": 2.5},
        headers={"X-Request-Id": "req-err"},
    )
    assert response.status_code == http_status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "req-err"
    error = response.json()["error"]
    assert set(error) == {"code", "status", "message", "details"}
    assert error["code"] == http_status
    assert error["status"] == status
    info = next(detail for detail in error["details"] if detail["@type"] == ERROR_INFO)
    assert info["domain"] == "keel.dev"
    if kind == "UNEXPECTED":
        # Nothing of the exception leaks; the request id is what to quote.
        assert "secret" not in response.text
        assert error["message"] == "internal error (request id req-err)"
        assert info["metadata"] == {"request_id": "req-err"}
    else:
        assert error["message"].endswith("it went wrong")
        assert info["reason"] == status
    if kind == "INVALID_ARGUMENT":
        bad_request = next(detail for detail in error["details"] if detail["@type"] == BAD_REQUEST)
        assert bad_request["fieldViolations"] == [{"field": "name", "description": "it went wrong"}]
    if kind == "RESOURCE_EXHAUSTED":
        assert response.headers["retry-after"] == "3"
        retry = next(detail for detail in error["details"] if detail["@type"] == RETRY_INFO)
        assert retry["retryDelay"] == "2.500s"
    else:
        assert "retry-after" not in response.headers
    if kind == "UNAUTHENTICATED":
        assert response.headers["www-authenticate"] == 'Bearer realm="keel"'
    else:
        assert "www-authenticate" not in response.headers


async def test_a_backend_that_does_not_answer_in_time_is_504(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await start_gateway({TESTING_PACKAGE: echo_backend.address}, gateway_backend_timeout_seconds=0.3)
    response = await client.post("/v1/echo:wait", json={"duration": "5s"})
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["status"] == "DEADLINE_EXCEEDED"
    assert error["message"] == "the service did not answer in time"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_an_unreachable_backend_is_503_without_its_address(start_gateway: StartGateway) -> None:
    port = _closed_port()
    client = await start_gateway({TESTING_PACKAGE: f"127.0.0.1:{port}"})
    response = await client.post("/v1/echo", json={"message": "hi"})
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the service is unavailable; try again later"
    assert str(port) not in response.text
    assert "retry-after" not in response.headers


async def test_a_backend_without_the_service_is_501(start_gateway: StartGateway) -> None:
    # The testing package is routed to a server that serves EchoService but not ProbeService.
    server = KeelServer(
        "echo-only", kit_settings(), [echo_registration(EchoServicer())], None, RecordingChecker()
    )
    await server.start()
    try:
        client = await start_gateway({TESTING_PACKAGE: f"127.0.0.1:{server.port}"})
        response = await client.get("/v1/probes/p1")
        assert response.status_code == 501
        assert response.json()["error"]["status"] == "UNIMPLEMENTED"
        echoed = await client.post("/v1/echo", json={"message": "still here"})
        assert echoed.json() == {"message": "still here"}
    finally:
        await server.stop()
