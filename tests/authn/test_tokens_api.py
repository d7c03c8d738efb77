"""TokenService through a real authn server: grants, refresh rotation and reuse, revocation, JWKS."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from pathlib import Path

import grpc
import jwt

from keel.authn.v1 import signing_keys_pb2, tokens_pb2, users_pb2
from services.authn.server import build_domain
from services.kit.config import ServiceSettings
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from tests.authn.conftest import Authn, bearer, start_authn, stop_authn
from tests.authn.helpers import bad_fields, expect_error, reason_of
from tests.clock import ManualClock

PASSWORD = "correct horse battery"


def refresh_request(token: str) -> tokens_pb2.CreateTokenRequest:
    return tokens_pb2.CreateTokenRequest(refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=token))


async def me(authn: Authn, token: str) -> users_pb2.User:
    return await authn.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=bearer(token))


async def test_password_login_and_refresh_rotation(authn: Authn) -> None:
    user = await authn.create_user("ada@example.test")
    first = await authn.login("Ada@Example.test", PASSWORD)
    assert first.subject == user.id
    assert first.token_type == "Bearer"
    assert first.refresh_token.startswith("keel_rt_")
    assert (await me(authn, first.access_token)).id == user.id

    second = await authn.tokens.CreateToken(refresh_request(first.refresh_token))
    assert second.subject == user.id
    assert second.refresh_token not in ("", first.refresh_token)
    assert (await me(authn, second.access_token)).email == "ada@example.test"
    # The next token of the family keeps working.
    third = await authn.tokens.CreateToken(refresh_request(second.refresh_token))
    assert third.refresh_token != second.refresh_token


async def test_refresh_token_reuse_revokes_family(authn: Authn) -> None:
    await authn.create_user("bob@example.test")
    login = await authn.login("bob@example.test", PASSWORD)
    rotated = await authn.tokens.CreateToken(refresh_request(login.refresh_token))

    error = await expect_error(
        authn.tokens.CreateToken(refresh_request(login.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert reason_of(error) == "REFRESH_TOKEN_REUSED"
    # The legitimate holder's newer token died with the family ...
    await expect_error(
        authn.tokens.CreateToken(refresh_request(rotated.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )
    # ... and so did the session's access token, at authn at least.
    await expect_error(me(authn, rotated.access_token), grpc.StatusCode.UNAUTHENTICATED)
    # Another login of the same user is a different family and unaffected.
    other = await authn.login("bob@example.test", PASSWORD)
    await authn.tokens.CreateToken(refresh_request(other.refresh_token))


async def test_revoke_token_logs_out_family(authn: Authn) -> None:
    await authn.create_user("carl@example.test")
    login = await authn.login("carl@example.test", PASSWORD)
    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=login.refresh_token))
    error = await expect_error(
        authn.tokens.CreateToken(refresh_request(login.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )
    assert reason_of(error) == "INVALID_REFRESH_TOKEN"
    introspected = await authn.tokens.IntrospectToken(
        tokens_pb2.IntrospectTokenRequest(token=login.access_token), metadata=authn.admin
    )
    assert not introspected.active


async def test_expired_refresh_token_is_refused(authn: Authn) -> None:
    await authn.create_user("dora@example.test")
    login = await authn.login("dora@example.test", PASSWORD)
    authn.clock.advance(days=31)
    await expect_error(
        authn.tokens.CreateToken(refresh_request(login.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )


async def test_access_token_claims_and_kit_verifier(authn: Authn) -> None:
    user = await authn.create_user("eve@example.test")
    request = tokens_pb2.CreateTokenRequest(
        password=tokens_pb2.PasswordGrant(email="eve@example.test", password=PASSWORD),
        organization_id="org-1",
    )
    response = await authn.tokens.CreateToken(request)
    header = jwt.get_unverified_header(response.access_token)
    assert header["alg"] == "ES256"
    assert header["typ"] == "at+jwt"
    assert header["kid"]
    # A verifier configured like any other service, fetching the JWKS over gRPC.
    defaults = ServiceSettings()
    verifier = TokenVerifier(
        JwksCache(jwks_from_authn(authn.channel), clock=authn.clock),
        issuer=defaults.token_issuer,
        audience=defaults.token_audience,
        clock=authn.clock,
    )
    principal = await verifier.verify_access_token(response.access_token)
    assert principal.subject == user.id
    assert principal.kind == "user"
    assert principal.organization_id == "org-1"
    for claim in ("iss", "sub", "aud", "exp", "iat", "nbf", "jti", "typ", "org"):
        assert claim in principal.claims
    assert principal.claims["exp"] - principal.claims["iat"] == 900

    introspected = await authn.tokens.IntrospectToken(
        tokens_pb2.IntrospectTokenRequest(token=response.access_token), metadata=authn.admin
    )
    assert introspected.active
    assert introspected.claims["sub"] == user.id


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _segment(value: dict[str, object]) -> str:
    return _b64(json.dumps(value).encode())


async def test_forged_and_misused_tokens_are_rejected(authn: Authn) -> None:
    user = await authn.create_user("fay@example.test")
    login = await authn.login("fay@example.test", PASSWORD)
    good = login.access_token
    header_segment, payload_segment, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload_segment + "=="))
    header = json.loads(base64.urlsafe_b64decode(header_segment + "=="))

    # Tampered payload (another subject) with the original signature.
    tampered = ".".join([header_segment, _segment({**claims, "sub": authn.admin_id}), signature])
    # alg none.
    none_token = ".".join([_segment({**header, "alg": "none"}), payload_segment, ""])
    # HS256 with the public key as the HMAC secret (key confusion).
    jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    public_x = next(k.x for k in jwks.keys if k.kid == header["kid"])
    hs_header = _segment({**header, "alg": "HS256"})
    signing_input = f"{hs_header}.{payload_segment}".encode()
    hs_signature = _b64(hmac.new(public_x.encode(), signing_input, hashlib.sha256).digest())
    confused = f"{hs_header}.{payload_segment}.{hs_signature}"
    # Properly signed with authn's own key, but for another audience.
    signer = await authn.service.domain.signing_keys.signer()
    wrong_audience = jwt.encode(
        {**claims, "aud": "somebody-else"}, signer.private_key, algorithm=signer.algorithm, headers=header
    )
    # Properly signed but without the access-token typ header.
    wrong_typ = jwt.encode(
        claims, signer.private_key, algorithm=signer.algorithm, headers={"kid": signer.kid}
    )
    # A refresh token where an access token is expected.
    refresh_as_bearer = login.refresh_token
    garbage = secrets.token_urlsafe(40)

    assert (await me(authn, good)).id == user.id
    for token in (tampered, none_token, confused, wrong_audience, wrong_typ, refresh_as_bearer, garbage):
        await expect_error(me(authn, token), grpc.StatusCode.UNAUTHENTICATED)
        introspected = await authn.tokens.IntrospectToken(
            tokens_pb2.IntrospectTokenRequest(token=token), metadata=authn.admin
        )
        assert not introspected.active


async def test_expired_access_token_is_rejected(authn: Authn) -> None:
    await authn.create_user("gus@example.test")
    login = await authn.login("gus@example.test", PASSWORD)
    authn.clock.advance(seconds=900 + 61)
    await expect_error(me(authn, login.access_token), grpc.StatusCode.UNAUTHENTICATED)


async def test_malformed_create_token_names_the_field(authn: Authn) -> None:
    cases = [
        (tokens_pb2.CreateTokenRequest(), "grant"),
        (
            tokens_pb2.CreateTokenRequest(password=tokens_pb2.PasswordGrant(password="x" * 12)),
            "password.email",
        ),
        (
            tokens_pb2.CreateTokenRequest(password=tokens_pb2.PasswordGrant(email="not-an-email")),
            "password.email",
        ),
        (
            tokens_pb2.CreateTokenRequest(password=tokens_pb2.PasswordGrant(email="a@b.test")),
            "password.password",
        ),
        (tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret="nope")), "api_key.secret"),
        (refresh_request(""), "refresh_token.refresh_token"),
        (refresh_request("keel_rt_short"), "refresh_token.refresh_token"),
        (tokens_pb2.CreateTokenRequest(oidc_code=tokens_pb2.OidcCodeGrant(code="c", state="s")), None),
    ]
    for request, field in cases:
        if field is None:
            # SSO is not configured on this server.
            error = await expect_error(authn.tokens.CreateToken(request), grpc.StatusCode.FAILED_PRECONDITION)
            assert reason_of(error) == "OIDC_NOT_CONFIGURED"
            continue
        error = await expect_error(authn.tokens.CreateToken(request), grpc.StatusCode.INVALID_ARGUMENT)
        assert bad_fields(error) == [field]


async def test_unparseable_request_bytes_are_invalid_argument(authn: Authn) -> None:
    call = authn.channel.unary_unary(
        "/keel.authn.v1.TokenService/CreateToken",
        request_serializer=lambda raw: raw,
        response_deserializer=tokens_pb2.CreateTokenResponse.FromString,
    )
    await expect_error(call(b"\xff\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT)


async def test_oversized_request_is_rejected(authn: Authn) -> None:
    request = tokens_pb2.CreateTokenRequest(
        password=tokens_pb2.PasswordGrant(email="big@example.test", password="x" * 100_000)
    )
    await expect_error(authn.tokens.CreateToken(request), grpc.StatusCode.RESOURCE_EXHAUSTED)


async def test_signing_key_rotation_keeps_old_tokens_until_expiry(authn: Authn) -> None:
    await authn.create_user("hal@example.test")
    old = await authn.login("hal@example.test", PASSWORD)
    old_kid = jwt.get_unverified_header(old.access_token)["kid"]
    authn.clock.advance(seconds=1)

    rotated = await authn.signing_keys.RotateSigningKey(
        signing_keys_pb2.RotateSigningKeyRequest(), metadata=authn.admin
    )
    assert rotated.id != old_kid
    assert rotated.state == signing_keys_pb2.SigningKey.CURRENT
    jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    assert {k.kid for k in jwks.keys} == {old_kid, rotated.id}
    for key in jwks.keys:
        assert (key.kty, key.crv, key.alg, key.use) == ("EC", "P-256", "ES256", "sig")
        assert len(base64.urlsafe_b64decode(key.x + "=")) == len(base64.urlsafe_b64decode(key.y + "=")) == 32

    new = await authn.login("hal@example.test", PASSWORD)
    assert jwt.get_unverified_header(new.access_token)["kid"] == rotated.id
    assert (await me(authn, old.access_token)).email == "hal@example.test"
    assert (await me(authn, new.access_token)).email == "hal@example.test"

    listed = await authn.signing_keys.ListSigningKeys(
        signing_keys_pb2.ListSigningKeysRequest(), metadata=authn.admin
    )
    states = {k.id: k.state for k in listed.signing_keys}
    assert states == {
        rotated.id: signing_keys_pb2.SigningKey.CURRENT,
        old_kid: signing_keys_pb2.SigningKey.RETIRED,
    }
    assert listed.signing_keys[0].id == rotated.id  # newest first

    # Past every token the old key signed: it leaves the JWKS and is marked expired.
    authn.clock.advance(seconds=900 + 60 + 1)
    await authn.service.maintain_keys_once()
    jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    assert {k.kid for k in jwks.keys} == {rotated.id}
    await expect_error(me(authn, old.access_token), grpc.StatusCode.UNAUTHENTICATED)
    await authn.refresh_admin()
    listed = await authn.signing_keys.ListSigningKeys(
        signing_keys_pb2.ListSigningKeysRequest(), metadata=authn.admin
    )
    assert {k.id: k.state for k in listed.signing_keys}[old_kid] == signing_keys_pb2.SigningKey.EXPIRED


async def test_rotation_from_eddsa_to_es256_keeps_tokens_of_both_verifiable(
    database_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    authn = await start_authn(database_url, tmp_path, clock, authn_signing_algorithm="EdDSA")
    try:
        user = await authn.create_user("jan@example.test")
        old = await authn.login("jan@example.test", PASSWORD)
        assert jwt.get_unverified_header(old.access_token)["alg"] == "EdDSA"
        # A replica configured for ES256 rotates (same database, same master key) ...
        settings = authn.service.domain.settings.model_copy(update={"authn_signing_algorithm": "ES256"})
        replica = build_domain(settings, authn.service.domain.engine, clock)
        rotated = await replica.signing_keys.rotate()
        # ... and once its signer cache lapses, this server too signs with the new key's algorithm.
        clock.advance(seconds=31)

        new = await authn.login("jan@example.test", PASSWORD)

        header = jwt.get_unverified_header(new.access_token)
        assert (header["alg"], header["kid"]) == ("ES256", rotated.id)
        jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
        assert sorted((k.kty, k.crv, k.alg, bool(k.y)) for k in jwks.keys) == [
            ("EC", "P-256", "ES256", True),
            ("OKP", "Ed25519", "EdDSA", False),
        ]
        defaults = ServiceSettings()
        other_service = TokenVerifier(
            JwksCache(jwks_from_authn(authn.channel), clock=clock),
            issuer=defaults.token_issuer,
            audience=defaults.token_audience,
            clock=clock,
        )
        for token in (old.access_token, new.access_token):
            assert (await me(authn, token)).id == user.id
            assert (await other_service.verify_access_token(token)).subject == user.id
            introspected = await authn.tokens.IntrospectToken(
                tokens_pb2.IntrospectTokenRequest(token=token), metadata=authn.admin
            )
            assert introspected.active
    finally:
        await stop_authn(authn)


async def test_introspection_reports_a_deactivated_subjects_token_inactive(authn: Authn) -> None:
    user = await authn.create_user("kim@example.test")
    login = await authn.login("kim@example.test", PASSWORD)
    introspect = tokens_pb2.IntrospectTokenRequest(token=login.access_token)
    assert (await authn.tokens.IntrospectToken(introspect, metadata=authn.admin)).active

    await authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id=user.id), metadata=authn.admin)

    assert not (await authn.tokens.IntrospectToken(introspect, metadata=authn.admin)).active


async def test_scheduled_rotation_happens_when_due(authn: Authn) -> None:
    before = jwt.get_unverified_header(authn.admin_token)["kid"]
    await authn.service.maintain_keys_once()
    jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    assert [k.kid for k in jwks.keys] == [before]
    authn.clock.advance(days=30, seconds=1)
    await authn.service.maintain_keys_once()
    jwks = await authn.tokens.GetJwks(tokens_pb2.GetJwksRequest())
    assert len(jwks.keys) == 2
    assert before in {k.kid for k in jwks.keys}


async def test_non_admin_cannot_rotate_signing_keys(authn: Authn) -> None:
    await authn.create_user("ivy@example.test")
    login = await authn.login("ivy@example.test", PASSWORD)
    await expect_error(
        authn.signing_keys.RotateSigningKey(
            signing_keys_pb2.RotateSigningKeyRequest(), metadata=bearer(login.access_token)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
