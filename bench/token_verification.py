"""Access-token verification throughput in-process, on one core.

Mints tokens the way authn does (PyJWT, typ "at+jwt", kid) with an Ed25519
(EdDSA) and a P-256 (ES256) key and verifies them with the kit's
TokenVerifier, in one run so the figures compare:

- cold: every token is new to the verifier (full signature check);
- warm: the same tokens again (the verifier's bounded cache of verified tokens);
- primitive: the bare signature verification of `cryptography`, the floor.

The verifier has no `principal_check`, as in every service but authn: the
figures are in-process verification only. authn's own hook (is the subject
still active?) is a database query per call, on cache hits too, and is not
measured here.

    python bench/token_verification.py --tokens 4000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from services.kit.tokens import JwksCache, TokenVerifier

ISSUER = AUDIENCE = "keel"


def mint(key: Any, algorithm: str, kid: str, count: int) -> list[str]:
    now = int(time.time())
    return [
        jwt.encode(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": str(uuid.uuid4()),
                "iat": now,
                "nbf": now,
                "exp": now + 900,
                "jti": str(uuid.uuid4()),
                "typ": "user",
                "org": "",
            },
            key,
            algorithm=algorithm,
            headers={"kid": kid, "typ": "at+jwt"},
        )
        for _ in range(count)
    ]


def jwk_of(key: Any, algorithm: str, kid: str) -> dict[str, Any]:
    algo = jwt.algorithms.get_default_algorithms()[algorithm]
    jwk: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg=algorithm, use="sig")
    return jwk


async def verify_all(verifier: TokenVerifier, tokens: list[str]) -> float:
    start = time.perf_counter()
    for token in tokens:
        await verifier.verify_access_token(token)
    return len(tokens) / (time.perf_counter() - start)


def primitive_rate(key: Any, algorithm: str, count: int) -> float:
    message = b"x" * 400
    public = key.public_key()
    if algorithm == "EdDSA":
        signature = key.sign(message)
        start = time.perf_counter()
        for _ in range(count):
            public.verify(signature, message)
    else:
        signature = key.sign(message, ec.ECDSA(hashes.SHA256()))
        start = time.perf_counter()
        for _ in range(count):
            public.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    return count / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=4000, help="distinct tokens per algorithm")
    args = parser.parse_args()
    keys = {"EdDSA": ed25519.Ed25519PrivateKey.generate(), "ES256": ec.generate_private_key(ec.SECP256R1())}
    print("TokenVerifier without principal_check (in-process verification only)")
    print(f"{'algorithm':<8} {'cold/s':>9} {'warm/s':>11} {'primitive/s':>12}")
    for algorithm, key in keys.items():
        kid = f"bench-{algorithm}"
        jwks = [jwk_of(key, algorithm, kid)]

        async def fetch(jwks: list[dict[str, Any]] = jwks) -> list[dict[str, Any]]:
            return jwks

        cache = JwksCache(fetch)
        await cache.refresh()
        tokens = mint(key, algorithm, kid, args.tokens)
        verifier = TokenVerifier(
            cache, issuer=ISSUER, audience=AUDIENCE, cache_size=2 * args.tokens, principal_check=None
        )
        cold = await verify_all(verifier, tokens)
        warm = await verify_all(verifier, tokens)
        floor = primitive_rate(key, algorithm, args.tokens)
        print(f"{algorithm:<8} {cold:>9.0f} {warm:>11.0f} {floor:>12.0f}")


if __name__ == "__main__":
    asyncio.run(main())
