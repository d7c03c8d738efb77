"""Identity at the edge, end to end: a real authn, the real OpenID provider, the gateway on 127.0.0.1.

The browser is an httpx client with a cookie jar; the provider's pages are
driven by tests/oidc_provider.py's `complete_login`. authn and the gateway
share one ManualClock, so "the access token expired" is a clock move.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format

from gateway.app import create_app
from gateway.backends import Backends
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from keel.authn.v1 import api_keys_pb2, tokens_pb2
from tests.authn.conftest import ADMIN_EMAIL, Authn, start_authn, stop_authn
from tests.clock import ManualClock
from tests.oidc_provider import OidcTestProvider, complete_login, running_oidc_provider

AUTHN_PACKAGE = "keel.authn.v1"
SESSION_COOKIE = "keel_session"
CSRF_COOKIE = "keel_csrf"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway_port() -> int:
    """The SSO gateway's port, fixed per module: the provider must know the callback URL up front."""
    return _free_port()


@pytest.fixture(scope="module")
def sso_provider(gateway_port: int) -> Iterator[OidcTestProvider]:
    callback = f"http://127.0.0.1:{gateway_port}/auth/callback"
    with running_oidc_provider(redirect_uris=[callback]) as provider:
        yield provider


@dataclass
class Edge:
    """authn, the gateway in front of it, and a browser (an httpx client with a cookie jar)."""

    authn: Authn
    clock: ManualClock
    browser: httpx.AsyncClient


async def _start_edge(
    tmp_path: Path, clock: ManualClock, *, port: int = 0, authn: dict[str, Any] | None = None, **gateway: Any
) -> AsyncIterator[Edge]:
    running = await start_authn(
        f"sqlite+aiosqlite:///{tmp_path / 'authn.db'}", tmp_path, clock, **(authn or {})
    )
    address = f"127.0.0.1:{running.service.port}"
    settings = GatewaySettings(
        authn_address=address,
        data_dir=tmp_path / "gateway",
        gateway_session_cookie_secure=False,
        **gateway,
    )
    app = create_app(settings, backends=Backends({AUTHN_PACKAGE: address}), clock=clock)
    server = GatewayServer(app, "127.0.0.1", port)
    bound = await server.start()
    browser = httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound}", timeout=30)
    try:
        yield Edge(running, clock, browser)
    finally:
        await browser.aclose()
        await server.stop()
        await stop_authn(running)


@pytest.fixture
async def edge(tmp_path: Path) -> AsyncIterator[Edge]:
    """The gateway in front of authn with a platform admin (password login, API keys)."""
    async for running in _start_edge(tmp_path, ManualClock()):
        yield running


@pytest.fixture
async def sso_edge(tmp_path: Path, gateway_port: int, sso_provider: OidcTestProvider) -> AsyncIterator[Edge]:
    """As `edge`, with single sign-on at the real provider; on real time (the provider checks it)."""
    callback = f"http://127.0.0.1:{gateway_port}/auth/callback"
    sso = {
        "authn_oidc_issuer": sso_provider.issuer,
        "authn_oidc_client_id": sso_provider.client_id,
        "authn_oidc_client_secret": sso_provider.client_secret,
        "authn_oidc_redirect_uris": (callback,),
    }
    async for running in _start_edge(tmp_path, ManualClock(datetime.now(UTC)), port=gateway_port, authn=sso):
        yield running


def _reason(response: httpx.Response) -> str:
    details = response.json()["error"]["details"]
    return str(next(d["reason"] for d in details if d["@type"].endswith("ErrorInfo")))


def _set_cookies(response: httpx.Response) -> dict[str, str]:
    """Name → the whole Set-Cookie value, for the attributes."""
    return {value.split("=", 1)[0]: value for value in response.headers.get_list("set-cookie")}


async def _password_login(
    edge: Edge, email: str = ADMIN_EMAIL, password: str | None = None
) -> httpx.Response:
    body = {"email": email, "password": edge.authn.admin_password if password is None else password}
    return await edge.browser.post("/auth/login/password", json=body)


