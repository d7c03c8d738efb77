"""Edge protection and observability through a real gateway (uvicorn) in front of a real gRPC backend.

Security headers and request ids on every response, CORS from the allow-list,
the body cap, client deadlines within bounds, token-bucket rate limits with
429 + Retry-After, W3C trace context into the gRPC metadata, access logs.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from starlette.datastructures import Headers

from gateway.edge import CONTENT_SECURITY_POLICY, TokenBuckets, principal_label, requested_timeout
from tests.gateway.conftest import TESTING_PACKAGE, EchoBackend, StartGateway

SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
APP = "https://app.example.test"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _error(response: httpx.Response) -> tuple[str, str]:
    body = response.json()["error"]
    return body["status"], body["details"][0]["reason"]


async def _gateway(
    start_gateway: StartGateway, backend: EchoBackend, **settings: object
) -> httpx.AsyncClient:
    return await start_gateway({TESTING_PACKAGE: backend.address}, **settings)


async def test_every_response_has_security_headers_and_a_request_id(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend)
    answers = [
        await client.get("/healthz"),
        await client.get("/openapi.json"),
        await client.get("/v1/probes/p1"),
        await client.get("/no/such/path"),
        await client.post("/v1/echo", content=b"{not json"),
        await client.put("/v1/echo"),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 404, 400, 405]
    for answer in answers:
        assert {name: answer.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        assert "strict-transport-security" not in answer.headers
        assert len(answer.headers["x-request-id"]) == 36
    assert len({answer.headers["x-request-id"] for answer in answers}) == len(answers)


async def test_hsts_is_sent_when_configured(echo_backend: EchoBackend, start_gateway: StartGateway) -> None:
    client = await _gateway(start_gateway, echo_backend, gateway_hsts_max_age_seconds=31536000)
    answer = await client.get("/no/such/path")
    assert answer.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


async def test_a_valid_request_id_is_kept_and_an_invalid_one_replaced_on_both_sides(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend)
    kept = await client.get("/v1/probes/p1", headers={"x-request-id": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    assert echo_backend.probes.metadata[-1]["x-request-id"] == "abc-123"
    replaced = await client.get("/v1/probes/p1", headers={"x-request-id": "bad id\t!"})
    assert replaced.headers["x-request-id"] != "bad id\t!"
    assert echo_backend.probes.metadata[-1]["x-request-id"] == replaced.headers["x-request-id"]
    missing = await client.get("/nowhere", headers={"x-request-id": "route-404"})
    assert missing.headers["x-request-id"] == "route-404"


async def test_cors_allows_listed_origins_only(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend, gateway_cors_origins=f"{APP}, http://localhost:3000")
    preflight = await client.options(
        "/v1/probes/p1",
        headers={"origin": APP, "access-control-request-method": "PATCH", "x-request-id": "pre-1"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP
    assert "PATCH" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"]
    assert preflight.headers["x-request-id"] == "pre-1"
    assert "Origin" in preflight.headers["vary"]

    refused = await client.options(
        "/v1/probes/p1", headers={"origin": "https://evil.test", "access-control-request-method": "GET"}
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    assert _error(refused) == ("PERMISSION_DENIED", "CORS_REJECTED")

    allowed = await client.get("/v1/probes/p1", headers={"origin": APP})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in allowed.headers["access-control-expose-headers"]
    assert "access-control-allow-credentials" not in allowed.headers
    other = await client.get("/v1/probes/p1", headers={"origin": "https://evil.test"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_cors_origins_must_be_origins() -> None:
    from gateway.settings import GatewaySettings

    with pytest.raises(ValueError, match="not an origin"):
        GatewaySettings(gateway_cors_origins="https://app.example.test/path")


async def test_a_declared_body_over_the_cap_is_refused_before_routing(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend, gateway_max_body_bytes=1024)
    answer = await client.post("/no/such/path", content=b"x" * 2048)
    assert answer.status_code == 413
    assert _error(answer) == ("INVALID_ARGUMENT", "REQUEST_TOO_LARGE")
    assert answer.headers["x-content-type-options"] == "nosniff"


async def test_client_deadlines_are_honoured_within_the_maximum(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend, gateway_max_timeout_seconds=0.5)
    wait = {"duration": "5s"}
    for headers in ({"grpc-timeout": "200m"}, {"x-request-timeout": "0.2"}, {"x-request-timeout": "100"}):
        started = time.monotonic()
        answer = await client.post("/v1/echo:wait", json=wait, headers=headers)
        elapsed = time.monotonic() - started
        assert answer.status_code == 504, headers
        # 100 s asked is capped to the 0.5 s maximum; 0.2 s is honoured as asked.
        assert elapsed < (1.5 if headers.get("x-request-timeout") == "100" else 0.45), (headers, elapsed)
    short = await client.post("/v1/echo:wait", json={"duration": "0.05s"}, headers={"grpc-timeout": "3S"})
    assert short.status_code == 200
    assert short.json() == {"completed": True}


async def test_a_malformed_deadline_is_a_400_naming_the_header(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(start_gateway, echo_backend)
    answer = await client.get("/v1/probes/p1", headers={"grpc-timeout": "soon"})
    assert answer.status_code == 400
    body = answer.json()["error"]
    assert body["details"][1]["fieldViolations"][0]["field"] == "grpc-timeout"


def test_requested_timeout_parses_both_headers_and_takes_the_smaller() -> None:
    assert requested_timeout(Headers({"grpc-timeout": "1500m"})) == pytest.approx(1.5)
    assert requested_timeout(Headers({"grpc-timeout": "2M"})) == 120
    assert requested_timeout(Headers({"grpc-timeout": "2S", "x-request-timeout": "0.5"})) == 0.5
    assert requested_timeout(Headers({})) is None
    for bad in ({"grpc-timeout": "123456789S"}, {"grpc-timeout": "0S"}, {"x-request-timeout": "-1"}):
        with pytest.raises(ValueError, match="timeout"):
            requested_timeout(Headers(bad))


def test_token_buckets_refill_at_their_rate_and_stay_bounded() -> None:
    now = [0.0]
    buckets = TokenBuckets(2.0, 3, clock=lambda: now[0], max_keys=2)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("b") == 0.0
    buckets.take("c")  # evicts "a", the least recently used
    assert len(buckets._buckets) == 2
    assert "a" not in buckets._buckets


async def test_an_address_over_its_budget_gets_429_with_retry_after(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(
        start_gateway,
        echo_backend,
        gateway_rate_limit_address_per_second=0.5,
        gateway_rate_limit_address_burst=3,
    )
    answers = [await client.get("/v1/probes/p1") for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    limited = answers[-1]
    assert limited.headers["retry-after"] == "2"
    assert _error(limited) == ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    assert limited.headers["x-request-id"]
    # Probes are never limited: an orchestrator must see the process.
    assert (await client.get("/healthz")).status_code == 200


async def test_each_bearer_token_has_its_own_budget(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await _gateway(
        start_gateway,
        echo_backend,
        gateway_rate_limit_address_per_second=0,
        gateway_rate_limit_principal_per_second=0.1,
        gateway_rate_limit_principal_burst=2,
    )

    async def status(token: str | None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return (await client.get("/v1/probes/p1", headers=headers)).status_code

    assert [await status("token-a") for _ in range(3)] == [200, 200, 429]
    assert await status("token-b") == 200
    assert [await status(None) for _ in range(3)] == [200, 200, 200]


async def test_trace_context_continues_into_the_grpc_call_and_the_access_log_has_no_token(
    echo_backend: EchoBackend, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    client = await _gateway(start_gateway, echo_backend)
    caplog.set_level(logging.INFO, logger="gateway.access")
    token = "secret-token-value"
    answer = await client.get(
        "/v1/probes/p1?probe_id=x",
        headers={
            "traceparent": TRACEPARENT,
            "authorization": f"Bearer {token}",
            "cookie": "sid=cookie-value",
        },
    )
    assert answer.status_code == 400  # probe_id is set by the path: still a traced, logged request
    answer = await client.get(
        "/v1/probes/p1", headers={"traceparent": TRACEPARENT, "authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 200
    sent = echo_backend.probes.metadata[-1]["traceparent"]
    assert sent.split("-")[1] == TRACE_ID
    records = [record for record in caplog.records if record.name == "gateway.access"]
    assert [record.http_status for record in records] == [400, 200]  # type: ignore[attr-defined]
    last = records[-1]
    assert last.request_id == answer.headers["x-request-id"]  # type: ignore[attr-defined]
    assert last.principal.startswith("token:")  # type: ignore[attr-defined]
    assert last.http_path == "/v1/probes/p1"  # type: ignore[attr-defined]
    assert last.latency_ms > 0  # type: ignore[attr-defined]
    logged = " ".join(str(record.__dict__) for record in records)
    assert token not in logged
    assert "cookie-value" not in logged
    assert "probe_id=x" not in logged


def test_the_principal_label_is_a_hash_of_the_credential_never_the_credential() -> None:
    bearer = principal_label(Headers({"authorization": "Bearer tok-1"}))
    assert bearer.startswith("token:")
    assert "tok-1" not in bearer
    assert bearer != principal_label(Headers({"authorization": "Bearer tok-2"}))
    assert principal_label(Headers({"x-api-key": "kk"})).startswith("key:")
    session = principal_label(Headers({"cookie": "a=b; __Host-keel_session=sealed-value"}))
    assert session.startswith("session:")
    assert "sealed-value" not in session
    assert principal_label(Headers({"cookie": "other=1", "authorization": "Basic x"})) == "anonymous"
