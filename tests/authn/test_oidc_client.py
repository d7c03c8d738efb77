"""The OIDC relying party against a real OpenID provider (panva/oidc-provider under Node)."""

from __future__ import annotations

import base64
import hashlib
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.authn.oidc import (
    REASON_CODE_EXCHANGE_FAILED,
    REASON_DISCOVERY_INVALID,
    REASON_ID_TOKEN_INVALID,
    REASON_PROVIDER_UNAVAILABLE,
    OidcClient,
    OidcLoginStart,
    OidcProviderConfig,
)
from services.kit.errors import Unauthenticated, Unavailable
from tests.oidc_provider import OidcTestProvider, complete_login

pytest_plugins = ["tests.oidc_provider"]


class ShiftedClock:
    """The wall clock moved by an offset the test can change, to look at tokens from the future."""

    def __init__(self, offset: timedelta = timedelta()) -> None:
        self.offset = offset

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset


def provider_config(provider: OidcTestProvider, **overrides: str) -> OidcProviderConfig:
    values = {
        "issuer": provider.issuer,
        "client_id": provider.client_id,
        "client_secret": provider.client_secret,
    }
    values.update(overrides)
    return OidcProviderConfig(**values)


@pytest.fixture
async def client(oidc_provider: OidcTestProvider) -> AsyncIterator[OidcClient]:
    async with OidcClient(provider_config(oidc_provider)) as oidc:
        yield oidc


async def sign_in(client: OidcClient, provider: OidcTestProvider, login: str) -> tuple[OidcLoginStart, str]:
    """Start a login, let the user sign in at the provider, return the start and the code."""
    start = await client.new_login(provider.redirect_uri)
    callback = await complete_login(start.authorization_url, login)
    params = parse_qs(urlsplit(callback).query)
    assert params["state"] == [start.state]
    return start, params["code"][0]


