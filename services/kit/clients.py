"""Channels for calling other Keel services: retries, a default deadline, and propagation.

`connect(target)` returns a grpc.aio channel whose calls
- retry on UNAVAILABLE with exponential backoff (gRPC service config, with
  retry throttling so a sick server is not hammered),
- get a deadline when the caller set none: the time left of the server call
  being served, capped by a default,
- carry the current `x-request-id`, W3C trace context (OpenTelemetry's aio
  client interceptors) and the caller's credentials
  (`authorization: Bearer <principal.token>`) unless the call brings its own.

`connect(target, propagate=False)` leaves out the last two (two interceptor
layers and a client span, 0.1 to 0.2 ms a call): for a caller that gives every
call its metadata, trace context and deadline itself (the REST gateway).

Retries and idempotency: gRPC may send a request again after UNAVAILABLE, so
only idempotent methods may be retried. By default the policy covers every
method, because Keel's contracts make every RPC safe to repeat (reads;
creates and orchestrator callbacks carry `request_id`; updates carry an
`etag`). Calling a method that is not (a third-party service, a legacy RPC)
means passing `idempotent_methods` to name the ones that are, or
`service_config_retry=False`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.trace import TracerProvider

from services.kit.context import principal_var, request_id_var
from services.kit.interceptors import AUTHORIZATION_KEY, REQUEST_ID_KEY, call_deadline_var

DEFAULT_TIMEOUT_SECONDS = 30.0
RETRY_POLICY: dict[str, Any] = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
# Retries stop when more than half of recent calls failed (token bucket of gRPC A6).
RETRY_THROTTLING = {"maxTokens": 10, "tokenRatio": 0.1}


def service_config(idempotent_methods: Sequence[str] | None = None, *, retry: bool = True) -> str:
    """The gRPC service config JSON; `idempotent_methods` are "pkg.Service" or "pkg.Service/Method"."""
    if not retry:
        return json.dumps({})
    if idempotent_methods is None:
        names: list[dict[str, str]] = [{}]
    else:
        names = []
        for method in idempotent_methods:
            service, _, name = method.lstrip("/").partition("/")
            names.append({"service": service, "method": name} if name else {"service": service})
    config = {
        "methodConfig": [{"name": names, "retryPolicy": RETRY_POLICY}],
        "retryThrottling": RETRY_THROTTLING,
    }
    return json.dumps(config)


if TYPE_CHECKING:
    # grpc-stubs makes these generic; at run time they are plain classes.
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStream = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnary = grpc.aio.StreamUnaryClientInterceptor
    _StreamStream = grpc.aio.StreamStreamClientInterceptor


class _PropagatingInterceptor(_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream):
    """Adds request id, caller credentials and a deadline to calls that lack them."""

    def __init__(self, default_timeout_seconds: float) -> None:
        self._default_timeout = default_timeout_seconds

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*tuple(details.metadata or ()))
        request_id = request_id_var.get()
        if request_id and REQUEST_ID_KEY not in metadata:
            metadata.add(REQUEST_ID_KEY, request_id)
        principal = principal_var.get()
        if principal is not None and principal.token and AUTHORIZATION_KEY not in metadata:
            metadata.add(AUTHORIZATION_KEY, f"Bearer {principal.token}")
        timeout = details.timeout
        if timeout is None:
            timeout = self._default_timeout
            deadline = call_deadline_var.get()
            if deadline is not None:
                # Work done for a caller is worthless once that caller has given up.
                timeout = max(min(timeout, deadline - time.monotonic()), 0.0)
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)

    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)

    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def connect(
    target: str,
    *,
    service_config_retry: bool = True,
    idempotent_methods: Sequence[str] | None = None,
    default_timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    tracer_provider: TracerProvider | None = None,
    propagate: bool = True,
) -> grpc.aio.Channel:
    """An insecure channel to another service, with the kit's retry, deadline and (unless `propagate`
    is false) propagation."""
    interceptors: list[Any] = (
        [
            _PropagatingInterceptor(default_timeout_seconds),
            *aio_client_interceptors(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
        ]
        if propagate
        else []
    )
    options = [
        ("grpc.enable_retries", 1 if service_config_retry else 0),
        ("grpc.service_config", service_config(idempotent_methods, retry=service_config_retry)),
        # Our config is the contract; a DNS TXT record must not replace it.
        ("grpc.service_config_disable_resolution", 1),
    ]
    return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
