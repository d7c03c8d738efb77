"""Invitations over a real authn + RBAC + orgs: single use, expiry by the clock, e-mail match, ceiling."""

from __future__ import annotations

import hashlib

import grpc
from sqlalchemy import select

from keel.orgs.v1 import organizations_pb2 as pb
from services.orgs.store import OUTBOX, invitations
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.orgs.conftest import OrgsStack, User


async def _invite(
    stack: OrgsStack, organization_id: str, email: str, inviter: User, role: str = "", request_id: str = ""
) -> pb.CreateInvitationResponse:
    return await stack.members.CreateInvitation(
        pb.CreateInvitationRequest(
            organization_id=organization_id,
            invitation=pb.Invitation(email=email, role_id=role),
            request_id=request_id,
        ),
        metadata=inviter.metadata,
    )


async def _accept(stack: OrgsStack, token: str, user: User) -> pb.Member:
    return await stack.members.AcceptInvitation(
        pb.AcceptInvitationRequest(token=token), metadata=user.metadata
    )


async def test_accepting_makes_the_invitee_a_member_once(orgs_stack: OrgsStack) -> None:
    owner, invitee = await orgs_stack.user(), await orgs_stack.user("Invitee@Example.test")
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, "INVITEE@example.TEST", owner, "organization_viewer")

    assert created.token.startswith(f"keel_inv_{created.invitation.id}_")
    assert created.invitation.state == pb.Invitation.PENDING
    assert created.invitation.email == "invitee@example.test"
    assert created.invitation.inviter_id == owner.id
    member = await _accept(orgs_stack, created.token, invitee)
    assert (member.user_id, member.role_id) == (invitee.id, "organization_viewer")
    # The binding took effect: the new member reads the organization.
    await orgs_stack.organizations.GetOrganization(
        pb.GetOrganizationRequest(organization_id=org.id), metadata=invitee.metadata
    )
    error = await expect_error(_accept(orgs_stack, created.token, invitee), grpc.StatusCode.ALREADY_EXISTS)
    listed = await orgs_stack.members.ListInvitations(
        pb.ListInvitationsRequest(organization_id=org.id), metadata=owner.metadata
    )
    assert [(i.state, i.accepted_by) for i in listed.invitations] == [(pb.Invitation.ACCEPTED, invitee.id)]
    # Once removed, the used token does not let them back in.
    await orgs_stack.members.RemoveMember(
        pb.RemoveMemberRequest(organization_id=org.id, user_id=invitee.id), metadata=owner.metadata
    )
    error = await expect_error(
        _accept(orgs_stack, created.token, invitee), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "INVITATION_USED"


async def test_only_the_hash_of_the_secret_is_stored_and_no_token_is_audited(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, "new@example.test", owner)
    secret = created.token.removeprefix(f"keel_inv_{created.invitation.id}_")

    async with orgs_stack.orgs.domain.engine.connect() as conn:
        stored = (await conn.execute(select(invitations))).one()._mapping
        payloads = (await conn.execute(select(OUTBOX.c.payload))).scalars().all()
    assert stored["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert all(secret not in str(value) for value in stored.values())
    assert payloads
    assert all(secret not in payload for payload in payloads)
    assert any('"orgs.invitation.create"' in payload for payload in payloads)


async def test_wrong_token_unknown_token_and_wrong_user_get_the_same_error(orgs_stack: OrgsStack) -> None:
    owner, invitee, other = await orgs_stack.user(), await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, invitee.email, owner)
    forged = created.token[:-4] + ("AAAA" if not created.token.endswith("AAAA") else "BBBB")
    unknown = f"keel_inv_00000000-0000-4000-8000-000000000000_{created.token[-43:]}"

    errors = [
        await expect_error(_accept(orgs_stack, forged, invitee), grpc.StatusCode.NOT_FOUND),
        await expect_error(_accept(orgs_stack, unknown, invitee), grpc.StatusCode.NOT_FOUND),
        await expect_error(_accept(orgs_stack, created.token, other), grpc.StatusCode.NOT_FOUND),
        await expect_error(_accept(orgs_stack, "garbage", invitee), grpc.StatusCode.NOT_FOUND),
    ]
    assert len({(e.details(), reason_of(e)) for e in errors}) == 1
    # None of that used the invitation up.
    await _accept(orgs_stack, created.token, invitee)


async def test_an_invitation_expires_with_the_clock(orgs_stack: OrgsStack) -> None:
    owner, invitee = await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, invitee.email, owner)
    ttl = orgs_stack.orgs.domain.settings.orgs_invitation_ttl_seconds
    assert created.invitation.expire_time.seconds - created.invitation.create_time.seconds == ttl

    orgs_stack.clock.advance(seconds=ttl)

    error = await expect_error(
        _accept(orgs_stack, created.token, invitee), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "INVITATION_EXPIRED"
    listed = await orgs_stack.members.ListInvitations(
        pb.ListInvitationsRequest(organization_id=org.id, filter="state = EXPIRED"), metadata=owner.metadata
    )
    assert [i.id for i in listed.invitations] == [created.invitation.id]
    error = await expect_error(
        orgs_stack.members.RevokeInvitation(
            pb.RevokeInvitationRequest(organization_id=org.id, invitation_id=created.invitation.id),
            metadata=owner.metadata,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "INVITATION_NOT_PENDING"


async def test_an_invitation_is_usable_until_just_before_expiry(orgs_stack: OrgsStack) -> None:
    owner, invitee = await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, invitee.email, owner)
    orgs_stack.clock.advance(seconds=orgs_stack.orgs.domain.settings.orgs_invitation_ttl_seconds - 1)
    await _accept(orgs_stack, created.token, invitee)


async def test_a_revoked_invitation_cannot_be_accepted(orgs_stack: OrgsStack) -> None:
    owner, invitee = await orgs_stack.user(), await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    created = await _invite(orgs_stack, org.id, invitee.email, owner)
    revoked = await orgs_stack.members.RevokeInvitation(
        pb.RevokeInvitationRequest(organization_id=org.id, invitation_id=created.invitation.id),
        metadata=owner.metadata,
    )
    assert revoked.state == pb.Invitation.REVOKED
    error = await expect_error(
        _accept(orgs_stack, created.token, invitee), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason_of(error) == "INVITATION_REVOKED"


async def test_invitation_of_another_organization_is_not_found(orgs_stack: OrgsStack) -> None:
    alice, bob = await orgs_stack.user(), await orgs_stack.user()
    acme = await orgs_stack.organization(alice)
    other = await orgs_stack.organization(bob, "Other")
    created = await _invite(orgs_stack, acme.id, "x@example.test", alice)
    await expect_error(
        orgs_stack.members.RevokeInvitation(
            pb.RevokeInvitationRequest(organization_id=other.id, invitation_id=created.invitation.id),
            metadata=bob.metadata,
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_only_an_admin_invites_admins(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    manager = await orgs_stack.join(org.id, owner, "organization_manager")
    member = await orgs_stack.join(org.id, owner)

    error = await expect_error(
        _invite(orgs_stack, org.id, "boss@example.test", manager, "organization_admin"),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert reason_of(error) == "ESCALATION"
    await _invite(orgs_stack, org.id, "staff@example.test", manager, "organization_manager")
    await expect_error(
        _invite(orgs_stack, org.id, "y@example.test", member), grpc.StatusCode.PERMISSION_DENIED
    )
    await _invite(orgs_stack, org.id, "boss@example.test", owner, "organization_admin")


async def test_invitation_input_is_validated_and_existing_members_are_refused(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    for email in ("", "not-an-email", "a@b", "two@@example.test", "sp ace@example.test"):
        error = await expect_error(
            _invite(orgs_stack, org.id, email, owner), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert bad_fields(error) == ["invitation.email"]
    error = await expect_error(
        _invite(orgs_stack, org.id, "ok@example.test", owner, "workspace_admin"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["invitation.role_id"]
    await expect_error(
        _invite(orgs_stack, org.id, owner.email.upper(), owner), grpc.StatusCode.ALREADY_EXISTS
    )
    error = await expect_error(_accept(orgs_stack, "", owner), grpc.StatusCode.INVALID_ARGUMENT)
    assert bad_fields(error) == ["token"]


async def test_a_retried_create_returns_the_first_invitation_without_its_token(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    org = await orgs_stack.organization(owner)
    first = await _invite(orgs_stack, org.id, "x@example.test", owner, request_id="invite-1")
    again = await _invite(orgs_stack, org.id, "x@example.test", owner, request_id="invite-1")
    assert again.invitation == first.invitation
    assert first.token
    assert not again.token
    listed = await orgs_stack.members.ListInvitations(
        pb.ListInvitationsRequest(organization_id=org.id), metadata=owner.metadata
    )
    assert len(listed.invitations) == 1
