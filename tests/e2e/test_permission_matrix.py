"""The permission matrix of the control plane, generated from the descriptors.

For every RPC of authn, rbac and orgs (walked from the generated contracts):
- no token → UNAUTHENTICATED (public RPCs: the anonymous answer the case names);
- a member of organization A without the needed role → PERMISSION_DENIED;
- the admin of organization B → PERMISSION_DENIED, identical for an existing and a
  missing resource of A (nothing learnt about existence);
- the holder of the right role → the case's expected success.

The denial requests are built from each RPC's rule alone (scope, resource and self
fields filled in), so they cannot drift from the contracts; the holder's request
is written by hand in HOLDER_CASES. An RPC without a case fails the test: adding
an RPC means adding its row here.

Everything is real: authn, rbac and orgs servers on 127.0.0.1, one SQLite file
each, tokens issued by authn, one shared ManualClock.
"""

from __future__ import annotations

import importlib
import pkgutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, field_mask_pb2, message_factory
from google.protobuf.message import Message

import keel
from keel.authn.v1 import (
    api_keys_pb2,
    service_accounts_pb2,
    tokens_pb2,
    users_pb2,
)
from keel.orgs.v1 import (
    audit_pb2,
    organizations_pb2,
    organizations_pb2_grpc,
    workspaces_pb2,
    workspaces_pb2_grpc,
)
from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit.rules import rule_for
from services.orgs.server import build_service as build_orgs
from services.orgs.settings import OrgsSettings
from services.rbac.server import build_service as build_rbac
from services.rbac.settings import RbacSettings
from tests.authn.conftest import Authn, start_authn, stop_authn
from tests.clock import ManualClock

CONTROL_PLANE_PACKAGES = ("keel.authn.v1.", "keel.rbac.v1.", "keel.orgs.v1.")
OK = grpc.StatusCode.OK
PASSWORD = "correct horse battery"


