"""gRPC servicer of keel.authn.v1.ApiKeyService. Secrets leave only in Create/Rotate responses."""

from __future__ import annotations

from datetime import timedelta

from keel.authn.v1 import api_keys_pb2 as pb
from keel.authn.v1 import api_keys_pb2_grpc
from services.authn.api import Context, from_timestamp, idempotency_key, list_query, required_id, timestamp
from services.authn.api_keys import ApiKeys, ApiKeyView, IssuedApiKey
from services.kit.context import resolve_self
from services.kit.errors import InvalidArgument

_STATES = {"active": pb.ApiKey.ACTIVE, "revoked": pb.ApiKey.REVOKED, "expired": pb.ApiKey.EXPIRED}
MAX_DISPLAY_NAME_LENGTH = 200


def api_key_message(view: ApiKeyView) -> pb.ApiKey:
    """The ApiKey message (never a secret or its hash)."""
    key = view.key
    return pb.ApiKey(
        id=key.id,
        principal_id=key.principal_id,
        display_name=key.display_name,
        prefix=f"keel_ak_{key.public_id}",
        state=_STATES.get(view.state, pb.ApiKey.STATE_UNSPECIFIED),
        expire_time=timestamp(key.expire_time),
        last_use_time=timestamp(key.last_use_time),
        previous_secret_expire_time=timestamp(view.previous_secret_expire_time),
        create_time=timestamp(key.create_time),
        rotate_time=timestamp(key.rotate_time),
    )


def _issued_view(issued: IssuedApiKey) -> ApiKeyView:
    return ApiKeyView(issued.key, "active", issued.previous_secret_expire_time)


class ApiKeyApi(api_keys_pb2_grpc.ApiKeyServiceServicer):
    """ApiKeyService: request → ApiKeys → response."""

    def __init__(self, api_keys: ApiKeys) -> None:
        self._keys = api_keys

    async def CreateApiKey(
        self, request: pb.CreateApiKeyRequest, context: Context
    ) -> pb.CreateApiKeyResponse:
        principal_id = resolve_self(required_id(request.principal_id, "principal_id"))
        if not request.HasField("api_key"):
            raise InvalidArgument("api_key", "is required")
        display_name = request.api_key.display_name.strip()
        if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
            raise InvalidArgument(
                "api_key.display_name", f"must be at most {MAX_DISPLAY_NAME_LENGTH} characters"
            )
        expire_time = (
            from_timestamp(request.api_key.expire_time, "api_key.expire_time")
            if request.api_key.HasField("expire_time")
            else None
        )
        key = idempotency_key("CreateApiKey", request.request_id, scope=principal_id)
        result = await self._keys.create(principal_id, display_name, expire_time, request_key=key)
        if isinstance(result, IssuedApiKey):
            return pb.CreateApiKeyResponse(
                api_key=api_key_message(_issued_view(result)), secret=result.secret
            )
        # A retry: the first result, minus the secret that was shown once.
        return pb.CreateApiKeyResponse(api_key=api_key_message(result))

    async def GetApiKey(self, request: pb.GetApiKeyRequest, context: Context) -> pb.ApiKey:
        principal_id = resolve_self(required_id(request.principal_id, "principal_id"))
        key_id = required_id(request.api_key_id, "api_key_id")
        return api_key_message(await self._keys.get(principal_id, key_id))

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Context) -> pb.ListApiKeysResponse:
        principal_id = resolve_self(required_id(request.principal_id, "principal_id"))
        views, token = await self._keys.list(principal_id, list_query(request))
        return pb.ListApiKeysResponse(api_keys=[api_key_message(v) for v in views], next_page_token=token)

    async def RotateApiKey(
        self, request: pb.RotateApiKeyRequest, context: Context
    ) -> pb.RotateApiKeyResponse:
        principal_id = resolve_self(required_id(request.principal_id, "principal_id"))
        key_id = required_id(request.api_key_id, "api_key_id")
        grace = request.grace_period.ToTimedelta() if request.HasField("grace_period") else None
        if grace is not None and grace < timedelta(0):
            raise InvalidArgument("grace_period", "must not be negative")
        issued = await self._keys.rotate(principal_id, key_id, grace)
        return pb.RotateApiKeyResponse(api_key=api_key_message(_issued_view(issued)), secret=issued.secret)

    async def RevokeApiKey(self, request: pb.RevokeApiKeyRequest, context: Context) -> pb.ApiKey:
        principal_id = resolve_self(required_id(request.principal_id, "principal_id"))
        key_id = required_id(request.api_key_id, "api_key_id")
        return api_key_message(await self._keys.revoke(principal_id, key_id))
