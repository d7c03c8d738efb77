"""Shared helpers of authn's gRPC servicers (the servicers live in api_*.py): proto ⇄ domain.

No SQL here and no rules beyond request shape: handlers translate, call the
domain, translate back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from google.protobuf import timestamp_pb2

from services.authn.store import ListQuery, RequestKey
from services.kit.context import current_principal
from services.kit.errors import InvalidArgument
from services.kit.idempotency import validate_request_id

Context = grpc.aio.ServicerContext[Any, Any]

MAX_ID_LENGTH = 64


class ListRequest(Protocol):
    """The standard List fields (AIP-132)."""

    page_size: int
    page_token: str


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp, or None for an unset time."""
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def from_timestamp(message: timestamp_pb2.Timestamp, field: str) -> datetime:
    """An aware datetime from a Timestamp; INVALID_ARGUMENT naming `field` when out of range."""
    try:
        return message.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument(field, "is not a valid timestamp") from None


def list_query(request: Any, *, with_filter: bool = True) -> ListQuery:
    """The paging, filter and order_by fields of a List request."""
    return ListQuery(
        page_size=request.page_size,
        page_token=request.page_token,
        filter=request.filter if with_filter else "",
        order_by=request.order_by if with_filter else "",
    )


def required_id(value: str, field: str) -> str:
    """A non-empty id of bounded length; INVALID_ARGUMENT naming `field` otherwise."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_ID_LENGTH} characters")
    return value


def idempotency_key(method: str, request_id: str, scope: str = "") -> RequestKey | None:
    """The key under which a Create remembers its result; None when the request has no request_id.

    The caller and the scope are part of the key, so one caller's request id
    can never return another caller's resource.
    """
    validate_request_id(request_id)
    if not request_id:
        return None
    principal = current_principal()
    method_name = f"keel.authn.v1.{method}" + (f"/{scope}" if scope else "")
    return RequestKey(method_name, principal.subject if principal is not None else "", request_id)
