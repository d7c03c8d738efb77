"""gRPC servicers of keel.orgs.v1 WorkspaceService and WorkspaceRegistryService; no SQL.

Also the RBAC side of workspaces (`RbacWorkspaceOwnership`): ownership is
recorded and forgotten with the caller's token (the kit client forwards it),
so RBAC's own rules apply to what orgs asks on a caller's behalf.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from keel.orgs.v1 import workspaces_pb2, workspaces_pb2_grpc
from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.context import current_principal, require_principal
from services.kit.errors import FailedPrecondition, KeelError, PermissionDenied, Unavailable
from services.kit.fieldmask import etag, resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.orgs.registry import Registry
from services.orgs.workspace_store import (
    ACTIVE,
    DEGRADED,
    DELETING,
    PROVISIONING,
    ListQuery,
    WorkspaceRecord,
)
from services.orgs.workspaces import UPDATABLE, RequestKey, WorkspaceInput, Workspaces

logger = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]

_STATES = {
    PROVISIONING: workspaces_pb2.PROVISIONING,
    ACTIVE: workspaces_pb2.ACTIVE,
    DEGRADED: workspaces_pb2.DEGRADED,
    DELETING: workspaces_pb2.DELETING,
}
_OUTPUT_ONLY = (
    "id",
    "organization_id",
    "state",
    "server_version",
    "register_time",
    "last_heartbeat_time",
    "create_time",
    "update_time",
    "etag",
)
_OWNER_KINDS = {"user": rbac_pb2.Subject.USER, "service_account": rbac_pb2.Subject.SERVICE_ACCOUNT}
_RBAC_UNAVAILABLE = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)


def _timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def workspace_message(record: WorkspaceRecord) -> workspaces_pb2.Workspace:
    """The Workspace message of a record."""
    return workspaces_pb2.Workspace(
        id=record.id,
        organization_id=record.organization_id,
        display_name=record.display_name,
        description=record.description,
        endpoint=record.endpoint,
        state=_STATES[record.state],
        server_version=record.server_version,
        register_time=_timestamp(record.register_time),
        last_heartbeat_time=_timestamp(record.last_heartbeat_time),
        create_time=_timestamp(record.create_time),
        update_time=_timestamp(record.update_time),
        etag=etag(record.version),
    )


def _input(message: workspaces_pb2.Workspace) -> WorkspaceInput:
    return WorkspaceInput(message.display_name, message.description, message.endpoint)


class WorkspaceApi(workspaces_pb2_grpc.WorkspaceServiceServicer):
    """WorkspaceService: CRUD, credential rotation and lookup of an organization's workspaces."""

    def __init__(self, workspaces: Workspaces) -> None:
        self._workspaces = workspaces

    async def CreateWorkspace(
        self, request: workspaces_pb2.CreateWorkspaceRequest, context: Context
    ) -> workspaces_pb2.CreateWorkspaceResponse:
        validate_request_id(request.request_id)
        key = None
        if request.request_id:
            principal = current_principal()
            key = RequestKey(
                f"keel.orgs.v1.WorkspaceService/CreateWorkspace/{request.organization_id}",
                principal.subject if principal else "",
                request.request_id,
            )
        created = await self._workspaces.create(
            request.organization_id, _input(request.workspace), request_key=key
        )
        return workspaces_pb2.CreateWorkspaceResponse(
            workspace=workspace_message(created.workspace), credential=created.credential
        )

    async def GetWorkspace(
        self, request: workspaces_pb2.GetWorkspaceRequest, context: Context
    ) -> workspaces_pb2.Workspace:
        return workspace_message(await self._workspaces.get(request.organization_id, request.workspace_id))

    async def ListWorkspaces(
        self, request: workspaces_pb2.ListWorkspacesRequest, context: Context
    ) -> workspaces_pb2.ListWorkspacesResponse:
        query = ListQuery(request.page_size, request.page_token, request.filter, request.order_by)
        found, next_token = await self._workspaces.list(request.organization_id, query)
        return workspaces_pb2.ListWorkspacesResponse(
            workspaces=[workspace_message(record) for record in found], next_page_token=next_token
        )

    async def UpdateWorkspace(
        self, request: workspaces_pb2.UpdateWorkspaceRequest, context: Context
    ) -> workspaces_pb2.Workspace:
        mask = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        workspace = request.workspace
        updated = await self._workspaces.update(
            workspace.organization_id, workspace.id, _input(workspace), mask, workspace.etag
        )
        return workspace_message(updated)

    async def DeleteWorkspace(
        self, request: workspaces_pb2.DeleteWorkspaceRequest, context: Context
    ) -> workspaces_pb2.Workspace:
        deleted = await self._workspaces.delete(request.organization_id, request.workspace_id, request.etag)
        return workspace_message(deleted)

    async def RotateWorkspaceCredential(
        self, request: workspaces_pb2.RotateWorkspaceCredentialRequest, context: Context
    ) -> workspaces_pb2.RotateWorkspaceCredentialResponse:
        rotated = await self._workspaces.rotate_credential(request.organization_id, request.workspace_id)
        return workspaces_pb2.RotateWorkspaceCredentialResponse(
            workspace=workspace_message(rotated.workspace), credential=rotated.credential
        )

    async def LookupWorkspace(
        self, request: workspaces_pb2.LookupWorkspaceRequest, context: Context
    ) -> workspaces_pb2.WorkspaceLocation:
        location = await self._workspaces.lookup(request.organization_id, request.workspace_id)
        workspace = location.workspace
        return workspaces_pb2.WorkspaceLocation(
            workspace_id=workspace.id,
            organization_id=workspace.organization_id,
            endpoint=workspace.endpoint,
            state=_STATES[workspace.state],
            state_reason=location.state_reason,
            server_version=workspace.server_version,
        )