def control_plane_methods() -> list[descriptor.MethodDescriptor]:
    """Every RPC of every control-plane service in the generated package."""
    methods: list[descriptor.MethodDescriptor] = []
    for module_info in pkgutil.walk_packages(keel.__path__, prefix="keel."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            if service.full_name.startswith(CONTROL_PLANE_PACKAGES):
                methods.extend(service.methods)
    return methods


def full_name(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def set_path(request: Message, path: str, value: str) -> None:
    *parents, last = path.split(".")
    target = request
    for part in parents:
        target = getattr(target, part)
    setattr(target, last, value)


@dataclass
class World:
    """The running control plane, its personas' tokens and the ids of what exists in organization A."""

    channels: dict[str, grpc.aio.Channel]
    tokens: dict[str, str] = field(default_factory=dict, repr=False)
    ids: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def channel_for(self, method: descriptor.MethodDescriptor) -> grpc.aio.Channel:
        return self.channels[method.containing_service.full_name.split(".")[1]]

    async def call(
        self, method: descriptor.MethodDescriptor, request: Message, persona: str | None
    ) -> tuple[grpc.StatusCode, str]:
        output = message_factory.GetMessageClass(method.output_type)
        callable_ = self.channel_for(method).unary_unary(
            full_name(method),
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=output.FromString,
        )
        metadata = () if persona is None else (("authorization", f"Bearer {self.tokens[persona]}"),)
        try:
            await callable_(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        return OK, ""


# Which existing resource of organization A a denial request names, by the rule's resource type.
EXISTING_ID_KEY = {
    "user": "root",
    "member": "alice",
    "service_account": "service_account",
    "api_key": "root",
    "team": "team",
    "invitation": "invitation",
    "workspace": "workspace",
    "role": "role",
    "role_binding": "carol_binding",
}


def denial_request(world: World, method: descriptor.MethodDescriptor, *, existing: bool) -> Message:
    """A request naming organization A and an existing (or random) resource, built from the rule."""
    rule = rule_for(full_name(method))
    assert rule is not None
    request = message_factory.GetMessageClass(method.input_type)()
    if rule.scope_field:
        set_path(request, rule.scope_field, world.ids["org_a"])
    if rule.resource_field:
        resource = world.ids[EXISTING_ID_KEY[rule.resource_type]] if existing else str(uuid.uuid4())
        set_path(request, rule.resource_field, resource)
    if rule.self_field and rule.self_field != rule.resource_field:
        set_path(request, rule.self_field, world.ids["root"])  # someone else than the caller
    return request


@dataclass(frozen=True)
class Case:
    """The holder's call of one RPC: who, which request, and what it answers."""

    persona: str | None
    request: Callable[[World], Message]
    expect: grpc.StatusCode = OK


def org_a(world: World) -> str:
    return world.ids["org_a"]


Builder = Callable[[World], Message]


def admin(request: Builder, expect: grpc.StatusCode = OK) -> Case:
    return Case("alice", request, expect)


def root(request: Builder, expect: grpc.StatusCode = OK) -> Case:
    return Case("root", request, expect)


def subject(kind: rbac_pb2.Subject.Kind.ValueType, key: str) -> Callable[[World], rbac_pb2.Subject]:
    return lambda w: rbac_pb2.Subject(kind=kind, id=w.ids[key])


USER = rbac_pb2.Subject.USER
carol = subject(USER, "carol")

HOLDER_CASES: dict[str, Case] = {
    # authn: platform resources; the platform admin holds them, users act on themselves.
    "/keel.authn.v1.UserService/CreateUser": root(
        lambda w: users_pb2.CreateUserRequest(
            user=users_pb2.User(email="new@example.test"), password=PASSWORD
        )
    ),
    "/keel.authn.v1.UserService/GetUser": root(lambda w: users_pb2.GetUserRequest(user_id=w.ids["carol"])),
    "/keel.authn.v1.UserService/ListUsers": root(lambda w: users_pb2.ListUsersRequest()),
    "/keel.authn.v1.UserService/UpdateUser": root(
        lambda w: users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=w.ids["carol"], display_name="Carol C"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    ),
    "/keel.authn.v1.UserService/ChangePassword": Case(
        "dave",
        lambda w: users_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password=PASSWORD + " 2"),
    ),
    "/keel.authn.v1.UserService/DeactivateUser": root(
        lambda w: users_pb2.DeactivateUserRequest(user_id=w.ids["victim"])
    ),
    "/keel.authn.v1.ServiceAccountService/CreateServiceAccount": root(
        lambda w: service_accounts_pb2.CreateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(display_name="ci-bot")
        )
    ),
    "/keel.authn.v1.ServiceAccountService/GetServiceAccount": root(
        lambda w: service_accounts_pb2.GetServiceAccountRequest(service_account_id=w.ids["service_account"])
    ),
    "/keel.authn.v1.ServiceAccountService/ListServiceAccounts": root(
        lambda w: service_accounts_pb2.ListServiceAccountsRequest()
    ),
    "/keel.authn.v1.ServiceAccountService/UpdateServiceAccount": root(
        lambda w: service_accounts_pb2.UpdateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(
                id=w.ids["service_account"], display_name="renamed-bot"
            )
        )
    ),
    "/keel.authn.v1.ServiceAccountService/DeactivateServiceAccount": root(
        lambda w: service_accounts_pb2.DeactivateServiceAccountRequest(
            service_account_id=w.ids["service_account"]
        )
    ),
    "/keel.authn.v1.ApiKeyService/CreateApiKey": root(
        lambda w: api_keys_pb2.CreateApiKeyRequest(
            principal_id=w.ids["carol"], api_key=api_keys_pb2.ApiKey(display_name="laptop")
        )
    ),
    "/keel.authn.v1.ApiKeyService/GetApiKey": root(
        lambda w: api_keys_pb2.GetApiKeyRequest(principal_id=w.ids["carol"], api_key_id=w.ids["carol_key"])
    ),
    "/keel.authn.v1.ApiKeyService/ListApiKeys": root(
        lambda w: api_keys_pb2.ListApiKeysRequest(principal_id=w.ids["carol"])
    ),
    "/keel.authn.v1.ApiKeyService/RotateApiKey": root(
        lambda w: api_keys_pb2.RotateApiKeyRequest(principal_id=w.ids["carol"], api_key_id=w.ids["carol_key"])
    ),
    "/keel.authn.v1.ApiKeyService/RevokeApiKey": root(
        lambda w: api_keys_pb2.RevokeApiKeyRequest(principal_id=w.ids["carol"], api_key_id=w.ids["carol_key"])
    ),
    "/keel.authn.v1.TokenService/CreateToken": Case(
        None,
        lambda w: tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email="carol@example.test", password=PASSWORD)
        ),
    ),
    "/keel.authn.v1.TokenService/RevokeToken": Case(
        None, lambda w: tokens_pb2.RevokeTokenRequest(refresh_token="keel_rt_" + "x" * 43)
    ),
    "/keel.authn.v1.TokenService/IntrospectToken": Case(
        "carol", lambda w: tokens_pb2.IntrospectTokenRequest(token=w.tokens["carol"])
    ),
    # No OpenID provider is configured in this world.
    "/keel.authn.v1.TokenService/StartOidcLogin": Case(
        None,
        lambda w: tokens_pb2.StartOidcLoginRequest(redirect_uri="http://127.0.0.1/cb"),
        grpc.StatusCode.FAILED_PRECONDITION,
    ),
    "/keel.authn.v1.TokenService/GetJwks": Case(None, lambda w: tokens_pb2.GetJwksRequest()),
    "/keel.authn.v1.TokenService/ListRevocations": Case(
        "mesh", lambda w: tokens_pb2.ListRevocationsRequest()
    ),
    "/keel.authn.v1.SigningKeyService/ListSigningKeys": root(
        lambda w: _signing_keys().ListSigningKeysRequest()
    ),
    "/keel.authn.v1.SigningKeyService/RotateSigningKey": root(
        lambda w: _signing_keys().RotateSigningKeyRequest()
    ),
    # rbac: organization A's admin.
    "/keel.rbac.v1.PermissionService/Check": admin(
        lambda w: rbac_pb2.CheckRequest(
            principal=carol(w),
            permission=rbac_pb2.Permission(resource_type="team", action="read"),
            resource=rbac_pb2.ResourceRef(organization_id=org_a(w)),
        )
    ),
    "/keel.rbac.v1.PermissionService/BatchCheck": admin(
        lambda w: rbac_pb2.BatchCheckRequest(
            organization_id=org_a(w),
            principal=carol(w),
            items=[
                rbac_pb2.BatchCheckItem(
                    permission=rbac_pb2.Permission(resource_type="team", action="read"),
                    resource=rbac_pb2.ResourceRef(organization_id=org_a(w)),
                )
            ],
        )
    ),
    "/keel.rbac.v1.PermissionService/LookupResources": admin(
        lambda w: rbac_pb2.LookupResourcesRequest(
            subject=carol(w),
            permission=rbac_pb2.Permission(resource_type="workspace", action="read"),
            scope=rbac_pb2.ResourceRef(organization_id=org_a(w)),
        )
    ),
    "/keel.rbac.v1.PermissionService/ListEffectivePermissions": admin(
        lambda w: rbac_pb2.ListEffectivePermissionsRequest(
            subject=carol(w), scope=rbac_pb2.ResourceRef(organization_id=org_a(w))
        )
    ),
    "/keel.rbac.v1.PermissionService/RecordOwnership": admin(
        lambda w: rbac_pb2.RecordOwnershipRequest(
            owner=rbac_pb2.Subject(kind=USER, id=w.ids["alice"]),
            resource=rbac_pb2.ResourceRef(
                organization_id=org_a(w), resource_type="team", resource_id="t-owned"
            ),
        )
    ),
    "/keel.rbac.v1.PermissionService/BatchRecordOwnership": admin(
        lambda w: rbac_pb2.BatchRecordOwnershipRequest(
            organization_id=org_a(w),
            owner=rbac_pb2.Subject(kind=USER, id=w.ids["alice"]),
            resources=[
                rbac_pb2.ResourceRef(resource_type="team", resource_id="t-batch-1"),
                rbac_pb2.ResourceRef(resource_type="team", resource_id="t-batch-2"),
            ],
        )
    ),
    "/keel.rbac.v1.PermissionService/ShareResource": admin(
        lambda w: rbac_pb2.ShareResourceRequest(
            resource=rbac_pb2.ResourceRef(
                organization_id=org_a(w), resource_type="team", resource_id=w.ids["team"]
            ),
            subject=carol(w),
            role_id=w.ids["resource_role"],
        )
    ),
    "/keel.rbac.v1.PermissionService/ForgetResource": admin(
        lambda w: rbac_pb2.ForgetResourceRequest(
            resource=rbac_pb2.ResourceRef(
                organization_id=org_a(w), resource_type="team", resource_id="t-owned"
            )
        )
    ),
    "/keel.rbac.v1.RoleService/CreateRole": admin(
        lambda w: rbac_pb2.CreateRoleRequest(
            organization_id=org_a(w),
            role=rbac_pb2.Role(
                display_name="Auditor",
                level=rbac_pb2.ORGANIZATION,
                permissions=[rbac_pb2.Permission(resource_type="audit_log", action="read")],
            ),
        )
    ),
    "/keel.rbac.v1.RoleService/GetRole": admin(
        lambda w: rbac_pb2.GetRoleRequest(organization_id=org_a(w), role_id=w.ids["role"])
    ),
    "/keel.rbac.v1.RoleService/ListRoles": admin(
        lambda w: rbac_pb2.ListRolesRequest(organization_id=org_a(w))
    ),
    "/keel.rbac.v1.RoleService/UpdateRole": admin(
        lambda w: rbac_pb2.UpdateRoleRequest(
            role=rbac_pb2.Role(
                id=w.ids["role"], organization_id=org_a(w), display_name="Renamed", description="d"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    ),
    "/keel.rbac.v1.RoleService/DeleteRole": admin(
        lambda w: rbac_pb2.DeleteRoleRequest(organization_id=org_a(w), role_id=w.ids["spare_role"])
    ),
    "/keel.rbac.v1.RoleBindingService/CreateRoleBinding": admin(
        lambda w: rbac_pb2.CreateRoleBindingRequest(
            organization_id=org_a(w),
            role_binding=rbac_pb2.RoleBinding(
                subject=carol(w),
                role_id="workspace_editor",
                scope=rbac_pb2.ResourceRef(workspace_id=w.ids["workspace"]),
            ),
        )
    ),
    "/keel.rbac.v1.RoleBindingService/GetRoleBinding": admin(
        lambda w: rbac_pb2.GetRoleBindingRequest(
            organization_id=org_a(w), role_binding_id=w.ids["carol_binding"]
        )
    ),
    "/keel.rbac.v1.RoleBindingService/ListRoleBindings": admin(
        lambda w: rbac_pb2.ListRoleBindingsRequest(organization_id=org_a(w))
    ),
    "/keel.rbac.v1.RoleBindingService/DeleteRoleBinding": admin(
        lambda w: rbac_pb2.DeleteRoleBindingRequest(
            organization_id=org_a(w), role_binding_id=w.ids["spare_binding"]
        )
    ),
    "/keel.rbac.v1.RoleBindingService/PurgeSubject": admin(
        lambda w: rbac_pb2.PurgeSubjectRequest(
            organization_id=org_a(w), subject=rbac_pb2.Subject(kind=USER, id=w.ids["victim"])
        )
    ),
    "/keel.rbac.v1.RoleBindingService/PurgeOrganization": admin(
        lambda w: rbac_pb2.PurgeOrganizationRequest(organization_id=w.ids["org_purged"])
    ),
    "/keel.rbac.v1.TeamMembershipService/AddTeamMember": admin(
        lambda w: rbac_pb2.AddTeamMemberRequest(
            organization_id=org_a(w), team_id=w.ids["team"], member=carol(w)
        )
    ),
    "/keel.rbac.v1.TeamMembershipService/RemoveTeamMember": admin(
        lambda w: rbac_pb2.RemoveTeamMemberRequest(
            organization_id=org_a(w), team_id=w.ids["team"], member=carol(w)
        )
    ),
    # orgs: organization A's admin (any user may create an organization).
    "/keel.orgs.v1.OrganizationService/CreateOrganization": Case(
        "carol",
        lambda w: organizations_pb2.CreateOrganizationRequest(
            organization=organizations_pb2.Organization(display_name="Carol's lab")
        ),
    ),
    "/keel.orgs.v1.OrganizationService/GetOrganization": admin(
        lambda w: organizations_pb2.GetOrganizationRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.OrganizationService/ListOrganizations": Case(
        "carol", lambda w: organizations_pb2.ListOrganizationsRequest()
    ),
    "/keel.orgs.v1.OrganizationService/UpdateOrganization": admin(
        lambda w: organizations_pb2.UpdateOrganizationRequest(
            organization=organizations_pb2.Organization(id=org_a(w), display_name="Acme Research")
        )
    ),
    "/keel.orgs.v1.OrganizationService/DeleteOrganization": admin(
        lambda w: organizations_pb2.DeleteOrganizationRequest(
            organization_id=w.ids["org_deleted"], force=True
        )
    ),
    "/keel.orgs.v1.MemberService/ListMembers": admin(
        lambda w: organizations_pb2.ListMembersRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.MemberService/GetMember": admin(
        lambda w: organizations_pb2.GetMemberRequest(organization_id=org_a(w), user_id=w.ids["carol"])
    ),
    "/keel.orgs.v1.MemberService/UpdateMember": admin(
        lambda w: organizations_pb2.UpdateMemberRequest(
            member=organizations_pb2.Member(
                organization_id=org_a(w), user_id=w.ids["erin"], role_id="organization_viewer"
            )
        )
    ),
    "/keel.orgs.v1.MemberService/RemoveMember": admin(
        lambda w: organizations_pb2.RemoveMemberRequest(organization_id=org_a(w), user_id=w.ids["victim"])
    ),
    "/keel.orgs.v1.MemberService/CreateInvitation": admin(
        lambda w: organizations_pb2.CreateInvitationRequest(
            organization_id=org_a(w), invitation=organizations_pb2.Invitation(email="guest@example.test")
        )
    ),
    "/keel.orgs.v1.MemberService/ListInvitations": admin(
        lambda w: organizations_pb2.ListInvitationsRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.MemberService/RevokeInvitation": admin(
        lambda w: organizations_pb2.RevokeInvitationRequest(
            organization_id=org_a(w), invitation_id=w.ids["invitation"]
        )
    ),
    "/keel.orgs.v1.MemberService/AcceptInvitation": Case(
        "frank", lambda w: organizations_pb2.AcceptInvitationRequest(token=w.secrets["frank_invitation"])
    ),
    "/keel.orgs.v1.TeamService/CreateTeam": admin(
        lambda w: organizations_pb2.CreateTeamRequest(
            organization_id=org_a(w), team=organizations_pb2.Team(display_name="Platform")
        )
    ),
    "/keel.orgs.v1.TeamService/GetTeam": admin(
        lambda w: organizations_pb2.GetTeamRequest(organization_id=org_a(w), team_id=w.ids["team"])
    ),
    "/keel.orgs.v1.TeamService/ListTeams": admin(
        lambda w: organizations_pb2.ListTeamsRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.TeamService/UpdateTeam": admin(
        lambda w: organizations_pb2.UpdateTeamRequest(
            team=organizations_pb2.Team(id=w.ids["team"], organization_id=org_a(w), display_name="Research")
        )
    ),
    "/keel.orgs.v1.TeamService/DeleteTeam": admin(
        lambda w: organizations_pb2.DeleteTeamRequest(organization_id=org_a(w), team_id=w.ids["spare_team"])
    ),
    "/keel.orgs.v1.TeamService/AddTeamMember": admin(
        lambda w: organizations_pb2.AddTeamMemberRequest(
            organization_id=org_a(w), team_id=w.ids["team"], user_id=w.ids["erin"]
        )
    ),
    "/keel.orgs.v1.TeamService/RemoveTeamMember": admin(
        lambda w: organizations_pb2.RemoveTeamMemberRequest(
            organization_id=org_a(w), team_id=w.ids["team"], user_id=w.ids["erin"]
        )
    ),
    "/keel.orgs.v1.TeamService/ListTeamMembers": admin(
        lambda w: organizations_pb2.ListTeamMembersRequest(organization_id=org_a(w), team_id=w.ids["team"])
    ),
    "/keel.orgs.v1.WorkspaceService/CreateWorkspace": admin(
        lambda w: workspaces_pb2.CreateWorkspaceRequest(
            organization_id=org_a(w), workspace=workspaces_pb2.Workspace(display_name="staging")
        )
    ),
    "/keel.orgs.v1.WorkspaceService/GetWorkspace": admin(
        lambda w: workspaces_pb2.GetWorkspaceRequest(
            organization_id=org_a(w), workspace_id=w.ids["workspace"]
        )
    ),
    "/keel.orgs.v1.WorkspaceService/ListWorkspaces": admin(
        lambda w: workspaces_pb2.ListWorkspacesRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.WorkspaceService/UpdateWorkspace": admin(
        lambda w: workspaces_pb2.UpdateWorkspaceRequest(
            workspace=workspaces_pb2.Workspace(
                id=w.ids["workspace"], organization_id=org_a(w), display_name="production"
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    ),
    "/keel.orgs.v1.WorkspaceService/DeleteWorkspace": admin(
        lambda w: workspaces_pb2.DeleteWorkspaceRequest(
            organization_id=org_a(w), workspace_id=w.ids["spare_workspace"]
        )
    ),
    "/keel.orgs.v1.WorkspaceService/RotateWorkspaceCredential": admin(
        lambda w: workspaces_pb2.RotateWorkspaceCredentialRequest(
            organization_id=org_a(w), workspace_id=w.ids["rotated_workspace"]
        )
    ),
    "/keel.orgs.v1.WorkspaceService/LookupWorkspace": admin(
        lambda w: workspaces_pb2.LookupWorkspaceRequest(
            organization_id=org_a(w), workspace_id=w.ids["workspace"]
        )
    ),
    "/keel.orgs.v1.WorkspaceRegistryService/RegisterWorkspaceServer": Case(
        None,
        lambda w: workspaces_pb2.RegisterWorkspaceServerRequest(
            credential=w.secrets["workspace_credential"], endpoint="127.0.0.1:50061", server_version="0.3.0"
        ),
    ),
    "/keel.orgs.v1.WorkspaceRegistryService/SendHeartbeat": Case(
        None, lambda w: workspaces_pb2.SendHeartbeatRequest(credential=w.secrets["workspace_credential"])
    ),
    "/keel.orgs.v1.AuditLogService/ListAuditEvents": admin(
        lambda w: audit_pb2.ListAuditEventsRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.AuditLogService/VerifyAuditLog": admin(
        lambda w: audit_pb2.VerifyAuditLogRequest(organization_id=org_a(w))
    ),
    "/keel.orgs.v1.AuditLogService/IngestAuditEvents": Case(
        "mesh", lambda w: audit_pb2.IngestAuditEventsRequest()
    ),
}

# Public RPCs: what an anonymous caller with a made-up credential gets (they take no token).
PUBLIC_ANONYMOUS = {
    "/keel.orgs.v1.WorkspaceRegistryService/RegisterWorkspaceServer": (
        workspaces_pb2.RegisterWorkspaceServerRequest(
            credential="keel_wsc_x_y", endpoint="127.0.0.1:1", server_version="1"
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "/keel.orgs.v1.WorkspaceRegistryService/SendHeartbeat": (
        workspaces_pb2.SendHeartbeatRequest(credential="keel_wsc_x_y"),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
    "/keel.authn.v1.TokenService/CreateToken": (
        tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email="nobody@example.test", password="wrong password")
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    ),
}


def _signing_keys() -> Any:
    from keel.authn.v1 import signing_keys_pb2

    return signing_keys_pb2


# ---------------------------------------------------------------------------------------------------
# The world: authn + rbac + orgs, personas and the resources of organization A.


async def _user(authn: Authn, name: str) -> tuple[str, str]:
    user = await authn.create_user(f"{name}@example.test", PASSWORD)
    token = (await authn.login(f"{name}@example.test", PASSWORD)).access_token
    return user.id, token


async def _mesh_account(authn: Authn, key_file: Path) -> tuple[str, str]:
    account_id, secret = await authn.service_account_key("keel-orgs")
    write_private(key_file, secret)
    grant = tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=secret))
    return account_id, (await authn.tokens.CreateToken(grant)).access_token


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def _populate(world: World) -> None:
    """Organization A (admin alice, members carol/erin/victim), B (admin bob), and A's resources."""
    tokens, ids = world.tokens, world.ids
    orgs = organizations_pb2_grpc.OrganizationServiceStub(world.channels["orgs"])
    members = organizations_pb2_grpc.MemberServiceStub(world.channels["orgs"])
    teams = organizations_pb2_grpc.TeamServiceStub(world.channels["orgs"])
    workspaces = workspaces_pb2_grpc.WorkspaceServiceStub(world.channels["orgs"])
    roles = rbac_pb2_grpc.RoleServiceStub(world.channels["rbac"])
    bindings = rbac_pb2_grpc.RoleBindingServiceStub(world.channels["rbac"])
    alice = bearer(tokens["alice"])

    async def organization(owner: str, name: str) -> str:
        created = await orgs.CreateOrganization(
            organizations_pb2.CreateOrganizationRequest(
                organization=organizations_pb2.Organization(display_name=name)
            ),
            metadata=bearer(tokens[owner]),
        )
        return str(created.id)

    ids["org_a"] = await organization("alice", "Acme")
    ids["org_b"] = await organization("bob", "Bobcorp")
    ids["org_deleted"] = await organization("alice", "Doomed")
    ids["org_purged"] = await organization("alice", "Purged")

    async def join(persona: str, role_id: str = "organization_member") -> str:
        invited = await members.CreateInvitation(
            organizations_pb2.CreateInvitationRequest(
                organization_id=ids["org_a"],
                invitation=organizations_pb2.Invitation(email=f"{persona}@example.test", role_id=role_id),
            ),
            metadata=alice,
        )
        await members.AcceptInvitation(
            organizations_pb2.AcceptInvitationRequest(token=invited.token), metadata=bearer(tokens[persona])
        )
        return str(invited.invitation.id)

    for persona in ("carol", "erin", "victim"):
        await join(persona)
    frank = await members.CreateInvitation(
        organizations_pb2.CreateInvitationRequest(
            organization_id=ids["org_a"], invitation=organizations_pb2.Invitation(email="frank@example.test")
        ),
        metadata=alice,
    )
    world.secrets["frank_invitation"] = frank.token
    pending = await members.CreateInvitation(
        organizations_pb2.CreateInvitationRequest(
            organization_id=ids["org_a"], invitation=organizations_pb2.Invitation(email="later@example.test")
        ),
        metadata=alice,
    )
    ids["invitation"] = pending.invitation.id

    for key, name in (("team", "ML"), ("spare_team", "Spare")):
        team = await teams.CreateTeam(
            organizations_pb2.CreateTeamRequest(
                organization_id=ids["org_a"], team=organizations_pb2.Team(display_name=name)
            ),
            metadata=alice,
        )
        ids[key] = team.id
    for key, name in (("workspace", "main"), ("spare_workspace", "spare"), ("rotated_workspace", "rotated")):
        created = await workspaces.CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(
                organization_id=ids["org_a"], workspace=workspaces_pb2.Workspace(display_name=name)
            ),
            metadata=alice,
        )
        ids[key] = created.workspace.id
        world.secrets.setdefault("workspace_credential", created.credential)
    for key, name, level, perms in (
        ("role", "Reader", rbac_pb2.ORGANIZATION, [("team", "read")]),
        ("spare_role", "Spare", rbac_pb2.ORGANIZATION, [("team", "read")]),
        ("resource_role", "Team reader", rbac_pb2.RESOURCE, [("team", "read")]),
    ):
        role = await roles.CreateRole(
            rbac_pb2.CreateRoleRequest(
                organization_id=ids["org_a"],
                role=rbac_pb2.Role(
                    display_name=name,
                    level=level,
                    permissions=[rbac_pb2.Permission(resource_type=t, action=a) for t, a in perms],
                ),
            ),
            metadata=alice,
        )
        ids[key] = role.id

    # carol: a member of A without any organization role, only a viewer of another workspace.
    carol_bindings = await bindings.ListRoleBindings(
        rbac_pb2.ListRoleBindingsRequest(
            organization_id=ids["org_a"], filter=f'subject_id = "{ids["carol"]}"'
        ),
        metadata=alice,
    )
    for binding in carol_bindings.role_bindings:
        await bindings.DeleteRoleBinding(
            rbac_pb2.DeleteRoleBindingRequest(organization_id=ids["org_a"], role_binding_id=binding.id),
            metadata=alice,
        )
    viewer = await bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=ids["org_a"],
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=USER, id=ids["carol"]),
                role_id="workspace_viewer",
                scope=rbac_pb2.ResourceRef(workspace_id=ids["spare_workspace"]),
            ),
        ),
        metadata=alice,
    )
    ids["carol_binding"] = viewer.id
    spare = await bindings.CreateRoleBinding(
        rbac_pb2.CreateRoleBindingRequest(
            organization_id=ids["org_a"],
            role_binding=rbac_pb2.RoleBinding(
                subject=rbac_pb2.Subject(kind=USER, id=ids["erin"]),
                role_id="workspace_viewer",
                scope=rbac_pb2.ResourceRef(workspace_id=ids["workspace"]),
            ),
        ),
        metadata=alice,
    )
    ids["spare_binding"] = spare.id


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    clock = ManualClock()
    authn = await start_authn(f"sqlite+aiosqlite:///{tmp_path / 'authn.db'}", tmp_path, clock)
    authn_address = f"127.0.0.1:{authn.service.port}"
    key_file = tmp_path / "orgs.key"
    mesh_id, mesh_token = await _mesh_account(authn, key_file)
    common: dict[str, Any] = {
        "data_dir": tmp_path,
        "listen_address": "127.0.0.1:0",
        "drain_seconds": 0,
        "authn_address": authn_address,
        "mesh_service_accounts": mesh_id,
    }
    rbac = build_rbac(
        RbacSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'rbac.db'}", **common), clock=clock
    )
    rbac_port = await rbac.start()
    orgs = build_orgs(
        OrgsSettings(
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'orgs.db'}",
            rbac_address=f"127.0.0.1:{rbac_port}",
            service_api_key_file=key_file,
            **common,
        ),
        clock=clock,
    )
    orgs_port = await orgs.start()
    channels = {
        "authn": authn.channel,
        "rbac": grpc.aio.insecure_channel(f"127.0.0.1:{rbac_port}"),
        "orgs": grpc.aio.insecure_channel(f"127.0.0.1:{orgs_port}"),
    }
    world = World(channels)
    try:
        world.tokens["root"] = authn.admin_token
        world.ids["root"] = authn.admin_id
        world.tokens["mesh"] = mesh_token
        for persona in ("alice", "bob", "carol", "dave", "erin", "frank", "victim"):
            world.ids[persona], world.tokens[persona] = await _user(authn, persona)
        account = await authn.service_accounts.CreateServiceAccount(
            service_accounts_pb2.CreateServiceAccountRequest(
                service_account=service_accounts_pb2.ServiceAccount(display_name="ci")
            ),
            metadata=authn.admin,
        )
        world.ids["service_account"] = account.id
        key = await authn.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(
                principal_id=world.ids["carol"], api_key=api_keys_pb2.ApiKey(display_name="k")
            ),
            metadata=authn.admin,
        )
        world.ids["carol_key"] = key.api_key.id
        await _populate(world)
        yield world
    finally:
        await channels["rbac"].close(None)
        await channels["orgs"].close(None)
        await orgs.stop()
        await rbac.stop()
        await stop_authn(authn)


