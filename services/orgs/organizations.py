"""Organizations: create (the creator becomes Admin), read, list, rename, delete; no gRPC, no SQL.

Deleting is two-phase so it never leaves orphans and a retry finishes it:
one orgs transaction marks the organization DELETING and removes its
workspaces (when forced), members, invitations and teams; RBAC then drops
everything it holds for the organization; finally the row goes. A failure in
between leaves a DELETING organization that a retried delete completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.kit.context import Principal
from services.kit.errors import Aborted, FailedPrecondition, NotFound, PermissionDenied
from services.kit.fieldmask import check_etag
from services.orgs import validation
from services.orgs.domain import Deps, audit_event, refuse_deleting
from services.orgs.rbac_calls import request_id_for
from services.orgs.store import (
    ACTIVE,
    DELETING,
    ListQuery,
    MemberRecord,
    OrganizationRecord,
)
from services.orgs.validation import ORGANIZATION_ADMIN
from services.orgs.workspace_store import count_live_workspaces, delete_organization_workspaces

CREATE_METHOD = "keel.orgs.v1.OrganizationService/CreateOrganization"
UPDATABLE = ("display_name", "description")


class Organizations:
    """The organization lifecycle."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create(
        self, creator: Principal, display_name: str, description: str, *, request_id: str = ""
    ) -> OrganizationRecord:
        """Creates an organization whose first member and Admin is the creator (a user)."""
        if creator.kind != "user":
            raise PermissionDenied("only users create organizations", reason="USERS_ONLY")
        name = validation.display_name(display_name, "organization.display_name")
        text = validation.description(description, "organization.description")
        deps = self._deps
        email = await deps.authn.caller_email()
        now = deps.clock.now()
        organization = OrganizationRecord(deps.new_id(), name, text, ACTIVE, now, now, 1)
        async with deps.store.transaction() as tx:
            if request_id:
                known = await tx.recall(CREATE_METHOD, creator.subject, request_id)
                if known is not None:
                    first = await tx.get_organization(known.decode())
                    if first is None:
                        raise NotFound("organization not found")
                    return first
                # Remembered before RBAC is written: a concurrent twin stops here (ABORTED).
                await tx.remember(CREATE_METHOD, creator.subject, request_id, organization.id.encode(), now)
            await tx.insert_organization(organization)
            # orgs' own account: nobody holds a role in an organization that does not exist yet.
            written = await deps.rbac.bind_member(
                organization.id,
                creator.subject,
                ORGANIZATION_ADMIN,
                request_id=request_id_for("create-organization", organization.id),
                own_account=True,
            )
            await tx.insert_member(
                MemberRecord(
                    organization.id,
                    creator.subject,
                    email,
                    ORGANIZATION_ADMIN,
                    written.binding_id,
                    now,
                    now,
                    1,
                )
            )
            await tx.record(
                audit_event(
                    "orgs.organization.create",
                    "organization",
                    organization.id,
                    organization.id,
                    now,
                    {"display_name": name},
                )
            )
        deps.audit_recorded()
        return organization

    async def get(self, organization_id: str) -> OrganizationRecord:
        """An organization (ACTIVE or DELETING)."""
        async with self._deps.store.transaction() as tx:
            found = await tx.get_organization(organization_id)
        if found is None:
            raise NotFound("organization not found")
        return found

    async def list_for(self, user_id: str, query: ListQuery) -> tuple[list[OrganizationRecord], str]:
        """One page of the organizations the user is a member of."""
        async with self._deps.store.transaction() as tx:
            return await tx.list_organizations_of(user_id, query)

    async def update(self, organization_id: str, etag: str, changes: Mapping[str, str]) -> OrganizationRecord:
        """Renames / re-describes an organization (ABORTED on a stale etag)."""
        values: dict[str, Any] = {}
        if "display_name" in changes:
            values["display_name"] = validation.display_name(
                changes["display_name"], "organization.display_name"
            )
        if "description" in changes:
            values["description"] = validation.description(changes["description"], "organization.description")
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            current = await tx.get_organization(organization_id)
            if current is None:
                raise NotFound("organization not found")
            refuse_deleting(current)
            check_etag(etag, current.version)
            if not await tx.update_organization(organization_id, current.version, values, now):
                raise Aborted("the organization changed concurrently; read it again", reason="ETAG_MISMATCH")
            await tx.record(
                audit_event(
                    "orgs.organization.update",
                    "organization",
                    organization_id,
                    organization_id,
                    now,
                    {"fields": sorted(values)},
                )
            )
            updated = await tx.get_organization(organization_id)
        deps.audit_recorded()
        assert updated is not None
        return updated

    async def delete(self, organization_id: str, *, force: bool, etag: str) -> int:
        """Deletes the organization with all it contains; how many workspaces went with it."""
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            current = await tx.lock_organization(organization_id)
            if current is None:
                raise NotFound("organization not found")
            if current.state != DELETING:
                check_etag(etag, current.version)
                live = await count_live_workspaces(tx.conn, organization_id)
                if live and not force:
                    raise FailedPrecondition(
                        f"the organization still has {live} workspace(s); delete them or pass force",
                        reason="WORKSPACES_REMAIN",
                    )
                await tx.update_organization(organization_id, current.version, {"state": DELETING}, now)
            deleted = await delete_organization_workspaces(tx.conn, organization_id, now)
            contents = await tx.delete_organization_contents(organization_id)
            await tx.record(
                audit_event(
                    "orgs.organization.delete",
                    "organization",
                    organization_id,
                    organization_id,
                    now,
                    {"force": force, "deleted_workspaces": deleted, "deleted_members": contents["members"]},
                )
            )
        deps.audit_recorded()
        # With the caller's token: RBAC still holds the caller's bindings until this call removes them.
        await deps.rbac.purge_organization(organization_id)
        async with deps.store.transaction() as tx:
            await tx.delete_organization(organization_id)
        return deleted
