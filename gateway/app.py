"""The gateway's ASGI application: /healthz, /readyz, /openapi.json, and every annotated RPC.

Built once at start-up from the descriptors of the services that have a
backend: bindings → router (a conflict stops start-up) → OpenAPI document.
A request then costs a router lookup, transcoding, one generic gRPC call and
rendering; nothing here knows any endpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message
from opentelemetry import propagate
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.backends import Backend, Backends, NoBackend
from gateway.bindings import Binding, bindings_of, keel_services
from gateway.edge import backend_timeout, edge_stack
from gateway.errors import (
    JSON_MEDIA_TYPE,
    REASON_BODY_TOO_LARGE,
    REASON_INTERNAL,
    REASON_METHOD_NOT_ALLOWED,
    REASON_NOT_FOUND,
    REASON_UNSUPPORTED_MEDIA_TYPE,
    GatewayError,
    error_response,
    make_status,
    status_of_rpc_error,
)
from gateway.identity import EdgeIdentity
from gateway.openapi import build_document, load_comments
from gateway.routes import Match, MethodNotAllowed, RouteConflict, Router, parse_template
from gateway.settings import GatewaySettings
from gateway.streams import respond as respond_sse
from gateway.streams import served_stream_bindings
from gateway.transcode import build_request, render_response
from services.kit.clock import Clock
from services.kit.context import request_id_var
from services.kit.interceptors import AUTHORIZATION_KEY, FORWARDED_FOR_KEY, REQUEST_ID_KEY, valid_request_id

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
OPENAPI_PATH = "/openapi.json"
RESERVED_PATHS = (HEALTH_PATH, READY_PATH, OPENAPI_PATH)


def build_router(bindings: Sequence[Binding]) -> Router[Binding]:
    """The routing table; RouteConflict names both RPCs of a clash, or one that shadows a gateway path."""
    router: Router[Binding] = Router()
    for binding in bindings:
        router.add(binding.http_method, binding.template, binding, binding.name)
    for path in RESERVED_PATHS:
        found = router.match("GET", path)
        if isinstance(found, Match):
            raise RouteConflict(f"GET {path} is the gateway's own; {found.route.name} may not bind it")
    return router


def _json(payload: object, status_code: int = 200) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")).encode(), status_code, media_type=JSON_MEDIA_TYPE
    )


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json"))


@dataclass
class Gateway:
    """What the app serves with: settings, backends, the routing table and the OpenAPI document."""

    settings: GatewaySettings
    backends: Backends
    router: Router[Binding]
    openapi: bytes

    async def _body(self, request: Request, binding: Binding) -> bytes:
        if not binding.body:
            return b""
        limit = self.settings.gateway_max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        body = b"".join(chunks)
        if body.strip() and not _is_json(request.headers.get("content-type", JSON_MEDIA_TYPE)):
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the request body must be application/json",
                reason=REASON_UNSUPPORTED_MEDIA_TYPE,
                http_status=415,
            )
        return body

    def call_metadata(self, request: Request, request_id: str) -> list[tuple[str, str]]:
        """What every backend call of this request carries (the backend channels add nothing): the
        request id, the caller's bearer token, its address and the W3C trace context of the current
        span, so the backend's span is a child of this request's."""
        metadata = [(REQUEST_ID_KEY, request_id)]
        authorization = request.headers.get("authorization", "")
        # Only bearer tokens travel on; the kit reads nothing else, and other credentials stay here.
        if authorization[:7].lower() == "bearer ":
            metadata.append((AUTHORIZATION_KEY, authorization))
        if request.client is not None:
            metadata.append((FORWARDED_FOR_KEY, request.client.host))
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        metadata.extend(carrier.items())
        return metadata

    async def transcode(self, request: Request) -> Response:
        """Serves one REST call: route, transcode, call the backend, render."""
        supplied = request.headers.get("x-request-id", "")
        request_id = supplied if valid_request_id(supplied) else str(uuid.uuid4())
        request_id_var.set(request_id)
        token_presented = request.headers.get("authorization", "")[:7].lower() == "bearer "
        try:
            return await self._transcode(request, request_id)
        except GatewayError as error:
            return error_response(
                error.status,
                request_id=request_id,
                http_status=error.http_status,
                headers=error.headers,
            )
        except grpc.aio.AioRpcError as error:
            status = status_of_rpc_error(error)
            if status.message != error.details():
                logger.warning("backend call failed: %s %s", error.code().name, error.details())
            return error_response(status, request_id=request_id, token_presented=token_presented)
        except Exception:
            logger.exception("unexpected error serving %s %s", request.method, request.url.path)
            status = make_status(
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {request_id})",
                reason=REASON_INTERNAL,
                metadata={"request_id": request_id},
            )
            return error_response(status, request_id=request_id)

    async def _transcode(self, request: Request, request_id: str) -> Response:
        raw_path = request.scope.get("raw_path") or request.scope["path"].encode()
        found = self.router.match(request.method, raw_path.decode("latin-1"))
        if found is None:
            raise GatewayError(
                grpc.StatusCode.NOT_FOUND,
                f"no API method at {request.url.path}",
                reason=REASON_NOT_FOUND,
            )
        if isinstance(found, MethodNotAllowed):
            raise GatewayError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(found.allowed)}",
                reason=REASON_METHOD_NOT_ALLOWED,
                http_status=405,
                headers={"allow": ", ".join(found.allowed)},
            )
        binding = found.route.target
        body = await self._body(request, binding)
        query = parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        message = build_request(binding, found.values, query, body)
        metadata = self.call_metadata(request, request_id)
        timeout = backend_timeout(request.scope, self.settings)

        async def call(backend: Backend) -> Message:
            reply: Message = await backend.unary(binding)(message, metadata=metadata, timeout=timeout)
            return reply

        try:
            if binding.method.server_streaming:  # Server-Sent Events (gateway/streams.py)
                heartbeat = self.settings.gateway_sse_heartbeat_seconds
                return await respond_sse(
                    self.backends, binding, request, message, metadata, heartbeat, request_id
                )
            response = await self.backends.call_with_failover(binding, metadata, message, call)
        except NoBackend:
            raise GatewayError(
                grpc.StatusCode.UNAVAILABLE, "no backend serves this method", reason="NO_BACKEND"
            ) from None
        return Response(
            render_response(binding, response),
            200,
            {"x-request-id": request_id},
            media_type=JSON_MEDIA_TYPE,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry of the transcoding route (an app rather than an endpoint: every HTTP method)."""
        response = await self.transcode(Request(scope, receive))
        await response(scope, receive, send)

    async def healthz(self, request: Request) -> Response:
        """The process is up."""
        return _json({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Every backend answers its gRPC health check with SERVING."""
        health = await self.backends.readiness(self.settings.gateway_readiness_timeout_seconds)
        ready = all(state == "SERVING" for state in health.values())
        return _json({"status": "ready" if ready else "not ready", "backends": health}, 200 if ready else 503)

    async def openapi_document(self, request: Request) -> Response:
        """The OpenAPI 3.1 document."""
        return Response(self.openapi, media_type=JSON_MEDIA_TYPE)


def _too_large(limit: int) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"the request body is larger than {limit} bytes",
        reason=REASON_BODY_TOO_LARGE,
        http_status=413,
    )


def served_bindings(
    backends: Backends, services: Sequence[descriptor.ServiceDescriptor] | None = None
) -> list[Binding]:
    """Bindings of every service (default: every keel service) whose package has a backend."""
    chosen = services if services is not None else keel_services(backends.packages)
    bindings: list[Binding] = []
    for service in chosen:
        if backends.serves(service.file.package):
            bindings.extend(bindings_of(service))
    return bindings


def build_gateway(
    settings: GatewaySettings,
    *,
    backends: Backends | None = None,
    services: Sequence[descriptor.ServiceDescriptor] | None = None,
) -> Gateway:
    """Everything the app serves with; raises on a broken annotation or a route conflict."""
    backends = backends if backends is not None else Backends.from_settings(settings)
    bindings = served_bindings(backends, services)
    streams = served_stream_bindings(
        backends, services if services is not None else keel_services(backends.packages)
    )
    router = build_router([*bindings, *streams])
    document = build_document([*bindings, *streams], load_comments())
    openapi = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return Gateway(settings, backends, router, openapi)


def create_app(
    settings: GatewaySettings,
    *,
    backends: Backends | None = None,
    services: Sequence[descriptor.ServiceDescriptor] | None = None,
    clock: Clock | None = None,
) -> ASGIApp:
    """The ASGI app; its lifespan closes the backend channels at shutdown."""
    gateway = build_gateway(settings, backends=backends, services=services)
    identity = EdgeIdentity(settings, clock=clock)  # sessions, API keys, login routes (gateway/identity.py)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await gateway.backends.close()
            await identity.close()

    own_routes = [
        Route(HEALTH_PATH, gateway.healthz, methods=["GET"]),
        Route(READY_PATH, gateway.readyz, methods=["GET"]),
        Route(OPENAPI_PATH, gateway.openapi_document, methods=["GET"]),
        *identity.routes(),
    ]
    app: ASGIApp = _Dispatch(Starlette(routes=own_routes, lifespan=lifespan), own_routes, gateway)
    # The middleware wraps the dispatch the way Starlette would (the first outermost), without
    # Starlette's own error and routing layers on every API call: ObservabilityMiddleware answers an
    # unhandled error with the JSON 500.
    for cls, args, kwargs in reversed([*edge_stack(settings), identity.middleware()]):
        app = cls(app, *args, **kwargs)
    return app


class _Dispatch:
    """The gateway's own routes (health, OpenAPI, login) go to Starlette; every other request goes
    straight to the transcoding, whose router answers the JSON 404 and 405."""

    def __init__(self, own: Starlette, own_routes: Sequence[Route], api: Gateway) -> None:
        self.own = own
        self.api = api
        self.own_requests = frozenset(
            (method, route.path) for route in own_routes for method in route.methods or ()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["method"], scope["path"]) not in self.own_requests:
            await self.api(scope, receive, send)
        else:
            await self.own(scope, receive, send)


__all__ = ["Gateway", "build_gateway", "build_router", "create_app", "parse_template", "served_bindings"]
