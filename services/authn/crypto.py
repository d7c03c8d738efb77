"""Keys derived from the master key: AES-256-GCM at rest and keyed hashes of secrets.

Every purpose gets its own subkey through HKDF-SHA256 with a distinct `info`,
so a leak of one derived key says nothing about the others. High-entropy
secrets (refresh tokens, API key secrets, OIDC states) are stored only as
HMAC-SHA256 under a pepper: a stolen database alone cannot be used to test
guesses, and no slow hash is needed because the secrets are not guessable.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_NONCE_BYTES = 12
# First byte of every ciphertext, so a future algorithm or key change can be told apart.
_FORMAT_V1 = b"\x01"


def derive_key(master_key: bytes, purpose: str) -> bytes:
    """A 32-byte subkey of the master key for one purpose."""
    if len(master_key) != 32:
        raise ValueError("the master key must be 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"keel-authn", info=purpose.encode()).derive(
        master_key
    )


class DecryptionError(Exception):
    """A ciphertext was altered, or sealed under another key or context."""


class SecretBox:
    """AES-256-GCM with a random nonce; `context` binds a ciphertext to where it is stored."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypts; the result is format byte, nonce and ciphertext with tag."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        """Decrypts what `seal` produced under the same context."""
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _FORMAT_V1:
            raise DecryptionError("unknown ciphertext format")
        nonce = sealed[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, sealed[1 + _NONCE_BYTES :], context.encode())
        except InvalidTag:
            raise DecryptionError("ciphertext does not authenticate") from None


class SecretHasher:
    """Keyed HMAC-SHA256 of high-entropy secrets; the digest is what the database holds."""

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper

    def digest(self, secret: str, purpose: str) -> str:
        """Hex digest of a secret; `purpose` keeps digests of different kinds apart."""
        message = purpose.encode() + b"\x00" + secret.encode()
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    def matches(self, secret: str, purpose: str, stored_digest: str) -> bool:
        """Constant-time comparison of a secret against a stored digest."""
        return hmac.compare_digest(self.digest(secret, purpose), stored_digest)


class Keyring:
    """The derived keys of one authn installation."""

    def __init__(self, master_key: bytes) -> None:
        self.box = SecretBox(derive_key(master_key, "authn/aes-256-gcm/at-rest"))
        self.hasher = SecretHasher(derive_key(master_key, "authn/hmac-sha256/secret-pepper"))
