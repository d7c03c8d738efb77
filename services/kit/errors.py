"""Domain errors raised by handlers, stores and domain code.

The error interceptor turns them into a `google.rpc.Status` carrying an
`ErrorInfo` (UPPER_SNAKE reason, the Keel domain) and, for bad input,
`BadRequest` field violations. Anything else becomes INTERNAL with no detail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

ERROR_DOMAIN = "keel.dev"


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: its dotted path and what is wrong with it."""

    field: str
    description: str


class KeelError(Exception):
    """Base of every error meant to reach a caller."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(KeelError):
    """The request is malformed; names every offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        field: str | None = None,
        description: str | None = None,
        *,
        violations: Sequence[FieldViolation] = (),
        reason: str | None = None,
    ) -> None:
        found = list(violations)
        if field is not None:
            found.insert(0, FieldViolation(field, description or "is invalid"))
        if not found:
            raise ValueError("InvalidArgument needs at least one field violation")
        text = "; ".join(f"{v.field}: {v.description}" for v in found)
        super().__init__(f"invalid request: {text}", reason=reason)
        self.violations = found


class Unauthenticated(KeelError):
    """No valid credentials. The message never says which check failed in detail."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(KeelError):
    """The caller lacks the permission."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(KeelError):
    """The resource does not exist (or the caller may not know it does)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(KeelError):
    """A resource with the same unique key exists."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(KeelError):
    """The system is not in a state that allows the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(KeelError):
    """A concurrency conflict, e.g. a stale etag; the caller may re-read and retry."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class ResourceExhausted(KeelError):
    """Too many requests; `retry_after_seconds` says when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_seconds: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_seconds = retry_after_seconds


class Unavailable(KeelError):
    """A dependency is unreachable; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"
