"""End to end: a user deactivated in authn is refused by orgs and RBAC after one poll of their feeds.

Real authn, RBAC and orgs (the `orgs_stack` fixture, both backends). In that
stack only orgs has a credential; RBAC is restarted here with the mesh
service account's key file so that it follows the feed too. The test drives
each service's poll itself (no waiting on the one-second background poll).
"""

from __future__ import annotations

import grpc
import pytest

from keel.authn.v1 import users_pb2
from keel.orgs.v1 import organizations_pb2 as pb
from keel.rbac.v1 import rbac_pb2
from services.rbac.server import RbacService
from tests.orgs.conftest import OrgsStack, User


async def restart_rbac_with_credential(stack: OrgsStack) -> RbacService:
    stack.rbac_settings = stack.rbac_settings.model_copy(
        update={"service_api_key_file": stack.api_key_file, "orgs_address": stack.orgs_address}
    )
    await stack.stop_rbac()
    await stack.start_rbac()
    return stack.rbac


async def calls_succeed(stack: OrgsStack, user: User, organization_id: str) -> None:
    """The user reads the organization at orgs and checks a permission of its own at RBAC."""
    await stack.organizations.GetOrganization(
        pb.GetOrganizationRequest(organization_id=organization_id), metadata=user.metadata
    )
    await stack.rbac_permissions.Check(
        rbac_pb2.CheckRequest(
            principal=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=user.id),
            permission=rbac_pb2.Permission(resource_type="organization", action="read"),
            resource=rbac_pb2.ResourceRef(organization_id=organization_id),
        ),
        metadata=user.metadata,
    )


async def test_a_deactivated_members_token_is_refused_by_orgs_and_rbac(orgs_stack: OrgsStack) -> None:
    stack = orgs_stack
    assert stack.rbac.revocations is None  # the fixture's RBAC has no credential, hence no feed
    rbac = await restart_rbac_with_credential(stack)
    assert stack.orgs.revocations is not None
    assert rbac.revocations is not None
    owner = await stack.user()
    organization = await stack.organization(owner)
    member = await stack.join(organization.id, owner)
    await calls_succeed(stack, member, organization.id)

    await stack.authn.users.DeactivateUser(
        users_pb2.DeactivateUserRequest(user_id=member.id), metadata=stack.admin
    )
    await stack.orgs.revocations.poll_once()
    await rbac.revocations.poll_once()

    # The same, still unexpired token: refused by both services that verify it locally.
    with pytest.raises(grpc.aio.AioRpcError) as at_orgs:
        await stack.organizations.GetOrganization(
            pb.GetOrganizationRequest(organization_id=organization.id), metadata=member.metadata
        )
    assert at_orgs.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as at_rbac:
        await stack.rbac_permissions.Check(
            rbac_pb2.CheckRequest(
                principal=rbac_pb2.Subject(kind=rbac_pb2.Subject.USER, id=member.id),
                permission=rbac_pb2.Permission(resource_type="organization", action="read"),
                resource=rbac_pb2.ResourceRef(organization_id=organization.id),
            ),
            metadata=member.metadata,
        )
    assert at_rbac.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Everyone else carries on.
    await calls_succeed(stack, owner, organization.id)
