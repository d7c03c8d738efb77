"""gRPC servicer of keel.orgs.v1.MemberService (members and invitations); no SQL."""

from __future__ import annotations

from keel.orgs.v1 import organizations_pb2 as pb
from keel.orgs.v1 import organizations_pb2_grpc as pb_grpc
from services.kit.context import require_principal, resolve_self
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.orgs.api_messages import Context, invitation_message, list_query, member_message
from services.orgs.invitations import Invitations
from services.orgs.members import Members
from services.orgs.validation import required_id

_MEMBER_OUTPUT_ONLY = ("organization_id", "user_id", "email", "create_time", "update_time", "etag")
MAX_TOKEN_LENGTH = 200


class MemberApi(pb_grpc.MemberServiceServicer):
    """MemberService."""

    def __init__(self, members: Members, invitations: Invitations) -> None:
        self._members = members
        self._invitations = invitations

    async def ListMembers(self, request: pb.ListMembersRequest, context: Context) -> pb.ListMembersResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        records, token = await self._members.list_members(organization_id, list_query(request))
        return pb.ListMembersResponse(members=[member_message(r) for r in records], next_page_token=token)

    async def GetMember(self, request: pb.GetMemberRequest, context: Context) -> pb.Member:
        organization_id = required_id(request.organization_id, "organization_id")
        user_id = resolve_self(required_id(request.user_id, "user_id"))
        return member_message(await self._members.get(organization_id, user_id))

    async def UpdateMember(self, request: pb.UpdateMemberRequest, context: Context) -> pb.Member:
        if not request.HasField("member"):
            raise InvalidArgument("member", "is required")
        member = request.member
        organization_id = required_id(member.organization_id, "member.organization_id")
        user_id = required_id(member.user_id, "member.user_id")
        resolve_update_mask(list(request.update_mask.paths), ("role_id",), output_only=_MEMBER_OUTPUT_ONLY)
        updated = await self._members.change_role(
            require_principal(), organization_id, user_id, member.role_id, member.etag
        )
        return member_message(updated)

    async def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: Context
    ) -> pb.RemoveMemberResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        user_id = resolve_self(required_id(request.user_id, "user_id"))
        await self._members.remove(require_principal(), organization_id, user_id)
        return pb.RemoveMemberResponse()

    async def CreateInvitation(
        self, request: pb.CreateInvitationRequest, context: Context
    ) -> pb.CreateInvitationResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        validate_request_id(request.request_id)
        if not request.HasField("invitation"):
            raise InvalidArgument("invitation", "is required")
        record, token = await self._invitations.create(
            require_principal(),
            organization_id,
            request.invitation.email,
            request.invitation.role_id,
            request_id=request.request_id,
        )
        return pb.CreateInvitationResponse(invitation=invitation_message(record), token=token)

    async def ListInvitations(
        self, request: pb.ListInvitationsRequest, context: Context
    ) -> pb.ListInvitationsResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        records, token = await self._invitations.list_invitations(organization_id, list_query(request))
        return pb.ListInvitationsResponse(
            invitations=[invitation_message(r) for r in records], next_page_token=token
        )

    async def RevokeInvitation(self, request: pb.RevokeInvitationRequest, context: Context) -> pb.Invitation:
        organization_id = required_id(request.organization_id, "organization_id")
        invitation_id = required_id(request.invitation_id, "invitation_id")
        return invitation_message(await self._invitations.revoke(organization_id, invitation_id))

    async def AcceptInvitation(self, request: pb.AcceptInvitationRequest, context: Context) -> pb.Member:
        if not request.token:
            raise InvalidArgument("token", "is required")
        if len(request.token) > MAX_TOKEN_LENGTH:
            raise InvalidArgument("token", "is not an invitation token")
        member = await self._invitations.accept(require_principal(), request.token)
        return member_message(member)
