"""Every annotated RPC of authn, RBAC and orgs, called through the gateway against the real control plane.

The list of RPCs comes from the descriptors: the test fails when an annotated
RPC of these packages was not called, so a new RPC needs a case here. Each
call asserts the happy path, or the error the RPC must answer to that caller
(for example a mesh-only RPC called by a user).
"""

from __future__ import annotations

import secrets

import httpx

from gateway.bindings import http_rule, keel_services
from tests.gateway.conftest import StartGateway
from tests.gateway.rest_client import RestApi
from tests.orgs.conftest import OrgsStack

CONTROL_PLANE = ("keel.authn.v1", "keel.rbac.v1", "keel.orgs.v1")
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "another horse battery staple"

AUTHN = "keel.authn.v1."
RBAC = "keel.rbac.v1."
ORGS = "keel.orgs.v1."


def annotated_rpcs() -> set[str]:
    """Full names of every RPC of the control plane with a google.api.http option."""
    return {
        method.full_name
        for service in keel_services(CONTROL_PLANE)
        for method in service.methods
        if http_rule(method) is not None
    }


def test_the_control_plane_has_annotated_rpcs_in_every_package() -> None:
    packages = {name.rsplit(".", 2)[0] for name in annotated_rpcs()}
    assert packages == set(CONTROL_PLANE)


async def _gateway(stack: OrgsStack, start_gateway: StartGateway) -> httpx.AsyncClient:
    return await start_gateway(
        {
            "keel.authn.v1": stack.authn_address,
            "keel.rbac.v1": stack.rbac_address,
            "keel.orgs.v1": stack.orgs_address,
        }
    )


async def _sign_up(api: RestApi, admin: str, name: str) -> tuple[str, str]:
    """(user id, access token) of a new user created and signed in over REST."""
    email = f"{name}-{secrets.token_hex(4)}@example.test"
    user = await api.call(
        AUTHN + "UserService.CreateUser",
        {"user": {"email": email, "displayName": name}, "password": PASSWORD},
        token=admin,
    )
    signed_in = await api.call(
        AUTHN + "TokenService.CreateToken", {"password": {"email": email, "password": PASSWORD}}
    )
    return user["id"], signed_in["accessToken"]


