"""Server-streaming RPCs (WatchRun, WatchRuns) as Server-Sent Events.

Each gRPC message is one event: `id:` its `cursor`, `data:` its proto3 JSON
on one line. A reconnect's `Last-Event-ID` becomes the request's
`after_cursor` (ahead of a query parameter: the browser sends the header on
its own), so a dropped connection resumes after the last event it delivered.
A `: heartbeat` comment goes out after `KEEL_GATEWAY_SSE_HEARTBEAT_SECONDS`
without an event, keeping proxies from closing an idle connection.

The response headers wait for the first event (or the first heartbeat): an
error before it (authorization, validation, an unknown run) is the ordinary
JSON error response; one after it is an `event: error` whose data is the error
body, and the stream ends. When the client goes away the gRPC call is
cancelled at once (the ASGI disconnect is watched, not discovered at the next
write), so no watch is left open on the workspace server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.backends import Backend, Backends
from gateway.bindings import Binding, bindings_of
from gateway.errors import bad_request, code_of, error_body, http_status_of, status_of_rpc_error
from gateway.transcode import render_response

SSE_MEDIA_TYPE = "text/event-stream"
CURSOR_FIELD = "after_cursor"
LAST_EVENT_ID = "last-event-id"
HEARTBEAT = b": heartbeat\n\n"
_MAX_CURSOR = 2**63 - 1
# The end-of-stream sentinel of UnaryStreamCall.read(); grpc's stubs do not declare it.
EOF: Any = getattr(grpc.aio, "EOF")  # noqa: B009


def served_stream_bindings(
    backends: Backends, services: Sequence[descriptor.ServiceDescriptor]
) -> list[Binding]:
    """Stream bindings of every service whose package has a backend."""
    return [
        binding
        for service in services
        if backends.serves(service.file.package)
        for binding in bindings_of(service, streaming=True)
    ]


def apply_last_event_id(request: Request, message: Message) -> None:
    """Sets the request's resume cursor from a `Last-Event-ID` header (400 when it is not a cursor)."""
    value = request.headers.get(LAST_EVENT_ID)
    if value is None or CURSOR_FIELD not in message.DESCRIPTOR.fields_by_name:
        return
    text = value.strip()
    if not text.isdigit() or int(text) > _MAX_CURSOR:
        raise bad_request("Last-Event-ID", "must be the id of an event of this stream (a cursor)")
    setattr(message, CURSOR_FIELD, int(text))


def event_bytes(binding: Binding, event: Message) -> bytes:
    """One SSE event: `id:` the message's cursor when it has one, `data:` its proto3 JSON."""
    lines = []
    cursor = getattr(event, "cursor", None)
    if isinstance(cursor, int):
        lines.append(b"id: %d\n" % cursor)
    # Proto3 JSON rendered compactly has no raw newline, so the data is a single line.
    lines.append(b"data: " + render_response(binding, event) + b"\n\n")
    return b"".join(lines)


def error_event(error: grpc.aio.AioRpcError) -> bytes:
    """The `event: error` of a call that failed after the stream started."""
    status = status_of_rpc_error(error)
    return b"event: error\ndata: " + error_body(status, http_status_of(code_of(status))) + b"\n\n"


@dataclass
class OpenedStream:
    """A started call and the read that is waiting for (or has) its first message."""

    call: Any  # grpc.aio.UnaryStreamCall
    first: asyncio.Future[Any]


async def open_stream(
    backend: Backend,
    binding: Binding,
    message: Message,
    metadata: Sequence[tuple[str, str]],
    first_wait_seconds: float,
) -> OpenedStream:
    """Starts the call and waits up to `first_wait_seconds` for its first message; an error before then
    is raised (AioRpcError), so it becomes the ordinary JSON error response."""
    call = backend.stream(binding)(message, metadata=metadata)
    first: asyncio.Future[Any] = asyncio.ensure_future(call.read())
    try:
        await asyncio.wait({first}, timeout=first_wait_seconds)
        if first.done():
            first.result()  # raises the call's error
    except BaseException:
        first.cancel()
        call.cancel()
        raise
    return OpenedStream(call, first)


class EventStreamResponse(Response):
    """An ASGI response relaying an opened call as SSE until it ends or the client disconnects."""

    def __init__(
        self, binding: Binding, opened: OpenedStream, heartbeat_seconds: float, headers: dict[str, str]
    ) -> None:
        # Not Response.__init__: it would add a Content-Length, and a stream has none.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", SSE_MEDIA_TYPE.encode() + b"; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            # Proxies such as nginx must not buffer an event stream.
            (b"x-accel-buffering", b"no"),
            *((key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()),
        ]
        self._binding = binding
        self._opened = opened
        self._heartbeat = heartbeat_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Sends the headers, relays events; a disconnect cancels the relay and with it the gRPC call."""
        relay = asyncio.ensure_future(self._relay(send, list(self.raw_headers)))
        disconnect = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({relay, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relay, disconnect):
                task.cancel()
            for task in (relay, disconnect):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            self._opened.first.cancel()
            self._opened.call.cancel()

    async def _relay(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        async for chunk in self._chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _chunks(self) -> AsyncIterator[bytes]:
        call = self._opened.call
        pending: asyncio.Future[Any] | None = self._opened.first
        if not self._opened.first.done():
            # The first message did not come within a heartbeat: the stream starts with one.
            yield HEARTBEAT
        while True:
            if pending is None:
                pending = asyncio.ensure_future(call.read())
            await asyncio.wait({pending}, timeout=self._heartbeat)
            if not pending.done():
                yield HEARTBEAT
                continue
            try:
                item = pending.result()
            except grpc.aio.AioRpcError as error:
                yield error_event(error)
                return
            pending = None
            if item is EOF:
                return
            yield event_bytes(self._binding, item)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def respond(
    backends: Backends,
    binding: Binding,
    request: Request,
    message: Message,
    metadata: Sequence[tuple[str, str]],
    heartbeat_seconds: float,
    request_id: str,
) -> EventStreamResponse:
    """The SSE response of a server-streaming binding (errors before its first event are raised)."""
    apply_last_event_id(request, message)

    async def attempt(backend: Backend) -> OpenedStream:
        return await open_stream(backend, binding, message, metadata, heartbeat_seconds)

    opened = await backends.call_with_failover(binding, metadata, message, attempt)
    return EventStreamResponse(binding, opened, heartbeat_seconds, {"x-request-id": request_id})
