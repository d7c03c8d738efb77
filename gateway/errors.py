"""Errors as HTTP responses: gRPC code → HTTP status, and a JSON body carrying the google.rpc.Status.

Body (AIP-193's HTTP form, as Google's REST APIs answer):

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...",
               "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", ...}]}}

`code` is the HTTP status, `status` the gRPC code's name, `details` the
status details in proto3 JSON. A backend's status comes from its
`grpc-status-details-bin` trailer; a failure with no such trailer (the
backend unreachable, the deadline hit on the way) gets a generic message so
that internal addresses never reach a client. Errors the gateway finds itself
(bad JSON, unknown path) have the same shape.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import error_details_pb2, status_pb2
from starlette.responses import Response

from services.kit.errors import ERROR_DOMAIN, FieldViolation
from services.kit.status import rich_status_of

JSON_MEDIA_TYPE = "application/json"
STATUS_CLIENT_CLOSED_REQUEST = 499

HTTP_STATUS_OF: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: STATUS_CLIENT_CLOSED_REQUEST,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_CODE_OF_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

# Messages for failures that carry no google.rpc.Status (raised by the channel, not a Keel server).
_GENERIC_MESSAGES = {
    grpc.StatusCode.UNAVAILABLE: "the service is unavailable; try again later",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the service did not answer in time",
    grpc.StatusCode.UNIMPLEMENTED: "the service does not implement this method",
    grpc.StatusCode.CANCELLED: "the call was cancelled",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "the request or its response is too large",
}

# Reasons of the errors the gateway itself produces.
REASON_NOT_FOUND = "HTTP_ROUTE_NOT_FOUND"
REASON_METHOD_NOT_ALLOWED = "HTTP_METHOD_NOT_ALLOWED"
REASON_MALFORMED_BODY = "MALFORMED_JSON"
REASON_INVALID_FIELD = "INVALID_ARGUMENT"
REASON_BODY_TOO_LARGE = "REQUEST_TOO_LARGE"
REASON_UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
REASON_INTERNAL = "INTERNAL"


def code_of(status: status_pb2.Status) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Status (UNKNOWN for a number gRPC does not define)."""
    return _CODE_OF_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)


def http_status_of(code: grpc.StatusCode) -> int:
    """The HTTP status of a gRPC code; 500 for the rest (UNKNOWN, INTERNAL, DATA_LOSS)."""
    return HTTP_STATUS_OF.get(code, 500)


def _packed(detail: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def make_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str,
    violations: Sequence[FieldViolation] = (),
    metadata: dict[str, str] | None = None,
) -> status_pb2.Status:
    """A google.rpc.Status with ErrorInfo (Keel's domain) and, when given, BadRequest violations."""
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if violations:
        details.append(
            _packed(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                        for v in violations
                    ]
                )
            )
        )
    return status_pb2.Status(code=code.value[0], message=message, details=details)


class GatewayError(Exception):
    """An error the gateway answers itself, before or instead of calling a backend."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        violations: Sequence[FieldViolation] = (),
        http_status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = make_status(code, message, reason=reason, violations=violations)
        self.http_status = http_status
        self.headers = dict(headers or {})


def bad_request(field: str, description: str, *, reason: str = REASON_INVALID_FIELD) -> GatewayError:
    """400 INVALID_ARGUMENT naming one field (its proto path, as Keel services name fields)."""
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {field}: {description}",
        reason=reason,
        violations=[FieldViolation(field, description)],
    )


def status_of_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status of a failed backend call: the server's own, or a generic one."""
    code = error.code()
    rich = rich_status_of(error)
    if rich is not None and rich.code == code.value[0]:
        return rich
    message = _GENERIC_MESSAGES.get(code, f"the service failed ({code.name})")
    return make_status(code, message, reason=code.name)


def _detail_json(detail: any_pb2.Any) -> dict[str, object]:
    try:
        rendered = json_format.MessageToDict(detail)
    except (TypeError, KeyError, json_format.Error):
        # A detail type this gateway does not know: its type is all it can say.
        return {"@type": detail.type_url}
    return rendered if isinstance(rendered, dict) else {"@type": detail.type_url}


def error_body(status: status_pb2.Status, http_status: int) -> bytes:
    """The JSON error body of a status."""
    payload = {
        "error": {
            "code": http_status,
            "status": code_of(status).name,
            "message": status.message,
            "details": [_detail_json(detail) for detail in status.details],
        }
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def retry_after_seconds(status: status_pb2.Status) -> int | None:
    """Whole seconds of the status's RetryInfo, rounded up; None without one."""
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delay: float = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            return max(0, math.ceil(delay))
    return None


def error_response(
    status: status_pb2.Status,
    *,
    request_id: str,
    token_presented: bool = False,
    http_status: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """The HTTP response of an error status, with WWW-Authenticate / Retry-After where they apply."""
    code = code_of(status)
    status_code = http_status if http_status is not None else http_status_of(code)
    all_headers = {"x-request-id": request_id, **(headers or {})}
    if code == grpc.StatusCode.UNAUTHENTICATED:
        # RFC 6750 section 3: say which scheme; "invalid_token" when the client sent one.
        challenge = 'Bearer realm="keel"'
        all_headers["www-authenticate"] = challenge + (', error="invalid_token"' if token_presented else "")
    if code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
        retry_after = retry_after_seconds(status)
        if retry_after is not None:
            all_headers["retry-after"] = str(retry_after)
    return Response(error_body(status, status_code), status_code, all_headers, media_type=JSON_MEDIA_TYPE)
