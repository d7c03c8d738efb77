"""Row ⇄ message helpers shared by the metadata servicers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from services.metadata.rows import ListQuery


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp of an aware datetime (None stays unset)."""
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(value.astimezone(UTC))
    return message


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    """A Struct of a JSON object."""
    message = struct_pb2.Struct()
    message.update(value)
    return message


def from_struct(message: struct_pb2.Struct) -> dict[str, Any]:
    """The JSON object of a Struct (numbers are floats, as JSON has them)."""
    return dict(MessageToDict(message))


def list_query(request: Any) -> ListQuery:
    """The paging, filter and order of an AIP List request."""
    return ListQuery(request.page_size, request.page_token, request.filter, request.order_by)