async def _get_with_session(edge: Edge, sealed: str, path: str = "/v1/users/me") -> httpx.Response:
    """A GET from another client (no cookie jar) presenting `sealed` as its session cookie."""
    async with httpx.AsyncClient(base_url=edge.browser.base_url, timeout=30) as other:
        return await other.get(path, headers={"Cookie": f"{SESSION_COOKIE}={sealed}"})


def _csrf(edge: Edge) -> dict[str, str]:
    return {"X-CSRF-Token": edge.browser.cookies[CSRF_COOKIE]}


async def test_browser_login_at_the_provider_then_csrf_refresh_and_logout(
    sso_edge: Edge, sso_provider: OidcTestProvider
) -> None:
    browser = sso_edge.browser
    started = await browser.get("/auth/login", params={"return_to": "/dashboard/runs"})
    assert started.status_code == 303
    assert started.headers["location"].startswith(sso_provider.issuer)
    assert "HttpOnly" in _set_cookies(started)["keel_oidc_login"]

    back = await complete_login(started.headers["location"], "erin")
    done = await browser.get(back)
    assert done.status_code == 303, done.text
    assert done.headers["location"] == "/dashboard/runs"
    cookies = _set_cookies(done)
    session_cookie, csrf_cookie = cookies[SESSION_COOKIE], cookies[CSRF_COOKIE]
    assert "HttpOnly" in session_cookie
    assert "SameSite=lax" in session_cookie
    assert "HttpOnly" not in csrf_cookie  # the dashboard's script reads it
    assert "Secure" not in session_cookie  # turned off for http://127.0.0.1 in this test
    sealed = browser.cookies[SESSION_COOKIE]
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    assert b"keel_rt_" not in raw  # sealed: no token or field name in clear
    assert b'"at"' not in raw

    me = await browser.get("/v1/users/me")
    assert me.status_code == 200, me.text
    assert me.json()["email"] == sso_provider.email_for("erin")

    rename = {"displayName": "Erin E."}
    refused = await browser.patch("/v1/users/me", json=rename)
    assert refused.status_code == 403
    assert _reason(refused) == "CSRF_TOKEN_MISMATCH"
    forged = await browser.patch("/v1/users/me", json=rename, headers={"X-CSRF-Token": "forged"})
    assert forged.status_code == 403
    renamed = await browser.patch("/v1/users/me", json=rename, headers=_csrf(sso_edge))
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["displayName"] == "Erin E."

    # Past the access token's 15 minutes: the gateway refreshes and rotates the cookie.
    sso_edge.clock.advance(minutes=16)
    refreshed = await browser.get("/v1/users/me")
    assert refreshed.status_code == 200, refreshed.text
    assert SESSION_COOKIE in _set_cookies(refreshed)
    assert browser.cookies[SESSION_COOKIE] != sealed
    assert browser.cookies[CSRF_COOKIE] == csrf_cookie.split(";")[0].split("=", 1)[1]

    current = browser.cookies[SESSION_COOKIE]
    logout = await browser.post("/auth/logout", headers=_csrf(sso_edge))
    assert logout.status_code == 204
    assert SESSION_COOKIE not in browser.cookies
    # The cookie a thief kept from before the logout no longer works: authn ended its session.
    replayed = await _get_with_session(sso_edge, current)
    assert replayed.status_code == 401
    assert replayed.headers["www-authenticate"].startswith('Bearer realm="keel"')


async def test_callback_refuses_a_state_this_browser_did_not_start(sso_edge: Edge) -> None:
    answer = await sso_edge.browser.get("/auth/callback", params={"code": "c", "state": "someone-elses"})
    assert answer.status_code == 401
    assert _reason(answer) == "OIDC_LOGIN_STATE_MISMATCH"
    assert SESSION_COOKIE not in sso_edge.browser.cookies


async def test_password_login_sets_a_session(edge: Edge) -> None:
    wrong = await _password_login(edge, password="not the password")
    assert wrong.status_code == 401
    assert SESSION_COOKIE not in edge.browser.cookies
    bad = await edge.browser.post("/auth/login/password", json={"email": ADMIN_EMAIL, "pasword": "x"})
    assert bad.status_code == 400
    assert bad.json()["error"]["details"][1]["fieldViolations"][0]["field"] == "pasword"
    form = await edge.browser.post("/auth/login/password", data={"email": ADMIN_EMAIL, "password": "x"})
    assert form.status_code == 400  # JSON only: a cross-site form cannot log a victim in

    login = await _password_login(edge)
    assert login.status_code == 200, login.text
    assert login.json() == {"subject": edge.authn.admin_id, "csrfToken": edge.browser.cookies[CSRF_COOKIE]}
    me = await edge.browser.get("/v1/users/me")
    assert me.status_code == 200
    assert me.json()["email"] == ADMIN_EMAIL


