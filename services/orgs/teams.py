"""Teams: named groups of organization members, subjects of role bindings; no gRPC, no SQL.

Orgs owns the teams and their memberships; each membership change is also
written into RBAC (TeamMembershipService) with the caller's token, so RBAC
can evaluate team bindings without ever reading orgs' tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.kit.context import Principal
from services.kit.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound
from services.kit.fieldmask import check_etag
from services.orgs import validation
from services.orgs.domain import Deps, audit_event, locked_active_organization, refuse_deleting
from services.orgs.store import Conflict, ListQuery, TeamMemberRecord, TeamRecord

CREATE_METHOD = "keel.orgs.v1.TeamService/CreateTeam"
UPDATABLE = ("display_name", "description")


def _name_taken() -> AlreadyExists:
    return AlreadyExists("a team with this name exists in the organization")


class Teams:
    """Team lifecycle and team memberships."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps

    async def create(
        self,
        caller: Principal,
        organization_id: str,
        display_name: str,
        description: str,
        *,
        request_id: str = "",
    ) -> TeamRecord:
        """Creates a team (a retry with the same request_id returns the first one)."""
        name = validation.display_name(display_name, "team.display_name")
        text = validation.description(description, "team.description")
        deps = self._deps
        now = deps.clock.now()
        team = TeamRecord(deps.new_id(), organization_id, name, text, now, now, 1)
        method = f"{CREATE_METHOD}/{organization_id}"
        try:
            async with deps.store.transaction() as tx:
                organization = await tx.get_organization(organization_id)
                if organization is None:
                    raise NotFound("organization not found")
                refuse_deleting(organization)
                if request_id:
                    known = await tx.recall(method, caller.subject, request_id)
                    if known is not None:
                        return await self._team(organization_id, known.decode())
                    await tx.remember(method, caller.subject, request_id, team.id.encode(), now)
                if await tx.team_name_taken(organization_id, name):
                    raise _name_taken()
                await tx.insert_team(team)
                await tx.record(
                    audit_event(
                        "orgs.team.create", "team", team.id, organization_id, now, {"display_name": name}
                    )
                )
        except Conflict:
            raise _name_taken() from None
        deps.audit_recorded()
        return team

    async def _team(self, organization_id: str, team_id: str) -> TeamRecord:
        async with self._deps.store.transaction() as tx:
            found = await tx.get_team(organization_id, team_id)
        if found is None:
            raise NotFound("team not found")
        return found

    async def get(self, organization_id: str, team_id: str) -> TeamRecord:
        """A team of the organization."""
        return await self._team(organization_id, team_id)

    async def list_teams(self, organization_id: str, query: ListQuery) -> tuple[list[TeamRecord], str]:
        """One page of teams."""
        async with self._deps.store.transaction() as tx:
            return await tx.list_teams(organization_id, query)

    async def update(
        self, organization_id: str, team_id: str, etag: str, changes: Mapping[str, str]
    ) -> TeamRecord:
        """Renames / re-describes a team (ABORTED on a stale etag)."""
        values: dict[str, Any] = {}
        if "display_name" in changes:
            values["display_name"] = validation.display_name(changes["display_name"], "team.display_name")
        if "description" in changes:
            values["description"] = validation.description(changes["description"], "team.description")
        deps = self._deps
        now = deps.clock.now()
        try:
            async with deps.store.transaction() as tx:
                current = await tx.get_team(organization_id, team_id)
                if current is None:
                    raise NotFound("team not found")
                check_etag(etag, current.version)
                if "display_name" in values and await tx.team_name_taken(
                    organization_id, values["display_name"], except_id=team_id
                ):
                    raise _name_taken()
                if not await tx.update_team(organization_id, team_id, current.version, values, now):
                    raise Aborted("the team changed concurrently; read it again", reason="ETAG_MISMATCH")
                await tx.record(
                    audit_event(
                        "orgs.team.update", "team", team_id, organization_id, now, {"fields": sorted(values)}
                    )
                )
                updated = await tx.get_team(organization_id, team_id)
        except Conflict:
            raise _name_taken() from None
        deps.audit_recorded()
        assert updated is not None
        return updated

    async def delete(self, organization_id: str, team_id: str, etag: str) -> None:
        """Deletes a team: RBAC drops its bindings and memberships, then orgs its rows."""
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            await locked_active_organization(tx, organization_id)
            current = await tx.get_team(organization_id, team_id)
            if current is None:
                raise NotFound("team not found")
            check_etag(etag, current.version)
            await deps.rbac.purge_team(organization_id, team_id)
            await tx.delete_team(organization_id, team_id)
            await tx.record(
                audit_event(
                    "orgs.team.delete",
                    "team",
                    team_id,
                    organization_id,
                    now,
                    {"member_count": current.member_count},
                )
            )
        deps.audit_recorded()

    async def add_member(self, organization_id: str, team_id: str, user_id: str) -> TeamMemberRecord:
        """Adds an organization member to a team."""
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            # The lock orders this against a concurrent removal of the user from the organization.
            await locked_active_organization(tx, organization_id)
            if await tx.get_team(organization_id, team_id) is None:
                raise NotFound("team not found")
            if await tx.get_member(organization_id, user_id) is None:
                raise FailedPrecondition(
                    "the user is not a member of the organization", reason="NOT_A_MEMBER"
                )
            record = TeamMemberRecord(organization_id, team_id, user_id, now)
            if not await tx.insert_team_member(record):
                raise AlreadyExists("the user is already in the team")
            await deps.rbac.add_team_member(organization_id, team_id, user_id)
            await tx.record(
                audit_event(
                    "orgs.team_member.add", "team", team_id, organization_id, now, {"user_id": user_id}
                )
            )
        deps.audit_recorded()
        return record

    async def remove_member(self, organization_id: str, team_id: str, user_id: str) -> None:
        """Removes a user from a team."""
        deps = self._deps
        now = deps.clock.now()
        async with deps.store.transaction() as tx:
            await locked_active_organization(tx, organization_id)
            if await tx.get_team(organization_id, team_id) is None:
                raise NotFound("team not found")
            if not await tx.delete_team_member(organization_id, team_id, user_id):
                raise NotFound("the user is not in the team")
            await deps.rbac.remove_team_member(organization_id, team_id, user_id)
            await tx.record(
                audit_event(
                    "orgs.team_member.remove", "team", team_id, organization_id, now, {"user_id": user_id}
                )
            )
        deps.audit_recorded()

    async def list_members(
        self, organization_id: str, team_id: str, query: ListQuery
    ) -> tuple[list[TeamMemberRecord], str]:
        """One page of a team's members."""
        async with self._deps.store.transaction() as tx:
            if await tx.get_team(organization_id, team_id) is None:
                raise NotFound("team not found")
            return await tx.list_team_members(organization_id, team_id, query)
