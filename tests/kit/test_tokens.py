"""Access-token verification: RFC 8725 checks, JWKS refetch, and the authn JWKS client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from services.kit import errors
from services.kit.context import Principal
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from tests.clock import ManualClock
from tests.kit.conftest import AUDIENCE, ISSUER, KeySet


async def test_valid_eddsa_token_gives_principal_with_kind_org_and_token(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    token = keys.mint(sub="user-7", org="org-9", jti="jti-1")

    principal = await verifier.verify_access_token(token)

    assert (principal.subject, principal.kind, principal.organization_id, principal.token_id) == (
        "user-7",
        "user",
        "org-9",
        "jti-1",
    )
    assert principal.token == token


async def test_valid_es256_service_account_token_is_accepted(keys: KeySet, verifier: TokenVerifier) -> None:
    token = keys.mint(kid="ec-1", algorithm="ES256", typ="service_account")

    principal = await verifier.verify_access_token(token)

    assert principal.kind == "service_account"


async def assert_rejected(verifier: TokenVerifier, token: str) -> None:
    with pytest.raises(errors.Unauthenticated) as raised:
        await verifier.verify_access_token(token)
    # One generic answer whatever failed: the caller learns nothing about which check it was.
    assert raised.value.message == "invalid or expired access token"


async def test_expired_token_is_rejected_beyond_leeway(keys: KeySet, verifier: TokenVerifier) -> None:
    now = int(time.time())
    await assert_rejected(verifier, keys.mint(exp=now - 31, iat=now - 600, nbf=now - 600))


async def test_token_expired_within_leeway_is_accepted(keys: KeySet, verifier: TokenVerifier) -> None:
    now = int(time.time())
    principal = await verifier.verify_access_token(keys.mint(exp=now - 5, iat=now - 600, nbf=now - 600))
    assert principal.subject == "user-1"


async def test_token_not_yet_valid_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    now = int(time.time())
    await assert_rejected(verifier, keys.mint(nbf=now + 120))


async def test_token_issued_in_the_future_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    now = int(time.time())
    await assert_rejected(verifier, keys.mint(iat=now + 120))


async def test_wrong_audience_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    await assert_rejected(verifier, keys.mint(aud="other-service"))


async def test_audience_list_containing_ours_is_accepted(keys: KeySet, verifier: TokenVerifier) -> None:
    principal = await verifier.verify_access_token(keys.mint(aud=["other", AUDIENCE]))
    assert principal.subject == "user-1"


async def test_wrong_issuer_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    await assert_rejected(verifier, keys.mint(iss="https://evil.example"))


def _segment(value: Mapping[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


async def test_alg_none_is_rejected_before_any_key_lookup(keys: KeySet, jwks: JwksCache) -> None:
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE)
    header = {"alg": "none", "typ": "at+jwt", "kid": "ed-1"}
    token = f"{_segment(header)}.{_segment(keys.claims())}.c2ln"

    await assert_rejected(verifier, token)
    assert keys.fetches == 0


async def test_hs256_signed_with_public_key_bytes_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    # Key confusion: an attacker signs with HMAC using the published public key as the secret.
    public_bytes = keys.ed25519.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "ed-1"}
    signing_input = f"{_segment(header)}.{_segment(keys.claims())}"
    signature = hmac.new(public_bytes, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"

    await assert_rejected(verifier, token)
    assert keys.fetches == 0


async def test_token_claiming_eddsa_with_an_es256_key_id_is_rejected(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    await assert_rejected(verifier, keys.mint(kid="ec-1", algorithm="EdDSA"))


async def test_tampered_payload_fails_signature(keys: KeySet, verifier: TokenVerifier) -> None:
    header, _payload, signature = keys.mint().split(".")
    forged = f"{header}.{_segment(keys.claims(sub='admin'))}.{signature}"

    await assert_rejected(verifier, forged)


async def test_refresh_or_workload_typ_header_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    await assert_rejected(verifier, keys.mint(header_typ="JWT"))
    await assert_rejected(verifier, keys.mint(header_typ="wl+jwt"))
    await assert_rejected(verifier, keys.mint(header_typ=None))


async def test_workload_principal_type_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    await assert_rejected(verifier, keys.mint(typ="workload"))


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "nbf", "jti", "typ"])
async def test_token_missing_a_required_claim_is_rejected(
    keys: KeySet, verifier: TokenVerifier, claim: str
) -> None:
    claims = keys.claims()
    del claims[claim]
    token = jwt.encode(claims, keys.ed25519, algorithm="EdDSA", headers={"kid": "ed-1", "typ": "at+jwt"})

    await assert_rejected(verifier, token)


async def test_token_without_kid_is_rejected(keys: KeySet, verifier: TokenVerifier) -> None:
    token = jwt.encode(keys.claims(), keys.ed25519, algorithm="EdDSA", headers={"typ": "at+jwt"})
    await assert_rejected(verifier, token)


async def test_garbage_is_rejected(verifier: TokenVerifier) -> None:
    await assert_rejected(verifier, "not-a-token")
    await assert_rejected(verifier, "a.b.c")
    await assert_rejected(verifier, "..")
    await assert_rejected(verifier, "a.b.c.d")


async def test_header_with_non_string_algorithm_or_kid_is_rejected(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    for header in (
        {"alg": ["EdDSA"], "typ": "at+jwt", "kid": "ed-1"},
        {"alg": "EdDSA", "typ": "at+jwt", "kid": {}},
    ):
        await assert_rejected(verifier, f"{_segment(header)}.{_segment(keys.claims())}.c2ln")
    assert keys.fetches == 0


async def test_valid_token_altered_outside_the_base64url_alphabet_is_rejected(
    keys: KeySet, verifier: TokenVerifier
) -> None:
    token = keys.mint()
    header, payload, signature = token.split(".")

    for altered in (
        f"{header}.{payload}.{signature}=",
        f"{header}.{payload}.{signature[:40]}\n{signature[40:]}",
        f"{header}.{payload}.{signature[:40]}+{signature[41:]}",
        f"{header}.{payload}é.{signature}",
        f" {token}",
    ):
        await assert_rejected(verifier, altered)
    assert (await verifier.verify_access_token(token)).subject == "user-1"


async def test_unknown_kid_is_found_after_refetch(keys: KeySet) -> None:
    clock = ManualClock()
    jwks = JwksCache(keys.fetch, min_refetch_interval_seconds=30, clock=clock)
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    await verifier.verify_access_token(keys.mint())
    assert keys.fetches == 1
    clock.advance(seconds=31)
    rotated = KeySet()
    keys.published.append({**rotated.published[0], "kid": "ed-2"})
    token = rotated.mint(kid="ed-2")

    principal = await verifier.verify_access_token(token)

    assert principal.subject == "user-1"
    assert keys.fetches == 2


async def test_unknown_kid_refetch_is_rate_limited(keys: KeySet, verifier: TokenVerifier) -> None:
    await verifier.verify_access_token(keys.mint())
    assert keys.fetches == 1
    # Two unknown kids right after a fetch: both rejected without hammering authn.
    await assert_rejected(verifier, keys.mint(kid="nope-1"))
    await assert_rejected(verifier, keys.mint(kid="nope-2"))
    assert keys.fetches == 1


async def test_wall_clock_stepping_back_does_not_hold_back_a_refetch(keys: KeySet) -> None:
    clock = ManualClock()
    jwks = JwksCache(keys.fetch, min_refetch_interval_seconds=30, clock=clock)
    await jwks.refresh()
    clock.advance(seconds=10)
    assert await jwks.get("unknown") is None
    assert keys.fetches == 1  # within the interval: rate-limited

    clock.advance(hours=-1)
    assert await jwks.get("unknown") is None

    assert keys.fetches == 2


async def test_keys_older_than_max_age_are_refetched(keys: KeySet) -> None:
    clock = ManualClock()
    jwks = JwksCache(keys.fetch, min_refetch_interval_seconds=30, max_age_seconds=300, clock=clock)
    await jwks.refresh()
    keys.published = [jwk for jwk in keys.published if jwk["kid"] != "ed-1"]
    clock.advance(seconds=300)
    assert await jwks.get("ed-1") is not None

    clock.advance(seconds=1)

    assert await jwks.get("ed-1") is None
    assert keys.fetches == 2


async def test_concurrent_misses_share_one_fetch(keys: KeySet) -> None:
    release = asyncio.Event()
    started = 0

    async def slow_fetch() -> Sequence[Mapping[str, Any]]:
        nonlocal started
        started += 1
        await release.wait()
        return keys.published

    cache = JwksCache(slow_fetch)
    lookups = [asyncio.ensure_future(cache.get("ed-1")) for _ in range(20)]
    await asyncio.sleep(0)  # let every lookup reach the shared fetch
    release.set()
    found = await asyncio.gather(*lookups)

    assert started == 1
    assert all(key is not None and key.kid == "ed-1" for key in found)


async def test_withdrawn_key_stops_verifying_after_refresh(keys: KeySet, jwks: JwksCache) -> None:
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE)
    token = keys.mint()
    await verifier.verify_access_token(token)
    keys.published = [jwk for jwk in keys.published if jwk["kid"] != "ed-1"]

    await jwks.refresh()

    await assert_rejected(verifier, token)


async def test_failed_fetch_keeps_known_keys(keys: KeySet) -> None:
    healthy = True

    async def flaky_fetch() -> Sequence[Mapping[str, Any]]:
        if not healthy:
            raise ConnectionError("authn down")
        return keys.published

    cache = JwksCache(flaky_fetch, min_refetch_interval_seconds=0)
    verifier = TokenVerifier(cache, issuer=ISSUER, audience=AUDIENCE)
    await cache.refresh()
    healthy = False
    await cache.refresh()

    principal = await verifier.verify_access_token(keys.mint())
    assert principal.subject == "user-1"


async def test_cached_token_is_rejected_once_it_expires(keys: KeySet, jwks: JwksCache) -> None:
    clock = ManualClock()
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    now = int(clock.now().timestamp())
    token = keys.mint(exp=now + 60, iat=now, nbf=now)
    await verifier.verify_access_token(token)
    clock.advance(seconds=60 + 29)
    await verifier.verify_access_token(token)

    clock.advance(seconds=2)

    await assert_rejected(verifier, token)


class RefusedSubjects:
    """A principal check refusing the subjects in `refused`; records whom it was asked about."""

    def __init__(self) -> None:
        self.refused: set[str] = set()
        self.asked: list[str] = []

    async def __call__(self, principal: Principal) -> bool:
        self.asked.append(principal.subject)
        return principal.subject not in self.refused


async def test_principal_check_refusal_is_the_generic_failure(keys: KeySet, jwks: JwksCache) -> None:
    check = RefusedSubjects()
    check.refused.add("user-gone")
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, principal_check=check)

    await assert_rejected(verifier, keys.mint(sub="user-gone"))
    assert (await verifier.verify_access_token(keys.mint(sub="user-here"))).subject == "user-here"
    assert check.asked == ["user-gone", "user-here"]


async def test_principal_check_refuses_a_cached_token_at_once(keys: KeySet, jwks: JwksCache) -> None:
    check = RefusedSubjects()
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, principal_check=check)
    token = keys.mint(sub="user-7")
    await verifier.verify_access_token(token)
    await verifier.verify_access_token(token)

    check.refused.add("user-7")

    await assert_rejected(verifier, token)
    check.refused.clear()
    assert (await verifier.verify_access_token(token)).subject == "user-7"
    assert check.asked == ["user-7"] * 4


async def test_rejected_token_is_not_offered_to_the_principal_check(keys: KeySet, jwks: JwksCache) -> None:
    check = RefusedSubjects()
    verifier = TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE, principal_check=check)

    await assert_rejected(verifier, keys.mint(aud="other-service"))

    assert check.asked == []


async def test_verification_rate_meets_ten_thousand_per_second(keys: KeySet, verifier: TokenVerifier) -> None:
    tokens = [keys.mint(sub=f"user-{i}") for i in range(50)]
    for token in tokens:
        await verifier.verify_access_token(token)
    rounds = 400
    started = time.perf_counter()
    for _ in range(rounds):
        for token in tokens:
            await verifier.verify_access_token(token)
    rate = rounds * len(tokens) / (time.perf_counter() - started)
    assert rate >= 10_000, f"{rate:.0f} verifications/s"


class _TokenService(tokens_pb2_grpc.TokenServiceServicer):
    """A real TokenService that only serves GetJwks (authn itself lives elsewhere)."""

    async def _unimplemented(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not part of this test double")

    CreateToken = RevokeToken = IntrospectToken = StartOidcLogin = ListRevocations = _unimplemented

    def __init__(self, keys: KeySet) -> None:
        self._keys = keys

    async def GetJwks(self, request: tokens_pb2.GetJwksRequest, context: Any) -> tokens_pb2.GetJwksResponse:
        self._keys.fetches += 1
        return tokens_pb2.GetJwksResponse(keys=[tokens_pb2.JsonWebKey(**jwk) for jwk in self._keys.published])


@pytest.fixture
async def authn_channel(keys: KeySet) -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server()
    tokens_pb2_grpc.add_TokenServiceServicer_to_server(_TokenService(keys), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close(None)
        await server.stop(None)


async def test_jwks_from_authn_verifies_tokens_of_both_algorithms(
    keys: KeySet, authn_channel: grpc.aio.Channel
) -> None:
    verifier = TokenVerifier(JwksCache(jwks_from_authn(authn_channel)), issuer=ISSUER, audience=AUDIENCE)

    ed = await verifier.verify_access_token(keys.mint(sub="ed-user"))
    ec_ = await verifier.verify_access_token(keys.mint(kid="ec-1", algorithm="ES256", sub="ec-user"))

    assert (ed.subject, ec_.subject) == ("ed-user", "ec-user")
    assert keys.fetches == 1
