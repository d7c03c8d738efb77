"""Identity at the edge: API keys, browser sessions, CSRF, the login routes and token-issuer discovery.

Every API request ends up carrying at most one `Authorization: Bearer <access
token>` to its backend; this module turns the other credentials into one:

- `Authorization: Bearer <jwt>` passes through untouched (services verify it).
- `Authorization: Bearer keel_ak_…` or `X-Api-Key: keel_ak_…`: exchanged at
  authn (CreateToken api_key) and cached (gateway/exchanges.py).
- The session cookie: a sealed login (gateway/sessions.py), refreshed with
  its refresh token shortly before the access token expires (the rotated
  session goes back in a new cookie). A cookie-authenticated request other
  than GET/HEAD/OPTIONS must carry the session's CSRF token in `X-CSRF-Token`
  (the JavaScript-readable CSRF cookie holds it; the sealed session holds the
  reference, so a planted CSRF cookie proves nothing).

Routes: `/auth/login` (OIDC, via authn's StartOidcLogin), `/auth/callback`,
`/auth/login/password`, `/auth/logout`, `/.well-known/jwks.json`,
`/.well-known/openid-configuration`. No token, key or cookie is ever logged.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

import grpc
from google.protobuf import json_format
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import JSON_MEDIA_TYPE, error_response, make_status, status_of_rpc_error
from gateway.exchanges import REFRESH_SHARE_SECONDS, ExchangeCache, looks_like_api_key
from gateway.sessions import Sealer, SealError, Session, session_key
from gateway.settings import GatewaySettings
from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from services.kit.clients import connect
from services.kit.clock import Clock, SystemClock
from services.kit.errors import FieldViolation
from services.kit.interceptors import FORWARDED_FOR_KEY, REQUEST_ID_KEY, valid_request_id

AUTHN_PACKAGE = "keel.authn.v1"
LOGIN_PATH = "/auth/login"
CALLBACK_PATH = "/auth/callback"
PASSWORD_LOGIN_PATH = "/auth/login/password"
LOGOUT_PATH = "/auth/logout"
JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATH = "/.well-known/openid-configuration"
CSRF_HEADER = "x-csrf-token"
API_KEY_HEADER = "x-api-key"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths whose requests this module never authenticates: the gateway's own and the login routes.
UNAUTHENTICATED_PREFIXES = ("/healthz", "/readyz", "/openapi.json", "/auth/", "/.well-known/")
# Seal purposes: a sealed login-state cookie can never be replayed as a session and vice versa.
_SESSION_PURPOSE = "keel-gateway-session-v1"
_LOGIN_PURPOSE = "keel-gateway-oidc-login-v1"
# Largest password-login body: an e-mail, a password and an organization id.
_MAX_LOGIN_BODY_BYTES = 8192
# Signing algorithms the kit's verifier accepts (services/kit/tokens.py).
SIGNING_ALGORITHMS = ("ES256", "EdDSA")

REASON_INVALID_API_KEY = "INVALID_API_KEY"
REASON_SESSION_INVALID = "SESSION_INVALID"
REASON_SESSION_EXPIRED = "SESSION_EXPIRED"
REASON_CSRF = "CSRF_TOKEN_MISMATCH"
REASON_LOGIN_STATE = "OIDC_LOGIN_STATE_MISMATCH"
REASON_LOGIN_FAILED = "OIDC_LOGIN_FAILED"


class IdentityError(Exception):
    """A request this module answers itself (401 / 403 / 400), with cookies to set or clear."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str,
        set_cookies: Sequence[str] = (),
        violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(message)
        self.status = make_status(code, message, reason=reason, violations=violations)
        self.set_cookies = list(set_cookies)


@dataclass
class Resolved:
    """What a request authenticates with after this module: the bearer token, cookies to set, its API key."""

    access_token: str
    set_cookies: list[str] = field(default_factory=list)
    api_key: str | None = field(default=None, repr=False)


def _request_id(request: Request) -> str:
    supplied = request.headers.get(REQUEST_ID_KEY, "")
    return supplied if valid_request_id(supplied) else str(uuid.uuid4())


def _json(payload: object, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code, headers, media_type=JSON_MEDIA_TYPE)


