"""The server interceptors every Keel service runs, outermost first.

1. `RequestContextInterceptor`: request id (accepted from `x-request-id` or
   generated) and the caller's address. The id is echoed in the trailing
   metadata of every call, and for server streams also in the initial metadata
   sent with the first response (never earlier, so retries of UNAVAILABLE stay
   possible). Unary calls skip the separate initial-metadata write: it cost
   ~0.1 ms per call here.
2. OpenTelemetry's grpc.aio server interceptor (W3C trace context), added by
   `server_interceptors`.
3. `KeelInterceptor`, one wrapper composed of small steps: access log →
   default deadline → error mapping → authentication → authorization →
   handler.

Authentication on a public RPC: a bearer token is optional; a valid one sets
the principal (so a public handler may personalise), an invalid one is
ignored and no principal is set — a stale token in a browser must not break
login. On every other RPC a missing or invalid token is UNAUTHENTICATED.

Authorization reads the RPC's `keel.authz.v1.rule`. A permission rule is
checked before the handler runs, so PERMISSION_DENIED is the answer whether
or not the resource exists. Unary request messages exist only inside the
wrapped behaviour, which is why authorization runs there. A service may pass
a `DenialRecorder` (see `services.kit.audit.OutboxDenialRecorder`): each call
a permission rule refuses is handed to it before the answer goes out; a
failing recorder is logged and the answer stays PERMISSION_DENIED. Calls
refused as UNAUTHENTICATED are not recorded: anyone could fill the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_server_interceptor
from opentelemetry.trace import TracerProvider

from services.kit import errors
from services.kit.context import Principal, peer_var, principal_var, request_id_var
from services.kit.rules import MethodRule, field_value, rule_for
from services.kit.status import (
    REASON_MALFORMED_REQUEST,
    REASON_NO_RULE,
    deadline_status,
    internal_status,
    status_for_error,
)
from services.kit.tokens import TokenVerifier

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("keel.access")

REQUEST_ID_KEY = "x-request-id"
FORWARDED_FOR_KEY = "x-forwarded-for"
AUTHORIZATION_KEY = "authorization"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")

# time.monotonic() at which the call being served must be answered; clients.connect caps
# outgoing deadlines with it. (Belongs beside the other per-request values in context.py.)
call_deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "keel_call_deadline", default=None
)

# Services the kit itself serves: probes and tooling must reach them without a token.
INFRASTRUCTURE_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

if TYPE_CHECKING:
    # grpc-stubs makes these generic; at run time they are plain classes.
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

Behavior = Callable[..., Any]
Metadata = Sequence[tuple[str, str | bytes]]


class PermissionChecker(Protocol):
    """Decides whether a principal holds a permission; the RBAC client implements it."""

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        """Whether `principal` may do `action` on the resource (or collection) in the scope."""
        ...


@dataclass(frozen=True)
class Denial:
    """A call that a permission rule refused, as the authorization step saw it."""

    method: str  # the full gRPC method, "/keel.rbac.v1.RoleService/CreateRole"
    principal: Principal
    resource_type: str
    action: str
    resource_id: str  # from the rule's resource_field, '' when it names none
    scope_id: str  # from the rule's scope_field (the organization on the control plane), or ''
    request_id: str
    peer: str


# Records a denial (into the service's audit outbox); awaited before PERMISSION_DENIED is sent.
DenialRecorder = Callable[[Denial], Awaitable[None]]


class DenyAllPermissions:
    """A checker for services with no permission rules: every check fails closed."""

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        """Always False."""
        return False


def metadata_value(metadata: Metadata | None, key: str) -> str:
    """The first text value of `key`, or ''."""
    for item_key, value in metadata or ():
        if item_key == key and isinstance(value, str):
            return value
    return ""


def valid_request_id(value: str) -> bool:
    """Whether a caller-supplied request id is safe to adopt (and to log)."""
    return _REQUEST_ID.fullmatch(value) is not None


def _rewrap(
    handler: grpc.RpcMethodHandler[Any, Any],
    wrap: Callable[[Behavior, bool, bool], Behavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.request_streaming and handler.response_streaming:
        behavior, factory = handler.stream_stream, grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        behavior, factory = handler.stream_unary, grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        behavior, factory = handler.unary_stream, grpc.unary_stream_rpc_method_handler
    else:
        behavior, factory = handler.unary_unary, grpc.unary_unary_rpc_method_handler
    assert behavior is not None  # the handler's kind says which behaviour it has
    return factory(
        wrap(behavior, handler.request_streaming, handler.response_streaming),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


async def _call_unary(behavior: Behavior, request: Any, context: Any) -> Any:
    result = behavior(request, context)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _iterate(behavior: Behavior, request: Any, context: Any) -> AsyncIterator[Any]:
    """Responses of a streaming handler, whether an async generator or a writer coroutine."""
    result = behavior(request, context)
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    elif inspect.isawaitable(result):
        # A handler that writes with context.write() and returns nothing.
        await result


class RequestContextInterceptor(_ServerInterceptor):
    """Outermost: request id and peer into services.kit.context; request id echoed back."""

    def __init__(self, *, trust_forwarded_for: bool = False) -> None:
        self._trust_forwarded_for = trust_forwarded_for

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        metadata: Metadata = handler_call_details.invocation_metadata or ()
        supplied = metadata_value(metadata, REQUEST_ID_KEY)
        request_id = supplied if valid_request_id(supplied) else str(uuid.uuid4())
        forwarded = metadata_value(metadata, FORWARDED_FOR_KEY) if self._trust_forwarded_for else ""

        echo = ((REQUEST_ID_KEY, request_id),)

        async def send_echo(context: Any) -> None:
            # UsageError: the handler sent its own initial metadata; the trailers still carry the id.
            with contextlib.suppress(grpc.aio.UsageError):
                await context.send_initial_metadata(echo)

        def enter(context: Any) -> None:
            # Each RPC runs in its own task, so these values end with the call.
            request_id_var.set(request_id)
            # The rightmost x-forwarded-for entry is the one the trusted gateway added.
            peer_var.set(forwarded.rsplit(",", 1)[-1].strip() if forwarded else context.peer())
            # Failures answer trailers-only (the kit's aborts add the id to their trailers).
            context.set_trailing_metadata(echo)

        # Initial metadata goes out only with a stream's first response: a client may retry an
        # UNAVAILABLE call only while it has received no response headers (gRPC A6).
        def wrap(behavior: Behavior, _request_streaming: bool, response_streaming: bool) -> Behavior:
            if response_streaming:

                async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                    enter(context)
                    first = True
                    async for response in _iterate(behavior, request, context):
                        if first:
                            await send_echo(context)
                            first = False
                        yield response

                return streaming

            # Unary: the id travels in the trailers (set in enter) only. Sending initial
            # metadata separately costs a write per call; streams get it with the first message.
            async def unary(request: Any, context: Any) -> Any:
                enter(context)
                return await _call_unary(behavior, request, context)

            return unary

        return _rewrap(handler, wrap)


class _Malformed:
    """A request whose bytes did not parse; turned into INVALID_ARGUMENT inside the call."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    # Without this, grpc answers a DecodeError itself with UNKNOWN and the parser's text.
    if deserializer is None:
        return None
    type_name = getattr(getattr(deserializer, "__self__", None), "__name__", "message")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except DecodeError:
            return _Malformed(type_name)

    return deserialize


