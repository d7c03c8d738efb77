"""Fixtures of the gateway tests: real gRPC backends and the gateway served by uvicorn on 127.0.0.1.

`echo_backend` is a KeelServer with the kit's EchoService (its Fail covering
every gRPC code) and the ProbeService that records what it receives.
`start_gateway(addresses, **settings)` serves the ASGI app on a free port in
the test's event loop and returns an httpx client for it; every gateway and
client is closed at teardown. The control-plane fixtures (`orgs_stack`) come
from tests/orgs/conftest.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.backends import Backends
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from services.kit.server import KeelServer
from services.kit.tokens import JwksCache, TokenVerifier
from tests.gateway.probe_service import GatewayEchoServicer, ProbeServicer, probe_registration
from tests.kit.conftest import AUDIENCE, ISSUER, KeySet, RecordingChecker, kit_settings
from tests.kit.echo_service import echo_registration
from tests.orgs.conftest import (  # noqa: F401  (fixtures of the control-plane tests)
    orgs_stack,
    service_urls,
)

TESTING_PACKAGE = "keel.testing.v1"


@pytest.fixture
def keys() -> KeySet:
    return KeySet()


@dataclass
class EchoBackend:
    """A running KeelServer with EchoService and ProbeService, and its servicers."""

    server: KeelServer
    echo: GatewayEchoServicer
    probes: ProbeServicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"


@pytest.fixture
async def echo_backend(keys: KeySet) -> AsyncIterator[EchoBackend]:
    verifier = TokenVerifier(JwksCache(keys.fetch), issuer=ISSUER, audience=AUDIENCE)
    echo, probes = GatewayEchoServicer(), ProbeServicer()
    server = KeelServer(
        "echo",
        kit_settings(),
        [echo_registration(echo), probe_registration(probes)],
        verifier,
        RecordingChecker(),
    )
    await server.start()
    try:
        yield EchoBackend(server, echo, probes)
    finally:
        await server.stop()


StartGateway = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def start_gateway() -> AsyncIterator[StartGateway]:
    """Starts gateways over the given package → address map; stops each at teardown."""
    servers: list[GatewayServer] = []
    clients: list[httpx.AsyncClient] = []

    async def start(
        addresses: dict[str, str], *, workspace_packages: tuple[str, ...] = (), **settings: Any
    ) -> httpx.AsyncClient:
        # workspace_packages: routed per workspace through orgs' registry (gateway/workspaces.py).
        backends = Backends(addresses, workspace_packages=workspace_packages)
        app = create_app(GatewaySettings(**settings), backends=backends)
        server = GatewayServer(app, "127.0.0.1", 0)
        port = await server.start()
        servers.append(server)
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30)
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.aclose()
    for server in servers:
        await server.stop()


@pytest.fixture
async def echo_gateway(echo_backend: EchoBackend, start_gateway: StartGateway) -> httpx.AsyncClient:
    """A gateway in front of `echo_backend`."""
    return await start_gateway({TESTING_PACKAGE: echo_backend.address})
