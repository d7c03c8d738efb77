"""Server bootstrap: one grpc.aio server with the kit's interceptors, health, reflection and drain.

A service lists its `Registration`s; `KeelServer` refuses to be built when any
RPC lacks a valid authorization rule, serves health (per service and "") and
reflection, and on stop (or SIGTERM/SIGINT) reports NOT_SERVING, keeps
serving for `drain_seconds` so load balancers can move away, then stops with
a grace period for calls still in flight.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import TracerProvider

from services.kit.config import ServiceSettings
from services.kit.interceptors import DenialRecorder, KeelInterceptor, PermissionChecker, server_interceptors
from services.kit.rules import validate_rules
from services.kit.tokens import TokenVerifier

logger = logging.getLogger(__name__)

# gRPC's own default, stated so that a larger request is refused with RESOURCE_EXHAUSTED by design.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
HEALTH_SERVICE = "grpc.health.v1.Health"


@dataclass(frozen=True)
class Registration:
    """One gRPC service to serve: its full proto name, the generated add_*_to_server, the servicer."""

    service_full_name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: Any


class KeelServer:
    """A Keel service's gRPC server. Build, `await start()`, `await stop()` (or serve_until_signalled)."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        registrations: Sequence[Registration],
        verifier: TokenVerifier | None,
        checker: PermissionChecker,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        tracer_provider: TracerProvider | None = None,
        denial_recorder: DenialRecorder | None = None,
    ) -> None:
        """`denial_recorder` receives each call a permission rule refuses (the service's audit outbox)."""
        # Refuse to exist, let alone start, when an RPC has no rule: enforcement must be total.
        validate_rules([registration.service_full_name for registration in registrations])
        self.name = name
        self._settings = settings
        self._registrations = list(registrations)
        self._health = HealthServicer()
        interceptors = server_interceptors(
            verifier=verifier,
            checker=checker,
            default_deadline_seconds=settings.default_deadline_seconds,
            trust_forwarded_for=settings.trust_forwarded_for,
            tracer_provider=tracer_provider,
            denial_recorder=denial_recorder,
        )
        self._keel = next(i for i in interceptors if isinstance(i, KeelInterceptor))
        self._server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Two processes on one port would split traffic silently; fail to bind instead.
                ("grpc.so_reuseport", 0),
            ],
        )
        for registration in self._registrations:
            registration.add_to_server(registration.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME], self._server
        )
        self.port = 0
        self._started = False
        self._stopping: asyncio.Future[None] | None = None

    @property
    def service_names(self) -> list[str]:
        """Full names of the registered application services."""
        return [registration.service_full_name for registration in self._registrations]

    async def start(self) -> int:
        """Binds settings.listen_address, starts serving, reports SERVING; returns the bound port."""
        port = self._server.add_insecure_port(self._settings.listen_address)
        if port == 0:
            raise OSError(f"{self.name}: could not bind {self._settings.listen_address}")
        await self._server.start()
        for service in ["", *self.service_names]:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.port = port
        self._started = True
        # Start-up objects (descriptors, modules, pools) live forever: move them out of the
        # collector's view so full collections stay short and do not stretch tail latency.
        gc.freeze()
        logger.info("%s listening on port %d", self.name, port, extra={"port": port})
        return port

    async def stop(self) -> None:
        """NOT_SERVING, serve for drain_seconds, then stop with the same grace for in-flight calls.

        Idempotent: a second caller waits for the first stop to finish.
        """
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stopping)

    async def _stop(self) -> None:
        if not self._started:
            await self._server.stop(None)
            await self._keel.settle()
            return
        drain = self._settings.drain_seconds
        logger.info("%s draining for %.1fs", self.name, drain)
        await self._health.enter_graceful_shutdown()
        if drain > 0:
            # New calls are still accepted while load balancers notice NOT_SERVING.
            await asyncio.sleep(drain)
        await self._server.stop(drain)
        # A denial whose call was cut short may still be writing: let it finish before the
        # service disposes of its engine.
        await self._keel.settle()
        logger.info("%s stopped", self.name)

    async def wait_for_termination(self) -> None:
        """Returns when the server has stopped."""
        await self._server.wait_for_termination()

    async def serve_until_signalled(self) -> None:
        """Starts if needed, serves until SIGTERM or SIGINT, then stops gracefully."""

        async def start() -> None:
            if not self._started:
                await self.start()

        await serve_until_signalled(start, self.stop)


async def serve_until_signalled(
    start: Callable[[], Awaitable[object]], stop: Callable[[], Awaitable[None]]
) -> None:
    """`await start()`, serve until SIGTERM or SIGINT, then `await stop()` (not when start failed).

    The handlers go in before starting: a SIGTERM that arrives as soon as the server answers (a
    supervisor or a test stopping it right away) must stop it gracefully, not kill it with -15.
    """
    loop = asyncio.get_running_loop()
    signalled = asyncio.Event()
    handled = (signal.SIGTERM, signal.SIGINT)
    for signum in handled:
        loop.add_signal_handler(signum, signalled.set)
    try:
        await start()
        try:
            await signalled.wait()
        finally:
            await stop()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)
