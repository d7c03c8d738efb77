"""JSON-lines logging to stderr with the request id and trace context of the current call.

One object per line: time, level, service, logger, message, request_id,
trace_id, span_id, the record's extra fields, and the traceback when there is
one. Credentials never reach the output: extra fields with secret-looking
names are redacted and bearer tokens or JWTs inside any text are masked.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from services.kit.context import request_id_var

# Attributes every LogRecord has; anything else on a record came in through `extra=`.
_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SECRET_NAMES = re.compile(r"authorization|token|secret|password|api_key|cookie", re.IGNORECASE)
_SECRET_TEXT = re.compile(
    r"(?i:bearer)\s+[A-Za-z0-9._~+/-]+=*"  # an Authorization header value
    r"|eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"  # a JWT anywhere in text
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """The text with bearer tokens and JWTs masked."""
    return _SECRET_TEXT.sub(REDACTED, text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def __init__(self, service_name: str) -> None:
        super().__init__()
        self._service = service_name

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "request_id": request_id_var.get(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRIBUTES or key in entry:
                continue
            if _SECRET_NAMES.search(key):
                entry[key] = REDACTED
            elif isinstance(value, str):
                entry[key] = redact(value)
            elif isinstance(value, int | float | bool) or value is None:
                entry[key] = value
            else:
                entry[key] = redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def _not_a_stream_teardown_detach(record: logging.LogRecord) -> bool:
    """Drops OpenTelemetry's "Failed to detach context" for a server stream the client left.

    The gRPC instrumentation keeps its span current across the stream's yields;
    when a client cancels (a closed watch), the generator is closed in another
    context and detaching the token fails, harmlessly (the span still ends).
    Upstream: open-telemetry/opentelemetry-python-contrib#2357. Anything else
    that logger says is kept.
    """
    if record.name != "opentelemetry.context" or not record.exc_info:
        return True
    error = record.exc_info[1]
    return not (
        isinstance(error, ValueError)
        and "was created in a different Context" in str(error)
        and isinstance(error.__context__, GeneratorExit)
    )


_handler: logging.Handler | None = None


def setup_logging(service_name: str, level: str = "INFO") -> logging.Handler:
    """Routes the root logger to stderr as JSON lines; calling again replaces the kit's handler."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service_name))
    handler.addFilter(_not_a_stream_teardown_detach)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
    return handler
