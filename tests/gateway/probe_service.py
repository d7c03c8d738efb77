"""Servicers behind the gateway's transcoding tests: ProbeService records every request it gets,
and the kit's EchoServicer learns to fail with the codes the kit has no error class for.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import Message

from keel.testing.v1 import echo_pb2, echo_pb2_grpc
from services.kit.server import Registration
from services.kit.status import rich_status
from tests.kit.echo_service import EchoServicer

PROBE_SERVICE = "keel.testing.v1.ProbeService"
Kind = echo_pb2.FailRequest.ErrorKind

# Fail kinds answered with a bare gRPC code (a rich status, as a Keel server would send).
_BARE_CODES = {
    Kind.OUT_OF_RANGE: grpc.StatusCode.OUT_OF_RANGE,
    Kind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.CANCELLED: grpc.StatusCode.CANCELLED,
    Kind.DATA_LOSS: grpc.StatusCode.DATA_LOSS,
}


class GatewayEchoServicer(EchoServicer):
    """The kit's EchoServicer, whose Fail also covers every remaining gRPC code."""

    async def Fail(self, request: echo_pb2.FailRequest, context: Any) -> echo_pb2.FailResponse:
        code = _BARE_CODES.get(request.error)
        if code is None:
            return await super().Fail(request, context)
        status = rich_status(code, request.message or "requested failure", reason=code.name)
        await context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("abort returns only by raising")


# A fixed time so that responses can be compared exactly.
CREATED = timestamp_pb2.Timestamp(seconds=1_714_564_800, nanos=500_000_000)


class ProbeServicer(echo_pb2_grpc.ProbeServiceServicer):
    """Records each request; answers with what the request carried."""

    def __init__(self) -> None:
        self.received: list[Message] = []
        self.metadata: list[dict[str, str]] = []

    def _record(self, request: Message, context: Any) -> None:
        self.received.append(request)
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})

    async def ListProbes(
        self, request: echo_pb2.ListProbesRequest, context: Any
    ) -> echo_pb2.ListProbesResponse:
        self._record(request, context)
        probes = [request.example] if request.example.id else []
        return echo_pb2.ListProbesResponse(probes=probes)

    async def GetProbe(self, request: echo_pb2.GetProbeRequest, context: Any) -> echo_pb2.Probe:
        self._record(request, context)
        return echo_pb2.Probe(
            id=request.probe_id,
            inner=echo_pb2.Probe.Inner(id=request.parent_id),
            int64_value=-(2**62),
            uint64_value=2**64 - 1,
            bytes_value=b"\x00\xff",
            color=echo_pb2.Probe.GREEN,
            colors=[echo_pb2.Probe.RED],
            create_time=CREATED,
        )

    async def CreateProbe(
        self, request: echo_pb2.CreateProbeRequest, context: Any
    ) -> echo_pb2.CreateProbeResponse:
        self._record(request, context)
        probe = echo_pb2.Probe()
        probe.CopyFrom(request.probe)
        probe.create_time.CopyFrom(CREATED)
        return echo_pb2.CreateProbeResponse(probe=probe, note="left out by response_body")

    async def UpdateProbe(self, request: echo_pb2.UpdateProbeRequest, context: Any) -> echo_pb2.Probe:
        self._record(request, context)
        return request.probe

    async def DeleteProbe(
        self, request: echo_pb2.DeleteProbeRequest, context: Any
    ) -> echo_pb2.DeleteProbeResponse:
        self._record(request, context)
        return echo_pb2.DeleteProbeResponse()

    async def TouchProbe(self, request: echo_pb2.TouchProbeRequest, context: Any) -> echo_pb2.Probe:
        self._record(request, context)
        return echo_pb2.Probe(id=request.probe_id, inner=request.inner, duration=request.delay)

    async def GetProbeFile(self, request: echo_pb2.GetProbeFileRequest, context: Any) -> echo_pb2.ProbeFile:
        self._record(request, context)
        return echo_pb2.ProbeFile(probe_id=request.probe_id, path=request.path)


def probe_registration(servicer: ProbeServicer) -> Registration:
    """The Registration of a ProbeServicer for KeelServer."""
    return Registration(PROBE_SERVICE, echo_pb2_grpc.add_ProbeServiceServicer_to_server, servicer)
