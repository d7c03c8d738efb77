"""Typed configuration from KEEL_* environment variables.

Every service has a settings class derived from `ServiceSettings`; values are
validated at start and a bad one stops the process with a message that names
the variable, never with a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    """Settings every service shares. Environment: KEEL_<FIELD NAME IN UPPER CASE>."""

    model_config = SettingsConfigDict(env_prefix="KEEL_", extra="ignore", frozen=True)

    # host:port to listen on; port 0 picks a free one (tests).
    listen_address: str = "127.0.0.1:0"
    # Folder for the embedded SQLite databases and generated local secrets.
    data_dir: Path = Path(".keel-data")
    # SQLAlchemy URL; empty means the embedded SQLite file <data_dir>/<service>.db.
    database_url: str = ""
    # PostgreSQL schema of this service (one database per plane, one schema per service).
    database_schema: str = ""
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_statement_timeout_ms: int = Field(default=10_000, ge=100)
    # Deadline applied to incoming calls that carry none.
    default_deadline_seconds: float = Field(default=30.0, gt=0)
    # How long a stopping server keeps serving in-flight calls (health is NOT_SERVING meanwhile).
    drain_seconds: float = Field(default=5.0, ge=0)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # OTLP/gRPC endpoint for traces; empty disables export.
    otlp_endpoint: str = ""
    # Where the authn service listens (JWKS for local token verification).
    authn_address: str = "127.0.0.1:50051"
    # Expected "iss" and "aud" of access tokens.
    token_issuer: str = "keel"
    token_audience: str = "keel"
    # Metadata keys a gateway sets that this service trusts for the caller's source address.
    trust_forwarded_for: bool = False
    # Where the other control-plane services listen (permission checks, audit shipping, registry).
    rbac_address: str = "127.0.0.1:50053"
    orgs_address: str = "127.0.0.1:50052"
    # Comma-separated authn ids of the control plane's own service accounts: the mesh's services
    # acting on their own account (audit shipping, writing RBAC state for orgs). Nobody else is one.
    mesh_service_accounts: str = ""
    # File holding this service's own API key (a mesh service account's), mode 0600; empty: none.
    service_api_key_file: Path | None = None

    @property
    def mesh_service_account_ids(self) -> frozenset[str]:
        """The ids of KEEL_MESH_SERVICE_ACCOUNTS."""
        return frozenset(part.strip() for part in self.mesh_service_accounts.split(",") if part.strip())


SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


class ConfigurationError(SystemExit):
    """Raised at start for invalid configuration; its text names each bad variable."""


def describe_errors(error: ValidationError, prefix: str = "KEEL_") -> str:
    """One line per invalid variable: its environment name and the problem."""
    lines = ["invalid configuration:"]
    for item in error.errors():
        name = prefix + "_".join(str(part) for part in item["loc"]).upper()
        lines.append(f"  {name}: {item['msg']}")
    return "\n".join(lines)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Reads and validates settings; exits with a clear message when a value is bad."""
    try:
        return cls()
    except ValidationError as error:
        message = describe_errors(error)
        print(message, file=sys.stderr)
        raise ConfigurationError(message) from None
