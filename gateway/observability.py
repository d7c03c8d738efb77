"""Request ids, server spans and access logs: the outermost ASGI middleware of the gateway.

Every HTTP request gets a request id (the client's `X-Request-Id` when it is a
valid id, else a UUID) that goes back in the `X-Request-Id` of every response,
errors and 404s included, and is written into the request's headers so that
the transcoding adopts the same id for the backend call. Every request is a
SERVER span continuing the client's W3C `traceparent`; the kit's channels
(`services.kit.clients.connect`, OpenTelemetry's aio client interceptors) make
the gRPC calls child spans and inject `traceparent` into their metadata. One
access log line per request names the request id, the principal label set by
the edge (never a token or a cookie), the status and the latency.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import JSON_MEDIA_TYPE, REASON_INTERNAL, error_body, make_status
from services.kit.context import request_id_var
from services.kit.interceptors import valid_request_id

access_logger = logging.getLogger("gateway.access")
logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
# Keys of the ASGI scope's "state" shared by the gateway's middleware.
REQUEST_ID_STATE = "keel_request_id"
PRINCIPAL_STATE = "keel_principal"
ANONYMOUS = "anonymous"


def state_of(scope: Scope) -> dict[str, Any]:
    """The per-request state dict of the scope (Starlette's `request.state`)."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def request_id_of(scope: Scope) -> str:
    """The request id given to this request by the observability middleware."""
    value = state_of(scope).get(REQUEST_ID_STATE)
    return value if isinstance(value, str) else ""


def _adopt_request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = list(scope.get("headers", ()))
    supplied = next((value for name, value in headers if name == REQUEST_ID_HEADER), b"")
    text = supplied.decode("latin-1")
    request_id = text if valid_request_id(text) else str(uuid.uuid4())
    if request_id != text:
        # The app reads the header; an invalid or missing one is replaced so both sides use one id.
        headers = [(name, value) for name, value in headers if name != REQUEST_ID_HEADER]
        headers.append((REQUEST_ID_HEADER, request_id.encode()))
        scope["headers"] = headers
    state_of(scope)[REQUEST_ID_STATE] = request_id
    return request_id


def _carrier(scope: Scope, fields: frozenset[bytes]) -> dict[str, str]:
    """The request headers the propagators read (traceparent, ...); the others are not decoded."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name in fields
    }


class ObservabilityMiddleware:
    """Request id on every response, a SERVER span per request, one access log line per request."""

    def __init__(self, app: ASGIApp, *, tracer_provider: TracerProvider | None = None) -> None:
        self.app = app
        self._tracer = trace.get_tracer("gateway", tracer_provider=tracer_provider)
        self._propagated = frozenset(name.encode() for name in propagate.get_global_textmap().fields)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = _adopt_request_id(scope)
        reset = request_id_var.set(request_id)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                if all(name.lower() != REQUEST_ID_HEADER for name, _ in headers):
                    headers.append((REQUEST_ID_HEADER, request_id.encode()))
                message["headers"] = headers
            await send(message)

        method = scope["method"]
        attributes = {
            "http.request.method": method,
            "url.path": scope["path"],
            "url.scheme": scope.get("scheme", "http"),
            "keel.request_id": request_id,
        }
        try:
            with self._tracer.start_as_current_span(
                method,
                context=propagate.extract(_carrier(scope, self._propagated)),
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=True,
                set_status_on_exception=True,
            ) as span:
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception:
                    logger.exception("unhandled error serving %s %s", method, scope["path"])
                    if status:
                        raise
                    status = 500
                    await _send_internal_error(send_with_id, request_id)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
        finally:
            _log_access(scope, status, time.perf_counter() - started)
            request_id_var.reset(reset)


async def _send_internal_error(send: Send, request_id: str) -> None:
    status = make_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id})",
        reason=REASON_INTERNAL,
        metadata={"request_id": request_id},
    )
    body = error_body(status, 500)
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", JSON_MEDIA_TYPE.encode()), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    client = scope.get("client")
    principal = state_of(scope).get(PRINCIPAL_STATE, ANONYMOUS)
    # The path only: a query string may carry values nobody should find in logs.
    access_logger.info(
        "%s %s %d %.1fms",
        scope["method"],
        scope["path"],
        status,
        seconds * 1000,
        extra={
            "http_method": scope["method"],
            "http_path": scope["path"],
            "http_status": status,
            "latency_ms": round(seconds * 1000, 3),
            "request_id": state_of(scope).get(REQUEST_ID_STATE, ""),
            "principal": str(principal),
            "client_address": client[0] if client else "",
        },
    )


__all__ = [
    "ANONYMOUS",
    "PRINCIPAL_STATE",
    "REQUEST_ID_STATE",
    "ObservabilityMiddleware",
    "request_id_of",
    "state_of",
]
