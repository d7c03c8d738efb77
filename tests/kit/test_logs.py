"""The kit's log handler: JSON lines, and the one known-harmless OpenTelemetry error it drops."""

from __future__ import annotations

import io
import logging
import sys

from services.kit import logs


def _logged(name: str, error: BaseException) -> str:
    stream = io.StringIO()
    handler = logs.setup_logging("test")
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        try:
            raise error
        except BaseException:
            logging.getLogger(name).exception("Failed to detach context")
    finally:
        logging.getLogger().removeHandler(handler)
    return stream.getvalue()


def _detach_error_during(cause: BaseException) -> ValueError:
    try:
        try:
            raise cause
        except BaseException as caught:
            raise ValueError(
                "<Token var=<ContextVar name='current_context'> was created in a different Context"
            ) from caught
    except ValueError as error:
        return error


def test_a_stream_teardown_detach_error_is_dropped_and_everything_else_kept() -> None:
    assert _logged("opentelemetry.context", _detach_error_during(GeneratorExit())) == ""
    # The same error in another situation, or another logger, is still logged.
    assert "Failed to detach context" in _logged("opentelemetry.context", _detach_error_during(KeyError("x")))
    assert "different Context" in _logged("keel.metadata", _detach_error_during(GeneratorExit()))
    assert sys.exc_info() == (None, None, None)
