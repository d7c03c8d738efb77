"""OpenID Connect relying party for authn: the authorization code flow with PKCE.

Pure protocol logic over httpx: provider discovery, the authorization URL, the code exchange and ID
token validation. It stores nothing (the caller persists state, nonce, code_verifier and redirect_uri
between `new_login` and `exchange_code`) and knows nothing of gRPC or SQL. Failures surface as the
kit's errors: a bad code or ID token is `Unauthenticated`, an unreachable provider `Unavailable`; no
message ever carries a code, a token or the client secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import httpx
import jwt

from services.kit.clock import Clock, SystemClock
from services.kit.errors import Unauthenticated, Unavailable

# Asymmetric only (RFC 8725 §3.1): `none` and HS* (keyed with the client secret) are never accepted.
ALLOWED_ID_TOKEN_ALGS: Final = frozenset({"RS256", "PS256", "ES256", "EdDSA"})
_KEY_TYPE_FOR_ALG: Final = {"RS256": "RSA", "PS256": "RSA", "ES256": "EC", "EdDSA": "OKP"}

REASON_DISCOVERY_INVALID: Final = "OIDC_DISCOVERY_INVALID"
REASON_PROVIDER_UNAVAILABLE: Final = "OIDC_PROVIDER_UNAVAILABLE"
REASON_CODE_EXCHANGE_FAILED: Final = "OIDC_CODE_EXCHANGE_FAILED"
REASON_ID_TOKEN_INVALID: Final = "OIDC_ID_TOKEN_INVALID"

# OAuth error codes are a closed vocabulary of [\x20-\x21\x23-\x5B\x5D-\x7E] (RFC 6749 §5.2); we pass on
# only plain snake_case ones so a provider cannot smuggle request data into our errors and logs.
_OAUTH_ERROR_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz_")


@dataclass(frozen=True)
class OidcProviderConfig:
    """One upstream OpenID provider and Keel's client registration with it."""

    issuer: str
    client_id: str
    client_secret: str = field(repr=False)
    scopes: Sequence[str] = ("openid", "email", "profile")


@dataclass(frozen=True)
class OidcLoginStart:
    """What starting a login produced: send the browser to `authorization_url`, persist the rest."""

    authorization_url: str
    redirect_uri: str
    state: str
    nonce: str
    code_verifier: str = field(repr=False)
    code_challenge: str


@dataclass(frozen=True)
class OidcIdentity:
    """The verified identity an ID token asserted: (issuer, subject) is the stable external key."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


@dataclass(frozen=True)
class OidcDiscovery:
    """The parts of the provider's discovery document this client relies on."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_code_verifier() -> str:
    """An RFC 7636 code verifier: 32 random bytes, base64url, so 43 unreserved characters."""
    return _b64url(secrets.token_bytes(32))


def code_challenge_s256(code_verifier: str) -> str:
    """The S256 code challenge: BASE64URL(SHA256(ASCII(code_verifier)))."""
    return _b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


def _basic_auth_header(client_id: str, client_secret: str) -> str:
    # RFC 6749 §2.3.1: form-urlencode both parts before base64, which httpx.BasicAuth does not do;
    # it matters as soon as a secret holds ':' or '%'.
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode("ascii")).decode("ascii")


def _with_query(url: str, params: Mapping[str, str]) -> str:
    # The authorization endpoint may carry its own query (some providers put a tenant there); keep it.
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _oauth_error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str) and 0 < len(error) <= 64 and set(error) <= _OAUTH_ERROR_CHARS:
        return error
    return None


def _id_token_invalid(why: str) -> Unauthenticated:
    return Unauthenticated(
        f"the identity provider's ID token is invalid: {why}", reason=REASON_ID_TOKEN_INVALID
    )


