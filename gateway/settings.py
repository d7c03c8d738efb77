"""Configuration of the gateway (KEEL_GATEWAY_* on top of the kit's shared KEEL_* settings).

The control-plane backends come from the shared KEEL_AUTHN_ADDRESS,
KEEL_RBAC_ADDRESS and KEEL_ORGS_ADDRESS; KEEL_GATEWAY_BACKENDS adds or
overrides packages ("keel.testing.v1=127.0.0.1:6000,...").
"""

from __future__ import annotations

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
