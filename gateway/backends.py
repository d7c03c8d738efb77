"""Which gRPC channel serves a method for a request, and whether those backends are reachable.

Wave 1 routes by proto package to configured addresses (the control plane:
keel.authn.v1, keel.rbac.v1, keel.orgs.v1, plus any KEEL_GATEWAY_BACKENDS).
Workspace packages join later through the orgs registry
(WorkspaceService.LookupWorkspace keyed by the request's workspace): that is a
second implementation of `channel_for`, which is why it takes the request and
is async. Calls are generic: a cached `unary_unary` multicallable per method
with the binding's serializers, on channels from the kit's `connect` (retry on
UNAVAILABLE, default deadline).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.bindings import Binding
from services.kit.clients import connect

UnaryCall = Any  # grpc.aio.UnaryUnaryMultiCallable; the stubs make it generic in ways aio does not use


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


class NoBackend(LookupError):
    """No backend is configured for a service."""


class Backends:
    """Backends by proto package: "which channel serves this method for this request"."""

    def __init__(self, addresses: Mapping[str, str]) -> None:
        """`addresses` maps a proto package (keel.orgs.v1) to the host:port that serves it."""
        self._by_address: dict[str, Backend] = {}
        self._by_package: dict[str, Backend] = {}
        for package, address in addresses.items():
            backend = self._by_address.get(address)
            if backend is None:
                backend = Backend(package, address, connect(address))
                self._by_address[address] = backend
            else:
                backend.name = f"{backend.name},{package}"
            self._by_package[package] = backend

    @property
    def packages(self) -> frozenset[str]:
        """The proto packages served."""
        return frozenset(self._by_package)

    def serves(self, package: str) -> bool:
        """Whether RPCs of this proto package have a backend."""
        return package in self._by_package

    async def channel_for(self, binding: Binding, request: object) -> Backend:
        """The backend serving `binding`'s RPC for this HTTP request."""
        backend = self._by_package.get(binding.service.file.package)
        if backend is None:
            raise NoBackend(binding.service.full_name)
        return backend

    async def readiness(self, timeout_seconds: float) -> dict[str, str]:
        """Health of every backend by name: SERVING, NOT_SERVING, UNKNOWN or UNREACHABLE."""
        backends = list(self._by_address.values())
        answers = await asyncio.gather(*(_health(backend, timeout_seconds) for backend in backends))
        return {backend.name: answer for backend, answer in zip(backends, answers, strict=True)}

    async def close(self) -> None:
        """Closes every channel."""
        for backend in self._by_address.values():
            await backend.channel.close(None)


async def _health(backend: Backend, timeout_seconds: float) -> str:
    stub = health_pb2_grpc.HealthStub(backend.channel)
    try:
        response = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_seconds)
    except grpc.aio.AioRpcError:
        return "UNREACHABLE"
    status: str = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return status