def safe_return_path(value: str) -> str:
    """A same-site path to go back to after a login; anything else (another host, `//x`) is `/`."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


class Cookies:
    """Names and Set-Cookie values of the session, CSRF and login-state cookies."""

    def __init__(self, secure: bool) -> None:
        self.secure = secure
        # __Host- (RFC 6265bis): the browser keeps it only if Secure, Path=/ and no Domain, so a
        # sibling subdomain cannot plant or shadow it. Without Secure (localhost) the plain names.
        prefix = "__Host-" if secure else ""
        self.session = f"{prefix}keel_session"
        self.csrf = f"{prefix}keel_csrf"
        self.login = f"{prefix}keel_oidc_login"

    def set(
        self, name: str, value: str, *, max_age: int, http_only: bool = True, same_site: str = "lax"
    ) -> str:
        """A Set-Cookie header value."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[name] = value
        morsel = cookie[name]
        morsel["path"] = "/"
        morsel["max-age"] = str(max(max_age, 0))
        morsel["samesite"] = same_site
        morsel["httponly"] = http_only
        morsel["secure"] = self.secure
        return morsel.OutputString()

    def clear(self, name: str) -> str:
        """A Set-Cookie header value that deletes the cookie."""
        return self.set(name, "", max_age=0)

    def clear_session(self) -> list[str]:
        return [self.clear(self.session), self.clear(self.csrf)]


