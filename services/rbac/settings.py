"""Configuration of the RBAC service (KEEL_RBAC_* environment variables)."""

from __future__ import annotations

from pydantic import Field

from services.kit.config import ServiceSettings


class RbacSettings(ServiceSettings):
    """Settings of RBAC on top of the ones every service shares."""

    # How often, at most, a replica reads an organization's stored revision (in the background)
    # to notice other replicas' writes. The hard staleness bound is max(1 s, 4 x this): past it a
    # check reads the store before answering. Writes on this replica and calls with
    # at_least_revision never wait for it. Capped at 0.25 s so the hard bound stays 1 s.
    rbac_revision_poll_seconds: float = Field(default=0.1, gt=0, le=0.25)