async def test_every_annotated_control_plane_rpc_is_reachable_through_rest(
    orgs_stack: OrgsStack, start_gateway: StartGateway
) -> None:
    api = RestApi(await _gateway(orgs_stack, start_gateway))
    admin = orgs_stack.authn.admin_token
    mesh_secret = orgs_stack.api_key_file.read_text().strip()

    # --- authn: tokens, users -------------------------------------------------------------------
    jwks = await api.call(AUTHN + "TokenService.GetJwks")
    assert jwks["keys"]
    owner_id, owner = await _sign_up(api, admin, "owner")
    member_id, member = await _sign_up(api, admin, "member")
    me = await api.call(AUTHN + "UserService.GetUser", {"userId": "me"}, token=owner)
    assert me["id"] == owner_id
    listed = await api.call(AUTHN + "UserService.ListUsers", {"pageSize": 500}, token=admin)
    assert owner_id in {user["id"] for user in listed["users"]}
    renamed = await api.call(
        AUTHN + "UserService.UpdateUser", {"user": {"id": "me", "displayName": "Olive"}}, token=owner
    )
    assert renamed["displayName"] == "Olive"
    introspected = await api.call(AUTHN + "TokenService.IntrospectToken", {"token": owner}, token=owner)
    assert introspected["active"] is True
    session = await api.call(
        AUTHN + "TokenService.CreateToken", {"password": {"email": me["email"], "password": PASSWORD}}
    )
    await api.call(AUTHN + "TokenService.RevokeToken", {"refreshToken": session["refreshToken"]})
    # This authn has no OpenID provider configured.
    await api.call(
        AUTHN + "TokenService.StartOidcLogin",
        {"redirectUri": "http://127.0.0.1:1/callback"},
        expect=400,
        reason="OIDC_NOT_CONFIGURED",
    )
    mesh = (await api.call(AUTHN + "TokenService.CreateToken", {"apiKey": {"secret": mesh_secret}}))[
        "accessToken"
    ]
    await api.call(AUTHN + "TokenService.ListRevocations", {"afterSequence": "0"}, token=mesh)

    # --- authn: service accounts and API keys ---------------------------------------------------
    account = await api.call(
        AUTHN + "ServiceAccountService.CreateServiceAccount",
        {"serviceAccount": {"displayName": f"ci-{secrets.token_hex(3)}"}},
        token=admin,
    )
    await api.call(
        AUTHN + "ServiceAccountService.GetServiceAccount", {"serviceAccountId": account["id"]}, token=admin
    )
    await api.call(AUTHN + "ServiceAccountService.ListServiceAccounts", token=admin)
    updated_account = await api.call(
        AUTHN + "ServiceAccountService.UpdateServiceAccount",
        {"serviceAccount": {"id": account["id"], "description": "builds"}},
        token=admin,
    )
    assert updated_account["description"] == "builds"
    created_key = await api.call(
        AUTHN + "ApiKeyService.CreateApiKey",
        {"principalId": "me", "apiKey": {"displayName": "laptop"}},
        token=owner,
    )
    key_id = created_key["apiKey"]["id"]
    await api.call(AUTHN + "ApiKeyService.GetApiKey", {"principalId": "me", "apiKeyId": key_id}, token=owner)
    keys = await api.call(AUTHN + "ApiKeyService.ListApiKeys", {"principalId": "me"}, token=owner)
    assert [key["id"] for key in keys["apiKeys"]] == [key_id]
    rotated = await api.call(
        AUTHN + "ApiKeyService.RotateApiKey",
        {"principalId": "me", "apiKeyId": key_id, "gracePeriod": "0s"},
        token=owner,
    )
    assert rotated["secret"] != created_key["secret"]
    revoked = await api.call(
        AUTHN + "ApiKeyService.RevokeApiKey", {"principalId": "me", "apiKeyId": key_id}, token=owner
    )
    assert revoked["state"] == "REVOKED"

    # --- orgs: organizations, invitations, members ----------------------------------------------
    organization = await api.call(
        ORGS + "OrganizationService.CreateOrganization",
        {"organization": {"displayName": "Acme"}},
        token=owner,
    )
    org = organization["id"]
    await api.call(ORGS + "OrganizationService.GetOrganization", {"organizationId": org}, token=owner)
    organizations = await api.call(ORGS + "OrganizationService.ListOrganizations", token=owner)
    assert [o["id"] for o in organizations["organizations"]] == [org]
    described = await api.call(
        ORGS + "OrganizationService.UpdateOrganization",
        {"organization": {"id": org, "description": "rockets"}},
        token=owner,
    )
    assert described["description"] == "rockets"
    member_email = (await api.call(AUTHN + "UserService.GetUser", {"userId": "me"}, token=member))["email"]
    invitation = await api.call(
        ORGS + "MemberService.CreateInvitation",
        {"organizationId": org, "invitation": {"email": member_email}},
        token=owner,
    )
    joined = await api.call(
        ORGS + "MemberService.AcceptInvitation", {"token": invitation["token"]}, token=member
    )
    assert joined["userId"] == member_id
    other = await api.call(
        ORGS + "MemberService.CreateInvitation",
        {"organizationId": org, "invitation": {"email": "nobody@example.test"}},
        token=owner,
    )
    await api.call(
        ORGS + "MemberService.RevokeInvitation",
        {"organizationId": org, "invitationId": other["invitation"]["id"]},
        token=owner,
    )
    await api.call(ORGS + "MemberService.ListInvitations", {"organizationId": org}, token=owner)
    members = await api.call(ORGS + "MemberService.ListMembers", {"organizationId": org}, token=owner)
    assert {m["userId"] for m in members["members"]} == {owner_id, member_id}
    await api.call(ORGS + "MemberService.GetMember", {"organizationId": org, "userId": "me"}, token=member)
    promoted = await api.call(
        ORGS + "MemberService.UpdateMember",
        {"member": {"organizationId": org, "userId": member_id, "roleId": "organization_manager"}},
        token=owner,
    )
    assert promoted["roleId"] == "organization_manager"

    # --- orgs: teams ------------------------------------------------------------------------------
    team = await api.call(
        ORGS + "TeamService.CreateTeam", {"organizationId": org, "team": {"displayName": "ml"}}, token=owner
    )
    team_id = team["id"]
    await api.call(ORGS + "TeamService.GetTeam", {"organizationId": org, "teamId": team_id}, token=owner)
    await api.call(ORGS + "TeamService.ListTeams", {"organizationId": org}, token=owner)
    await api.call(
        ORGS + "TeamService.UpdateTeam",
        {"team": {"organizationId": org, "id": team_id, "description": "models"}},
        token=owner,
    )
    await api.call(
        ORGS + "TeamService.AddTeamMember",
        {"organizationId": org, "teamId": team_id, "userId": member_id},
        token=owner,
    )
    team_members = await api.call(
        ORGS + "TeamService.ListTeamMembers", {"organizationId": org, "teamId": team_id}, token=owner
    )
    assert [m["userId"] for m in team_members["members"]] == [member_id]
    await api.call(
        ORGS + "TeamService.RemoveTeamMember",
        {"organizationId": org, "teamId": team_id, "userId": member_id},
        token=owner,
    )

    # --- rbac: roles, bindings, permission questions ----------------------------------------------
    role = await api.call(
        RBAC + "RoleService.CreateRole",
        {
            "organizationId": org,
            "role": {
                "displayName": "team reader",
                "level": "ORGANIZATION",
                "permissions": [{"resourceType": "team", "action": "read"}],
            },
        },
        token=owner,
    )
    await api.call(RBAC + "RoleService.GetRole", {"organizationId": org, "roleId": role["id"]}, token=owner)
    roles = await api.call(RBAC + "RoleService.ListRoles", {"organizationId": org}, token=owner)
    assert role["id"] in {r["id"] for r in roles["roles"]}
    await api.call(
        RBAC + "RoleService.UpdateRole",
        {"role": {"organizationId": org, "id": role["id"], "description": "reads teams"}},
        token=owner,
    )
    binding = await api.call(
        RBAC + "RoleBindingService.CreateRoleBinding",
        {
            "organizationId": org,
            "roleBinding": {"subject": {"kind": "USER", "id": member_id}, "roleId": role["id"]},
        },
        token=owner,
    )
    await api.call(
        RBAC + "RoleBindingService.GetRoleBinding",
        {"organizationId": org, "roleBindingId": binding["id"]},
        token=owner,
    )
    await api.call(RBAC + "RoleBindingService.ListRoleBindings", {"organizationId": org}, token=owner)
    await api.call(
        RBAC + "RoleBindingService.DeleteRoleBinding",
        {"organizationId": org, "roleBindingId": binding["id"]},
        token=owner,
    )
    await api.call(
        RBAC + "RoleService.DeleteRole", {"organizationId": org, "roleId": role["id"]}, token=owner
    )
    subject = {"kind": "USER", "id": owner_id}
    team_read = {"resourceType": "team", "action": "read"}
    checked = await api.call(
        RBAC + "PermissionService.Check",
        {"principal": subject, "permission": team_read, "resource": {"organizationId": org}},
        token=owner,
    )
    assert checked["allowed"] is True
    batch = await api.call(
        RBAC + "PermissionService.BatchCheck",
        {"principal": subject, "organizationId": org, "items": [{"permission": team_read, "resource": {}}]},
        token=owner,
    )
    assert batch["allowed"] == [True]
    looked_up = await api.call(
        RBAC + "PermissionService.LookupResources",
        {"subject": subject, "permission": team_read, "scope": {"organizationId": org}},
        token=owner,
    )
    assert looked_up["all"] is True
    effective = await api.call(
        RBAC + "PermissionService.ListEffectivePermissions",
        {"subject": subject, "scope": {"organizationId": org}},
        token=owner,
    )
    assert team_read in effective["permissions"]
    team_ref = {"organizationId": org, "resourceType": "team", "resourceId": team_id}
    await api.call(
        RBAC + "PermissionService.RecordOwnership", {"owner": subject, "resource": team_ref}, token=owner
    )
    batch_owned = await api.call(
        RBAC + "PermissionService.BatchRecordOwnership",
        {"organizationId": org, "owner": subject, "resources": [team_ref]},
        token=owner,
    )
    assert len(batch_owned["ownerships"]) == 1
    share_role = await api.call(
        RBAC + "RoleService.CreateRole",
        {
            "organizationId": org,
            "role": {"displayName": "one team's reader", "level": "RESOURCE", "permissions": [team_read]},
        },
        token=owner,
    )
    share = await api.call(
        RBAC + "PermissionService.ShareResource",
        {"resource": team_ref, "subject": {"kind": "USER", "id": member_id}, "roleId": share_role["id"]},
        token=owner,
    )
    assert share["level"] == "RESOURCE"
    await api.call(RBAC + "PermissionService.ForgetResource", {"resource": team_ref}, token=owner)
    member_subject = {"kind": "USER", "id": member_id}
    await api.call(
        RBAC + "TeamMembershipService.AddTeamMember",
        {"organizationId": org, "teamId": team_id, "member": member_subject},
        token=owner,
    )
    await api.call(
        RBAC + "TeamMembershipService.RemoveTeamMember",
        {"organizationId": org, "teamId": team_id, "member": member_subject},
        token=owner,
    )
    await api.call(
        RBAC + "RoleBindingService.PurgeSubject",
        {"organizationId": org, "subject": {"kind": "TEAM", "id": team_id}},
        token=owner,
    )

    # --- orgs: workspaces and the registry ----------------------------------------------------------
    created = await api.call(
        ORGS + "WorkspaceService.CreateWorkspace",
        {"organizationId": org, "workspace": {"displayName": "prod"}},
        token=owner,
    )
    workspace_id = created["workspace"]["id"]
    where = {"organizationId": org, "workspaceId": workspace_id}
    await api.call(ORGS + "WorkspaceService.GetWorkspace", where, token=owner)
    await api.call(ORGS + "WorkspaceService.ListWorkspaces", {"organizationId": org}, token=owner)
    await api.call(
        ORGS + "WorkspaceService.UpdateWorkspace",
        {"workspace": {"organizationId": org, "id": workspace_id, "description": "production"}},
        token=owner,
    )
    registered = await api.call(
        ORGS + "WorkspaceRegistryService.RegisterWorkspaceServer",
        {"credential": created["credential"], "endpoint": "127.0.0.1:1", "serverVersion": "0.1.0"},
    )
    assert registered["workspace"]["state"] == "ACTIVE"
    await api.call(ORGS + "WorkspaceRegistryService.SendHeartbeat", {"credential": created["credential"]})
    location = await api.call(ORGS + "WorkspaceService.LookupWorkspace", where, token=owner)
    assert location["endpoint"] == "127.0.0.1:1"
    await api.call(ORGS + "WorkspaceService.RotateWorkspaceCredential", where, token=owner)
    await api.call(ORGS + "WorkspaceService.DeleteWorkspace", where, token=owner)

    # --- orgs: the audit log ------------------------------------------------------------------------
    await api.call(ORGS + "AuditLogService.ListAuditEvents", {"organizationId": org}, token=owner)
    verified = await api.call(ORGS + "AuditLogService.VerifyAuditLog", {"organizationId": org}, token=owner)
    assert verified["intact"] is True
    # Only the control plane's own service accounts append events; the mesh account may, a user may not.
    ingested = await api.call(ORGS + "AuditLogService.IngestAuditEvents", {"auditEvents": []}, token=mesh)
    assert ingested["appended"] == 0
    await api.call(
        ORGS + "AuditLogService.IngestAuditEvents",
        {"auditEvents": []},
        token=owner,
        expect=403,
        reason="PERMISSION_DENIED",
    )

    # --- endings: members, teams, the organization, accounts, keys ----------------------------------
    await api.call(
        ORGS + "MemberService.RemoveMember", {"organizationId": org, "userId": member_id}, token=owner
    )
    await api.call(ORGS + "TeamService.DeleteTeam", {"organizationId": org, "teamId": team_id}, token=owner)
    # Only deleting the organization purges it: a member without organization.delete may not.
    await api.call(
        RBAC + "RoleBindingService.PurgeOrganization",
        {"organizationId": org},
        token=member,
        expect=403,
        reason="PERMISSION_DENIED",
    )
    await api.call(ORGS + "OrganizationService.DeleteOrganization", {"organizationId": org}, token=owner)
    await api.call(
        AUTHN + "ServiceAccountService.DeactivateServiceAccount",
        {"serviceAccountId": account["id"]},
        token=admin,
    )
    await api.call(AUTHN + "UserService.DeactivateUser", {"userId": member_id}, token=admin)
    await api.call(
        AUTHN + "UserService.ChangePassword",
        {"currentPassword": PASSWORD, "newPassword": NEW_PASSWORD},
        token=owner,
    )
    await api.call(AUTHN + "SigningKeyService.RotateSigningKey", token=admin)
    signing_keys = await api.call(AUTHN + "SigningKeyService.ListSigningKeys", token=admin)
    assert len(signing_keys["signingKeys"]) >= 2

    missing = annotated_rpcs() - set(api.exercised)
    assert not missing, f"annotated RPCs without a REST case here: {sorted(missing)}"
