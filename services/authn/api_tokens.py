"""gRPC servicer of keel.authn.v1.TokenService: grants in, tokens out; JWKS and introspection."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from keel.authn.v1 import tokens_pb2 as pb
from keel.authn.v1 import tokens_pb2_grpc
from services.authn.api import Context, timestamp
from services.authn.api_keys import ApiKeys, check_api_key_format
from services.authn.oidc_login import OidcLogins
from services.authn.revocations import Revocations, api_key_session
from services.authn.signing_keys import SigningKeys
from services.authn.throttling import source_address
from services.authn.tokens import IssuedTokens, TokenIssuer, check_refresh_token_format
from services.authn.users import Users, normalize_email
from services.kit.audit import looks_like_credential
from services.kit.context import current_peer, require_principal
from services.kit.errors import InvalidArgument, PermissionDenied, Unauthenticated
from services.kit.tokens import TokenVerifier

MAX_ORGANIZATION_ID_LENGTH = 64
MAX_PASSWORD_INPUT_LENGTH = 1024


def _response(issued: IssuedTokens) -> pb.CreateTokenResponse:
    return pb.CreateTokenResponse(
        access_token=issued.access_token,
        token_type="Bearer",
        access_token_expire_time=timestamp(issued.access_token_expire_time),
        refresh_token=issued.refresh_token,
        refresh_token_expire_time=timestamp(issued.refresh_token_expire_time),
        subject=issued.subject,
    )


class TokenApi(tokens_pb2_grpc.TokenServiceServicer):
    """TokenService: request → users / API keys / OIDC / token issuer → response."""

    def __init__(
        self,
        *,
        users: Users,
        api_keys: ApiKeys,
        tokens: TokenIssuer,
        signing_keys: SigningKeys,
        oidc_logins: OidcLogins,
        verifier: TokenVerifier,
        revocations: Revocations,
    ) -> None:
        self._users = users
        self._api_keys = api_keys
        self._tokens = tokens
        self._signing_keys = signing_keys
        self._oidc = oidc_logins
        # authn's own verifier: it also refuses deactivated subjects and revoked sessions.
        self._verifier = verifier
        self._revocations = revocations

    async def CreateToken(self, request: pb.CreateTokenRequest, context: Context) -> pb.CreateTokenResponse:
        organization_id = request.organization_id
        if len(organization_id) > MAX_ORGANIZATION_ID_LENGTH:
            raise InvalidArgument(
                "organization_id", f"must be at most {MAX_ORGANIZATION_ID_LENGTH} characters"
            )
        if looks_like_credential(organization_id):
            # It would go into the token and the audit log: a credential belongs in neither.
            raise InvalidArgument("organization_id", "is not an organization id")
        grant = request.WhichOneof("grant")
        if grant == "password":
            return _response(await self._password_grant(request.password, organization_id))
        if grant == "api_key":
            check_api_key_format(request.api_key.secret, "api_key.secret")
            key = await self._api_keys.authenticate(
                request.api_key.secret, token_grant=True, organization_id=organization_id
            )
            token, expire_time = await self._tokens.mint_access_token(
                key.principal_id, key.principal_kind, organization_id, session_id=api_key_session(key.id)
            )
            return _response(IssuedTokens(key.principal_id, token, expire_time))
        if grant == "refresh_token":
            check_refresh_token_format(request.refresh_token.refresh_token, "refresh_token.refresh_token")
            return _response(await self._tokens.refresh(request.refresh_token.refresh_token, organization_id))
        if grant == "oidc_code":
            user = await self._oidc.complete(request.oidc_code.code, request.oidc_code.state)
            return _response(await self._tokens.start_session(user.id, organization_id, "oidc_code"))
        raise InvalidArgument(
            "grant", "exactly one of password, api_key, refresh_token or oidc_code is required"
        )

    async def _password_grant(self, grant: pb.PasswordGrant, organization_id: str) -> IssuedTokens:
        email = normalize_email(grant.email, "password.email")
        if not grant.password:
            raise InvalidArgument("password.password", "is required")
        if len(grant.password) > MAX_PASSWORD_INPUT_LENGTH:
            raise InvalidArgument(
                "password.password", f"must be at most {MAX_PASSWORD_INPUT_LENGTH} characters"
            )
        user = await self._users.authenticate(email, grant.password, source_address(current_peer()))
        return await self._tokens.start_session(user.id, organization_id)

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        check_refresh_token_format(request.refresh_token, "refresh_token")
        await self._tokens.revoke(request.refresh_token)
        return pb.RevokeTokenResponse()

    async def IntrospectToken(
        self, request: pb.IntrospectTokenRequest, context: Context
    ) -> pb.IntrospectTokenResponse:
        if not request.token:
            raise InvalidArgument("token", "is required")
        try:
            principal = await self._verifier.verify_access_token(request.token)
        except Unauthenticated:
            return pb.IntrospectTokenResponse(active=False)
        claims = struct_pb2.Struct()
        claims.update({name: _json_value(value) for name, value in principal.claims.items()})
        return pb.IntrospectTokenResponse(active=True, claims=claims)

    async def StartOidcLogin(
        self, request: pb.StartOidcLoginRequest, context: Context
    ) -> pb.StartOidcLoginResponse:
        started = await self._oidc.start(request.redirect_uri)
        return pb.StartOidcLoginResponse(
            authorization_url=started.authorization_url,
            state=started.state,
            expire_time=timestamp(started.expire_time),
        )

    async def GetJwks(self, request: pb.GetJwksRequest, context: Context) -> pb.GetJwksResponse:
        keys = await self._signing_keys.jwks()
        return pb.GetJwksResponse(keys=[pb.JsonWebKey(**key) for key in keys])

    async def ListRevocations(
        self, request: pb.ListRevocationsRequest, context: Context
    ) -> pb.ListRevocationsResponse:
        # The rule is "authenticated"; the feed is for services: a user has no business
        # learning who was deactivated, so only service accounts read it.
        if require_principal().kind != "service_account":
            raise PermissionDenied("only service accounts may read the revocation feed")
        page = await self._revocations.list(request.after_sequence, request.page_size)
        return pb.ListRevocationsResponse(
            revocations=[
                pb.Revocation(
                    sequence=record.sequence,
                    subject_id=record.subject_id,
                    session_id=record.session_id,
                    revoke_time=timestamp(record.revoke_time),
                    expire_time=timestamp(record.expire_time),
                )
                for record in page.revocations
            ],
            last_sequence=page.last_sequence,
        )


def _json_value(value: Any) -> Any:
    # Struct holds JSON values; numbers become floats, which is what JSON clients see anyway.
    if isinstance(value, bool | str | int | float) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)
