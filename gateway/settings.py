"""Configuration of the gateway (KEEL_GATEWAY_* on top of the kit's shared KEEL_* settings).

The control-plane backends come from the shared KEEL_AUTHN_ADDRESS,
KEEL_RBAC_ADDRESS and KEEL_ORGS_ADDRESS; KEEL_GATEWAY_BACKENDS adds or
overrides packages ("keel.testing.v1=127.0.0.1:6000,...").
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from services.kit.config import ServiceSettings

CONTROL_PLANE_PACKAGES = ("keel.authn.v1", "keel.rbac.v1", "keel.orgs.v1")


def _split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def _parse_backends(value: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in value.split(","):
        if not item.strip():
            continue
        package, sep, address = item.partition("=")
        package, address = package.strip(), address.strip()
        if not sep or not package or not address:
            raise ValueError(f"{item.strip()!r} is not package=host:port")
        _split_address(address)
        found[package] = address
    return found


def cors_origins(value: str) -> frozenset[str]:
    """The origins of a comma-separated list."""
    return frozenset(item.strip() for item in value.split(",") if item.strip())


class GatewaySettings(ServiceSettings):
    """Settings of the gateway. Environment: KEEL_GATEWAY_<NAME>, plus the shared KEEL_* ones."""

    # host:port the HTTP server listens on (the shared KEEL_LISTEN_ADDRESS; the gateway's default is 8080).
    listen_address: str = "127.0.0.1:8080"
    # Deadline of each backend call made for an HTTP request.
    gateway_backend_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Largest request body accepted (413 above it); gRPC's own message limit is 4 MiB.
    gateway_max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # How long /readyz waits for each backend's gRPC health answer.
    gateway_readiness_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    # Extra or overriding backends: comma-separated package=host:port.
    gateway_backends: str = ""
    # Workspace routing (gateway/workspaces.py): packages routed per workspace through orgs' registry
    # (comma-separated), and how long a workspace's endpoint is trusted before asking again.
    gateway_workspace_packages: str = "keel.metadata.v1"
    gateway_workspace_cache_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Server-Sent Events (gateway/streams.py): a comment line after this long without an event.
    gateway_sse_heartbeat_seconds: float = Field(default=15.0, gt=0, le=3600)
    # Edge protection (gateway/edge.py). Longest deadline a client may ask for (Grpc-Timeout,
    # X-Request-Timeout); the backend timeout above is the default.
    gateway_max_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    # Token buckets per client address and per bearer token (its hash): refill per second, burst; 0 = off.
    gateway_rate_limit_address_per_second: float = Field(default=200.0, ge=0)
    gateway_rate_limit_address_burst: int = Field(default=400, ge=1)
    gateway_rate_limit_principal_per_second: float = Field(default=50.0, ge=0)
    gateway_rate_limit_principal_burst: int = Field(default=100, ge=1)
    # Origins allowed by CORS, comma-separated (https://app.example.com); empty: no cross-origin access.
    gateway_cors_origins: str = ""
    gateway_cors_allow_credentials: bool = False
    # Strict-Transport-Security max-age when served behind TLS; 0 sends no HSTS header.
    gateway_hsts_max_age_seconds: int = Field(default=0, ge=0)
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (IPs or CIDRs, comma-separated).
    gateway_trusted_proxies: str = ""
    # Identity at the edge (gateway/identity.py). File holding the session-sealing key (urlsafe base64 of
    # 32 bytes, mode 0600), shared by every replica; empty: one generated in the data folder.
    gateway_session_key_file: Path | None = None
    # Secure session cookies (HTTPS only); turn off only for http://localhost development.
    gateway_session_cookie_secure: bool = True
    # Refresh a session's access token when it expires within this many seconds.
    gateway_session_refresh_margin_seconds: float = Field(default=60.0, ge=0, le=3600)
    # Longest time an access token exchanged for an API key is reused: a revoked key works at most this long.
    gateway_api_key_cache_seconds: float = Field(default=60.0, ge=0, le=3600)
    # The gateway's external URL (https://keel.example.com): the OIDC callback and discovery URLs are built
    # on it; empty: from each request's scheme and Host.
    gateway_public_url: str = ""

    @field_validator("listen_address")
    @classmethod
    def _listen_address_is_host_port(cls, value: str) -> str:
        _split_address(value)
        return value

    @field_validator("gateway_backends")
    @classmethod
    def _backends_are_pairs(cls, value: str) -> str:
        _parse_backends(value)
        return value

    @field_validator("gateway_cors_origins")
    @classmethod
    def _origins_are_origins(cls, value: str) -> str:
        for origin in cors_origins(value):
            if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port])")
        return value

    @property
    def listen_host(self) -> str:
        """Host part of listen_address."""
        return _split_address(self.listen_address)[0]

    @property
    def listen_port(self) -> int:
        """Port of listen_address (0 picks a free one)."""
        return _split_address(self.listen_address)[1]

    def backend_addresses(self) -> dict[str, str]:
        """Proto package → backend address: the control plane, then KEEL_GATEWAY_BACKENDS."""
        addresses = dict(
            zip(
                CONTROL_PLANE_PACKAGES,
                (self.authn_address, self.rbac_address, self.orgs_address),
                strict=True,
            )
        )
        addresses.update(_parse_backends(self.gateway_backends))
        return addresses

    def workspace_packages(self) -> tuple[str, ...]:
        """Proto packages routed to workspace servers through orgs' registry."""
        return tuple(item.strip() for item in self.gateway_workspace_packages.split(",") if item.strip())
