"""Assertions on gRPC errors shared by the authn tests."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from services.kit.status import error_info_of, rich_status_of


async def expect_error(call: Awaitable[Any], code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    """Awaits a call that must fail with `code`; returns the error."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    return caught.value


def reason_of(error: grpc.aio.AioRpcError) -> str:
    info = error_info_of(error)
    return info.reason if info is not None else ""


def bad_fields(error: grpc.aio.AioRpcError) -> list[str]:
    status = rich_status_of(error)
    assert status is not None
    fields: list[str] = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(v.field for v in bad_request.field_violations)
    return fields


def retry_delay_seconds(error: grpc.aio.AioRpcError) -> float | None:
    status = rich_status_of(error)
    assert status is not None
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToTimedelta().total_seconds())
    return None
