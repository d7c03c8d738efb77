"""Local verification of access tokens (JWTs issued by authn) per RFC 8725 and RFC 9068.

`JwksCache` holds authn's public keys by `kid` and refetches on an unknown one
(rate-limited, one shared in-flight fetch). `TokenVerifier` checks a bearer
token completely — algorithm allow-list before any key lookup, `typ`
"at+jwt", signature, iss/aud/exp/nbf/iat with leeway, required claims — then
an optional `principal_check` of the caller's own, and returns the
`Principal`. It does not know about gRPC metadata: the authentication
interceptor feeds it.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import grpc
import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from services.kit.clock import Clock, SystemClock
from services.kit.context import Principal, PrincipalKind
from services.kit.errors import Unauthenticated

logger = logging.getLogger(__name__)

JwksFetch = Callable[[], Awaitable[Sequence[Mapping[str, Any]]]]
# A caller's own last word on a verified token (authn: the subject is still active).
PrincipalCheck = Callable[[Principal], Awaitable[bool]]

# RFC 8725 §3.1: an explicit allow-list; "none" and the HMAC family can never appear,
# so a public key can never be used as an HMAC secret (key confusion).
ALLOWED_ALGORITHMS = frozenset({"EdDSA", "ES256"})
# RFC 9068 §2.1: access tokens carry typ "at+jwt"; the "application/" prefix may be omitted.
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
# Refresh tokens are opaque and workload tokens are accepted only by their own verifier.
ACCEPTED_PRINCIPAL_KINDS: frozenset[str] = frozenset({"user", "service_account"})
REQUIRED_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "typ"})
MAX_TOKEN_LENGTH = 16_384

# A compact JWS is three base64url segments (RFC 7515 §7.1): deleting the alphabet must leave
# the two dots. Cheaper than a regular expression over the whole token.
_BASE64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_TO_STANDARD_BASE64 = bytes.maketrans(b"-_", b"+/")
# Headers of verified tokens: authn writes one header per key, so nearly every token repeats one.
_MAX_KNOWN_HEADERS = 32
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())
_NO_TIME = timedelta(0)
# The answer for every failure: the caller learns nothing about which check failed.
_GENERIC_FAILURE = "invalid or expired access token"


@dataclass(frozen=True)
class VerificationKey:
    """One parsed public key from the JWKS, ready to verify signatures."""

    kid: str
    algorithm: str
    key: Ed25519PublicKey | ec.EllipticCurvePublicKey


def parse_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """Parses one JWK (as in GetJwksResponse); ValueError for keys we must not use."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("JWK without kid")
    use = jwk.get("use", "sig")
    if use not in ("", "sig"):
        raise ValueError(f"JWK {kid}: use {use!r} is not sig")
    cleaned = {k: v for k, v in jwk.items() if v not in ("", None)}
    try:
        parsed = jwt.PyJWK(cleaned)
    except jwt.PyJWTError as error:
        raise ValueError(f"JWK {kid}: {error}") from None
    algorithm = parsed.algorithm_name
    if algorithm not in ALLOWED_ALGORITHMS:
        raise ValueError(f"JWK {kid}: algorithm {algorithm!r} is not allowed")
    key = parsed.key
    if algorithm == "EdDSA" and isinstance(key, Ed25519PublicKey):
        return VerificationKey(kid, algorithm, key)
    if (
        algorithm == "ES256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return VerificationKey(kid, algorithm, key)
    raise ValueError(f"JWK {kid}: key type does not match algorithm {algorithm}")


class JwksCache:
    """authn's public keys by kid; refetches on an unknown kid, at most once per interval.

    Concurrent callers that miss share one in-flight fetch. A failed fetch keeps the
    keys already known (a short authn outage must not stop verification). Keys older
    than `max_age_seconds` are refreshed on the next lookup so that a key authn has
    withdrawn stops verifying within that bound.

    Intervals are measured on the injected wall `Clock` (the one clock of the codebase,
    which tests move) rather than a monotonic source. That is acceptable because both
    bounds are soft: a forward step of the wall clock costs at most one early refetch,
    and a backward step counts as "the interval has passed" (never as "not yet"), so no
    step of the clock can hold back a refetch or keep keys longer than `max_age_seconds`.
    """

    def __init__(
        self,
        fetch: JwksFetch,
        *,
        min_refetch_interval_seconds: float = 30.0,
        max_age_seconds: float = 300.0,
        clock: Clock | None = None,
    ) -> None:
        self._fetch = fetch
        self._min_interval = timedelta(seconds=min_refetch_interval_seconds)
        self._max_age = timedelta(seconds=max_age_seconds)
        self._clock = clock or SystemClock()
        self._keys: dict[str, VerificationKey] = {}
        self._last_attempt: datetime | None = None
        self._last_success: datetime | None = None
        self._in_flight: asyncio.Future[None] | None = None
        self.fetch_count = 0

    def known(self, kid: str) -> VerificationKey | None:
        """The key currently held for kid, without fetching."""
        return self._keys.get(kid)

    async def get(self, kid: str) -> VerificationKey | None:
        """The key for kid, refetching the JWKS when kid is unknown or the keys are stale."""
        key = self._keys.get(kid)
        if key is not None and not self._stale():
            return key
        await self._refetch_if_allowed()
        return self._keys.get(kid)

    async def refresh(self) -> None:
        """Fetches now regardless of the rate limit (start-up warm-up)."""
        await self._shared_fetch()

    def _stale(self) -> bool:
        if self._last_success is None:
            return False
        age = self._clock.now() - self._last_success
        return age > self._max_age or age < _NO_TIME

    async def _refetch_if_allowed(self) -> None:
        if self._in_flight is not None:
            await asyncio.shield(self._in_flight)
            return
        if self._last_attempt is not None:
            since = self._clock.now() - self._last_attempt
            if _NO_TIME <= since < self._min_interval:
                return
        await self._shared_fetch()

    async def _shared_fetch(self) -> None:
        if self._in_flight is None:
            self._in_flight = asyncio.ensure_future(self._do_fetch())
        # shield: a caller whose own call is cancelled must not cancel the fetch others wait on.
        await asyncio.shield(self._in_flight)

    async def _do_fetch(self) -> None:
        self._last_attempt = self._clock.now()
        self.fetch_count += 1
        try:
            jwks = await self._fetch()
        except Exception as error:  # any transport failure: keep the keys we have
            logger.warning("JWKS fetch failed, keeping %d known keys: %s", len(self._keys), error)
            return
        finally:
            self._in_flight = None
        keys: dict[str, VerificationKey] = {}
        for jwk in jwks:
            try:
                key = parse_jwk(jwk)
            except ValueError as error:
                logger.warning("ignoring unusable JWK: %s", error)
                continue
            keys[key.kid] = key
        self._keys = keys
        self._last_success = self._clock.now()


def jwks_from_authn(channel: grpc.aio.Channel, *, timeout_seconds: float = 5.0) -> JwksFetch:
    """A JWKS fetch function calling keel.authn.v1.TokenService.GetJwks over `channel`."""
    stub = tokens_pb2_grpc.TokenServiceStub(channel)

    async def fetch() -> list[dict[str, Any]]:
        response = await stub.GetJwks(tokens_pb2.GetJwksRequest(), timeout=timeout_seconds)
        keys: list[dict[str, Any]] = []
        for key in response.keys:
            jwk = {"kty": key.kty, "kid": key.kid, "alg": key.alg, "use": key.use, "crv": key.crv, "x": key.x}
            if key.y:
                jwk["y"] = key.y
            keys.append(jwk)
        return keys

    return fetch


@dataclass(slots=True)
class _Verified:
    principal: Principal
    key: VerificationKey
    # nbf - leeway and exp + leeway: the token is valid for valid_from <= now < valid_until.
    valid_from: float
    valid_until: float


class _Rejected(Exception):
    """Internal: a token failed one check; the reason is logged at debug, never returned."""


def _b64decode(segment: bytes) -> bytes:
    # The alphabet was checked on the whole token, so only the length can still be wrong.
    try:
        return binascii.a2b_base64(segment.translate(_TO_STANDARD_BASE64) + b"=" * (-len(segment) % 4))
    except binascii.Error:
        raise _Rejected("undecodable segment") from None


def _json_object(segment: bytes) -> dict[str, Any]:
    try:
        value = json.loads(_b64decode(segment).decode())
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError alike
        raise _Rejected(f"undecodable segment: {type(error).__name__}") from None
    if not isinstance(value, dict):
        raise _Rejected("segment is not a JSON object")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Rejected(f"claim {name} is not a number")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str:
    value = claims[name]
    if not isinstance(value, str) or not value:
        raise _Rejected(f"claim {name} is not a non-empty string")
    return value


def _check_header(header: Mapping[str, Any]) -> tuple[str, str]:
    """(algorithm, kid) of an acceptable access-token header."""
    algorithm = header.get("alg")
    # RFC 8725 §2.1/§3.1: decide on the algorithm before anything else touches a key.
    if not isinstance(algorithm, str) or algorithm not in ALLOWED_ALGORITHMS:
        raise _Rejected(f"algorithm {algorithm!r} not allowed")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in ACCESS_TOKEN_TYPES:
        raise _Rejected(f"header typ {typ!r} is not an access token")
    if "crit" in header:
        raise _Rejected("critical header extensions are not supported")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise _Rejected("no kid")
    return algorithm, kid


def _check_signature(key: VerificationKey, signature: bytes, signing_input: bytes) -> None:
    if len(signature) != 64:
        raise _Rejected("signature has the wrong length")
    try:
        if isinstance(key.key, Ed25519PublicKey):
            key.key.verify(signature, signing_input)
        else:
            # JWS ES256 signatures are raw r||s (RFC 7518 §3.4); cryptography wants DER.
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
    except InvalidSignature:
        raise _Rejected("bad signature") from None


class TokenVerifier:
    """Verifies access tokens against the JWKS; the result of a valid token is cached.

    A signature check costs one Ed25519 or P-256 verification (≈100-150 µs on a small
    cloud core), while callers present the same token for minutes. So a verified
    token is remembered (bounded LRU, keyed by the exact token text); a hit still
    re-checks exp and nbf against the clock and that its key is still in the JWKS.

    `principal_check`, when given, has the last word on every call, cached or not
    (authn refuses deactivated subjects and revoked sessions at once this way); False
    is the same generic UNAUTHENTICATED as any other failure.
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float = 30,
        clock: Clock | None = None,
        cache_size: int = 10_000,
        principal_check: PrincipalCheck | None = None,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock or SystemClock()
        self._cache_size = cache_size
        self._principal_check = principal_check
        self._verified: OrderedDict[str, _Verified] = OrderedDict()
        # Header segments of tokens that verified → (algorithm, kid): parsing and checking
        # an identical header again would give the same answer.
        self._known_headers: dict[bytes, tuple[str, str]] = {}

    async def verify_access_token(self, token: str) -> Principal:
        """The principal of a valid access token; errors.Unauthenticated otherwise."""
        now = self._clock.now().timestamp()
        cached = self._verified.get(token)
        if (
            cached is not None
            and cached.valid_from <= now < cached.valid_until
            and self._jwks.known(cached.key.kid) is cached.key
        ):
            self._verified.move_to_end(token)
            principal = cached.principal
        else:
            if cached is not None:
                del self._verified[token]
            try:
                verified = await self._verify(token, now)
            except _Rejected as rejected:
                # The reason helps an operator; the token itself is a credential and is never logged.
                logger.debug("access token rejected: %s", rejected)
                raise Unauthenticated(_GENERIC_FAILURE) from None
            self._verified[token] = verified
            if len(self._verified) > self._cache_size:
                self._verified.popitem(last=False)
            principal = verified.principal
        if self._principal_check is not None and not await self._principal_check(principal):
            logger.debug("access token refused by the principal check")
            raise Unauthenticated(_GENERIC_FAILURE)
        return principal

    async def _verify(self, token: str, now: float) -> _Verified:
        if len(token) > MAX_TOKEN_LENGTH or not token.isascii():
            raise _Rejected("not a compact JWS")
        raw = token.encode("ascii")
        if raw.translate(None, _BASE64URL_ALPHABET) != b"..":
            raise _Rejected("not a compact JWS")
        signing_input, _, signature_segment = raw.rpartition(b".")
        header_segment, _, payload_segment = signing_input.partition(b".")
        known_header = self._known_headers.get(header_segment)
        algorithm, kid = known_header or _check_header(_json_object(header_segment))
        key = await self._jwks.get(kid)
        if key is None:
            raise _Rejected(f"unknown kid {kid!r}")
        if key.algorithm != algorithm:
            raise _Rejected(f"kid {kid!r} is a {key.algorithm} key, token says {algorithm}")
        _check_signature(key, _b64decode(signature_segment), signing_input)
        verified = self._check_claims(_json_object(payload_segment), key, token, now)
        if known_header is None:
            if len(self._known_headers) >= _MAX_KNOWN_HEADERS:
                self._known_headers.clear()
            self._known_headers[header_segment] = (algorithm, kid)
        return verified

    def _check_claims(
        self, claims: dict[str, Any], key: VerificationKey, token: str, now: float
    ) -> _Verified:
        if not claims.keys() >= REQUIRED_CLAIMS:
            raise _Rejected(f"missing claims {sorted(REQUIRED_CLAIMS - claims.keys())}")
        if claims["iss"] != self._issuer:
            raise _Rejected("wrong issuer")
        audience = claims["aud"]
        if audience != self._audience and not (isinstance(audience, list) and self._audience in audience):
            raise _Rejected("wrong audience")
        valid_until = _number(claims, "exp") + self._leeway
        valid_from = _number(claims, "nbf") - self._leeway
        issued_at = _number(claims, "iat")
        if now >= valid_until:
            raise _Rejected("expired")
        if valid_from > now:
            raise _Rejected("not yet valid")
        if issued_at - self._leeway > now:
            raise _Rejected("issued in the future")
        subject = _text(claims, "sub")
        token_id = _text(claims, "jti")
        kind = claims["typ"]
        if not isinstance(kind, str) or kind not in ACCEPTED_PRINCIPAL_KINDS:
            raise _Rejected(f"principal type {kind!r} not accepted here")
        organization = claims.get("org", "")
        if not isinstance(organization, str):
            raise _Rejected("claim org is not a string")
        principal = Principal(
            subject=subject,
            kind=cast(PrincipalKind, kind),
            organization_id=organization,
            token_id=token_id,
            token=token,
            claims=claims,
        )
        return _Verified(principal, key, valid_from, valid_until)
