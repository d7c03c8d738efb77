"""Input rules shared by orgs' domain modules: names, descriptions, e-mails, organization roles.

Each check returns the normalized value or raises INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import re

from services.kit.errors import InvalidArgument

MAX_NAME = 100
MAX_DESCRIPTION = 1000
MAX_EMAIL = 320
ORGANIZATION_ADMIN = "organization_admin"
ORGANIZATION_MEMBER = "organization_member"
# The organization-level built-in roles a membership can carry, most powerful first.
ORGANIZATION_ROLES = (ORGANIZATION_ADMIN, "organization_manager", "organization_viewer", ORGANIZATION_MEMBER)

# A pragmatic address check (one @, a dotted domain, no spaces or control characters); the real
# proof is that the invitee signs in to authn with that address.
_EMAIL = re.compile(r"[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f.]+(\.[^@\s\x00-\x1f\x7f.]+)+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def display_name(value: str, field: str) -> str:
    """A trimmed display name of 1 to 100 characters, without control characters."""
    value = value.strip()
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_NAME:
        raise InvalidArgument(field, f"must be at most {MAX_NAME} characters")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")
    return value


def description(value: str, field: str) -> str:
    """A description of at most 1,000 characters."""
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument(field, f"must be at most {MAX_DESCRIPTION} characters")
    return value


def email(value: str, field: str) -> str:
    """A trimmed, lower-cased e-mail address."""
    value = value.strip().lower()
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > MAX_EMAIL or not _EMAIL.fullmatch(value):
        raise InvalidArgument(field, "is not an e-mail address")
    return value


def organization_role(value: str, field: str, *, default: str = "") -> str:
    """One of the organization-level roles (`default` when empty and a default is given)."""
    if not value and default:
        return default
    if value not in ORGANIZATION_ROLES:
        raise InvalidArgument(field, f"must be one of {', '.join(ORGANIZATION_ROLES)}")
    return value


def required_id(value: str, field: str) -> str:
    """A non-empty id of at most 64 characters."""
    if not value:
        raise InvalidArgument(field, "is required")
    if len(value) > 64 or _CONTROL.search(value):
        raise InvalidArgument(field, "is not a valid id")
    return value
