"""Single sign-on end to end: authn's gRPC API against a real OpenID provider (panva/oidc-provider)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from keel.authn.v1 import tokens_pb2, users_pb2
from tests.authn.conftest import Authn, bearer, start_authn, stop_authn
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.clock import ManualClock
from tests.oidc_provider import OidcTestProvider, complete_login, oidc_provider

__all__ = ["oidc_provider"]


@pytest.fixture
async def sso_authn(
    oidc_provider: OidcTestProvider, database_url: str, tmp_path: Path
) -> AsyncIterator[Authn]:
    # The provider checks real time in its ID tokens, so this server runs on a clock that starts now.
    clock = ManualClock(datetime.now(UTC))
    running = await start_authn(
        database_url,
        tmp_path,
        clock,
        authn_oidc_issuer=oidc_provider.issuer,
        authn_oidc_client_id=oidc_provider.client_id,
        authn_oidc_client_secret=oidc_provider.client_secret,
        authn_oidc_redirect_uris=(oidc_provider.redirect_uri,),
    )
    try:
        yield running
    finally:
        await stop_authn(running)


async def sso_login(
    authn: Authn, provider: OidcTestProvider, login: str
) -> tuple[tokens_pb2.CreateTokenResponse, str]:
    started = await authn.tokens.StartOidcLogin(
        tokens_pb2.StartOidcLoginRequest(redirect_uri=provider.redirect_uri)
    )
    assert started.state
    redirect = await complete_login(started.authorization_url, login)
    query = parse_qs(urlsplit(redirect).query)
    assert query["state"] == [started.state]
    response = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            oidc_code=tokens_pb2.OidcCodeGrant(code=query["code"][0], state=started.state)
        )
    )
    return response, query["code"][0]


async def test_sso_provisions_links_and_maps_again(sso_authn: Authn, oidc_provider: OidcTestProvider) -> None:
    first, _code = await sso_login(sso_authn, oidc_provider, "alice")
    user = await sso_authn.users.GetUser(
        users_pb2.GetUserRequest(user_id="me"), metadata=bearer(first.access_token)
    )
    assert user.email == oidc_provider.email_for("alice")
    assert not user.has_password
    assert first.refresh_token.startswith("keel_rt_")
    async with sso_authn.service.domain.store.transaction() as tx:
        linked = await tx.find_identity_user(oidc_provider.issuer, oidc_provider.subject_for("alice"))
    assert linked is not None
    assert linked.id == user.id

    second, _ = await sso_login(sso_authn, oidc_provider, "alice")
    assert second.subject == user.id
    other, _ = await sso_login(sso_authn, oidc_provider, "bob")
    assert other.subject != user.id


async def test_replayed_state_fails(sso_authn: Authn, oidc_provider: OidcTestProvider) -> None:
    started = await sso_authn.tokens.StartOidcLogin(
        tokens_pb2.StartOidcLoginRequest(redirect_uri=oidc_provider.redirect_uri)
    )
    redirect = await complete_login(started.authorization_url, "carol")
    code = parse_qs(urlsplit(redirect).query)["code"][0]
    grant = tokens_pb2.CreateTokenRequest(oidc_code=tokens_pb2.OidcCodeGrant(code=code, state=started.state))
    await sso_authn.tokens.CreateToken(grant)
    error = await expect_error(sso_authn.tokens.CreateToken(grant), grpc.StatusCode.UNAUTHENTICATED)
    assert reason_of(error) == "OIDC_LOGIN_UNKNOWN"


async def test_local_account_with_same_email_is_not_merged(
    sso_authn: Authn, oidc_provider: OidcTestProvider
) -> None:
    await sso_authn.create_user(oidc_provider.email_for("dave"))
    started = await sso_authn.tokens.StartOidcLogin(
        tokens_pb2.StartOidcLoginRequest(redirect_uri=oidc_provider.redirect_uri)
    )
    redirect = await complete_login(started.authorization_url, "dave")
    code = parse_qs(urlsplit(redirect).query)["code"][0]
    error = await expect_error(
        sso_authn.tokens.CreateToken(
            tokens_pb2.CreateTokenRequest(oidc_code=tokens_pb2.OidcCodeGrant(code=code, state=started.state))
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason_of(error) == "EMAIL_ALREADY_REGISTERED"


async def test_redirect_uri_must_be_allow_listed(sso_authn: Authn) -> None:
    error = await expect_error(
        sso_authn.tokens.StartOidcLogin(
            tokens_pb2.StartOidcLoginRequest(redirect_uri="https://evil.test/cb")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["redirect_uri"]
