"""Token-signing keys (ES256 on P-256, or EdDSA on Ed25519): generation, encryption at rest, rotation, expiry.

States: current (signs new tokens; exactly one, enforced by a unique partial
index), retired (no longer signs, still published until every token it signed
has expired: retire time + access-token TTL + leeway) and expired (gone from
the JWKS, private key erased). Rotation is one transaction that retires the
current key and inserts the next, so several replicas rotating on the same
schedule end with one current key: the loser's retire matches no row, or its
insert hits the unique index, and it simply adopts the winner's key.

Each key carries its own algorithm. The configured one applies to keys generated
from then on, so a change takes effect at the next rotation, and keys of the old
algorithm keep verifying for as long as they are published.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.authn.auditing import authn_event
from services.authn.crypto import SecretBox
from services.authn.store import AuthnStore, Conflict, ListQuery, Page, SigningKeyRecord
from services.kit.clock import Clock

# The algorithms authn signs with (KEEL_AUTHN_SIGNING_ALGORITHM); the kit verifies both.
SigningAlgorithm = Literal["ES256", "EdDSA"]
PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey


def _sealing_context(kid: str) -> str:
    return f"signing_key:{kid}"


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def public_jwk(record: SigningKeyRecord) -> dict[str, str]:
    """The public JWK of a key: RFC 7518 EC (P-256) for ES256, RFC 8037 OKP (Ed25519) for EdDSA."""
    common = {"kid": record.id, "alg": record.algorithm, "use": "sig", "x": record.public_x}
    if record.algorithm == "ES256":
        return {"kty": "EC", "crv": "P-256", **common, "y": record.public_y}
    if record.algorithm == "EdDSA":
        return {"kty": "OKP", "crv": "Ed25519", **common}
    raise ValueError(f"signing key {record.id} has unknown algorithm {record.algorithm!r}")


def _new_key(algorithm: SigningAlgorithm) -> tuple[PrivateKey, str, str]:
    """A fresh private key with its JWK x and y (y is empty for Ed25519)."""
    if algorithm == "ES256":
        p256 = ec.generate_private_key(ec.SECP256R1())
        point = p256.public_key().public_numbers()
        # RFC 7518 §6.2.1.2: each coordinate is the full 32 bytes, leading zeros included.
        return p256, _base64url(point.x.to_bytes(32, "big")), _base64url(point.y.to_bytes(32, "big"))
    ed25519 = Ed25519PrivateKey.generate()
    raw = ed25519.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return ed25519, _base64url(raw), ""


def _load_private_key(record: SigningKeyRecord, pem: bytes) -> PrivateKey:
    """The private key of a record, refused when it does not fit the record's algorithm."""
    loaded = serialization.load_pem_private_key(pem, password=None)
    if (
        record.algorithm == "ES256"
        and isinstance(loaded, ec.EllipticCurvePrivateKey)
        and isinstance(loaded.curve, ec.SECP256R1)
    ):
        return loaded
    if record.algorithm == "EdDSA" and isinstance(loaded, Ed25519PrivateKey):
        return loaded
    raise RuntimeError(f"signing key {record.id} is not a {record.algorithm} key")


SIGNER_CACHE_SECONDS = timedelta(seconds=30)


@dataclass(frozen=True)
class Signer:
    """The key that signs new tokens, with its own algorithm ("ES256" or "EdDSA")."""

    kid: str
    algorithm: str
    private_key: PrivateKey


class RotationLost(Exception):
    """Internal: another replica rotated at the same moment."""


