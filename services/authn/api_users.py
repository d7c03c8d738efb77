"""gRPC servicer of keel.authn.v1.UserService."""

from __future__ import annotations

from keel.authn.v1 import users_pb2, users_pb2_grpc
from services.authn.api import Context, idempotency_key, list_query, required_id, timestamp
from services.authn.store import UserRecord
from services.authn.users import UPDATABLE_USER_FIELDS, Users
from services.kit.context import require_principal, resolve_self
from services.kit.errors import InvalidArgument, PermissionDenied
from services.kit.fieldmask import etag, resolve_update_mask

_STATES = {"active": users_pb2.User.ACTIVE, "deactivated": users_pb2.User.DEACTIVATED}
_OUTPUT_ONLY = ("id", "state", "platform_admin", "has_password", "create_time", "update_time", "etag")


def user_message(user: UserRecord) -> users_pb2.User:
    """The User message of a record (never the password hash)."""
    return users_pb2.User(
        id=user.id,
        email=user.email or "",
        display_name=user.display_name,
        state=_STATES.get(user.state, users_pb2.User.STATE_UNSPECIFIED),
        platform_admin=user.platform_admin,
        has_password=user.password_hash is not None,
        create_time=timestamp(user.create_time),
        update_time=timestamp(user.update_time),
        etag=etag(user.version),
    )


class UserApi(users_pb2_grpc.UserServiceServicer):
    """UserService: request → Users → response."""

    def __init__(self, users: Users) -> None:
        self._users = users

    async def CreateUser(self, request: users_pb2.CreateUserRequest, context: Context) -> users_pb2.User:
        if not request.HasField("user"):
            raise InvalidArgument("user", "is required")
        key = idempotency_key("CreateUser", request.request_id)
        user = await self._users.create(
            request.user.email, request.user.display_name, request.password, request_key=key
        )
        return user_message(user)

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Context) -> users_pb2.User:
        user_id = resolve_self(required_id(request.user_id, "user_id"))
        return user_message(await self._users.get(user_id))

    async def ListUsers(
        self, request: users_pb2.ListUsersRequest, context: Context
    ) -> users_pb2.ListUsersResponse:
        page = await self._users.list(list_query(request))
        return users_pb2.ListUsersResponse(
            users=[user_message(user) for user in page.items], next_page_token=page.next_page_token
        )

    async def UpdateUser(self, request: users_pb2.UpdateUserRequest, context: Context) -> users_pb2.User:
        if not request.HasField("user"):
            raise InvalidArgument("user", "is required")
        user_id = resolve_self(required_id(request.user.id, "user.id"))
        fields = resolve_update_mask(
            request.update_mask.paths, UPDATABLE_USER_FIELDS, output_only=_OUTPUT_ONLY
        )
        changes = {name: getattr(request.user, name) for name in fields}
        return user_message(await self._users.update(user_id, request.user.etag, changes))

    async def ChangePassword(
        self, request: users_pb2.ChangePasswordRequest, context: Context
    ) -> users_pb2.ChangePasswordResponse:
        principal = require_principal()
        if principal.kind != "user":
            raise PermissionDenied("only users have passwords")
        session_id = principal.claims.get("sid", "")
        await self._users.change_password(
            principal.subject,
            request.current_password,
            request.new_password,
            keep_session_id=session_id if isinstance(session_id, str) else "",
        )
        return users_pb2.ChangePasswordResponse()

    async def DeactivateUser(
        self, request: users_pb2.DeactivateUserRequest, context: Context
    ) -> users_pb2.User:
        user_id = resolve_self(required_id(request.user_id, "user_id"))
        return user_message(await self._users.deactivate(user_id))
