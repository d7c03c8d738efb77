"""KeelServer bootstrap: rule validation, health, reflection, draining, limits and signals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from keel.authz.v1 import authz_pb2
from keel.testing.v1 import echo_pb2, echo_pb2_grpc
from services.kit.interceptors import DenyAllPermissions
from services.kit.rules import RuleError
from services.kit.server import KeelServer, Registration, serve_until_signalled
from tests.kit.conftest import OpenChannel, StartServer, define_service, kit_settings
from tests.kit.echo_service import ECHO_SERVICE, EchoServicer, echo_registration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel, service: str) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
    return int(response.status)


async def test_health_is_serving_overall_and_per_service_after_start(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    server = await start_server()
    channel = open_channel(server.port)

    assert await _health(channel, "") == SERVING
    assert await _health(channel, ECHO_SERVICE) == SERVING


async def test_health_watch_streams_through_the_interceptors(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    server = await start_server()
    watch = health_pb2_grpc.HealthStub(open_channel(server.port)).Watch(
        health_pb2.HealthCheckRequest(service=ECHO_SERVICE), timeout=5
    )

    first = await watch.read()
    watch.cancel()

    assert first.status == SERVING


async def test_reflection_lists_the_services_and_health(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    server = await start_server()
    stub = reflection_pb2_grpc.ServerReflectionStub(open_channel(server.port))

    async def one_request() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    names: list[str] = []
    async for response in stub.ServerReflectionInfo(one_request(), timeout=5):
        names.extend(service.name for service in response.list_services_response.service)

    assert ECHO_SERVICE in names
    assert "grpc.health.v1.Health" in names


def test_server_refuses_to_start_when_an_rpc_has_no_rule() -> None:
    service = define_service(
        {"Ruled": authz_pb2.AuthorizationRule(authenticated=authz_pb2.Authenticated()), "Unruled": None}
    )
    registration = Registration(service, lambda servicer, server: None, object())

    with pytest.raises(RuleError) as raised:
        KeelServer("test", kit_settings(), [registration], None, DenyAllPermissions())

    assert f"{service}.Unruled" in str(raised.value)
    assert f"{service}.Ruled" not in str(raised.value)


def test_server_refuses_a_foreign_service_without_rules() -> None:
    registration = Registration(
        "grpc.health.v1.Health", health_pb2_grpc.add_HealthServicer_to_server, object()
    )

    with pytest.raises(RuleError, match=r"grpc\.health\.v1\.Health\.Check"):
        KeelServer("test", kit_settings(), [registration], None, DenyAllPermissions())


async def _poll_until(predicate: Callable[[], Awaitable[bool]], within_seconds: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_seconds
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


async def test_stop_reports_not_serving_and_lets_in_flight_calls_finish(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    servicer = EchoServicer()
    server = await start_server(servicer, drain_seconds=1.0)
    channel = open_channel(server.port)
    stub = echo_pb2_grpc.EchoServiceStub(channel)
    in_flight = asyncio.ensure_future(
        stub.Wait(echo_pb2.WaitRequest(duration=duration_pb2.Duration(nanos=300_000_000)), timeout=10)
    )
    await asyncio.wait_for(servicer.wait_started.wait(), 5)

    stopping = asyncio.ensure_future(server.stop())

    async def not_serving() -> bool:
        return bool(await _health(channel, ECHO_SERVICE) == NOT_SERVING)

    await _poll_until(not_serving)  # health answers (NOT_SERVING) while draining
    assert await _health(channel, "") == NOT_SERVING
    assert (await in_flight).completed
    await asyncio.wait_for(stopping, 10)


async def test_oversized_request_is_resource_exhausted(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    server = await start_server()
    stub = echo_pb2_grpc.EchoServiceStub(open_channel(server.port))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Echo(echo_pb2.EchoRequest(message="x" * (5 * 1024 * 1024)))

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # The server is fine afterwards.
    assert (await stub.Echo(echo_pb2.EchoRequest(message="small"))).message == "small"


async def test_sigterm_stops_a_server_serving_until_signalled(open_channel: OpenChannel) -> None:
    server = KeelServer(
        "test", kit_settings(), [echo_registration(EchoServicer())], None, DenyAllPermissions()
    )
    await server.start()
    serving = asyncio.ensure_future(server.serve_until_signalled())
    channel = open_channel(server.port)
    assert await _health(channel, "") == SERVING

    async def handler_installed() -> bool:
        return bool(signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None))

    # Never signal before the loop's handler is in place: the default would kill pytest.
    await _poll_until(handler_installed)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(serving, 10)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await _health(channel, "")
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE


# A service whose start is interrupted by SIGTERM, then stops: run in its own process, so a
# regression (the default action) kills that process, not pytest.
_SIGNALLED_DURING_START = """
import asyncio, os, signal
from services.kit.server import serve_until_signalled

async def start():
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.05)
    print("started", flush=True)

async def stop():
    print("stopped", flush=True)

asyncio.run(serve_until_signalled(start, stop))
"""


async def test_a_sigterm_while_starting_stops_the_service_gracefully() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SIGNALLED_DURING_START, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0
    assert output.decode().split() == ["started", "stopped"]


async def test_a_failed_start_is_not_stopped_and_leaves_no_signal_handler() -> None:
    stopped: list[bool] = []

    async def start() -> None:
        raise RuntimeError("could not bind")

    async def stop() -> None:
        stopped.append(True)

    with pytest.raises(RuntimeError, match="could not bind"):
        await serve_until_signalled(start, stop)
    assert stopped == []
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