async def test_concurrent_requests_share_one_refresh(edge: Edge) -> None:
    assert (await _password_login(edge)).status_code == 200
    stale = edge.browser.cookies[SESSION_COOKIE]
    edge.clock.advance(minutes=16)
    # A burst carrying one expired session: one refresh, or rotation would see a reuse and end the family.
    answers = await asyncio.gather(*(_get_with_session(edge, stale) for _ in range(5)))
    assert [answer.status_code for answer in answers] == [200] * 5
    edge.browser.cookies.set(SESSION_COOKIE, answers[0].cookies[SESSION_COOKIE])
    assert (await edge.browser.get("/v1/users/me")).status_code == 200


async def test_tampered_or_expired_session_is_refused(edge: Edge) -> None:
    assert (await _password_login(edge)).status_code == 200
    sealed = edge.browser.cookies[SESSION_COOKIE]
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    tampered = await _get_with_session(edge, flipped)
    assert tampered.status_code == 401
    assert _reason(tampered) == "SESSION_INVALID"
    assert 'error="invalid_token"' in tampered.headers["www-authenticate"]
    assert "Max-Age=0" in _set_cookies(tampered)[SESSION_COOKIE]

    edge.clock.advance(days=31)  # past the refresh token's 30 days
    expired = await _get_with_session(edge, sealed)
    assert expired.status_code == 401
    assert _reason(expired) == "SESSION_EXPIRED"


async def test_api_keys_are_exchanged_and_a_revoked_key_is_refused(edge: Edge) -> None:
    created = await edge.authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="ci")),
        metadata=edge.authn.admin,
    )
    key = created.secret
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-Api-Key": key}):
        me = await edge.browser.get("/v1/users/me", headers=headers)
        assert me.status_code == 200, me.text
        assert me.json()["id"] == edge.authn.admin_id

    not_a_key = await edge.browser.get("/v1/users/me", headers={"X-Api-Key": "hunter2"})
    assert not_a_key.status_code == 401
    unknown = await edge.browser.get("/v1/users/me", headers={"X-Api-Key": key[:-4] + "AAAA"})
    assert unknown.status_code == 401
    assert _reason(unknown) == "INVALID_API_KEY"

    revoked = await edge.browser.post(
        f"/v1/principals/me/apiKeys/{created.api_key.id}:revoke",
        json={},
        headers={"Authorization": f"Bearer {edge.authn.admin_token}"},
    )
    assert revoked.status_code == 200, revoked.text
    # The cached token is refused by authn at once (its session ended with the key), which drops the
    # cache entry; from then on the exchange itself fails.
    first = await edge.browser.get("/v1/users/me", headers={"X-Api-Key": key})
    assert first.status_code == 401
    second = await edge.browser.get("/v1/users/me", headers={"X-Api-Key": key})
    assert second.status_code == 401
    assert _reason(second) == "INVALID_API_KEY"


async def test_jwks_and_discovery_describe_authns_keys_and_issuer(edge: Edge) -> None:
    jwks = await edge.browser.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    expected = await edge.authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    assert expected.keys
    assert jwks.json()["keys"] == [
        {k: v for k, v in json_format.MessageToDict(key, preserving_proto_field_name=True).items() if v}
        for key in expected.keys
    ]
    assert all(key["kty"] == "EC" and key["crv"] == "P-256" for key in jwks.json()["keys"])

    discovery = await edge.browser.get("/.well-known/openid-configuration")
    assert discovery.status_code == 200
    document = discovery.json()
    assert document["issuer"] == edge.authn.service.domain.settings.token_issuer
    assert document["jwks_uri"] == str(edge.browser.base_url).rstrip("/") + "/.well-known/jwks.json"
    assert document["token_endpoint"].endswith("/v1/tokens")
