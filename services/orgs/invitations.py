"""Invitations: invite an e-mail with a single-use, expiring token; list, revoke, accept; no gRPC, no SQL.

Token: `keel_inv_<invitation id>_<secret>`, the secret 32 random bytes
(URL-safe base64). Only SHA-256 of the secret is stored: with 256 bits of
entropy an unkeyed hash cannot be reversed or guessed, and the id lets
acceptance find the row without scanning. A wrong token, an unknown one and
a token presented by a user whose e-mail is not the invited one all get the
same NOT_FOUND: the caller learns nothing about invitations that are not
theirs. Once the secret and the e-mail match, a used, revoked or expired
invitation says so (FAILED_PRECONDITION).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

from services.kit.context import Principal
from services.kit.errors import AlreadyExists, FailedPrecondition, NotFound, PermissionDenied
from services.orgs import validation
from services.orgs.domain import Deps, audit_event, locked_active_organization, refuse_deleting
from services.orgs.rbac_calls import request_id_for
from services.orgs.store import (
    ACCEPTED,
    PENDING,
    REVOKED,
    InvitationRecord,
    ListQuery,
    MemberRecord,
)
from services.orgs.validation import ORGANIZATION_ADMIN, ORGANIZATION_MEMBER

TOKEN_PREFIX = "keel_inv_"
CREATE_METHOD = "keel.orgs.v1.MemberService/CreateInvitation"
_TOKEN = re.compile(r"keel_inv_([0-9a-f-]{36})_([A-Za-z0-9_-]{43})")
_STATE_REASONS = {
    ACCEPTED: ("the invitation was already used", "INVITATION_USED"),
    REVOKED: ("the invitation was revoked", "INVITATION_REVOKED"),
}


def secret_hash(secret: str) -> str:
    """The stored form of an invitation secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(invitation id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(token)
    return None if match is None else (match.group(1), match.group(2))


def _not_found() -> NotFound:
    return NotFound("no invitation matches this token for this user", reason="INVITATION_NOT_FOUND")


class Invitations:
    """Invitation lifecycle."""

    def __init__(self, deps: Deps, ttl_seconds: int) -> None:
        self._deps = deps
        self._ttl = timedelta(seconds=ttl_seconds)

    async def create(
        self, caller: Principal, organization_id: str, email: str, role_id: str, *, request_id: str = ""
    ) -> tuple[InvitationRecord, str]:
        """A new invitation and its token ('' when a retry returns the first invitation)."""
        address = validation.email(email, "invitation.email")
        role = validation.organization_role(role_id, "invitation.role_id", default=ORGANIZATION_MEMBER)
        deps = self._deps
        # The invitee is bound on orgs' account at acceptance, so the ceiling is enforced here: only
        # an Admin (organization.update, which no other role holds) invites Admins; every other role is
        # within what invitation.create already implies (a Manager holds all of them).
        if role == ORGANIZATION_ADMIN and not await deps.rbac.may(
            caller, "organization", "update", organization_id
        ):
            raise PermissionDenied("only an organization admin invites admins", reason="ESCALATION")
        now = deps.clock.now()
        secret = secrets.token_urlsafe(32)
        record = InvitationRecord(
            id=deps.new_id(),
            organization_id=organization_id,
            email=address,
            role_id=role,
            state=PENDING,
            inviter_id=caller.subject,
            secret_hash=secret_hash(secret),
            accepted_by="",
            create_time=now,
            expire_time=now + self._ttl,
            update_time=now,
        )
        method = f"{CREATE_METHOD}/{organization_id}"
        async with deps.store.transaction() as tx:
            organization = await tx.get_organization(organization_id)
            if organization is None:
                raise NotFound("organization not found")
            refuse_deleting(organization)
            if request_id:
                known = await tx.recall(method, caller.subject, request_id)
                if known is not None:
                    first = await tx.get_invitation(known.decode(), now, organization_id)
                    if first is None:
                        raise NotFound("invitation not found")
                    return first, ""
                await tx.remember(method, caller.subject, request_id, record.id.encode(), now)
            if await tx.member_with_email(organization_id, address):
                raise AlreadyExists("a member with this e-mail is already in the organization")
            await tx.insert_invitation(record)
            await tx.record(
                audit_event(
                    "orgs.invitation.create",
                    "invitation",
                    record.id,
                    organization_id,
                    now,
                    {"email": address, "role_id": role},
                )
            )
        deps.audit_recorded()
        return record, f"{TOKEN_PREFIX}{record.id}_{secret}"

    async def list_invitations(
        self, organization_id: str, query: ListQuery
    ) -> tuple[list[InvitationRecord], str]:
        """One page of invitations (states as of now)."""
        now = self._deps.clock.now()
        async with self._deps.store.transaction() as tx:
            return await tx.list_invitations(organization_id, query, now)

    async def revoke(self, organization_id: str, invitation_id: str) -> InvitationRecord:
        """Revokes a pending invitation."""
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            found = await tx.get_invitation(invitation_id, now, organization_id)
            if found is None:
                raise NotFound("invitation not found")
            if found.state != PENDING or not await tx.close_invitation(invitation_id, REVOKED, "", now):
                raise FailedPrecondition(
                    f"only a pending invitation can be revoked; this one is {found.state.lower()}",
                    reason="INVITATION_NOT_PENDING",
                )
            await tx.record(
                audit_event("orgs.invitation.revoke", "invitation", invitation_id, organization_id, now)
            )
            revoked = await tx.get_invitation(invitation_id, now, organization_id)
        deps.audit_recorded()
        assert revoked is not None
        return revoked

    async def accept(self, caller: Principal, token: str) -> MemberRecord:
        """Makes the caller a member with the invitation's role; the token is used up."""
        parsed = parse_token(token)
        if parsed is None or caller.kind != "user":
            raise _not_found()
        invitation_id, secret = parsed
        deps = self._deps
        email = (await deps.authn.caller_email()).strip().lower()
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            found = await tx.get_invitation(invitation_id, now)
            # Both comparisons always run, so timing does not tell which one failed.
            secret_ok = hmac.compare_digest(secret_hash(secret), found.secret_hash if found else "0" * 64)
            email_ok = hmac.compare_digest(email.encode(), (found.email if found else "").encode())
            if found is None or not (secret_ok and email_ok):
                raise _not_found()
            organization_id = found.organization_id
            try:
                await locked_active_organization(tx, organization_id)
            except NotFound:
                raise _not_found() from None
            if await tx.get_member(organization_id, caller.subject) is not None:
                raise AlreadyExists("the caller is already a member of the organization")
            found = await tx.get_invitation(invitation_id, now)
            assert found is not None
            if found.state != PENDING:
                message, reason = _STATE_REASONS.get(
                    found.state, ("the invitation has expired", "INVITATION_EXPIRED")
                )
                raise FailedPrecondition(message, reason=reason)
            if not await tx.close_invitation(invitation_id, ACCEPTED, caller.subject, now):
                raise FailedPrecondition("the invitation was already used", reason="INVITATION_USED")
            # orgs' own account: the invitee holds nothing in the organization yet.
            written = await deps.rbac.bind_member(
                organization_id,
                caller.subject,
                found.role_id,
                request_id=request_id_for("accept-invitation", invitation_id),
                own_account=True,
            )
            member = MemberRecord(
                organization_id, caller.subject, email, found.role_id, written.binding_id, now, now, 1
            )
            await tx.insert_member(member)
            await tx.record(
                audit_event(
                    "orgs.invitation.accept",
                    "invitation",
                    invitation_id,
                    organization_id,
                    now,
                    {"user_id": caller.subject, "role_id": found.role_id},
                )
            )
        deps.audit_recorded()
        return member
