"""Configuration of the orgs service (KEEL_ORGS_* environment variables)."""

from __future__ import annotations

from pydantic import Field

from services.kit.config import ServiceSettings


class OrgsSettings(ServiceSettings):
    """Settings of orgs on top of the ones every service shares (other orgs modules add theirs at the end)."""

    # How long an invitation token stays valid (default 7 days).
    orgs_invitation_ttl_seconds: int = Field(default=7 * 24 * 3600, ge=60, le=90 * 24 * 3600)
    # How long a Create's request_id is remembered for retries.
    orgs_request_id_retention_seconds: int = Field(default=24 * 3600, ge=3600)
    # Workspace registry (workspaces.py, registry.py): how often workspace servers send heartbeats,
    # how many may be missed before the sweeper marks the workspace DEGRADED, and how long the rows
    # of DELETING workspaces are kept before the sweeper purges them (default 7 days).
    orgs_heartbeat_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    orgs_missed_heartbeats: int = Field(default=3, ge=1, le=100)
    orgs_deleted_workspace_retention_seconds: int = Field(default=7 * 24 * 3600, ge=0)
