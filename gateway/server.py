"""Serving the ASGI app with uvicorn: on the configured address (`python -m gateway serve`) or
embedded in a running event loop (tests, the mesh), on a socket bound before start so that
port 0 reports the port it picked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from services.kit.server import serve_until_signalled

logger = logging.getLogger(__name__)

_STARTUP_SECONDS = 10.0


def uvicorn_config(app: ASGIApp, *, drain_seconds: float) -> uvicorn.Config:
    """The uvicorn settings of the gateway: httptools, the kit's logging, no server header."""
    return uvicorn.Config(
        app,
        http="httptools",
        loop="asyncio",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        # Client addresses from proxies are the edge-protection wave's decision; until then, the peer.
        proxy_headers=False,
        timeout_graceful_shutdown=max(int(drain_seconds), 1),
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on accepted sockets whose protocol says TCP, and
    # without it Nagle's algorithm holds each response's body behind its headers for ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Embedded: signals belong to the host process, which stops the server itself.
        yield


class GatewayServer:
    """uvicorn serving an app inside the current event loop: `await start()` → port, `await stop()`."""

    def __init__(self, app: ASGIApp, host: str, port: int, *, drain_seconds: float = 1.0) -> None:
        self._server = _EmbeddedServer(uvicorn_config(app, drain_seconds=drain_seconds))
        self._host = host
        self._port = port
        self._task: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self) -> int:
        """Binds, serves in a task and returns once uvicorn has started (RuntimeError if it could not)."""
        sock = bind(self._host, self._port)
        self.port = sock.getsockname()[1]
        self._task = asyncio.ensure_future(self._server.serve(sockets=[sock]))
        deadline = asyncio.get_running_loop().time() + _STARTUP_SECONDS
        while not self._server.started:
            if self._task.done() or asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise RuntimeError("the gateway's HTTP server did not start")
            await asyncio.sleep(0.01)
        return self.port

    async def stop(self) -> None:
        """Stops accepting, finishes in-flight requests, runs the app's shutdown."""
        if self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def serve_until_signalled(self) -> None:
        """Starts, serves until SIGTERM or SIGINT, then stops gracefully (exit status 0, as services do)."""

        async def start() -> None:
            await self.start()
            logger.info("gateway listening on http://%s:%d", self._host, self.port, extra={"port": self.port})

        await serve_until_signalled(start, self.stop)
