"""The authn master key of the embedded mesh: random on first start, kept in <data dir>/master.key.

Never a fixed default: a key that ships in the code encrypts nothing.
"""

from __future__ import annotations

import base64
import os
import pathlib
import secrets
import stat
import sys

KEY_FILE = "master.key"


def new_master_key() -> str:
    """32 random bytes, URL-safe base64 (the format of KEEL_AUTHN_MASTER_KEY)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def is_valid_key(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key)) == 32
    except ValueError:
        return False


def read_master_key(path: pathlib.Path) -> str:
    """Reads an existing key file, tightening its mode to 0600 if it was looser."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        print(f"mesh: {path} was readable by others (mode {mode:o}); setting it to 600", file=sys.stderr)
        path.chmod(0o600)
    key = path.read_text(encoding="ascii").strip()
    if not is_valid_key(key):
        raise SystemExit(f"mesh: {path} does not hold a 32-byte url-safe base64 key")
    return key


def ensure_master_key(data_dir: pathlib.Path) -> str:
    """Reads the key file, creating it (mode 0600, exclusively) on first start."""
    path = data_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return read_master_key(path)
    key = new_master_key()
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key + "\n")
    return key
