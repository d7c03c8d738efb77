"""gRPC servicers of keel.rbac.v1: request proto → domain call → response proto; no SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.context import current_principal, require_principal
from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.fieldmask import etag, resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.rbac.administration import UPDATABLE_ROLE_FIELDS, Administration, RequestKey, RoleView
from services.rbac.catalog import OWNER_ROLE, Perm, is_permission
from services.rbac.decisions import Decisions
from services.rbac.evaluator import Ref, SubjectKey
from services.rbac.ownership import MAX_OWNERSHIP_BATCH, Ownerships
from services.rbac.store import BindingRecord, ListQuery, OwnershipRecord

Context = grpc.aio.ServicerContext[Any, Any]

MAX_ID_LENGTH = 64
MAX_BATCH = 100

_KINDS = {
    rbac_pb2.Subject.USER: "user",
    rbac_pb2.Subject.TEAM: "team",
    rbac_pb2.Subject.SERVICE_ACCOUNT: "service_account",
}
_PRINCIPAL_KINDS = {"user": "user", "service_account": "service_account"}
_KIND_ENUMS = {name: value for value, name in _KINDS.items()}
_LEVELS = {
    rbac_pb2.ORGANIZATION: "organization",
    rbac_pb2.WORKSPACE: "workspace",
    rbac_pb2.PROJECT: "project",
    rbac_pb2.RESOURCE: "resource",
}
_LEVEL_ENUMS = {name: value for value, name in _LEVELS.items()}
_ROLE_OUTPUT_ONLY = ("id", "organization_id", "level", "built_in", "create_time", "update_time", "etag")


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def required_id(value: str, field: str) -> str:
    """A non-empty id of bounded length; INVALID_ARGUMENT naming `field` otherwise."""
    if not value:
        raise InvalidArgument(field, "is required")
    return optional_id(value, field)


def optional_id(value: str, field: str) -> str:
    """An id of bounded length, possibly empty."""
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_ID_LENGTH} characters")
    return value


def subject_of(message: rbac_pb2.Subject, field: str) -> SubjectKey:
    """The (kind, id) of a Subject."""
    kind = _KINDS.get(message.kind)
    if kind is None:
        raise InvalidArgument(f"{field}.kind", "is required")
    return kind, required_id(message.id, f"{field}.id")


def ref_of(message: rbac_pb2.ResourceRef, field: str, organization_id: str = "") -> Ref:
    """The Ref of a ResourceRef; `organization_id` fills (and must match) the organization."""
    org = message.organization_id or organization_id
    if organization_id and message.organization_id and message.organization_id != organization_id:
        raise InvalidArgument(f"{field}.organization_id", "must be empty or the request's organization_id")
    return Ref(
        required_id(org, f"{field}.organization_id"),
        optional_id(message.workspace_id, f"{field}.workspace_id"),
        optional_id(message.project_id, f"{field}.project_id"),
        optional_id(message.resource_type, f"{field}.resource_type"),
        optional_id(message.resource_id, f"{field}.resource_id"),
    )


def permission_of(message: rbac_pb2.Permission, field: str) -> Perm:
    """A (type, action) from the catalogue."""
    if not is_permission(message.resource_type, message.action):
        raise InvalidArgument(field, f"{message.resource_type}.{message.action} is not a known permission")
    return message.resource_type, message.action


def request_key(method: str, request_id: str, scope: str) -> RequestKey | None:
    """The idempotency key of a create, bound to the caller and the organization."""
    validate_request_id(request_id)
    if not request_id:
        return None
    principal = current_principal()
    return RequestKey(f"keel.rbac.v1.{method}/{scope}", principal.subject if principal else "", request_id)


def caller() -> SubjectKey:
    """The authenticated caller as an RBAC subject; PERMISSION_DENIED for a workload."""
    principal = require_principal()
    kind = _PRINCIPAL_KINDS.get(principal.kind)
    if kind is None:
        raise PermissionDenied("permission denied")
    return kind, principal.subject


def list_query(request: Any) -> ListQuery:
    """The paging, filter and order_by fields of a List request."""
    return ListQuery(request.page_size, request.page_token, request.filter, request.order_by)


def role_message(view: RoleView) -> rbac_pb2.Role:
    """The Role message of a role."""
    record = view.record
    return rbac_pb2.Role(
        id=record.id,
        organization_id=record.organization_id,
        display_name=record.display_name,
        description=record.description,
        level=_LEVEL_ENUMS[record.level],
        permissions=[rbac_pb2.Permission(resource_type=t, action=a) for t, a in record.permissions],
        built_in=view.built_in,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag="" if view.built_in else etag(record.version),
    )


def binding_message(record: BindingRecord) -> rbac_pb2.RoleBinding:
    """The RoleBinding message of a binding."""
    return rbac_pb2.RoleBinding(
        id=record.id,
        organization_id=record.organization_id,
        subject=rbac_pb2.Subject(kind=_KIND_ENUMS[record.subject_kind], id=record.subject_id),
        role_id=record.role_id,
        scope=rbac_pb2.ResourceRef(
            organization_id=record.organization_id,
            workspace_id=record.workspace_id,
            project_id=record.project_id,
            resource_type=record.resource_type,
            resource_id=record.resource_id,
        ),
        level=_LEVEL_ENUMS[record.level],
        create_time=timestamp(record.create_time),
        revision=record.revision,
    )


def ownership_message(record: OwnershipRecord, revision: int) -> rbac_pb2.RoleBinding:
    """An ownership as a RoleBinding: role "owner" on the resource, at the current revision."""
    return rbac_pb2.RoleBinding(
        id=record.id,
        organization_id=record.organization_id,
        subject=rbac_pb2.Subject(kind=_KIND_ENUMS[record.subject_kind], id=record.subject_id),
        role_id=OWNER_ROLE,
        scope=rbac_pb2.ResourceRef(
            organization_id=record.organization_id,
            workspace_id=record.workspace_id,
            project_id=record.project_id,
            resource_type=record.resource_type,
            resource_id=record.resource_id,
        ),
        level=rbac_pb2.RESOURCE,
        create_time=timestamp(record.create_time),
        revision=revision,
    )


def _revision(value: int, field: str = "at_least_revision") -> int:
    if value < 0:
        raise InvalidArgument(field, "must not be negative")
    return value


class PermissionApi(rbac_pb2_grpc.PermissionServiceServicer):
    """PermissionService: checks, lookups, effective permissions, ownership, shares, forgetting."""

    def __init__(self, decisions: Decisions, administration: Administration, ownerships: Ownerships) -> None:
        self._decisions = decisions
        self._administration = administration
        self._ownerships = ownerships

    async def Check(self, request: rbac_pb2.CheckRequest, context: Context) -> rbac_pb2.CheckResponse:
        subject = subject_of(request.principal, "principal")
        permission = permission_of(request.permission, "permission")
        resource = ref_of(request.resource, "resource")
        decision = await self._decisions.decide(
            subject, permission, resource, _revision(request.at_least_revision)
        )
        return rbac_pb2.CheckResponse(
            allowed=decision.allowed, revision=decision.revision, scope_wide=decision.scope_wide
        )

    async def BatchCheck(
        self, request: rbac_pb2.BatchCheckRequest, context: Context
    ) -> rbac_pb2.BatchCheckResponse:
        subject = subject_of(request.principal, "principal")
        organization_id = required_id(request.organization_id, "organization_id")
        if len(request.items) > MAX_BATCH:
            raise InvalidArgument("items", f"at most {MAX_BATCH} items per call")
        items = [
            (
                permission_of(item.permission, f"items[{index}].permission"),
                ref_of(item.resource, f"items[{index}].resource", organization_id),
            )
            for index, item in enumerate(request.items)
        ]
        allowed, revision = await self._decisions.batch_check(
            subject, organization_id, items, _revision(request.at_least_revision)
        )
        return rbac_pb2.BatchCheckResponse(allowed=allowed, revision=revision)

    async def LookupResources(
        self, request: rbac_pb2.LookupResourcesRequest, context: Context
    ) -> rbac_pb2.LookupResourcesResponse:
        subject = subject_of(request.subject, "subject")
        permission = permission_of(request.permission, "permission")
        scope = ref_of(request.scope, "scope")
        if scope.resource_id or scope.resource_type:
            raise InvalidArgument("scope.resource_id", "a lookup scope names no resource")
        found, revision = await self._decisions.lookup(
            subject, permission, scope, _revision(request.at_least_revision)
        )
        return rbac_pb2.LookupResourcesResponse(
            all=found.all,
            workspace_ids=sorted(found.workspace_ids),
            project_ids=sorted(found.project_ids),
            resource_ids=sorted(found.resource_ids),
            revision=revision,
            resource_ids_truncated=found.truncated,
        )

    async def ListEffectivePermissions(
        self, request: rbac_pb2.ListEffectivePermissionsRequest, context: Context
    ) -> rbac_pb2.ListEffectivePermissionsResponse:
        subject = subject_of(request.subject, "subject")
        scope = ref_of(request.scope, "scope")
        held, revision = await self._decisions.effective(subject, scope, _revision(request.at_least_revision))
        return rbac_pb2.ListEffectivePermissionsResponse(
            permissions=[rbac_pb2.Permission(resource_type=t, action=a) for t, a in held], revision=revision
        )

    async def RecordOwnership(
        self, request: rbac_pb2.RecordOwnershipRequest, context: Context
    ) -> rbac_pb2.RoleBinding:
        owner = subject_of(request.owner, "owner")
        resource = ref_of(request.resource, "resource")
        recorded = await self._ownerships.record(owner, resource)
        return ownership_message(recorded.ownerships[0], recorded.revision)

    async def BatchRecordOwnership(
        self, request: rbac_pb2.BatchRecordOwnershipRequest, context: Context
    ) -> rbac_pb2.BatchRecordOwnershipResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        owner = subject_of(request.owner, "owner")
        if len(request.resources) > MAX_OWNERSHIP_BATCH:
            raise InvalidArgument("resources", f"at most {MAX_OWNERSHIP_BATCH} resources per call")
        resources = [
            ref_of(resource, f"resources[{index}]", organization_id)
            for index, resource in enumerate(request.resources)
        ]
        recorded = await self._ownerships.record_many(owner, organization_id, resources)
        return rbac_pb2.BatchRecordOwnershipResponse(
            ownerships=[ownership_message(record, recorded.revision) for record in recorded.ownerships],
            revision=recorded.revision,
        )

    async def ShareResource(
        self, request: rbac_pb2.ShareResourceRequest, context: Context
    ) -> rbac_pb2.RoleBinding:
        resource = ref_of(request.resource, "resource")
        subject = subject_of(request.subject, "subject")
        role_id = required_id(request.role_id, "role_id")
        # The rule is `authenticated`: the permission needed depends on the resource's type.
        principal = require_principal()
        kind = _PRINCIPAL_KINDS.get(principal.kind)
        if kind is None:
            raise PermissionDenied("permission denied")
        record = await self._administration.share_resource(
            (kind, principal.subject), resource, subject, role_id
        )
        return binding_message(record)

    async def ForgetResource(
        self, request: rbac_pb2.ForgetResourceRequest, context: Context
    ) -> rbac_pb2.ForgetResourceResponse:
        resource = ref_of(request.resource, "resource")
        if not resource.resource_type or not resource.resource_id:
            raise InvalidArgument("resource.resource_id", "resource_type and resource_id are required")
        # The rule is `authenticated`: the permission needed depends on the resource's type.
        allowed, _ = await self._decisions.check(caller(), (resource.resource_type, "delete"), resource)
        if not allowed:
            await self._administration.record_denial(
                "rbac.resource.forget", resource, f"{resource.resource_type}.delete"
            )
            raise PermissionDenied(
                "permission denied", metadata={"permission": f"{resource.resource_type}.delete"}
            )
        deleted, owned, revision = await self._administration.forget_resource(resource)
        return rbac_pb2.ForgetResourceResponse(
            deleted_bindings=deleted, deleted_ownerships=owned, revision=revision
        )


class RoleApi(rbac_pb2_grpc.RoleServiceServicer):
    """RoleService: custom roles CRUD; built-in roles readable by id."""

    def __init__(self, administration: Administration) -> None:
        self._administration = administration

    async def CreateRole(self, request: rbac_pb2.CreateRoleRequest, context: Context) -> rbac_pb2.Role:
        organization_id = required_id(request.organization_id, "organization_id")
        if not request.HasField("role"):
            raise InvalidArgument("role", "is required")
        level = _LEVELS.get(request.role.level)
        if level is None:
            raise InvalidArgument("role.level", "is required")
        view = await self._administration.create_role(
            organization_id,
            request.role.display_name,
            request.role.description,
            level,
            [(p.resource_type, p.action) for p in request.role.permissions],
            request_key=request_key("CreateRole", request.request_id, organization_id),
        )
        return role_message(view)

    async def GetRole(self, request: rbac_pb2.GetRoleRequest, context: Context) -> rbac_pb2.Role:
        organization_id = required_id(request.organization_id, "organization_id")
        role_id = required_id(request.role_id, "role_id")
        return role_message(await self._administration.get_role(organization_id, role_id))

    async def ListRoles(
        self, request: rbac_pb2.ListRolesRequest, context: Context
    ) -> rbac_pb2.ListRolesResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        views, token = await self._administration.list_roles(organization_id, list_query(request))
        return rbac_pb2.ListRolesResponse(roles=[role_message(v) for v in views], next_page_token=token)

    async def UpdateRole(self, request: rbac_pb2.UpdateRoleRequest, context: Context) -> rbac_pb2.Role:
        if not request.HasField("role"):
            raise InvalidArgument("role", "is required")
        organization_id = required_id(request.role.organization_id, "role.organization_id")
        role_id = required_id(request.role.id, "role.id")
        fields = resolve_update_mask(
            request.update_mask.paths, UPDATABLE_ROLE_FIELDS, output_only=_ROLE_OUTPUT_ONLY
        )
        changes: dict[str, Any] = {}
        for name in fields:
            if name == "permissions":
                changes[name] = [(p.resource_type, p.action) for p in request.role.permissions]
            else:
                changes[name] = getattr(request.role, name)
        view = await self._administration.update_role(organization_id, role_id, request.role.etag, changes)
        return role_message(view)

    async def DeleteRole(
        self, request: rbac_pb2.DeleteRoleRequest, context: Context
    ) -> rbac_pb2.DeleteRoleResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        role_id = required_id(request.role_id, "role_id")
        revision = await self._administration.delete_role(organization_id, role_id, request.etag)
        return rbac_pb2.DeleteRoleResponse(revision=revision)


class RoleBindingApi(rbac_pb2_grpc.RoleBindingServiceServicer):
    """RoleBindingService: bindings CRUD."""

    def __init__(self, administration: Administration) -> None:
        self._administration = administration

    async def CreateRoleBinding(
        self, request: rbac_pb2.CreateRoleBindingRequest, context: Context
    ) -> rbac_pb2.RoleBinding:
        organization_id = required_id(request.organization_id, "organization_id")
        if not request.HasField("role_binding"):
            raise InvalidArgument("role_binding", "is required")
        binding = request.role_binding
        subject = subject_of(binding.subject, "role_binding.subject")
        role_id = required_id(binding.role_id, "role_binding.role_id")
        scope = ref_of(binding.scope, "role_binding.scope", organization_id)
        record = await self._administration.create_binding(
            organization_id,
            subject,
            role_id,
            scope,
            request_key=request_key("CreateRoleBinding", request.request_id, organization_id),
            granter=caller(),
        )
        return binding_message(record)

    async def GetRoleBinding(
        self, request: rbac_pb2.GetRoleBindingRequest, context: Context
    ) -> rbac_pb2.RoleBinding:
        organization_id = required_id(request.organization_id, "organization_id")
        binding_id = required_id(request.role_binding_id, "role_binding_id")
        return binding_message(await self._administration.get_binding(organization_id, binding_id))

    async def ListRoleBindings(
        self, request: rbac_pb2.ListRoleBindingsRequest, context: Context
    ) -> rbac_pb2.ListRoleBindingsResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        records, token = await self._administration.list_bindings(organization_id, list_query(request))
        return rbac_pb2.ListRoleBindingsResponse(
            role_bindings=[binding_message(r) for r in records], next_page_token=token
        )

    async def DeleteRoleBinding(
        self, request: rbac_pb2.DeleteRoleBindingRequest, context: Context
    ) -> rbac_pb2.DeleteRoleBindingResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        binding_id = required_id(request.role_binding_id, "role_binding_id")
        revision = await self._administration.delete_binding(organization_id, binding_id, remover=caller())
        return rbac_pb2.DeleteRoleBindingResponse(revision=revision)

    async def PurgeSubject(
        self, request: rbac_pb2.PurgeSubjectRequest, context: Context
    ) -> rbac_pb2.PurgeSubjectResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        subject = subject_of(request.subject, "subject")
        bindings, memberships, owned, revision = await self._administration.purge_subject(
            organization_id, subject, remover=caller()
        )
        return rbac_pb2.PurgeSubjectResponse(
            deleted_bindings=bindings,
            deleted_memberships=memberships,
            deleted_ownerships=owned,
            revision=revision,
        )

    async def PurgeOrganization(
        self, request: rbac_pb2.PurgeOrganizationRequest, context: Context
    ) -> rbac_pb2.PurgeOrganizationResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        bindings, roles, memberships, owned, revision = await self._administration.purge_organization(
            organization_id
        )
        return rbac_pb2.PurgeOrganizationResponse(
            deleted_bindings=bindings,
            deleted_roles=roles,
            deleted_memberships=memberships,
            deleted_ownerships=owned,
            revision=revision,
        )


class TeamMembershipApi(rbac_pb2_grpc.TeamMembershipServiceServicer):
    """TeamMembershipService: the orgs service mirrors team memberships here."""

    def __init__(self, administration: Administration) -> None:
        self._administration = administration

    async def AddTeamMember(
        self, request: rbac_pb2.AddTeamMemberRequest, context: Context
    ) -> rbac_pb2.TeamMembershipResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        member = subject_of(request.member, "member")
        revision = await self._administration.add_team_member(organization_id, team_id, member)
        return rbac_pb2.TeamMembershipResponse(revision=revision)

    async def RemoveTeamMember(
        self, request: rbac_pb2.RemoveTeamMemberRequest, context: Context
    ) -> rbac_pb2.TeamMembershipResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        member = subject_of(request.member, "member")
        revision = await self._administration.remove_team_member(organization_id, team_id, member)
        return rbac_pb2.TeamMembershipResponse(revision=revision)
