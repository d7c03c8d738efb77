"""Kit clients between real servers: propagation (request id, token, trace), retries, deadlines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from keel.testing.v1 import echo_pb2, echo_pb2_grpc
from services.kit import telemetry
from services.kit.clients import connect, service_config
from services.kit.context import request_id_var
from services.kit.logs import JsonFormatter, setup_logging
from tests.kit.conftest import KeySet, StartServer
from tests.kit.echo_service import EchoServicer

Connect = Callable[..., grpc.aio.Channel]


@pytest.fixture
async def kit_connect() -> AsyncIterator[Connect]:
    """services.kit.clients.connect, with every channel closed at teardown."""
    channels: list[grpc.aio.Channel] = []

    def open_(port: int, **options: object) -> grpc.aio.Channel:
        channel = connect(f"127.0.0.1:{port}", **options)  # type: ignore[arg-type]
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close(None)


async def test_request_id_and_caller_token_reach_the_next_service(
    start_server: StartServer, kit_connect: Connect, keys: KeySet
) -> None:
    downstream = EchoServicer()
    second = await start_server(downstream)
    first = await start_server(EchoServicer(downstream=kit_connect(second.port)))
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(first.port))
    token = keys.mint(sub="u-prop", org="o-prop")

    who = await stub.WhoAmI(
        echo_pb2.WhoAmIRequest(),
        metadata=(("x-request-id", "req-prop"), ("authorization", f"Bearer {token}")),
    )

    # The second server authenticated the forwarded token and adopted the same request id.
    assert (who.subject, who.organization_id, who.request_id) == ("u-prop", "o-prop", "req-prop")
    assert downstream.seen_metadata[0]["authorization"] == f"Bearer {token}"


async def test_call_without_principal_sends_no_authorization(
    start_server: StartServer, kit_connect: Connect
) -> None:
    downstream = EchoServicer()
    server = await start_server(downstream)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.WhoAmI(echo_pb2.WhoAmIRequest())

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unavailable_is_retried_until_success(start_server: StartServer, kit_connect: Connect) -> None:
    servicer = EchoServicer(fail_first=2)
    server = await start_server(servicer)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port))

    response = await stub.Echo(echo_pb2.EchoRequest(message="again"))

    assert response.message == "again"
    assert servicer.echo_calls == 3


async def test_without_retry_policy_unavailable_reaches_the_caller(
    start_server: StartServer, kit_connect: Connect
) -> None:
    servicer = EchoServicer(fail_first=1)
    server = await start_server(servicer)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port, service_config_retry=False))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Echo(echo_pb2.EchoRequest())

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert servicer.echo_calls == 1


async def test_retry_policy_covers_only_named_idempotent_methods(
    start_server: StartServer, kit_connect: Connect
) -> None:
    servicer = EchoServicer(fail_first=1)
    server = await start_server(servicer)
    channel = kit_connect(server.port, idempotent_methods=["keel.testing.v1.EchoService/WhoAmI"])

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await echo_pb2_grpc.EchoServiceStub(channel).Echo(echo_pb2.EchoRequest())

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    config = json.loads(service_config(["keel.testing.v1.EchoService/WhoAmI", "keel.other.v1.Svc"]))
    assert config["methodConfig"][0]["name"] == [
        {"service": "keel.testing.v1.EchoService", "method": "WhoAmI"},
        {"service": "keel.other.v1.Svc"},
    ]


async def test_default_deadline_applies_when_caller_sets_none(
    start_server: StartServer, kit_connect: Connect
) -> None:
    server = await start_server(default_deadline_seconds=60)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port, default_timeout_seconds=0.2))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Wait(echo_pb2.WaitRequest(duration=duration_pb2.Duration(seconds=30)))

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_client_span_is_parent_of_server_span_and_logs_carry_trace_id(
    start_server: StartServer, kit_connect: Connect
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = await start_server(tracer_provider=provider)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port, tracer_provider=provider))
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    access = logging.getLogger("keel.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    try:
        with provider.get_tracer("test").start_as_current_span("caller") as caller:
            await stub.Echo(echo_pb2.EchoRequest(message="traced"))
    finally:
        access.removeHandler(handler)

    spans = {span.kind: span for span in exporter.get_finished_spans() if span.name.endswith("/Echo")}
    client, server_span = spans[trace.SpanKind.CLIENT], spans[trace.SpanKind.SERVER]
    assert client.parent is not None
    assert client.parent.span_id == caller.get_span_context().span_id
    assert server_span.parent is not None
    assert server_span.parent.span_id == client.context.span_id
    assert server_span.context.trace_id == caller.get_span_context().trace_id
    logged = json.loads(stream.getvalue().splitlines()[0])
    assert logged["trace_id"] == format(caller.get_span_context().trace_id, "032x")
    assert logged["span_id"] == format(server_span.context.span_id, "016x")


async def test_a_channel_without_propagation_sends_only_what_each_call_brings(
    start_server: StartServer, kit_connect: Connect, keys: KeySet
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    downstream = EchoServicer()
    server = await start_server(downstream)
    stub = echo_pb2_grpc.EchoServiceStub(kit_connect(server.port, propagate=False, tracer_provider=provider))
    token = keys.mint(sub="u-bare", org="o-bare")
    ambient = request_id_var.set("req-ambient")
    try:
        with provider.get_tracer("test").start_as_current_span("caller"):
            metadata = (("authorization", f"Bearer {token}"),)
            who = await stub.WhoAmI(echo_pb2.WhoAmIRequest(), metadata=metadata)
    finally:
        request_id_var.reset(ambient)

    assert who.subject == "u-bare"
    seen = downstream.seen_metadata[-1]
    # Neither the ambient request id nor the current span travel: the caller adds them per call.
    assert seen.get("x-request-id") is None
    assert "traceparent" not in seen
    assert [span.name for span in exporter.get_finished_spans()] == ["caller"]


def test_setup_tracing_is_idempotent_and_names_the_service() -> None:
    first = telemetry.setup_tracing("kit-test", "")
    second = telemetry.setup_tracing("another-name", "http://127.0.0.1:4317")

    assert first is second
    assert first.resource.attributes["service.name"] == "kit-test"


def test_setup_logging_writes_json_lines_with_redacted_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    handler = setup_logging("kit-test", "INFO")
    try:
        logging.getLogger("kit.test").info(
            "calling with Bearer abc.def.ghi", extra={"authorization": "Bearer xyz", "attempt": 2}
        )
    finally:
        logging.getLogger().removeHandler(handler)

    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["service"] == "kit-test"
    assert line["logger"] == "kit.test"
    assert line["level"] == "INFO"
    assert line["message"] == "calling with [redacted]"
    assert line["authorization"] == "[redacted]"
    assert line["attempt"] == 2
    assert "request_id" in line
    assert "time" in line
