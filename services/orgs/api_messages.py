"""Records of orgs' core → keel.orgs.v1 messages, and request fields → domain values; no SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from keel.orgs.v1 import organizations_pb2 as pb
from services.kit.fieldmask import etag
from services.orgs.store import (
    InvitationRecord,
    ListQuery,
    MemberRecord,
    OrganizationRecord,
    TeamMemberRecord,
    TeamRecord,
)

Context = grpc.aio.ServicerContext[Any, Any]

_ORGANIZATION_STATES = {"ACTIVE": pb.Organization.ACTIVE, "DELETING": pb.Organization.DELETING}
_INVITATION_STATES = {
    "PENDING": pb.Invitation.PENDING,
    "ACCEPTED": pb.Invitation.ACCEPTED,
    "REVOKED": pb.Invitation.REVOKED,
    "EXPIRED": pb.Invitation.EXPIRED,
}


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def list_query(request: Any) -> ListQuery:
    """The paging, filter and order_by fields of a List request (absent ones empty)."""
    return ListQuery(
        request.page_size,
        request.page_token,
        getattr(request, "filter", ""),
        getattr(request, "order_by", ""),
    )


def organization_message(record: OrganizationRecord) -> pb.Organization:
    """The API view of an organization."""
    return pb.Organization(
        id=record.id,
        display_name=record.display_name,
        description=record.description,
        state=_ORGANIZATION_STATES[record.state],
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def member_message(record: MemberRecord) -> pb.Member:
    """The API view of a membership."""
    return pb.Member(
        organization_id=record.organization_id,
        user_id=record.user_id,
        email=record.email,
        role_id=record.role_id,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def invitation_message(record: InvitationRecord) -> pb.Invitation:
    """The API view of an invitation (never its secret or hash)."""
    return pb.Invitation(
        id=record.id,
        organization_id=record.organization_id,
        email=record.email,
        role_id=record.role_id,
        state=_INVITATION_STATES[record.state],
        inviter_id=record.inviter_id,
        create_time=timestamp(record.create_time),
        expire_time=timestamp(record.expire_time),
        accepted_by=record.accepted_by,
    )


def team_message(record: TeamRecord) -> pb.Team:
    """The API view of a team."""
    return pb.Team(
        id=record.id,
        organization_id=record.organization_id,
        display_name=record.display_name,
        description=record.description,
        member_count=record.member_count,
        create_time=timestamp(record.create_time),
        update_time=timestamp(record.update_time),
        etag=etag(record.version),
    )


def team_member_message(record: TeamMemberRecord) -> pb.TeamMember:
    """The API view of a team membership."""
    return pb.TeamMember(
        team_id=record.team_id, user_id=record.user_id, create_time=timestamp(record.create_time)
    )