class SigningKeys:
    """Keeps a current signing key and publishes the verifying ones."""

    def __init__(
        self,
        store: AuthnStore,
        box: SecretBox,
        clock: Clock,
        *,
        access_token_ttl: timedelta,
        leeway: timedelta,
        rotation_interval: timedelta,
        algorithm: SigningAlgorithm,
    ) -> None:
        self._store = store
        self._box = box
        self._clock = clock
        self._publish_after_retire = access_token_ttl + leeway
        self._rotation_interval = rotation_interval
        self._algorithm: SigningAlgorithm = algorithm
        self._private_keys: dict[str, PrivateKey] = {}
        # Another replica may rotate: a cached signer is re-read after this long. It stays below
        # the leeway, so a token signed just after a remote rotation still expires before its
        # (retired) key leaves the JWKS.
        self._signer_ttl = min(SIGNER_CACHE_SECONDS, leeway / 2)
        self._cached_signer: tuple[Signer, datetime] | None = None

    def _generate(self, now: datetime) -> SigningKeyRecord:
        private_key, public_x, public_y = _new_key(self._algorithm)
        kid = secrets.token_urlsafe(16)
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self._private_keys[kid] = private_key
        return SigningKeyRecord(
            id=kid,
            algorithm=self._algorithm,
            state="current",
            private_key_sealed=self._box.seal(pem, _sealing_context(kid)),
            public_x=public_x,
            public_y=public_y,
            create_time=now,
            retire_time=None,
            expire_time=None,
        )

    async def ensure_current(self) -> SigningKeyRecord:
        """The current key, generating the first one when there is none."""
        async with self._store.transaction() as tx:
            current = await tx.current_signing_key()
        if current is not None:
            return current
        try:
            async with self._store.transaction() as tx:
                record = self._generate(self._clock.now())
                await tx.insert_signing_key(record)
                await tx.record_event(
                    authn_event(
                        "authn.signing_key.create",
                        "signing_key",
                        record.id,
                        record.create_time,
                        details={"algorithm": record.algorithm},
                    )
                )
                return record
        except Conflict:
            return await self._read_current()

    async def _read_current(self) -> SigningKeyRecord:
        async with self._store.transaction() as tx:
            current = await tx.current_signing_key()
        if current is None:
            raise RuntimeError("no current signing key after a concurrent rotation")
        return current

    async def rotate(self) -> SigningKeyRecord:
        """Retires the current key now and makes a new one current."""
        return await self._rotate(only_if_older_than=None)

    async def rotate_if_due(self) -> bool:
        """Rotates when the current key is older than the rotation interval; whether it did."""
        before = await self.ensure_current()
        if self._clock.now() - before.create_time < self._rotation_interval:
            return False
        after = await self._rotate(only_if_older_than=self._rotation_interval)
        return after.id != before.id

    async def _rotate(self, *, only_if_older_than: timedelta | None) -> SigningKeyRecord:
        self._cached_signer = None
        now = self._clock.now()
        try:
            async with self._store.transaction() as tx:
                current = await tx.current_signing_key()
                if current is not None:
                    if only_if_older_than is not None and now - current.create_time < only_if_older_than:
                        return current
                    if not await tx.retire_signing_key(current.id, now, now + self._publish_after_retire):
                        raise RotationLost
                record = self._generate(now)
                await tx.insert_signing_key(record)
                # By an admin's RotateSigningKey, or by SYSTEM when the maintenance task rotates.
                await tx.record_event(
                    authn_event(
                        "authn.signing_key.rotate",
                        "signing_key",
                        record.id,
                        now,
                        details={
                            "algorithm": record.algorithm,
                            "retired_key_id": current.id if current is not None else "",
                        },
                    )
                )
                return record
        except (RotationLost, Conflict):
            return await self._read_current()

    async def expire_due(self) -> int:
        """Unpublishes retired keys whose tokens have all expired; how many."""
        now = self._clock.now()
        async with self._store.transaction() as tx:
            count = await tx.expire_signing_keys(now)
            if count:
                await tx.record_event(
                    authn_event("authn.signing_key.expire", "signing_key", "", now, details={"count": count})
                )
        return count

    async def signer(self) -> Signer:
        """The current key with its private half (decrypted once per process, re-read within a bound)."""
        now = self._clock.now()
        if self._cached_signer is not None and now - self._cached_signer[1] < self._signer_ttl:
            return self._cached_signer[0]
        current = await self.ensure_current()
        private_key = self._private_keys.get(current.id)
        if private_key is None:
            pem = self._box.open(current.private_key_sealed, _sealing_context(current.id))
            private_key = _load_private_key(current, pem)
            self._private_keys[current.id] = private_key
        signer = Signer(current.id, current.algorithm, private_key)
        self._cached_signer = (signer, now)
        return signer

    async def jwks(self) -> list[dict[str, Any]]:
        """The public keys verifiers must accept now: the current one and unexpired retired ones."""
        async with self._store.transaction() as tx:
            records = await tx.published_signing_keys(self._clock.now())
        return [public_jwk(record) for record in records]

    def state_of(self, record: SigningKeyRecord) -> str:
        """The state as of now (a retired key past its expiry reads as expired before the sweep)."""
        if (
            record.state == "retired"
            and record.expire_time is not None
            and record.expire_time <= self._clock.now()
        ):
            return "expired"
        return record.state

    async def list(self, query: ListQuery) -> Page[SigningKeyRecord]:
        """One page of keys, newest first."""
        async with self._store.transaction() as tx:
            return await tx.list_signing_keys(query)
