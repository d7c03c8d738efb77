"""What every service's `python -m services.<name>` shares: serving until a signal,
and running one-off work (migrate, bootstrap commands) on the service's database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.config import ServiceSettings
from services.kit.db import create_engine_from_settings
from services.kit.server import KeelServer, serve_until_signalled
from services.kit.telemetry import setup_tracing, shutdown_tracing

ResultT = TypeVar("ResultT")


class RunnableService(Protocol):
    """A built service: its gRPC server plus whatever it starts and stops around it."""

    server: KeelServer

    async def start(self) -> int: ...

    async def stop(self) -> None: ...


async def _serve(build: Callable[[], RunnableService]) -> None:
    # Built inside the loop: grpc.aio servers and engines bind to the running loop.
    service = build()
    await serve_until_signalled(service.start, service.stop)


def serve(name: str, settings: ServiceSettings, build: Callable[[], RunnableService]) -> int:
    """Serves until SIGTERM/SIGINT with tracing set up (and flushed at exit); the exit status."""
    setup_tracing(name, settings.otlp_endpoint)
    try:
        asyncio.run(_serve(build))
    finally:
        shutdown_tracing()
    return 0


async def with_engine(
    settings: ServiceSettings, name: str, work: Callable[[AsyncEngine], Awaitable[ResultT]]
) -> ResultT:
    """Runs `work` on a fresh engine of the service's database and disposes of it afterwards."""
    engine = create_engine_from_settings(settings, name)
    try:
        return await work(engine)
    finally:
        await engine.dispose()