def test_every_control_plane_rpc_is_in_the_matrix() -> None:
    names = {full_name(m) for m in control_plane_methods()}
    assert names, "no control-plane RPC found"
    assert sorted(names - HOLDER_CASES.keys()) == [], "add these RPCs to HOLDER_CASES"
    assert sorted(HOLDER_CASES.keys() - names) == [], "these cases name RPCs that no longer exist"


async def test_permission_matrix(world: World) -> None:
    failures: list[str] = []

    def expect(
        method: descriptor.MethodDescriptor, who: str, got: grpc.StatusCode, want: grpc.StatusCode
    ) -> None:
        if got != want:
            failures.append(f"{full_name(method)} as {who}: {got.name}, expected {want.name}")

    methods = sorted(control_plane_methods(), key=full_name)
    # Denials first (they change nothing), then every holder call.
    for method in methods:
        rule = rule_for(full_name(method))
        assert rule is not None
        if rule.kind == "public":
            case = HOLDER_CASES[full_name(method)]
            request, code = PUBLIC_ANONYMOUS.get(full_name(method), (case.request(world), case.expect))
            got, _ = await world.call(method, request, None)
            expect(method, "anonymous", got, code)
            continue
        request = denial_request(world, method, existing=True)
        got, _ = await world.call(method, request, None)
        expect(method, "anonymous", got, grpc.StatusCode.UNAUTHENTICATED)
        if rule.kind != "permission":
            continue
        got, _ = await world.call(method, request, "carol")
        expect(method, "member without the role", got, grpc.StatusCode.PERMISSION_DENIED)
        existing = await world.call(method, request, "bob")
        missing = await world.call(method, denial_request(world, method, existing=False), "bob")
        expect(method, "other org's admin", existing[0], grpc.StatusCode.PERMISSION_DENIED)
        if existing != missing:
            failures.append(
                f"{full_name(method)}: other org's admin tells existing {existing} from missing {missing}"
            )
    # In the order of HOLDER_CASES: destructive calls come after the calls that need their target.
    by_name = {full_name(m): m for m in methods}
    for name, case in HOLDER_CASES.items():
        method = by_name[name]
        got, details = await world.call(method, case.request(world), case.persona)
        if got != case.expect:
            failures.append(
                f"{name} as holder {case.persona}: {got.name} {details!r}, expected {case.expect.name}"
            )
    assert not failures, "\n".join(failures)
