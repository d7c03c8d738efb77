"""The one question orgs asks authn: the caller's own e-mail address (to accept an invitation)."""

from __future__ import annotations

import grpc

from keel.authn.v1 import users_pb2, users_pb2_grpc
from services.kit import errors


class AuthnCalls:
    """authn's UserService, called with the caller's token (forwarded by the kit client)."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._users = users_pb2_grpc.UserServiceStub(channel)

    async def caller_email(self) -> str:
        """The e-mail of the calling user (GetUser "me")."""
        try:
            user = await self._users.GetUser(users_pb2.GetUserRequest(user_id="me"))
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise errors.Unavailable("the identity service is unavailable") from error
            raise errors.PermissionDenied("the caller's identity could not be read") from error
        return str(user.email)
