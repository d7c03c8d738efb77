"""OpenTelemetry tracing for one service process: a TracerProvider, exported over OTLP/gRPC when configured.

The kit's interceptors and clients take spans from the global provider this
installs; without an endpoint spans are still created (trace ids reach the
logs and propagate to other services) but nothing is exported.
"""

from __future__ import annotations

import threading

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

_lock = threading.Lock()
_installed: TracerProvider | None = None


def setup_tracing(service_name: str, otlp_endpoint: str) -> TracerProvider:
    """Installs the global TracerProvider once; later calls return the installed one unchanged."""
    global _installed
    with _lock:
        if _installed is not None:
            return _installed
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
        if otlp_endpoint:
            # A plain http:// collector (the usual sidecar or in-cluster collector) needs no TLS.
            insecure = otlp_endpoint.startswith("http://")
            provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=insecure))
            )
        trace.set_tracer_provider(provider)
        _installed = provider
        return provider


def shutdown_tracing() -> None:
    """Flushes and stops export (call at process exit so the last spans are not lost)."""
    with _lock:
        if _installed is not None:
            _installed.shutdown()
