"""gRPC servicer of keel.orgs.v1.TeamService; no SQL."""

from __future__ import annotations

from keel.orgs.v1 import organizations_pb2 as pb
from keel.orgs.v1 import organizations_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.orgs.api_messages import Context, list_query, team_member_message, team_message
from services.orgs.teams import UPDATABLE, Teams
from services.orgs.validation import required_id

_OUTPUT_ONLY = ("id", "organization_id", "member_count", "create_time", "update_time", "etag")


class TeamApi(pb_grpc.TeamServiceServicer):
    """TeamService."""

    def __init__(self, teams: Teams) -> None:
        self._teams = teams

    async def CreateTeam(self, request: pb.CreateTeamRequest, context: Context) -> pb.Team:
        organization_id = required_id(request.organization_id, "organization_id")
        validate_request_id(request.request_id)
        if not request.HasField("team"):
            raise InvalidArgument("team", "is required")
        created = await self._teams.create(
            require_principal(),
            organization_id,
            request.team.display_name,
            request.team.description,
            request_id=request.request_id,
        )
        return team_message(created)

    async def GetTeam(self, request: pb.GetTeamRequest, context: Context) -> pb.Team:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        return team_message(await self._teams.get(organization_id, team_id))

    async def ListTeams(self, request: pb.ListTeamsRequest, context: Context) -> pb.ListTeamsResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        records, token = await self._teams.list_teams(organization_id, list_query(request))
        return pb.ListTeamsResponse(teams=[team_message(r) for r in records], next_page_token=token)

    async def UpdateTeam(self, request: pb.UpdateTeamRequest, context: Context) -> pb.Team:
        if not request.HasField("team"):
            raise InvalidArgument("team", "is required")
        team = request.team
        organization_id = required_id(team.organization_id, "team.organization_id")
        team_id = required_id(team.id, "team.id")
        paths = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        changes = {path: getattr(team, path) for path in paths}
        return team_message(await self._teams.update(organization_id, team_id, team.etag, changes))

    async def DeleteTeam(self, request: pb.DeleteTeamRequest, context: Context) -> pb.DeleteTeamResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        await self._teams.delete(organization_id, team_id, request.etag)
        return pb.DeleteTeamResponse()

    async def AddTeamMember(self, request: pb.AddTeamMemberRequest, context: Context) -> pb.TeamMember:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        user_id = required_id(request.user_id, "user_id")
        return team_member_message(await self._teams.add_member(organization_id, team_id, user_id))

    async def RemoveTeamMember(
        self, request: pb.RemoveTeamMemberRequest, context: Context
    ) -> pb.RemoveTeamMemberResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        user_id = required_id(request.user_id, "user_id")
        await self._teams.remove_member(organization_id, team_id, user_id)
        return pb.RemoveTeamMemberResponse()

    async def ListTeamMembers(
        self, request: pb.ListTeamMembersRequest, context: Context
    ) -> pb.ListTeamMembersResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        team_id = required_id(request.team_id, "team_id")
        records, token = await self._teams.list_members(organization_id, team_id, list_query(request))
        return pb.ListTeamMembersResponse(
            members=[team_member_message(r) for r in records], next_page_token=token
        )
