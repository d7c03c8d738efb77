"""Edge protection as ASGI middleware: security headers, CORS, body size, deadlines, rate limits.

Runs inside ObservabilityMiddleware (so its refusals carry a request id and are
logged) and before routing. For every response it adds the security headers
and, for an allowed `Origin`, the CORS headers; CORS preflights are answered
here. Then, in order, a request is refused with:
- 413 when its declared Content-Length exceeds KEEL_GATEWAY_MAX_BODY_BYTES
  (the transcoding also counts a streamed body against the same limit);
- 429 with Retry-After when its client address's or its principal's token
  bucket is empty (probes /healthz and /readyz are never limited);
- 400 on a malformed `Grpc-Timeout` or `X-Request-Timeout`.

The principal of a request is the SHA-256 of its credential (bearer token,
API key or session cookie), not a token's `sub`: the edge runs before the
credential is verified, and an unverified `sub` would let anyone spend someone
else's budget. Garbage credentials each get a fresh bucket, which is why every
request also spends from its address's bucket.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from gateway.errors import REASON_BODY_TOO_LARGE, error_response, make_status
from gateway.observability import ANONYMOUS, PRINCIPAL_STATE, ObservabilityMiddleware, request_id_of, state_of
from gateway.settings import GatewaySettings, cors_origins
from services.kit.errors import FieldViolation

REASON_RATE_LIMITED = "RATE_LIMITED"
REASON_CORS_REJECTED = "CORS_REJECTED"
UNLIMITED_PATHS = frozenset({"/healthz", "/readyz"})
DEADLINE_STATE = "keel_deadline_seconds"
# The session cookie of gateway/identity.py (with and without the __Host- prefix).
SESSION_COOKIES = ("__Host-keel_session", "keel_session")

# An API answers JSON only: nothing may load, run or frame it.
CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_ALLOWED_HEADERS = "authorization, content-type, x-request-id, grpc-timeout, x-request-timeout"
CORS_EXPOSED_HEADERS = "x-request-id, retry-after, www-authenticate"
CORS_MAX_AGE_SECONDS = 600
MAX_BUCKETS = 100_000

_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_GRPC_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_SECONDS = re.compile(r"[0-9]{1,7}(\.[0-9]{1,9})?")


class TokenBuckets:
    """Token buckets by key (refill `rate` per second up to `burst`), at most MAX_BUCKETS of them.

    The least recently used bucket goes first when full; an idle bucket has refilled anyway, so
    forgetting it gives its key nothing it would not have had.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_BUCKETS,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Takes one token: 0.0 when granted, else the seconds until one is available."""
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return wait


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


def principal_label(headers: Headers) -> str:
    """Who spends a principal budget, as a hash: `token:`, `key:` (X-Api-Key) or `session:` (the
    session cookie) and 16 hex digits of the credential's SHA-256; `anonymous` without one."""
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer " and authorization[7:].strip():
        return "token:" + _digest(authorization[7:].strip())
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        return "key:" + _digest(api_key)
    cookies = SimpleCookie()
    with contextlib.suppress(CookieError):
        cookies.load(headers.get("cookie", ""))
    for name in SESSION_COOKIES:
        if name in cookies and cookies[name].value:
            return "session:" + _digest(cookies[name].value)
    return ANONYMOUS


def requested_timeout(headers: Headers) -> float | None:
    """The deadline the client asked for, in seconds; ValueError naming the header when malformed."""
    asked: list[float] = []
    grpc_timeout = headers.get("grpc-timeout")
    if grpc_timeout is not None:
        match = _GRPC_TIMEOUT.fullmatch(grpc_timeout.strip())
        if match is None:
            raise ValueError("grpc-timeout: expected up to 8 digits and a unit (H, M, S, m, u, n)")
        asked.append(int(match.group(1)) * _GRPC_TIMEOUT_UNITS[match.group(2)])
    seconds = headers.get("x-request-timeout")
    if seconds is not None:
        if _SECONDS.fullmatch(seconds.strip()) is None:
            raise ValueError("x-request-timeout: expected a number of seconds, such as 2.5")
        asked.append(float(seconds))
    if not asked:
        return None
    if min(asked) <= 0:
        raise ValueError(
            f"{'grpc-timeout' if grpc_timeout is not None else 'x-request-timeout'}: must be positive"
        )
    return min(asked)


def backend_timeout(scope: Scope, settings: GatewaySettings) -> float:
    """The deadline of the backend call of this request: the client's within bounds, or the default."""
    asked = state_of(scope).get(DEADLINE_STATE)
    if isinstance(asked, float):
        return asked
    return min(settings.gateway_backend_timeout_seconds, settings.gateway_max_timeout_seconds)


@dataclass(frozen=True)
class _Refusal:
    status: int
    code: grpc.StatusCode
    message: str
    reason: str
    retry_after: float | None = None
    violation: FieldViolation | None = None


