"""Configuration of the metadata service (KEEL_* environment variables)."""

from __future__ import annotations

from importlib import metadata as package_metadata
from pathlib import Path

from pydantic import Field

from services.kit.config import ServiceSettings


def _package_version() -> str:
    try:
        return package_metadata.version("keel")
    except package_metadata.PackageNotFoundError:  # running from a tree that is not installed
        return "0.0.0"


class MetadataSettings(ServiceSettings):
    """Settings of a workspace server on top of the ones every service shares."""

    # File holding the workspace server credential orgs issued (`keel_wsc_<workspace id>_<secret>`),
    # mode 0600. The workspace id is read from it; the credential is never logged.
    workspace_credential_file: Path | None = None
    # Endpoint announced to the registry; empty means the listen address.
    metadata_advertised_endpoint: str = ""
    # Version announced to the registry; empty means the installed package's version.
    metadata_server_version: str = ""
    # How long a Create's request_id is remembered for retries.
    metadata_request_id_retention_seconds: int = Field(default=24 * 3600, ge=3600)
    # How long to wait between registration attempts while the control plane is unreachable.
    metadata_register_retry_seconds: float = Field(default=5.0, gt=0, le=3600)

    def advertised_endpoint(self, bound_port: int | None = None) -> str:
        """The endpoint to register: the configured one, else the listen address (with the bound port)."""
        if self.metadata_advertised_endpoint:
            return self.metadata_advertised_endpoint
        host, _, port = self.listen_address.rpartition(":")
        if bound_port is not None and port == "0":
            port = str(bound_port)
        return f"{host}:{port}"

    def server_version(self) -> str:
        """The version to register."""
        return self.metadata_server_version or _package_version()