class EdgeIdentity:
    """Credential resolution for API requests and the login / discovery routes."""

    def __init__(self, settings: GatewaySettings, *, clock: Clock | None = None) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        public_url = settings.gateway_public_url.rstrip("/")
        if public_url and (
            urlsplit(public_url).scheme not in ("http", "https") or not urlsplit(public_url).netloc
        ):
            raise ValueError("KEEL_GATEWAY_PUBLIC_URL must be an http(s) URL")
        self._public_url = public_url
        self._sealer_made: Sealer | None = None
        self.cookies = Cookies(settings.gateway_session_cookie_secure)
        self._channel = connect(settings.backend_addresses()[AUTHN_PACKAGE])
        self._tokens = tokens_pb2_grpc.TokenServiceStub(self._channel)
        self.api_keys: ExchangeCache[tokens_pb2.CreateTokenResponse] = ExchangeCache(
            self._exchange_api_key,
            lambda issued: issued.access_token_expire_time.ToDatetime(tzinfo=self._clock.now().tzinfo),
            self._clock,
            max_age_seconds=settings.gateway_api_key_cache_seconds,
        )
        self._refreshes: ExchangeCache[tokens_pb2.CreateTokenResponse] = ExchangeCache(
            self._refresh,
            lambda issued: issued.access_token_expire_time.ToDatetime(tzinfo=self._clock.now().tzinfo),
            self._clock,
            max_age_seconds=REFRESH_SHARE_SECONDS,
        )

    @property
    def _sealer(self) -> Sealer:
        # Loaded (or generated) on first use: a gateway nobody logs in to writes no key file.
        if self._sealer_made is None:
            self._sealer_made = Sealer(
                session_key(self._settings.gateway_session_key_file, self._settings.data_dir)
            )
        return self._sealer_made

    async def close(self) -> None:
        """Closes the channel to authn."""
        await self._channel.close(None)

    # ---- calls to authn -------------------------------------------------------------------------

    def _call_metadata(self, request: Request | None = None) -> list[tuple[str, str]]:
        metadata = [(REQUEST_ID_KEY, _request_id(request) if request is not None else str(uuid.uuid4()))]
        if request is not None and request.client is not None:
            # authn throttles password logins per source address: give it the browser's.
            metadata.append((FORWARDED_FOR_KEY, request.client.host))
        return metadata

    async def _create_token(
        self, grant: tokens_pb2.CreateTokenRequest, request: Request | None = None
    ) -> tokens_pb2.CreateTokenResponse:
        timeout = self._settings.gateway_backend_timeout_seconds
        response: tokens_pb2.CreateTokenResponse = await self._tokens.CreateToken(
            grant, metadata=self._call_metadata(request), timeout=timeout
        )
        return response

    async def _exchange_api_key(self, api_key: str) -> tokens_pb2.CreateTokenResponse:
        return await self._create_token(
            tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=api_key))
        )

    async def _refresh(self, refresh_token: str) -> tokens_pb2.CreateTokenResponse:
        return await self._create_token(
            tokens_pb2.CreateTokenRequest(
                refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=refresh_token)
            )
        )

    def _expire_time(self, issued: tokens_pb2.CreateTokenResponse, which: str) -> datetime:
        stamp = getattr(issued, which)
        expire: datetime = stamp.ToDatetime(tzinfo=self._clock.now().tzinfo)
        return expire

    # ---- API requests ---------------------------------------------------------------------------

    async def resolve(self, request: Request) -> Resolved | None:
        """The bearer token the request goes on with; None to leave its headers as they are."""
        authorization = request.headers.get("authorization", "")
        if authorization[:7].lower() == "bearer ":
            credential = authorization[7:].strip()
            return await self._from_api_key(credential) if looks_like_api_key(credential) else None
        api_key = request.headers.get(API_KEY_HEADER)
        if api_key is not None:
            if not looks_like_api_key(api_key.strip()):
                raise IdentityError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "X-Api-Key does not hold a Keel API key",
                    reason=REASON_INVALID_API_KEY,
                )
            return await self._from_api_key(api_key.strip())
        if authorization:
            return None  # another scheme: it is not passed on, and the backend answers for itself
        sealed = request.cookies.get(self.cookies.session)
        if sealed is None:
            return None
        return await self._from_session(request, sealed)

    async def _from_api_key(self, api_key: str) -> Resolved:
        try:
            issued = await self.api_keys.get(api_key)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise IdentityError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the API key is invalid, expired or revoked",
                    reason=REASON_INVALID_API_KEY,
                ) from None
            raise
        return Resolved(issued.access_token, api_key=api_key)

    def open_session(self, sealed: str) -> Session:
        """The session a cookie holds; IdentityError (clearing the cookies) when it is not one of ours."""
        try:
            return Session.from_payload(self._sealer.open(sealed, _SESSION_PURPOSE))
        except (SealError, ValueError):
            raise IdentityError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the session cookie is invalid; sign in again",
                reason=REASON_SESSION_INVALID,
                set_cookies=self.cookies.clear_session(),
            ) from None

    async def _from_session(self, request: Request, sealed: str) -> Resolved:
        session = self.open_session(sealed)
        now = self._clock.now()
        if session.refresh_expire_time <= now:
            raise IdentityError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the session has expired; sign in again",
                reason=REASON_SESSION_EXPIRED,
                set_cookies=self.cookies.clear_session(),
            )
        set_cookies: list[str] = []
        margin = self._settings.gateway_session_refresh_margin_seconds
        if (session.access_expire_time - now).total_seconds() <= margin:
            session = await self._refreshed(session)
            set_cookies = self.session_cookies(session)
        if request.method not in SAFE_METHODS:
            supplied = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(supplied.encode(), session.csrf_token.encode()):
                raise IdentityError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"a cookie-authenticated {request.method} needs the session's CSRF token in X-CSRF-Token",
                    reason=REASON_CSRF,
                    set_cookies=set_cookies,
                )
        return Resolved(session.access_token, set_cookies)

    async def _refreshed(self, session: Session) -> Session:
        try:
            issued = await self._refreshes.get(session.refresh_token)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise IdentityError(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "the session has ended; sign in again",
                    reason=REASON_SESSION_EXPIRED,
                    set_cookies=self.cookies.clear_session(),
                ) from None
            raise
        return session.refreshed(
            issued.access_token,
            self._expire_time(issued, "access_token_expire_time"),
            issued.refresh_token,
            self._expire_time(issued, "refresh_token_expire_time"),
        )

    def session_cookies(self, session: Session) -> list[str]:
        """Set-Cookie values of a session: the sealed session (HttpOnly) and its CSRF token (readable)."""
        max_age = int((session.refresh_expire_time - self._clock.now()).total_seconds())
        return [
            self.cookies.set(
                self.cookies.session,
                self._sealer.seal(session.to_payload(), _SESSION_PURPOSE),
                max_age=max_age,
            ),
            self.cookies.set(self.cookies.csrf, session.csrf_token, max_age=max_age, http_only=False),
        ]

    def _new_session(self, issued: tokens_pb2.CreateTokenResponse) -> Session:
        return Session.new(
            issued.access_token,
            self._expire_time(issued, "access_token_expire_time"),
            issued.refresh_token,
            self._expire_time(issued, "refresh_token_expire_time"),
            issued.subject,
        )

    # ---- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[Route]:
        """The login, logout and discovery routes."""
        return [
            Route(LOGIN_PATH, self._answering(self.login), methods=["GET"]),
            Route(CALLBACK_PATH, self._answering(self.callback), methods=["GET"]),
            Route(PASSWORD_LOGIN_PATH, self._answering(self.password_login), methods=["POST"]),
            Route(LOGOUT_PATH, self._answering(self.logout), methods=["POST"]),
            Route(JWKS_PATH, self._answering(self.jwks), methods=["GET"]),
            Route(DISCOVERY_PATH, self._answering(self.discovery), methods=["GET"]),
        ]

    def _answering(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler with errors rendered in the gateway's error shape (never a token in the log)."""

        async def endpoint(request: Request) -> Response:
            request_id = _request_id(request)
            try:
                response = await handler(request)
            except IdentityError as error:
                return identity_error_response(error, request_id)
            except grpc.aio.AioRpcError as error:
                status = status_of_rpc_error(error)
                return error_response(status, request_id=request_id)
            response.headers["x-request-id"] = request_id
            response.headers["cache-control"] = response.headers.get("cache-control", "no-store")
            return response

        return endpoint

    def _base_url(self, request: Request) -> str:
        return self._public_url or str(request.base_url).rstrip("/")

    async def login(self, request: Request) -> Response:
        """Starts a single-sign-on login at authn and sends the browser to the provider."""
        redirect_uri = self._base_url(request) + CALLBACK_PATH
        started = await self._tokens.StartOidcLogin(
            tokens_pb2.StartOidcLoginRequest(redirect_uri=redirect_uri),
            metadata=self._call_metadata(request),
            timeout=self._settings.gateway_backend_timeout_seconds,
        )
        return_to = safe_return_path(request.query_params.get("return_to", "/"))
        max_age = int(
            (
                started.expire_time.ToDatetime(tzinfo=self._clock.now().tzinfo) - self._clock.now()
            ).total_seconds()
        )
        # The state is bound to this browser: a callback with another browser's state (login CSRF) fails.
        sealed = self._sealer.seal({"state": started.state, "return_to": return_to}, _LOGIN_PURPOSE)
        response = RedirectResponse(started.authorization_url, status_code=303)
        response.headers.append("set-cookie", self.cookies.set(self.cookies.login, sealed, max_age=max_age))
        return response

    async def callback(self, request: Request) -> Response:
        """Completes the code flow at authn, sets the session cookies and goes back where the login began."""
        clear_login = [self.cookies.clear(self.cookies.login)]
        sealed = request.cookies.get(self.cookies.login, "")
        try:
            login = self._sealer.open(sealed, _LOGIN_PURPOSE) if sealed else {}
        except SealError:
            login = {}
        state = request.query_params.get("state", "")
        expected = login.get("state")
        if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), state.encode()):
            raise IdentityError(
                grpc.StatusCode.UNAUTHENTICATED,
                "this login was not started by this browser; start again",
                reason=REASON_LOGIN_STATE,
                set_cookies=clear_login,
            )
        if "error" in request.query_params or not request.query_params.get("code"):
            raise IdentityError(
                grpc.StatusCode.UNAUTHENTICATED,
                "the identity provider did not sign the user in",
                reason=REASON_LOGIN_FAILED,
                set_cookies=clear_login,
            )
        try:
            issued = await self._create_token(
                tokens_pb2.CreateTokenRequest(
                    oidc_code=tokens_pb2.OidcCodeGrant(code=request.query_params["code"], state=state)
                ),
                request,
            )
        except grpc.aio.AioRpcError as error:
            status = status_of_rpc_error(error)
            response = error_response(status, request_id=_request_id(request))
            response.headers.append("set-cookie", clear_login[0])
            return response
        return_to = login.get("return_to")
        response = RedirectResponse(return_to if isinstance(return_to, str) else "/", status_code=303)
        for cookie in [*clear_login, *self.session_cookies(self._new_session(issued))]:
            response.headers.append("set-cookie", cookie)
        return response

    async def password_login(self, request: Request) -> Response:
        """Local password login (the embedded mode): JSON {email, password[, organizationId]} → a session."""
        # JSON only: a cross-site form cannot send it without a CORS preflight, so no login CSRF.
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != JSON_MEDIA_TYPE:
            raise _bad_login("body", "must be application/json")
        body = await request.body()
        if len(body) > _MAX_LOGIN_BODY_BYTES:
            raise _bad_login("body", f"must be at most {_MAX_LOGIN_BODY_BYTES} bytes")
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise _bad_login("body", "must be a JSON object with email and password") from None
        if not isinstance(fields, dict):
            raise _bad_login("body", "must be a JSON object with email and password")
        unknown = sorted(set(fields) - {"email", "password", "organizationId", "organization_id"})
        if unknown:
            raise _bad_login(unknown[0], "is not a field of a password login")
        values: dict[str, str] = {}
        for name, key in (
            ("email", "email"),
            ("password", "password"),
            ("organization_id", "organizationId"),
        ):
            value = fields.get(key, fields.get(name, ""))
            if not isinstance(value, str):
                raise _bad_login(name, "must be a string")
            values[name] = value
        grant = tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email=values["email"], password=values["password"]),
            organization_id=values["organization_id"],
        )
        issued = await self._create_token(grant, request)
        session = self._new_session(issued)
        response = _json({"subject": session.subject, "csrfToken": session.csrf_token})
        for cookie in self.session_cookies(session):
            response.headers.append("set-cookie", cookie)
        return response

    async def logout(self, request: Request) -> Response:
        """Revokes the session's refresh-token family at authn and clears the cookies."""
        sealed = request.cookies.get(self.cookies.session)
        response = Response(status_code=204)
        if sealed is not None:
            session = self.open_session(sealed)
            if not hmac.compare_digest(
                request.headers.get(CSRF_HEADER, "").encode(), session.csrf_token.encode()
            ):
                raise IdentityError(
                    grpc.StatusCode.PERMISSION_DENIED,
                    "logout needs the session's CSRF token in X-CSRF-Token",
                    reason=REASON_CSRF,
                )
            try:
                await self._tokens.RevokeToken(
                    tokens_pb2.RevokeTokenRequest(refresh_token=session.refresh_token),
                    metadata=self._call_metadata(request),
                    timeout=self._settings.gateway_backend_timeout_seconds,
                )
            except grpc.aio.AioRpcError as error:
                # A refresh token that is already spent or unknown means the session is over anyway.
                if error.code() not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                    raise
        for cookie in self.cookies.clear_session():
            response.headers.append("set-cookie", cookie)
        return response

    async def jwks(self, request: Request) -> Response:
        """authn's public signing keys as an RFC 7517 JWK Set."""
        answer = await self._tokens.GetJwks(
            tokens_pb2.GetJwksRequest(),
            metadata=self._call_metadata(request),
            timeout=self._settings.gateway_backend_timeout_seconds,
        )
        keys = [
            {
                name: value
                for name, value in json_format.MessageToDict(key, preserving_proto_field_name=True).items()
                if value
            }
            for key in answer.keys
        ]
        # Verifiers refetch on an unknown kid, so a minute of caching never hides a new key for long.
        return _json({"keys": keys}, headers={"cache-control": "public, max-age=60"})

    async def discovery(self, request: Request) -> Response:
        """OpenID-configuration-style metadata of the API's token issuer."""
        base = self._base_url(request)
        return _json(
            {
                "issuer": self._settings.token_issuer,
                "jwks_uri": base + JWKS_PATH,
                "authorization_endpoint": base + LOGIN_PATH,
                "token_endpoint": base + "/v1/tokens",
                "revocation_endpoint": base + "/v1/tokens:revoke",
                "introspection_endpoint": base + "/v1/tokens:introspect",
                "end_session_endpoint": base + LOGOUT_PATH,
                "grant_types_supported": ["password", "refresh_token", "authorization_code", "api_key"],
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "token_endpoint_auth_methods_supported": ["none"],
                "id_token_signing_alg_values_supported": list(SIGNING_ALGORITHMS),
                "access_token_audience": self._settings.token_audience,
            },
            headers={"cache-control": "public, max-age=300"},
        )

    def middleware(self) -> Middleware:
        """The ASGI middleware that resolves each API request's credentials."""
        return Middleware(IdentityMiddleware, identity=self)


