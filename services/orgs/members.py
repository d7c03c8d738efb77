"""Members: read, list, change role, remove (or leave); no gRPC, no SQL.

A member's role is an organization-level RBAC binding; orgs keeps the
membership row and the binding's id. Last-admin protection is orgs' own
rule on its own rows: every membership change first write-locks the
organization row, so concurrent removals or demotions of the last two
Admins run one after the other and the second sees one Admin left (RBAC
refuses the last Admin binding too).
"""

from __future__ import annotations

import logging

from services.kit.context import Principal
from services.kit.errors import Aborted, FailedPrecondition, NotFound, PermissionDenied
from services.kit.fieldmask import check_etag
from services.orgs import validation
from services.orgs.domain import Deps, audit_event, locked_active_organization
from services.orgs.rbac_calls import request_id_for
from services.orgs.store import ListQuery, MemberRecord, OrgsTx
from services.orgs.validation import ORGANIZATION_ADMIN

logger = logging.getLogger(__name__)


async def refuse_last_admin(tx: OrgsTx, member: MemberRecord) -> None:
    """FAILED_PRECONDITION (LAST_ADMIN) when `member` is the organization's only Admin."""
    if member.role_id == ORGANIZATION_ADMIN and await tx.count_admins(member.organization_id) <= 1:
        raise FailedPrecondition(
            "the last organization admin cannot be removed or demoted", reason="LAST_ADMIN"
        )


class Members:
    """Membership reads and changes."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def get(self, organization_id: str, user_id: str) -> MemberRecord:
        """One membership."""
        async with self._deps.store.transaction() as tx:
            found = await tx.get_member(organization_id, user_id)
        if found is None:
            raise NotFound("member not found")
        return found

    async def list_members(self, organization_id: str, query: ListQuery) -> tuple[list[MemberRecord], str]:
        """One page of members."""
        async with self._deps.store.transaction() as tx:
            return await tx.list_members(organization_id, query)

    async def change_role(
        self, caller: Principal, organization_id: str, user_id: str, role_id: str, etag: str
    ) -> MemberRecord:
        """Gives a member another organization role (the caller's token writes RBAC)."""
        role = validation.organization_role(role_id, "member.role_id")
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            await locked_active_organization(tx, organization_id)
            member = await tx.get_member(organization_id, user_id)
            if member is None:
                raise NotFound("member not found")
            check_etag(etag, member.version)
            if role == member.role_id:
                return member
            # Only an Admin makes or unmakes Admins (every other role is within a Manager's reach);
            # asked here so a refused change writes nothing to RBAC.
            if ORGANIZATION_ADMIN in (role, member.role_id) and not await deps.rbac.may(
                caller, "organization", "update", organization_id
            ):
                raise PermissionDenied(
                    "only an organization admin grants or removes the admin role", reason="ESCALATION"
                )
            await refuse_last_admin(tx, member)
            written = await deps.rbac.bind_member(
                organization_id,
                user_id,
                role,
                request_id=request_id_for("member-role", organization_id, user_id, str(member.version), role),
                own_account=False,
            )
            try:
                if member.binding_id:
                    await deps.rbac.unbind(organization_id, member.binding_id)
            except Exception:
                # Undo the new binding so RBAC does not keep both roles; the error goes to the caller.
                try:
                    await deps.rbac.unbind(organization_id, written.binding_id)
                except Exception:
                    logger.exception(
                        "could not undo binding %s after a failed role change", written.binding_id
                    )
                raise
            if not await tx.update_member_role(member, role, written.binding_id, now):
                raise Aborted("the member changed concurrently; read it again", reason="ETAG_MISMATCH")
            await tx.record(
                audit_event(
                    "orgs.member.update",
                    "member",
                    user_id,
                    organization_id,
                    now,
                    {"role_id": role, "previous_role_id": member.role_id},
                )
            )
            updated = await tx.get_member(organization_id, user_id)
        deps.audit_recorded()
        assert updated is not None
        return updated

    async def remove(self, caller: Principal, organization_id: str, user_id: str) -> None:
        """Removes a member with their team memberships and every RBAC binding in the organization.

        A member leaving (user_id is the caller) has orgs write RBAC on its own
        account: leaving needs no permission beyond being oneself.
        """
        deps = self._deps
        now = deps.clock.now()
        leaving = user_id == caller.subject
        async with deps.store.transaction() as tx:
            await locked_active_organization(tx, organization_id)
            member = await tx.get_member(organization_id, user_id)
            if member is None:
                raise NotFound("member not found")
            await refuse_last_admin(tx, member)
            await deps.rbac.purge_user(organization_id, user_id, own_account=leaving)
            teams = await tx.delete_member(organization_id, user_id)
            await tx.record(
                audit_event(
                    "orgs.member.leave" if leaving else "orgs.member.remove",
                    "member",
                    user_id,
                    organization_id,
                    now,
                    {"role_id": member.role_id, "team_count": len(teams)},
                )
            )
        deps.audit_recorded()
