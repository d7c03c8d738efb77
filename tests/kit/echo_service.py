"""The EchoService servicer the kit's tests run behind a real KeelServer.

It records what it saw, can fail its first calls with UNAVAILABLE (retry
tests), can forward WhoAmI to another EchoService (propagation tests), and
signals when a Wait call has begun (drain tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from keel.testing.v1 import echo_pb2, echo_pb2_grpc
from services.kit import errors
from services.kit.context import current_peer, current_request_id, require_principal
from services.kit.server import Registration

ECHO_SERVICE = "keel.testing.v1.EchoService"
Kind = echo_pb2.FailRequest.ErrorKind


def _domain_error(request: echo_pb2.FailRequest) -> Exception | None:
    message = request.message or "requested failure"
    kind = request.error
    if kind == Kind.INVALID_ARGUMENT:
        return errors.InvalidArgument(request.field or "field", message)
    if kind == Kind.RESOURCE_EXHAUSTED:
        return errors.ResourceExhausted(message, retry_after_seconds=request.retry_after_seconds)
    simple: dict[int, type[errors.KeelError]] = {
        Kind.NOT_FOUND: errors.NotFound,
        Kind.ALREADY_EXISTS: errors.AlreadyExists,
        Kind.FAILED_PRECONDITION: errors.FailedPrecondition,
        Kind.ABORTED: errors.Aborted,
        Kind.UNAUTHENTICATED: errors.Unauthenticated,
        Kind.PERMISSION_DENIED: errors.PermissionDenied,
        Kind.UNAVAILABLE: errors.Unavailable,
    }
    if kind in simple:
        return simple[kind](message)
    if kind == Kind.UNEXPECTED:
        return RuntimeError(f"secret internals: {message}")
    return None


class EchoServicer(echo_pb2_grpc.EchoServiceServicer):
    """Test behaviour of keel.testing.v1.EchoService."""

    def __init__(self, *, downstream: grpc.aio.Channel | None = None, fail_first: int = 0) -> None:
        self._downstream = echo_pb2_grpc.EchoServiceStub(downstream) if downstream is not None else None
        self.remaining_failures = fail_first
        self.echo_calls = 0
        self.peers: list[str] = []
        self.wait_started = asyncio.Event()
        self.seen_metadata: list[dict[str, str]] = []

    async def Echo(self, request: echo_pb2.EchoRequest, context: Any) -> echo_pb2.EchoResponse:
        self.echo_calls += 1
        self.peers.append(current_peer())
        if self.remaining_failures > 0:
            self.remaining_failures -= 1
            raise errors.Unavailable("transient failure")
        return echo_pb2.EchoResponse(message=request.message)

    async def WhoAmI(self, request: echo_pb2.WhoAmIRequest, context: Any) -> echo_pb2.WhoAmIResponse:
        self.seen_metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        if self._downstream is not None:
            # Answer with what the next server saw, so the caller can check propagation.
            response: echo_pb2.WhoAmIResponse = await self._downstream.WhoAmI(echo_pb2.WhoAmIRequest())
            return response
        principal = require_principal()
        return echo_pb2.WhoAmIResponse(
            subject=principal.subject,
            kind=principal.kind,
            organization_id=principal.organization_id,
            request_id=current_request_id(),
        )

    async def GetThing(self, request: echo_pb2.GetThingRequest, context: Any) -> echo_pb2.Thing:
        if request.thing_id == "missing":
            raise errors.NotFound("thing not found")
        return echo_pb2.Thing(
            thing_id=request.thing_id, organization_id=request.organization_id, owner_id=request.owner_id
        )

    async def Fail(self, request: echo_pb2.FailRequest, context: Any) -> echo_pb2.FailResponse:
        error = _domain_error(request)
        if error is not None:
            raise error
        return echo_pb2.FailResponse()

    async def Wait(self, request: echo_pb2.WaitRequest, context: Any) -> echo_pb2.WaitResponse:
        self.wait_started.set()
        # Server-side waiting is the point of this RPC; a deadline cancels it.
        await asyncio.sleep(request.duration.ToTimedelta().total_seconds())
        return echo_pb2.WaitResponse(completed=True)


def echo_registration(servicer: EchoServicer) -> Registration:
    """The Registration of an EchoServicer for KeelServer."""
    return Registration(ECHO_SERVICE, echo_pb2_grpc.add_EchoServiceServicer_to_server, servicer)
