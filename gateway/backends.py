"""Which gRPC channel serves a method for a request, and whether those backends are reachable.

Control-plane packages (keel.authn.v1, keel.rbac.v1, keel.orgs.v1, plus any
KEEL_GATEWAY_BACKENDS) go to configured addresses. Workspace packages
(keel.metadata.v1) go to the server orgs' registry names for the request's
`workspace_id` (gateway/workspaces.py), on one channel per endpoint. Calls are
generic: cached `unary_unary` / `unary_stream` multicallables per method with
the binding's serializers, on channels from the kit's `connect` without its
interceptors: every call brings its own metadata (request id, credentials,
trace context: `Gateway.call_metadata`) and deadline. Configured backends
retry on UNAVAILABLE; workspace servers do not, their failover is
`call_with_failover`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.bindings import Binding
from gateway.errors import bad_request
from gateway.workspaces import WORKSPACE_FIELD, Location, Metadata, WorkspaceRouter, grpc_target, unreachable
from services.kit.clients import connect
from services.kit.status import rich_status_of

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings

UnaryCall = Any  # grpc.aio.UnaryUnaryMultiCallable; the stubs make it generic in ways aio does not use
StreamCall = Any  # grpc.aio.UnaryStreamMultiCallable, likewise
ORGS_PACKAGE = "keel.orgs.v1"
T = TypeVar("T")


@dataclass
class Backend:
    """One backend address, its channel and the multicallables made on it."""

    name: str
    address: str
    channel: grpc.aio.Channel
    _calls: dict[str, UnaryCall] = field(default_factory=dict)

    def unary(self, binding: Binding) -> UnaryCall:
        """The (cached) unary-unary multicallable of a binding's RPC on this channel."""
        call = self._calls.get(binding.grpc_path)
        if call is None:
            call = self.channel.unary_unary(
                binding.grpc_path,
                request_serializer=binding.request_class.SerializeToString,
                response_deserializer=binding.response_class.FromString,
            )
            self._calls[binding.grpc_path] = call
        return call

    def stream(self, binding: Binding) -> StreamCall:
        """The (cached) unary-stream multicallable of a server-streaming binding's RPC on this channel."""
        key = f"stream:{binding.grpc_path}"
        call = self._calls.get(key)
        if call is None:
            call = self.channel.unary_stream(
                binding.grpc_path,
                request_serializer=binding.request_class.SerializeToString,
                response_deserializer=binding.response_class.FromString,
            )
            self._calls[key] = call
        return call


class NoBackend(LookupError):
    """No backend is configured for a service."""


