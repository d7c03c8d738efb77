"""Server-assigned ids of authn resources."""

from __future__ import annotations

import uuid


def new_id() -> str:
    """A random UUID (version 4) as text; ids reveal neither order nor count."""
    return str(uuid.uuid4())
