"""Wiring of the workspace part of orgs: domain objects, servicers and the registry sweeper's task.

`server.py` builds one `WorkspaceParts`, adds its registrations to the
KeelServer, and starts/stops `sweeping` (a kit PeriodicTask) with the service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

import grpc

from keel.orgs.v1 import workspaces_pb2_grpc
from keel.rbac.v1 import rbac_pb2_grpc
from services.kit.clock import Clock
from services.kit.periodic import PeriodicTask
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.server import Registration
from services.orgs.api_workspaces import RbacWorkspaceOwnership, WorkspaceApi, WorkspaceRegistryApi
from services.orgs.registry import Registry, RegistrySweeper
from services.orgs.settings import OrgsSettings
from services.orgs.store import OrgsStore
from services.orgs.workspaces import Workspaces


def _noop() -> None:
    return None


@dataclass
class WorkspaceParts:
    """Workspaces, the registry and its sweeper over one store."""

    workspaces: Workspaces
    registry: Registry
    sweeper: RegistrySweeper
    # Every replica may sweep: its transitions are race-safe.
    sweeping: PeriodicTask = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sweeping = PeriodicTask(
            "workspace-registry-sweeper", self.sweeper.sweep_once, self.sweeper.interval_seconds
        )

    def registrations(self) -> list[Registration]:
        """WorkspaceService and WorkspaceRegistryService."""
        return [
            Registration(
                "keel.orgs.v1.WorkspaceService",
                workspaces_pb2_grpc.add_WorkspaceServiceServicer_to_server,
                WorkspaceApi(self.workspaces),
            ),
            Registration(
                "keel.orgs.v1.WorkspaceRegistryService",
                workspaces_pb2_grpc.add_WorkspaceRegistryServiceServicer_to_server,
                WorkspaceRegistryApi(self.registry),
            ),
        ]


def build_workspace_parts(
    settings: OrgsSettings,
    store: OrgsStore,
    clock: Clock,
    rbac_channel: grpc.aio.Channel,
    checker: RbacPermissionChecker,
    *,
    audit_recorded: Callable[[], None] = _noop,
) -> WorkspaceParts:
    """The workspace domain objects; RBAC ownership goes over `rbac_channel` with the caller's token."""
    interval = timedelta(seconds=settings.orgs_heartbeat_interval_seconds)
    ownership = RbacWorkspaceOwnership(
        rbac_pb2_grpc.PermissionServiceStub(rbac_channel), checker.note_revision
    )
    return WorkspaceParts(
        workspaces=Workspaces(store, clock, ownership, audit_recorded=audit_recorded),
        registry=Registry(store, clock, heartbeat_interval=interval, audit_recorded=audit_recorded),
        sweeper=RegistrySweeper(
            store,
            clock,
            heartbeat_interval=interval,
            missed_heartbeats=settings.orgs_missed_heartbeats,
            deleted_retention=timedelta(seconds=settings.orgs_deleted_workspace_retention_seconds),
            audit_recorded=audit_recorded,
        ),
    )