def _malformed_error(request: _Malformed) -> errors.InvalidArgument:
    return errors.InvalidArgument(
        "*", f"the request is not a valid {request.type_name}", reason=REASON_MALFORMED_REQUEST
    )


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Malformed):
            raise _malformed_error(request)
        yield request


@dataclass
class _CallRecord:
    """What the access log needs to know about one call."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    subject: str = ""


class KeelInterceptor(_ServerInterceptor):
    """Access log, default deadline, error mapping, authentication and authorization."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier | None,
        checker: PermissionChecker,
        default_deadline_seconds: float,
        infrastructure_services: frozenset[str] = INFRASTRUCTURE_SERVICES,
        denial_recorder: DenialRecorder | None = None,
    ) -> None:
        self._verifier = verifier
        self._checker = checker
        self._default_deadline = default_deadline_seconds
        self._infrastructure = infrastructure_services
        self._denial_recorder = denial_recorder
        self._recording: set[asyncio.Task[None]] = set()

    def _rule(self, method: str) -> MethodRule | None:
        rule = rule_for(method)
        if rule is None and method.lstrip("/").partition("/")[0] in self._infrastructure:
            return MethodRule(method, "public")
        return rule

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        rule = self._rule(method)
        metadata: Metadata = handler_call_details.invocation_metadata or ()
        token = _bearer_token(metadata)
        quiet = method.lstrip("/").partition("/")[0] in self._infrastructure

        def wrap(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
            if response_streaming:

                async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                    record = _CallRecord()
                    started = time.perf_counter()
                    try:
                        async for response in self._stream_call(
                            behavior, request, context, method, rule, token, request_streaming, record
                        ):
                            yield response
                    except BaseException as error:
                        _note_failure(record, error, context)
                        raise
                    finally:
                        _log_access(method, record, started, quiet)

                return streaming

            async def unary(request: Any, context: Any) -> Any:
                record = _CallRecord()
                started = time.perf_counter()
                try:
                    return await self._unary_call(
                        behavior, request, context, method, rule, token, request_streaming, record
                    )
                except BaseException as error:
                    _note_failure(record, error, context)
                    raise
                finally:
                    _log_access(method, record, started, quiet)

            return unary

        return _rewrap(handler, wrap, _tolerant(handler.request_deserializer))

    def _deadline(self, context: Any) -> float | None:
        """The loop time at which the kit's default deadline ends, or None when the caller set one."""
        remaining = context.time_remaining()
        if remaining is not None:
            call_deadline_var.set(time.monotonic() + remaining)
            return None
        call_deadline_var.set(time.monotonic() + self._default_deadline)
        return asyncio.get_running_loop().time() + self._default_deadline

    async def _unary_call(
        self,
        behavior: Behavior,
        request: Any,
        context: Any,
        method: str,
        rule: MethodRule | None,
        token: str,
        request_streaming: bool,
        record: _CallRecord,
    ) -> Any:
        deadline = self._deadline(context)
        try:
            async with asyncio.timeout_at(deadline):
                try:
                    request = await self._admit(request, method, rule, token, request_streaming, record)
                    return await _call_unary(behavior, request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await self._abort_for(error, context, method, record)
        except TimeoutError:
            record.code = grpc.StatusCode.DEADLINE_EXCEEDED
            await _abort(context, deadline_status())

    async def _stream_call(
        self,
        behavior: Behavior,
        request: Any,
        context: Any,
        method: str,
        rule: MethodRule | None,
        token: str,
        request_streaming: bool,
        record: _CallRecord,
    ) -> AsyncIterator[Any]:
        deadline = self._deadline(context)
        try:
            try:
                # The deadline covers producing each response, not the caller's pace of reading.
                async with asyncio.timeout_at(deadline):
                    request = await self._admit(request, method, rule, token, request_streaming, record)
                responses = _iterate(behavior, request, context)
                while True:
                    async with asyncio.timeout_at(deadline):
                        try:
                            response = await anext(responses)
                        except StopAsyncIteration:
                            return
                    yield response
            except grpc.aio.AbortError:
                raise
            except TimeoutError:
                raise
            except Exception as error:
                await self._abort_for(error, context, method, record)
        except TimeoutError:
            record.code = grpc.StatusCode.DEADLINE_EXCEEDED
            await _abort(context, deadline_status())

    async def _abort_for(self, error: Exception, context: Any, method: str, record: _CallRecord) -> None:
        if isinstance(error, errors.KeelError):
            status = status_for_error(error)
        else:
            request_id = request_id_var.get()
            # The caller gets only the request id; the traceback stays in our logs.
            logger.exception("unexpected error in %s (request id %s)", method, request_id)
            status = internal_status(request_id)
        record.code = status.code
        await _abort(context, status)

    async def _admit(
        self,
        request: Any,
        method: str,
        rule: MethodRule | None,
        token: str,
        request_streaming: bool,
        record: _CallRecord,
    ) -> Any:
        """Authenticates and authorizes the call; returns the request to hand to the handler."""
        if request_streaming:
            request = _checked_stream(request)
        elif isinstance(request, _Malformed):
            raise _malformed_error(request)
        if rule is None:
            # validate_rules keeps this from happening in a KeelServer; fail closed regardless.
            logger.error("no authorization rule for %s; denying", method)
            raise errors.PermissionDenied("permission denied", reason=REASON_NO_RULE)
        principal = await self._authenticate(rule, token)
        if principal is not None:
            principal_var.set(principal)
            record.subject = principal.subject
        await self._authorize(rule, None if request_streaming else request, principal)
        return request

    async def _authenticate(self, rule: MethodRule, token: str) -> Principal | None:
        if rule.kind == "public":
            if not token or self._verifier is None:
                return None
            try:
                return await self._verifier.verify_access_token(token)
            except errors.Unauthenticated:
                return None
        if not token:
            raise errors.Unauthenticated("authentication required")
        if self._verifier is None:
            # A service built without a verifier serves public RPCs only.
            raise errors.Unauthenticated("authentication is not available on this server")
        return await self._verifier.verify_access_token(token)

    async def _authorize(
        self, rule: MethodRule, request: Message | None, principal: Principal | None
    ) -> None:
        if rule.kind == "public":
            return
        if principal is None:
            raise errors.Unauthenticated("authentication required")
        if rule.kind == "authenticated":
            return
        if rule.self_field and request is not None:
            own = field_value(request, rule.self_field)
            if own and own in ("me", principal.subject):
                return
        resource_id = field_value(request, rule.resource_field) if rule.resource_field and request else ""
        scope_id = field_value(request, rule.scope_field) if rule.scope_field and request else ""
        # A rule's fields name what the call is about: without them the request is malformed, whoever
        # asks (syntax only, nothing learnt about what exists), rather than a denial of nothing.
        for name, value in ((rule.scope_field, scope_id), (rule.resource_field, resource_id)):
            if name and request is not None and not value:
                raise errors.InvalidArgument(name, "is required")
        if not await self._checker.check(principal, rule.resource_type, rule.action, resource_id, scope_id):
            if self._denial_recorder is not None:
                denial = Denial(
                    rule.full_method,
                    principal,
                    rule.resource_type,
                    rule.action,
                    resource_id,
                    scope_id,
                    request_id_var.get(),
                    peer_var.get(),
                )
                await self._record_denial(self._denial_recorder, denial)
            raise errors.PermissionDenied(
                "permission denied", metadata={"permission": f"{rule.resource_type}.{rule.action}"}
            )

    async def _record_denial(self, recorder: DenialRecorder, denial: Denial) -> None:
        # Shielded: when the call's deadline ends meanwhile, the call answers DEADLINE_EXCEEDED as
        # it would anyway, but the event is still written rather than rolled back half-way.
        task = asyncio.ensure_future(_guarded(recorder, denial))
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)
        await asyncio.shield(task)

    async def settle(self) -> None:
        """Waits for denial records still being written (server stop)."""
        while self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)


