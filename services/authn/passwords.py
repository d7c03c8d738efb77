"""Password policy and argon2id hashing, off the event loop.

Hashing and verifying run in a worker thread (asyncio.to_thread): argon2 is
deliberately slow and memory hard. For an unknown account the caller still
runs one verification against a dummy hash, so response time does not reveal
whether an account exists.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.kit.errors import InvalidArgument

MIN_PASSWORD_LENGTH = 12
# Beyond this the request is abuse (argon2 hashes any length, but we bound the work).
MAX_PASSWORD_LENGTH = 1024


@dataclass(frozen=True)
class PasswordCost:
    """argon2id parameters; see RFC 9106 section 4."""

    time_cost: int = 3
    memory_kib: int = 65_536
    parallelism: int = 4


def check_password_policy(password: str, field: str) -> None:
    """INVALID_ARGUMENT naming `field` unless the password is acceptable."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidArgument(field, f"must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidArgument(field, f"must be at most {MAX_PASSWORD_LENGTH} characters")


class Passwords:
    """Hashes and verifies passwords with argon2id."""

    def __init__(self, cost: PasswordCost) -> None:
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # A hash of a random password nobody knows, verified for unknown accounts.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash (parameters and salt included)."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, encoded_hash: str | None, password: str) -> bool:
        """Whether the password matches; a None hash costs the same and answers False."""
        if encoded_hash is None:
            await asyncio.to_thread(self._verify, self._dummy_hash, password)
            return False
        return await asyncio.to_thread(self._verify, encoded_hash, password)

    def needs_rehash(self, encoded_hash: str) -> bool:
        """Whether the hash was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(encoded_hash)

    def _verify(self, encoded_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
