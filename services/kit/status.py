"""Domain errors as rich gRPC statuses (google.rpc.Status), and back for callers.

Server side: `status_for_error` turns a `KeelError` into a grpc.Status whose
trailing metadata carries `google.rpc.Status` with `ErrorInfo` (reason, the
Keel domain, metadata), `BadRequest` field violations for bad input and
`RetryInfo` for rate limits; `internal_status` is the one answer for anything
unexpected. Client side: `rich_status_of` decodes what a server sent.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2

# googleapis-common-protos ships .pyi files but no py.typed marker.
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.kit import errors

# Reasons the kit itself produces (handlers use the defaults of services.kit.errors).
REASON_INTERNAL = "INTERNAL"
REASON_DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
REASON_MALFORMED_REQUEST = "MALFORMED_REQUEST"
REASON_NO_RULE = "NO_AUTHORIZATION_RULE"


def _packed(
    message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest | error_details_pb2.RetryInfo,
) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    whole = math.floor(seconds)
    return duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    metadata: dict[str, str] | None = None,
    violations: list[errors.FieldViolation] | None = None,
    retry_after_seconds: float | None = None,
) -> grpc.Status:
    """A grpc.Status with google.rpc.Status details for `context.abort`."""
    details = [
        _packed(error_details_pb2.ErrorInfo(reason=reason, domain=errors.ERROR_DOMAIN, metadata=metadata))
    ]
    if violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in violations
            ]
        )
        details.append(_packed(bad_request))
    if retry_after_seconds is not None:
        details.append(
            _packed(error_details_pb2.RetryInfo(retry_delay=_duration(max(retry_after_seconds, 0.0))))
        )
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return rpc_status.to_status(status)


def status_for_error(error: errors.KeelError) -> grpc.Status:
    """The rich status of a domain error."""
    violations = error.violations if isinstance(error, errors.InvalidArgument) else None
    retry_after = error.retry_after_seconds if isinstance(error, errors.ResourceExhausted) else None
    return rich_status(
        error.code,
        error.message,
        reason=error.reason,
        metadata=error.metadata,
        violations=violations,
        retry_after_seconds=retry_after,
    )


def internal_status(request_id: str) -> grpc.Status:
    """The answer to an unexpected exception: nothing but the request id to quote."""
    return rich_status(
        grpc.StatusCode.INTERNAL,
        f"internal error (request id {request_id})",
        reason=REASON_INTERNAL,
        metadata={"request_id": request_id},
    )


def deadline_status() -> grpc.Status:
    """The answer when the server-side default deadline ran out."""
    return rich_status(
        grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded", reason=REASON_DEADLINE_EXCEEDED
    )


def rich_status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a server attached to a failed call, if any."""
    found = rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError is call-like
    return found if isinstance(found, status_pb2.Status) else None


def error_info_of(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, if any."""
    status = rich_status_of(error)
    if status is None:
        return None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None