class EdgeMiddleware:
    """Security headers and CORS on every response; body size, rate limits and deadlines on requests."""

    def __init__(
        self, app: ASGIApp, *, settings: GatewaySettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.app = app
        self.settings = settings
        self.origins = cors_origins(settings.gateway_cors_origins)
        self.by_address = TokenBuckets(
            settings.gateway_rate_limit_address_per_second,
            settings.gateway_rate_limit_address_burst,
            clock=clock,
        )
        self.by_principal = TokenBuckets(
            settings.gateway_rate_limit_principal_per_second,
            settings.gateway_rate_limit_principal_burst,
            clock=clock,
        )
        security = [
            ("x-content-type-options", "nosniff"),
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
        ]
        if settings.gateway_hsts_max_age_seconds:
            security.append(
                (
                    "strict-transport-security",
                    f"max-age={settings.gateway_hsts_max_age_seconds}; includeSubDomains",
                )
            )
        # Encoded once: every response gets them (unless the app set its own).
        self._security = [(name.encode(), value.encode()) for name, value in security]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        allowed_origin = origin if origin is not None and origin in self.origins else None
        principal = principal_label(headers)
        state_of(scope).setdefault(PRINCIPAL_STATE, principal)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._decorate(message, allowed_origin, origin is not None)
            await send(message)

        if scope["method"] == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            await self._preflight(scope, headers, allowed_origin)(scope, receive, send_with_headers)
            return
        refusal = self._check(scope, headers, principal)
        if refusal is not None:
            await self._refuse(scope, refusal)(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def _decorate(self, message: Message, allowed_origin: str | None, cross_origin: bool) -> None:
        raw: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
        present = {name.lower() for name, _ in raw}
        raw.extend(header for header in self._security if header[0] not in present)
        message["headers"] = raw
        if not cross_origin:
            return
        headers = MutableHeaders(scope=message)
        headers.add_vary_header("Origin")
        if allowed_origin is not None:
            headers["access-control-allow-origin"] = allowed_origin
            headers["access-control-expose-headers"] = CORS_EXPOSED_HEADERS
            if self.settings.gateway_cors_allow_credentials:
                headers["access-control-allow-credentials"] = "true"

    def _preflight(self, scope: Scope, headers: Headers, allowed_origin: str | None) -> Response:
        method = headers["access-control-request-method"].strip().upper()
        if allowed_origin is None or method not in CORS_METHODS.split(", "):
            what = "origin" if allowed_origin is None else f"method {method}"
            return self._refuse(
                scope,
                _Refusal(
                    403,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"CORS: this {what} is not allowed",
                    REASON_CORS_REJECTED,
                ),
            )
        return Response(
            status_code=204,
            headers={
                "access-control-allow-methods": CORS_METHODS,
                "access-control-allow-headers": CORS_ALLOWED_HEADERS,
                "access-control-max-age": str(CORS_MAX_AGE_SECONDS),
            },
        )

    def _check(self, scope: Scope, headers: Headers, principal: str) -> _Refusal | None:
        limit = self.settings.gateway_max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _Refusal(
                413,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request body is larger than {limit} bytes",
                REASON_BODY_TOO_LARGE,
            )
        if scope["path"] not in UNLIMITED_PATHS:
            client = scope.get("client")
            waits = []
            if self.by_address.rate > 0:
                waits.append(self.by_address.take(f"address:{client[0] if client else ''}"))
            if self.by_principal.rate > 0 and principal != ANONYMOUS:
                waits.append(self.by_principal.take(principal))
            wait = max(waits, default=0.0)
            if wait > 0:
                return _Refusal(
                    429,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "too many requests; retry after the delay in Retry-After",
                    REASON_RATE_LIMITED,
                    retry_after=wait,
                )
        try:
            asked = requested_timeout(headers)
        except ValueError as error:
            field, _, description = str(error).partition(": ")
            return _Refusal(
                400,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"invalid request: {error}",
                "INVALID_ARGUMENT",
                violation=FieldViolation(field, description),
            )
        if asked is not None:
            state_of(scope)[DEADLINE_STATE] = min(asked, self.settings.gateway_max_timeout_seconds)
        return None

    def _refuse(self, scope: Scope, refusal: _Refusal) -> Response:
        violations = [refusal.violation] if refusal.violation else []
        status = make_status(refusal.code, refusal.message, reason=refusal.reason, violations=violations)
        if refusal.retry_after is not None:
            info = error_details_pb2.RetryInfo(
                retry_delay=duration_pb2.Duration(
                    seconds=int(refusal.retry_after), nanos=int(refusal.retry_after % 1 * 1e9)
                )
            )
            status.details.add().Pack(info)
        # error_response turns the RetryInfo into Retry-After (whole seconds, rounded up).
        return error_response(status, request_id=request_id_of(scope), http_status=refusal.status)


def edge_stack(settings: GatewaySettings) -> list[Middleware]:
    """The gateway's middleware, outermost first: trusted proxies, observability, edge protection."""
    proxies = [item.strip() for item in settings.gateway_trusted_proxies.split(",") if item.strip()]
    stack = [Middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)] if proxies else []
    return [*stack, Middleware(ObservabilityMiddleware), Middleware(EdgeMiddleware, settings=settings)]


__all__ = [
    "CONTENT_SECURITY_POLICY",
    "EdgeMiddleware",
    "TokenBuckets",
    "backend_timeout",
    "edge_stack",
    "principal_label",
    "requested_timeout",
]