class OidcClient:
    """Relying party for one provider. Share one instance: discovery and JWKS are cached in it.

    `http` is borrowed and left open if given; otherwise the client owns one (close with `aclose`).
    `clock` (authn's injectable time source) drives cache expiry and the ID token's time checks, so
    tests can move time without sleeping.
    """

    def __init__(
        self,
        config: OidcProviderConfig,
        http: httpx.AsyncClient | None = None,
        clock: Clock | None = None,
        *,
        discovery_ttl: float = 3600.0,
        jwks_ttl: float = 3600.0,
        jwks_min_refetch_interval: float = 10.0,
        leeway: float = 30.0,
    ) -> None:
        if "openid" not in config.scopes:
            raise ValueError("OIDC scopes must include 'openid'")
        self._config = config
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient(timeout=httpx.Timeout(10.0))
        self._clock = clock or SystemClock()
        self._discovery_ttl = discovery_ttl
        self._jwks_ttl = jwks_ttl
        self._jwks_min_refetch_interval = jwks_min_refetch_interval
        self._leeway = leeway
        # One lock for both caches: concurrent logins after expiry trigger one fetch, not a stampede.
        self._lock = asyncio.Lock()
        self._discovery: OidcDiscovery | None = None
        self._discovery_fetched_at = 0.0
        self._jwks: list[dict[str, Any]] | None = None
        self._jwks_fetched_at = 0.0

    def _now(self) -> float:
        return self._clock.now().timestamp()

    @property
    def config(self) -> OidcProviderConfig:
        return self._config

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> OidcClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- discovery and keys ---------------------------------------------------------------------

    async def discovery(self) -> OidcDiscovery:
        """The provider's metadata, fetched once per `discovery_ttl`."""
        async with self._lock:
            now = self._now()
            if self._discovery is None or now - self._discovery_fetched_at >= self._discovery_ttl:
                self._discovery = await self._fetch_discovery()
                self._discovery_fetched_at = now
            return self._discovery

    async def _get_json(self, url: str, what: str) -> Any:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the identity provider's {what} is unreachable ({type(exc).__name__})",
                reason=REASON_PROVIDER_UNAVAILABLE,
            ) from exc
        if response.status_code != 200:
            raise Unavailable(
                f"the identity provider's {what} answered HTTP {response.status_code}",
                reason=REASON_PROVIDER_UNAVAILABLE
                if response.status_code >= 500
                else REASON_DISCOVERY_INVALID,
            )
        try:
            return response.json()
        except ValueError as exc:
            raise Unavailable(
                f"the identity provider's {what} is not JSON", reason=REASON_DISCOVERY_INVALID
            ) from exc

    async def _fetch_discovery(self) -> OidcDiscovery:
        # OpenID Connect Discovery §4: strip one trailing '/' from the issuer before appending.
        url = self._config.issuer.removesuffix("/") + "/.well-known/openid-configuration"
        doc = await self._get_json(url, "discovery document")
        if not isinstance(doc, dict):
            raise Unavailable(
                "the identity provider's discovery document is not an object", reason=REASON_DISCOVERY_INVALID
            )
        # §4.3: the issuer must be exactly the one configured, or an attacker-controlled document
        # could redirect key and token lookups (mix-up attacks).
        if doc.get("issuer") != self._config.issuer:
            raise Unavailable(
                "the identity provider's discovery document names a different issuer than configured",
                reason=REASON_DISCOVERY_INVALID,
            )
        endpoints: dict[str, str] = {}
        for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            value = doc.get(name)
            if not isinstance(value, str) or urlsplit(value).scheme not in ("https", "http"):
                raise Unavailable(
                    f"the identity provider's discovery document lacks a valid {name}",
                    reason=REASON_DISCOVERY_INVALID,
                )
            endpoints[name] = value
        methods = doc.get("code_challenge_methods_supported")
        if isinstance(methods, list) and "S256" not in methods:
            raise Unavailable(
                "the identity provider does not support PKCE with S256", reason=REASON_DISCOVERY_INVALID
            )
        return OidcDiscovery(issuer=self._config.issuer, **endpoints)

    async def _signing_keys(self, *, refresh: bool) -> list[dict[str, Any]]:
        """The provider's JWKS; `refresh` asks for a refetch (unknown kid), rate-limited."""
        discovery = await self.discovery()
        async with self._lock:
            now = self._now()
            stale = self._jwks is None or now - self._jwks_fetched_at >= self._jwks_ttl
            # A token with an unknown kid must not make us hammer the provider: at most one refetch
            # per interval, which still picks up a rotated key within seconds.
            wanted = refresh and now - self._jwks_fetched_at >= self._jwks_min_refetch_interval
            if stale or wanted or self._jwks is None:
                doc = await self._get_json(discovery.jwks_uri, "JWKS")
                keys = doc.get("keys") if isinstance(doc, dict) else None
                if not isinstance(keys, list):
                    raise Unavailable(
                        "the identity provider's JWKS has no key list", reason=REASON_DISCOVERY_INVALID
                    )
                self._jwks = [k for k in keys if isinstance(k, dict)]
                self._jwks_fetched_at = now
            return self._jwks

    async def _verification_key(self, header: Mapping[str, Any]) -> jwt.PyJWK:
        alg = header.get("alg")
        if alg not in ALLOWED_ID_TOKEN_ALGS:
            raise _id_token_invalid("its signing algorithm is not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _id_token_invalid("its key id is malformed")
        for refresh in (False, True):
            keys = await self._signing_keys(refresh=refresh)
            candidates = [
                k
                for k in keys
                if k.get("use", "sig") == "sig"
                and k.get("kty") == _KEY_TYPE_FOR_ALG[alg]
                and (kid is None or k.get("kid") == kid)
            ]
            # Without a kid (allowed when the provider has one key) the choice must be unambiguous.
            if len(candidates) == 1:
                jwk_data = candidates[0]
                if jwk_data.get("alg") not in (None, alg):
                    raise _id_token_invalid("its algorithm does not match the signing key")
                try:
                    # Binding the key to the header's (allow-listed) alg makes a kty/alg mismatch an error.
                    return jwt.PyJWK(jwk_data, algorithm=alg)
                except jwt.PyJWTError as exc:
                    raise _id_token_invalid("the provider's signing key is unusable") from exc
            if len(candidates) > 1:
                raise _id_token_invalid("its signing key is ambiguous")
        raise _id_token_invalid("it is signed with an unknown key")

    # -- the flow -------------------------------------------------------------------------------

    async def new_login(self, redirect_uri: str) -> OidcLoginStart:
        """Start a login: fresh state, nonce and PKCE pair, and the URL to send the browser to."""
        discovery = await self.discovery()
        state = secrets.token_urlsafe(32)  # 256 bits; state and nonce are compared, never parsed.
        nonce = secrets.token_urlsafe(32)
        verifier = new_code_verifier()
        challenge = code_challenge_s256(verifier)
        url = _with_query(
            discovery.authorization_endpoint,
            {
                "response_type": "code",
                "client_id": self._config.client_id,
                "redirect_uri": redirect_uri,
                "scope": " ".join(self._config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            },
        )
        return OidcLoginStart(
            authorization_url=url,
            redirect_uri=redirect_uri,
            state=state,
            nonce=nonce,
            code_verifier=verifier,
            code_challenge=challenge,
        )

    async def exchange_code(
        self, code: str, *, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OidcIdentity:
        """Redeem an authorization code and return the identity its ID token proves."""
        discovery = await self.discovery()
        try:
            response = await self._http.post(
                discovery.token_endpoint,
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": redirect_uri,
                    "code_verifier": code_verifier,
                },
                headers={
                    "Authorization": _basic_auth_header(self._config.client_id, self._config.client_secret),
                    "Accept": "application/json",
                },
            )
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the identity provider's token endpoint is unreachable ({type(exc).__name__})",
                reason=REASON_PROVIDER_UNAVAILABLE,
            ) from exc
        if response.status_code >= 500:
            raise Unavailable(
                f"the identity provider's token endpoint answered HTTP {response.status_code}",
                reason=REASON_PROVIDER_UNAVAILABLE,
            )
        if response.status_code != 200:
            error = _oauth_error_code(response)
            raise Unauthenticated(
                f"the identity provider refused the authorization code (HTTP {response.status_code}"
                f"{', ' + error if error else ''})",
                reason=REASON_CODE_EXCHANGE_FAILED,
                metadata={"oauth_error": error} if error else None,
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        id_token = body.get("id_token") if isinstance(body, dict) else None
        if not isinstance(id_token, str) or not id_token:
            raise Unauthenticated(
                "the identity provider's token response has no ID token", reason=REASON_CODE_EXCHANGE_FAILED
            )
        return await self.verify_id_token(id_token, nonce=nonce)

    async def verify_id_token(self, id_token: str, *, nonce: str) -> OidcIdentity:
        """Validate an ID token per OpenID Connect Core §3.1.3.7 and return its identity."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise _id_token_invalid("it is not a JWS") from exc
        key = await self._verification_key(header)
        try:
            claims = jwt.decode(
                id_token,
                key=key,
                algorithms=[key.algorithm_name],
                audience=self._config.client_id,
                issuer=self._config.issuer,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat"],
                    # Time is checked below against the injected clock.
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidSignatureError as exc:
            raise _id_token_invalid("its signature does not verify") from exc
        except jwt.InvalidAudienceError as exc:
            raise _id_token_invalid("it was issued for another client") from exc
        except jwt.InvalidIssuerError as exc:
            raise _id_token_invalid("it was issued by another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise _id_token_invalid(f"it lacks the {exc.claim} claim") from exc
        except jwt.PyJWTError as exc:
            raise _id_token_invalid("it cannot be decoded") from exc

        aud = claims["aud"]
        azp = claims.get("azp")
        if isinstance(aud, list) and len(aud) > 1 and azp is None:
            raise _id_token_invalid("it has several audiences but no authorized party")
        if azp is not None and azp != self._config.client_id:
            raise _id_token_invalid("it was authorized for another client")

        now = self._now()
        exp, iat, nbf = claims["exp"], claims["iat"], claims.get("nbf", 0)
        if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (exp, iat, nbf)):
            raise _id_token_invalid("its time claims are not numbers")
        if now >= exp + self._leeway:
            raise _id_token_invalid("it has expired")
        if iat > now + self._leeway or nbf > now + self._leeway:
            raise _id_token_invalid("it is not valid yet")

        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(
            token_nonce.encode("utf-8"), nonce.encode("utf-8")
        ):
            raise _id_token_invalid("its nonce does not match this login")

        subject = claims["sub"]
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise _id_token_invalid("its subject is malformed")  # Core §2: at most 255 ASCII chars.
        email = claims.get("email")
        name = claims.get("name")
        verified = claims.get("email_verified")
        return OidcIdentity(
            issuer=self._config.issuer,
            subject=subject,
            email=email if isinstance(email, str) and email else None,
            # Some providers (Cognito) send the string "true"; anything else is unverified.
            email_verified=verified is True or verified == "true",
            name=name if isinstance(name, str) and name else None,
        )
