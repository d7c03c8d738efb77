"""Input rules shared by the metadata domain modules; each returns the value or raises INVALID_ARGUMENT.

Names are `[a-z0-9][a-z0-9-_.]{0,99}` (docs/metadata.md), ids server-assigned UUIDs.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence

from services.kit.errors import InvalidArgument, NotFound

MAX_DESCRIPTION = 1000
MAX_DISPLAY_NAME = 100
_NAME = re.compile(r"[a-z0-9][a-z0-9\-_.]{0,99}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# An opaque reference to a secret or connector of the credentials service (an id, never a value).
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-_.:/]{0,255}")
# Tags: AnnotationService's AddTags/RemoveTags and the `tags` field of workspace-level resources.
MAX_TAGS = 50
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,99}")


def name(value: str, field: str) -> str:
    """A resource name: [a-z0-9][a-z0-9-_.]{0,99}."""
    if not value:
        raise InvalidArgument(field, "is required")
    if not _NAME.fullmatch(value):
        raise InvalidArgument(field, "must match [a-z0-9][a-z0-9-_.]{0,99}")
    return value


def display_name(value: str, field: str) -> str:
    """Free text of at most 100 characters without control characters ('' allowed)."""
    if len(value) > MAX_DISPLAY_NAME:
        raise InvalidArgument(field, f"must be at most {MAX_DISPLAY_NAME} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def description(value: str, field: str) -> str:
    """Free text of at most 1,000 characters."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"must be at most {MAX_DESCRIPTION} characters")
    return value


def reference(value: str, field: str) -> str:
    """An id of a secret or service connector ('' for none); never a secret value."""
    if value and not _REFERENCE.fullmatch(value):
        raise InvalidArgument(field, "must be the id of a secret or service connector (1-256 id characters)")
    return value


def resource_id(value: str, field: str, what: str) -> str:
    """A server-assigned id: INVALID_ARGUMENT when empty, NOT_FOUND when it cannot be an id of ours."""
    if not value:
        raise InvalidArgument(field, "is required")
    try:
        uuid.UUID(value)
    except ValueError:
        raise NotFound(f"{what} not found") from None
    return value


def tags(values: Sequence[str], field: str, *, at_least: int = 0) -> list[str]:
    """A set of tags: `at_least` to 50, each [A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}; distinct, sorted.

    A bad tag is INVALID_ARGUMENT on `field[i]` (its index as sent).
    """
    if not at_least <= len(values) <= MAX_TAGS:
        raise InvalidArgument(field, f"must hold {at_least} to {MAX_TAGS} tags")
    for index, value in enumerate(values):
        if not _TAG.fullmatch(value):
            raise InvalidArgument(f"{field}[{index}]", "must match [A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}")
    return sorted(set(values))
