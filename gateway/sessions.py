"""Browser sessions as sealed cookies: the tokens of a login, AES-256-GCM encrypted and authenticated.

The gateway is stateless, so a session lives in the browser: the cookie holds
the access token, the refresh token, their expiry times and the session's CSRF
token, sealed under the gateway's session key (KEEL_GATEWAY_SESSION_KEY_FILE,
or a key generated once in the data folder). The cookie is HttpOnly, so no
script reads it, and sealed, so neither the browser nor anyone copying it off
the disk sees a token in clear or can change a field. Every replica behind one
address must share the key file.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
_NONCE_BYTES = 12
# First byte of every sealed value, so a later format or algorithm can be told apart.
_FORMAT_V1 = b"\x01"
GENERATED_KEY_NAME = "gateway-session.key"


class SealError(ValueError):
    """A sealed value was altered, sealed under another key or purpose, or is not one at all."""


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def read_session_key(path: Path) -> bytes:
    """The 32-byte key in `path` (urlsafe base64 text); refuses a file group or others can read."""
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} must not be readable by group or others (chmod 600)")
    text = path.read_text(encoding="utf-8").strip()
    try:
        key = _b64decode(text)
    except (binascii.Error, ValueError):
        raise ValueError(f"{path} does not hold urlsafe base64") from None
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} must hold urlsafe base64 of exactly {KEY_BYTES} random bytes")
    return key


def session_key(key_file: Path | None, data_dir: Path) -> bytes:
    """The configured key file's key, else the data folder's, generated (mode 0600) on first use."""
    if key_file is not None:
        return read_session_key(key_file)
    path = data_dir / GENERATED_KEY_NAME
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process of this data folder made it first: use theirs
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(_b64encode(secrets.token_bytes(KEY_BYTES)) + "\n")
    return read_session_key(path)


class Sealer:
    """Seals small JSON objects into cookie-safe text; `purpose` keeps cookies of different kinds apart."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, payload: dict[str, object], purpose: str) -> str:
        """urlsafe base64 (no padding) of format byte, nonce and ciphertext with tag."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        plaintext = json.dumps(payload, separators=(",", ":")).encode()
        return _b64encode(_FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, purpose.encode()))

    def open(self, sealed: str, purpose: str) -> dict[str, object]:
        """The object `seal` was given under the same purpose; SealError otherwise."""
        try:
            raw = _b64decode(sealed)
        except (binascii.Error, ValueError):
            raise SealError("not a sealed value") from None
        if len(raw) < 1 + _NONCE_BYTES + 16 or raw[:1] != _FORMAT_V1:
            raise SealError("unknown sealed format")
        try:
            plaintext = self._aead.decrypt(
                raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :], purpose.encode()
            )
        except InvalidTag:
            raise SealError("sealed value does not authenticate") from None
        payload = json.loads(plaintext)
        if not isinstance(payload, dict):
            raise SealError("sealed value is not an object")
        return payload


def _time(value: object) -> datetime:
    if not isinstance(value, int | float):
        raise SealError("bad time in session")
    return datetime.fromtimestamp(value, UTC)


def _text(payload: dict[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise SealError(f"bad {name} in session")
    return value


@dataclass(frozen=True)
class Session:
    """One browser login: its tokens, their expiry times, its CSRF token and the user it is for."""

    access_token: str
    access_expire_time: datetime
    refresh_token: str
    refresh_expire_time: datetime
    csrf_token: str
    subject: str

    def __repr__(self) -> str:
        # Never show tokens in logs or tracebacks.
        return f"Session(subject={self.subject!r}, access_expire_time={self.access_expire_time.isoformat()})"

    @classmethod
    def new(
        cls,
        access_token: str,
        access_expire_time: datetime,
        refresh_token: str,
        refresh_expire_time: datetime,
        subject: str,
    ) -> Session:
        """A session with a fresh CSRF token."""
        return cls(
            access_token,
            access_expire_time,
            refresh_token,
            refresh_expire_time,
            secrets.token_urlsafe(32),
            subject,
        )

    def refreshed(
        self,
        access_token: str,
        access_expire_time: datetime,
        refresh_token: str,
        refresh_expire_time: datetime,
    ) -> Session:
        """The same login after a refresh: new tokens, the same CSRF token and subject."""
        return replace(
            self,
            access_token=access_token,
            access_expire_time=access_expire_time,
            refresh_token=refresh_token,
            refresh_expire_time=refresh_expire_time,
        )

    def to_payload(self) -> dict[str, object]:
        """What the cookie seals."""
        return {
            "at": self.access_token,
            "ae": self.access_expire_time.timestamp(),
            "rt": self.refresh_token,
            "re": self.refresh_expire_time.timestamp(),
            "csrf": self.csrf_token,
            "sub": self.subject,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, object]) -> Session:
        """The session a cookie sealed; SealError when a field is missing or malformed."""
        return cls(
            _text(payload, "at"),
            _time(payload.get("ae")),
            _text(payload, "rt"),
            _time(payload.get("re")),
            _text(payload, "csrf"),
            _text(payload, "sub"),
        )