class WorkspaceRegistryApi(workspaces_pb2_grpc.WorkspaceRegistryServiceServicer):
    """WorkspaceRegistryService: called by workspace servers with their workspace credential."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def _interval(self) -> duration_pb2.Duration:
        interval = duration_pb2.Duration()
        interval.FromTimedelta(self._registry.heartbeat_interval)
        return interval

    async def RegisterWorkspaceServer(
        self, request: workspaces_pb2.RegisterWorkspaceServerRequest, context: Context
    ) -> workspaces_pb2.RegisterWorkspaceServerResponse:
        workspace = await self._registry.register(
            request.credential, request.endpoint, request.server_version
        )
        return workspaces_pb2.RegisterWorkspaceServerResponse(
            workspace=workspace_message(workspace), heartbeat_interval=self._interval()
        )

    async def SendHeartbeat(
        self, request: workspaces_pb2.SendHeartbeatRequest, context: Context
    ) -> workspaces_pb2.SendHeartbeatResponse:
        beat = await self._registry.heartbeat(request.credential)
        return workspaces_pb2.SendHeartbeatResponse(
            state=_STATES[beat.state], heartbeat_interval=self._interval()
        )


class RbacWorkspaceOwnership:
    """Workspace ownership in RBAC, written with the caller's token; orgs then sees its write at once."""

    def __init__(
        self, permissions: rbac_pb2_grpc.PermissionServiceStub, note_revision: Callable[[int], None]
    ) -> None:
        self._permissions = permissions
        self._note_revision = note_revision

    async def record(self, organization_id: str, workspace_id: str) -> None:
        """Binds the caller as owner of the new workspace."""
        principal = require_principal()
        kind = _OWNER_KINDS.get(principal.kind)
        if kind is None:
            raise PermissionDenied("permission denied")
        request = rbac_pb2.RecordOwnershipRequest(
            owner=rbac_pb2.Subject(kind=kind, id=principal.subject),
            resource=_ref(organization_id, workspace_id),
        )
        binding = await _call_rbac(self._permissions.RecordOwnership(request))
        self._note_revision(binding.revision)

    async def forget(self, organization_id: str, workspace_id: str) -> None:
        """Removes every share and ownership of the deleted workspace."""
        request = rbac_pb2.ForgetResourceRequest(resource=_ref(organization_id, workspace_id))
        forgotten = await _call_rbac(self._permissions.ForgetResource(request))
        self._note_revision(forgotten.revision)


def _ref(organization_id: str, workspace_id: str) -> rbac_pb2.ResourceRef:
    # A workspace is its own scope too, as the kit's permission checker names it.
    return rbac_pb2.ResourceRef(
        organization_id=organization_id,
        workspace_id=workspace_id,
        resource_type="workspace",
        resource_id=workspace_id,
    )


async def _call_rbac(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise _rbac_error(error) from None


def _rbac_error(error: grpc.aio.AioRpcError) -> KeelError:
    code = error.code()
    if code in _RBAC_UNAVAILABLE:
        return Unavailable("the permission service is unavailable; retry")
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return PermissionDenied("permission denied")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(error.details() or "refused by the permission service")
    logger.error("RBAC refused a workspace ownership change with %s", code.name)
    return Unavailable("the permission service refused the change; retry")