class Backends:
    """Backends by proto package: "which channel serves this method for this request"."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        workspace_packages: Iterable[str] = (),
        workspace_cache_seconds: float = 30.0,
    ) -> None:
        """`addresses` maps a proto package (keel.orgs.v1) to the host:port that serves it;
        `workspace_packages` are routed per workspace through orgs' registry (a configured address wins)."""
        self._by_address: dict[str, Backend] = {}
        self._by_package: dict[str, Backend] = {}
        self._workspace_packages = frozenset(workspace_packages) - set(addresses)
        self._by_endpoint: dict[str, Backend] = {}
        for package, address in addresses.items():
            backend = self._by_address.get(address)
            if backend is None:
                backend = Backend(package, address, connect(address, propagate=False))
                self._by_address[address] = backend
            else:
                backend.name = f"{backend.name},{package}"
            self._by_package[package] = backend
        self.workspaces: WorkspaceRouter | None = None
        if self._workspace_packages:
            orgs = self._by_package.get(ORGS_PACKAGE)
            if orgs is None:
                raise ValueError(f"workspace routing needs a backend for {ORGS_PACKAGE}")
            self.workspaces = WorkspaceRouter(orgs.channel, cache_seconds=workspace_cache_seconds)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Backends:
        """The backends of a gateway's settings: configured addresses and workspace routing."""
        return cls(
            settings.backend_addresses(),
            workspace_packages=settings.workspace_packages(),
            workspace_cache_seconds=settings.gateway_workspace_cache_seconds,
        )

    @property
    def packages(self) -> frozenset[str]:
        """The proto packages served."""
        return frozenset(self._by_package) | self._workspace_packages

    def serves(self, package: str) -> bool:
        """Whether RPCs of this proto package have a backend."""
        return package in self._by_package or package in self._workspace_packages

    def _routed_by_workspace(self, binding: Binding) -> bool:
        return binding.service.file.package in self._workspace_packages

    async def channel_for(
        self, binding: Binding, metadata: Metadata, message: Message | None = None
    ) -> Backend:
        """The backend serving `binding`'s RPC for a call with this metadata (workspace RPCs: and message)."""
        if self._routed_by_workspace(binding):
            location = await self._locate(binding, metadata, message)
            return self._endpoint_backend(location.endpoint)
        backend = self._by_package.get(binding.service.file.package)
        if backend is None:
            raise NoBackend(binding.service.full_name)
        return backend

    async def call_with_failover(
        self,
        binding: Binding,
        metadata: Metadata,
        message: Message,
        attempt: Callable[[Backend], Awaitable[T]],
    ) -> T:
        """`attempt(backend)` on the backend serving the call. For a workspace RPC whose server cannot be
        reached (UNAVAILABLE from the channel, not from the server), the cached endpoint is dropped and the
        registry asked once more: a new endpoint is tried once, the same one is a 503 naming the workspace."""
        if not self._routed_by_workspace(binding):
            return await attempt(await self.channel_for(binding, metadata, message))
        location = await self._locate(binding, metadata, message)
        try:
            return await attempt(self._endpoint_backend(location.endpoint))
        except grpc.aio.AioRpcError as error:
            if not _connection_failure(error):
                raise
        assert self.workspaces is not None
        fresh = await self.workspaces.refresh(location, metadata)
        if fresh.endpoint == location.endpoint:
            raise unreachable(location.workspace_id)
        try:
            return await attempt(self._endpoint_backend(fresh.endpoint))
        except grpc.aio.AioRpcError as error:
            if _connection_failure(error):
                raise unreachable(location.workspace_id) from None
            raise

    async def _locate(self, binding: Binding, metadata: Metadata, message: Message | None) -> Location:
        if self.workspaces is None or message is None:
            raise NoBackend(binding.service.full_name)
        workspace_id = str(getattr(message, WORKSPACE_FIELD, ""))
        if not workspace_id:
            # Without a workspace there is no server to ask, so the gateway names the field itself.
            raise bad_request(WORKSPACE_FIELD, "is required")
        return await self.workspaces.locate(workspace_id, metadata)

    def _endpoint_backend(self, endpoint: str) -> Backend:
        backend = self._by_endpoint.get(endpoint)
        if backend is None:
            target, secure = grpc_target(endpoint)
            channel = (
                grpc.aio.secure_channel(target, grpc.ssl_channel_credentials())
                if secure
                else connect(target, service_config_retry=False, propagate=False)
            )
            backend = Backend(f"workspace server {endpoint}", target, channel)
            self._by_endpoint[endpoint] = backend
        return backend

    async def readiness(self, timeout_seconds: float) -> dict[str, str]:
        """Health of every backend by name: SERVING, NOT_SERVING, UNKNOWN or UNREACHABLE."""
        backends = list(self._by_address.values())
        answers = await asyncio.gather(*(_health(backend, timeout_seconds) for backend in backends))
        return {backend.name: answer for backend, answer in zip(backends, answers, strict=True)}

    async def close(self) -> None:
        """Closes every channel."""
        for backend in (*self._by_address.values(), *self._by_endpoint.values()):
            await backend.channel.close(None)


def _connection_failure(error: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE raised by the channel (no server's status in the trailers): the server is not reachable."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and rich_status_of(error) is None


async def _health(backend: Backend, timeout_seconds: float) -> str:
    stub = health_pb2_grpc.HealthStub(backend.channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_seconds)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status