def _bad_login(field_name: str, description: str) -> IdentityError:
    return IdentityError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"invalid request: {field_name}: {description}",
        reason="INVALID_ARGUMENT",
        violations=[FieldViolation(field_name, description)],
    )


def identity_error_response(error: IdentityError, request_id: str) -> Response:
    """The error response, with WWW-Authenticate on a 401 and the error's cookies."""
    response = error_response(error.status, request_id=request_id, token_presented=True)
    for cookie in error.set_cookies:
        response.headers.append("set-cookie", cookie)
    return response


class IdentityMiddleware:
    """Pure ASGI (streams pass unbuffered): rewrites an API request's credentials to a bearer token."""

    def __init__(self, app: ASGIApp, identity: EdgeIdentity) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNAUTHENTICATED_PREFIXES):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        try:
            resolved = await self.identity.resolve(request)
        except IdentityError as error:
            await identity_error_response(error, _request_id(request))(scope, receive, send)
            return
        except grpc.aio.AioRpcError as error:
            # authn unreachable or failing: its status, never its details, in the usual shape.
            await error_response(status_of_rpc_error(error), request_id=_request_id(request))(
                scope, receive, send
            )
            return
        if resolved is None:
            await self.app(scope, receive, send)
            return
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"authorization", API_KEY_HEADER.encode())
        ]
        headers.append((b"authorization", f"Bearer {resolved.access_token}".encode()))
        identity = self.identity

        async def send_with_cookies(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for cookie in resolved.set_cookies:
                    response_headers.append("set-cookie", cookie)
                if message["status"] == 401 and resolved.api_key is not None:
                    identity.api_keys.forget(resolved.api_key)
            await send(message)

        await self.app({**scope, "headers": headers}, receive, send_with_cookies)
