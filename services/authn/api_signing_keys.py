"""gRPC servicer of keel.authn.v1.SigningKeyService."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from keel.authn.v1 import signing_keys_pb2 as pb
from keel.authn.v1 import signing_keys_pb2_grpc
from services.authn.api import Context, list_query, timestamp
from services.authn.signing_keys import SigningKeys
from services.authn.store import SigningKeyRecord

_STATES = {
    "current": pb.SigningKey.CURRENT,
    "retired": pb.SigningKey.RETIRED,
    "expired": pb.SigningKey.EXPIRED,
}


def signing_key_message(record: SigningKeyRecord, state: str) -> pb.SigningKey:
    """The public description of a key."""
    return pb.SigningKey(
        id=record.id,
        algorithm=record.algorithm,
        state=_STATES.get(state, pb.SigningKey.STATE_UNSPECIFIED),
        create_time=timestamp(record.create_time),
        retire_time=timestamp(record.retire_time),
        expire_time=timestamp(record.expire_time),
    )


class SigningKeyApi(signing_keys_pb2_grpc.SigningKeyServiceServicer):
    """SigningKeyService: list and rotate."""

    def __init__(self, signing_keys: SigningKeys, on_rotated: Callable[[], Awaitable[None]]) -> None:
        self._keys = signing_keys
        self._on_rotated = on_rotated

    async def ListSigningKeys(
        self, request: pb.ListSigningKeysRequest, context: Context
    ) -> pb.ListSigningKeysResponse:
        page = await self._keys.list(list_query(request, with_filter=False))
        return pb.ListSigningKeysResponse(
            signing_keys=[signing_key_message(r, self._keys.state_of(r)) for r in page.items],
            next_page_token=page.next_page_token,
        )

    async def RotateSigningKey(self, request: pb.RotateSigningKeyRequest, context: Context) -> pb.SigningKey:
        record = await self._keys.rotate()
        await self._on_rotated()
        return signing_key_message(record, record.state)