async def test_code_flow_with_pkce_yields_the_providers_identity(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")

    identity = await client.exchange_code(
        code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
    )

    assert identity.issuer == oidc_provider.issuer
    assert identity.subject == oidc_provider.subject_for("alice")
    assert identity.email == oidc_provider.email_for("alice")
    assert identity.email_verified is True
    assert identity.name == "Alice"


async def test_subject_is_stable_per_login_and_distinct_between_logins(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    subjects = []
    for login in ("bob", "bob", "carol"):
        start, code = await sign_in(client, oidc_provider, login)
        identity = await client.exchange_code(
            code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
        )
        subjects.append(identity.subject)
    assert subjects[0] == subjects[1] != subjects[2]


async def test_new_login_has_fresh_unguessable_state_and_an_s256_pkce_pair(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    first = await client.new_login(oidc_provider.redirect_uri)
    second = await client.new_login(oidc_provider.redirect_uri)

    assert len({first.state, second.state, first.nonce, second.nonce}) == 4
    for start in (first, second):
        # 128 bits at least: 22 base64url characters.
        assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", start.state)
        assert re.fullmatch(r"[A-Za-z0-9._~-]{43,128}", start.code_verifier)
        digest = hashlib.sha256(start.code_verifier.encode()).digest()
        assert start.code_challenge == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        assert start.code_verifier not in start.authorization_url
        assert start.code_verifier not in repr(start)
    query = parse_qs(urlsplit(first.authorization_url).query)
    assert {k: v[0] for k, v in query.items()} == {
        "response_type": "code",
        "client_id": oidc_provider.client_id,
        "redirect_uri": oidc_provider.redirect_uri,
        "scope": "openid email profile",
        "state": first.state,
        "nonce": first.nonce,
        "code_challenge": first.code_challenge,
        "code_challenge_method": "S256",
    }


async def test_id_token_with_another_nonce_is_rejected(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")
    other = await client.new_login(oidc_provider.redirect_uri)

    with pytest.raises(Unauthenticated) as caught:
        await client.exchange_code(
            code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=other.nonce
        )
    assert caught.value.reason == REASON_ID_TOKEN_INVALID
    assert "nonce" in caught.value.message


async def test_wrong_code_verifier_is_refused_by_the_provider(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")
    other = await client.new_login(oidc_provider.redirect_uri)

    with pytest.raises(Unauthenticated) as caught:
        await client.exchange_code(
            code, code_verifier=other.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
        )
    assert caught.value.reason == REASON_CODE_EXCHANGE_FAILED
    assert caught.value.metadata == {"oauth_error": "invalid_grant"}
    assert code not in str(caught.value)
    assert other.code_verifier not in str(caught.value)


async def test_code_cannot_be_redeemed_twice(client: OidcClient, oidc_provider: OidcTestProvider) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")
    await client.exchange_code(
        code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
    )

    with pytest.raises(Unauthenticated) as caught:
        await client.exchange_code(
            code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
        )
    assert caught.value.reason == REASON_CODE_EXCHANGE_FAILED
    assert caught.value.metadata == {"oauth_error": "invalid_grant"}


async def test_code_is_bound_to_its_redirect_uri(client: OidcClient, oidc_provider: OidcTestProvider) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")

    with pytest.raises(Unauthenticated) as caught:
        await client.exchange_code(
            code,
            code_verifier=start.code_verifier,
            redirect_uri=start.redirect_uri + "/elsewhere",
            nonce=start.nonce,
        )
    assert caught.value.reason == REASON_CODE_EXCHANGE_FAILED


async def test_wrong_client_secret_fails_without_revealing_it(
    client: OidcClient, oidc_provider: OidcTestProvider
) -> None:
    start, code = await sign_in(client, oidc_provider, "alice")
    wrong_secret = "not-the-secret-" + oidc_provider.client_secret

    async with OidcClient(provider_config(oidc_provider, client_secret=wrong_secret)) as impostor:
        with pytest.raises(Unauthenticated) as caught:
            await impostor.exchange_code(
                code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
            )
    assert caught.value.reason == REASON_CODE_EXCHANGE_FAILED
    assert caught.value.metadata == {"oauth_error": "invalid_client"}
    for secret in (wrong_secret, oidc_provider.client_secret, code, start.code_verifier):
        assert secret not in str(caught.value)
        assert secret not in repr(impostor.config)


async def test_expired_id_token_is_rejected(oidc_provider: OidcTestProvider) -> None:
    # The provider's ID tokens live 300 s; a day later this one must be refused.
    async with OidcClient(
        provider_config(oidc_provider), clock=ShiftedClock(timedelta(days=1))
    ) as from_tomorrow:
        start, code = await sign_in(from_tomorrow, oidc_provider, "alice")
        with pytest.raises(Unauthenticated) as caught:
            await from_tomorrow.exchange_code(
                code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
            )
    assert caught.value.reason == REASON_ID_TOKEN_INVALID
    assert "expired" in caught.value.message


@pytest.mark.parametrize("suffix", ["/", "/other"])
async def test_discovery_naming_another_issuer_is_rejected(
    oidc_provider: OidcTestProvider, suffix: str
) -> None:
    # "issuer/" fetches the very same document (Discovery §4 strips one '/'), yet the issuer in it is
    # not byte-for-byte the configured one; "issuer/other" serves no discovery document at all.
    async with OidcClient(provider_config(oidc_provider, issuer=oidc_provider.issuer + suffix)) as oidc:
        with pytest.raises(Unavailable) as caught:
            await oidc.new_login(oidc_provider.redirect_uri)
    assert caught.value.reason == REASON_DISCOVERY_INVALID


async def test_discovery_with_issuer_spelled_by_another_host_name_is_rejected(
    oidc_provider: OidcTestProvider,
) -> None:
    # Same server, same document, but "localhost" is not the issuer the provider names.
    issuer = oidc_provider.issuer.replace("127.0.0.1", "localhost")
    async with OidcClient(provider_config(oidc_provider, issuer=issuer)) as oidc:
        with pytest.raises(Unavailable) as caught:
            await oidc.discovery()
    assert caught.value.reason == REASON_DISCOVERY_INVALID


async def test_unreachable_provider_is_unavailable() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has no listener now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = OidcProviderConfig(issuer=f"http://127.0.0.1:{port}", client_id="c", client_secret="s")
    async with OidcClient(config) as oidc:
        with pytest.raises(Unavailable) as caught:
            await oidc.new_login("http://127.0.0.1/oidc/callback")
    assert caught.value.reason == REASON_PROVIDER_UNAVAILABLE


async def test_forged_id_tokens_are_rejected_and_unknown_kid_refetches_jwks_at_most_once(
    oidc_provider: OidcTestProvider,
) -> None:
    jwks_fetches: list[str] = []

    async def record(request: httpx.Request) -> None:
        if request.url.path == "/jwks":
            jwks_fetches.append(str(request.url))

    now = int(datetime.now(UTC).timestamp())
    claims = {
        "iss": oidc_provider.issuer,
        "sub": "sub-mallory",
        "aud": oidc_provider.client_id,
        "iat": now,
        "exp": now + 300,
        "nonce": "n",
    }
    forged = jwt.encode(
        claims, ec.generate_private_key(ec.SECP256R1()), algorithm="ES256", headers={"kid": "attacker"}
    )
    clock = ShiftedClock()
    async with (
        httpx.AsyncClient(event_hooks={"request": [record]}) as http,
        OidcClient(provider_config(oidc_provider), http=http, clock=clock) as oidc,
    ):
        # A real login caches the provider's JWKS.
        start, code = await sign_in(oidc, oidc_provider, "alice")
        await oidc.exchange_code(
            code, code_verifier=start.code_verifier, redirect_uri=start.redirect_uri, nonce=start.nonce
        )
        assert len(jwks_fetches) == 1

        # A minute later a token names a kid we do not know (as after a key rotation): refetch
        # once, and refuse it since the provider does not publish that key either.
        clock.offset = timedelta(minutes=1)
        with pytest.raises(Unauthenticated) as caught:
            await oidc.verify_id_token(forged, nonce="n")
        assert caught.value.reason == REASON_ID_TOKEN_INVALID
        assert "unknown key" in caught.value.message
        assert len(jwks_fetches) == 2

        # Unknown kids in quick succession must not let anyone make us hammer the provider.
        with pytest.raises(Unauthenticated):
            await oidc.verify_id_token(forged, nonce="n")
        assert len(jwks_fetches) == 2

        # Symmetric and unsigned tokens are refused by their algorithm, whatever the key.
        for alg, key in (("HS256", oidc_provider.client_secret), ("none", "")):
            token = jwt.encode(claims, key, algorithm=alg)
            with pytest.raises(Unauthenticated) as caught:
                await oidc.verify_id_token(token, nonce="n")
            assert caught.value.reason == REASON_ID_TOKEN_INVALID
            assert "algorithm" in caught.value.message
