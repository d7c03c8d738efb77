"""Workspace server credentials: `keel_wsc_<workspace id>_<secret>`, scoped to exactly one workspace.

Issued by orgs and shown once (CreateWorkspace, RotateWorkspaceCredential).
Only the SHA-256 of the secret is stored: the secret is 256 random bits, so an
unkeyed hash is as good as a keyed one against a stolen table. The workspace id
in the clear lets a check find the one row to compare against.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

PREFIX = "keel_wsc_"
# The workspace id (a UUID: no '_') then the secret (token_urlsafe: may contain '_' and '-').
_SHAPE = re.compile(r"keel_wsc_([0-9a-f-]{36})_([A-Za-z0-9_-]{43})")
# Compared when the workspace is unknown, so the time taken does not tell unknown from wrong.
_NO_MATCH = hashlib.sha256(b"no workspace").hexdigest()


@dataclass(frozen=True)
class IssuedCredential:
    """A new credential (to show once) and the hash to store."""

    credential: str
    secret_hash: str


@dataclass(frozen=True)
class PresentedCredential:
    """A credential as a server presented it: whose it claims to be, and the hash of its secret."""

    workspace_id: str
    secret_hash: str


def issue(workspace_id: str) -> IssuedCredential:
    """A fresh credential for the workspace."""
    secret = secrets.token_urlsafe(32)
    return IssuedCredential(f"{PREFIX}{workspace_id}_{secret}", _hash(secret))


def parse(credential: str) -> PresentedCredential | None:
    """The workspace id and secret hash of a well-formed credential; None otherwise."""
    match = _SHAPE.fullmatch(credential)
    if match is None:
        return None
    return PresentedCredential(match.group(1), _hash(match.group(2)))


def matches(presented: PresentedCredential, stored_hash: str | None) -> bool:
    """Whether the presented secret is the stored one (constant time; None never matches)."""
    same = hmac.compare_digest(presented.secret_hash, stored_hash or _NO_MATCH)
    return same and stored_hash is not None


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()