async def _guarded(recorder: DenialRecorder, denial: Denial) -> None:
    try:
        await recorder(denial)
    except Exception:
        # The refusal stands whatever happens here: an audit failure never turns it into an error.
        logger.exception(
            "could not record the denial of %s (request id %s)", denial.method, denial.request_id
        )


async def _abort(context: Any, status: grpc.Status) -> None:
    trailing = (*status.trailing_metadata, (REQUEST_ID_KEY, request_id_var.get()))
    await context.abort(status.code, status.details, trailing)


def _bearer_token(metadata: Metadata) -> str:
    value = metadata_value(metadata, AUTHORIZATION_KEY)
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _note_failure(record: _CallRecord, error: BaseException, context: Any) -> None:
    if record.code != grpc.StatusCode.OK:
        return
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        record.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        return
    # A handler that called context.abort itself: the code is on the context.
    try:
        code = context.code()
    except Exception:  # older contexts without code(); the log then says UNKNOWN
        code = None
    record.code = code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def _log_access(method: str, record: _CallRecord, started: float, quiet: bool) -> None:
    # Method, outcome, timing and who: never metadata values or message bodies.
    access_logger.log(
        logging.DEBUG if quiet else logging.INFO,
        "%s %s",
        method,
        record.code.name,
        extra={
            "grpc_method": method,
            "grpc_code": record.code.name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "principal": record.subject,
            "peer": peer_var.get(),
        },
    )
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("keel.request_id", request_id_var.get())


def server_interceptors(
    *,
    verifier: TokenVerifier | None,
    checker: PermissionChecker,
    default_deadline_seconds: float,
    trust_forwarded_for: bool = False,
    tracer_provider: TracerProvider | None = None,
    denial_recorder: DenialRecorder | None = None,
) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """The kit's interceptor chain in order, outermost first."""
    return [
        RequestContextInterceptor(trust_forwarded_for=trust_forwarded_for),
        aio_server_interceptor(tracer_provider=tracer_provider),  # type: ignore[no-untyped-call]
        KeelInterceptor(
            verifier=verifier,
            checker=checker,
            default_deadline_seconds=default_deadline_seconds,
            denial_recorder=denial_recorder,
        ),
    ]
