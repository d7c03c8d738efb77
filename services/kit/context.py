"""Per-request context: who is calling and under which request id.

Set by the kit's interceptors, read by handlers and by the typed clients that
propagate the caller's identity to other services.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from services.kit.errors import Unauthenticated

PrincipalKind = Literal["user", "service_account", "workload"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, as proven by a verified access token."""

    subject: str
    kind: PrincipalKind
    organization_id: str = ""
    token_id: str = ""
    # The raw bearer token, kept only to forward it to other services.
    token: str = field(default="", repr=False)
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)


request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("keel_request_id", default="")
principal_var: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "keel_principal", default=None
)
peer_var: contextvars.ContextVar[str] = contextvars.ContextVar("keel_peer", default="")


def current_request_id() -> str:
    """The id of the request being served, or '' outside a request."""
    return request_id_var.get()


def current_principal() -> Principal | None:
    """The authenticated caller, or None for a public RPC called anonymously."""
    return principal_var.get()


def require_principal() -> Principal:
    """The authenticated caller; UNAUTHENTICATED when there is none."""
    principal = principal_var.get()
    if principal is None:
        raise Unauthenticated("authentication required")
    return principal


def current_peer() -> str:
    """The caller's source address (as forwarded by a trusted gateway, else the socket peer)."""
    return peer_var.get()


def resolve_self(value: str) -> str:
    """Turns the alias "me" into the caller's subject id; other values pass through."""
    if value == "me":
        return require_principal().subject
    return value
