"""API keys and service accounts through a real authn server."""

from __future__ import annotations

from datetime import timedelta

import grpc
import jwt
from google.protobuf import duration_pb2, field_mask_pb2, timestamp_pb2

from keel.authn.v1 import api_keys_pb2, service_accounts_pb2, tokens_pb2
from tests.authn.conftest import Authn, bearer
from tests.authn.helpers import expect_error, reason_of

PASSWORD = "correct horse battery"


def exchange(secret: str) -> tokens_pb2.CreateTokenRequest:
    return tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=secret))


async def user_token(authn: Authn, email: str) -> str:
    await authn.create_user(email)
    return (await authn.login(email, PASSWORD)).access_token


async def test_api_key_exchange_and_last_use_time(authn: Authn) -> None:
    token = await user_token(authn, "kim@example.test")
    created = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="laptop")
        ),
        metadata=bearer(token),
    )
    secret = created.secret
    assert secret.startswith(created.api_key.prefix + "_")
    assert len(created.api_key.prefix) == len("keel_ak_") + 8
    assert len(secret) == len("keel_ak_") + 8 + 1 + 43
    assert not created.api_key.HasField("last_use_time")

    response = await authn.tokens.CreateToken(exchange(secret))
    assert response.refresh_token == ""
    assert response.subject == created.api_key.principal_id
    claims = jwt.decode(response.access_token, options={"verify_signature": False})
    assert claims["typ"] == "user"

    fetched = await authn.api_keys.GetApiKey(
        api_keys_pb2.GetApiKeyRequest(principal_id="me", api_key_id=created.api_key.id),
        metadata=bearer(token),
    )
    first_use = fetched.last_use_time.ToDatetime()
    assert first_use == authn.clock.now().replace(tzinfo=None)
    # Within the write resolution the time is not rewritten; after it, it is.
    authn.clock.advance(seconds=30)
    await authn.tokens.CreateToken(exchange(secret))
    fetched = await authn.api_keys.GetApiKey(
        api_keys_pb2.GetApiKeyRequest(principal_id="me", api_key_id=created.api_key.id),
        metadata=bearer(token),
    )
    assert fetched.last_use_time.ToDatetime() == first_use
    authn.clock.advance(seconds=61)
    token = (await authn.login("kim@example.test", PASSWORD)).access_token
    await authn.tokens.CreateToken(exchange(secret))
    listed = await authn.api_keys.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(principal_id="me"), metadata=bearer(token)
    )
    assert listed.api_keys[0].last_use_time.ToDatetime() == authn.clock.now().replace(tzinfo=None)
    # Neither Get nor List carries a secret: the message has no such field, and no value looks like one.
    assert secret not in str(listed)
    # A well-formed but unknown secret.
    error = await expect_error(
        authn.tokens.CreateToken(exchange(secret[:-4] + "AAAA")), grpc.StatusCode.UNAUTHENTICATED
    )
    assert reason_of(error) == "INVALID_API_KEY"


async def test_api_key_rotation_grace_then_old_secret_stops(authn: Authn) -> None:
    token = await user_token(authn, "rot@example.test")
    created = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="ci")),
        metadata=bearer(token),
    )
    rotated = await authn.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(
            principal_id="me", api_key_id=created.api_key.id, grace_period=duration_pb2.Duration(seconds=3600)
        ),
        metadata=bearer(token),
    )
    assert rotated.secret != created.secret
    assert rotated.api_key.prefix != created.api_key.prefix
    assert rotated.api_key.previous_secret_expire_time.ToDatetime() == (
        authn.clock.now() + timedelta(hours=1)
    ).replace(tzinfo=None)
    await authn.tokens.CreateToken(exchange(created.secret))
    await authn.tokens.CreateToken(exchange(rotated.secret))
    authn.clock.advance(seconds=3599)
    await authn.tokens.CreateToken(exchange(created.secret))
    authn.clock.advance(seconds=1)
    await expect_error(authn.tokens.CreateToken(exchange(created.secret)), grpc.StatusCode.UNAUTHENTICATED)
    await authn.tokens.CreateToken(exchange(rotated.secret))


async def test_api_key_revocation_ends_every_secret(authn: Authn) -> None:
    token = await user_token(authn, "rev@example.test")
    created = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="x")),
        metadata=bearer(token),
    )
    rotated = await authn.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(principal_id="me", api_key_id=created.api_key.id),
        metadata=bearer(token),
    )
    revoked = await authn.api_keys.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(principal_id="me", api_key_id=created.api_key.id),
        metadata=bearer(token),
    )
    assert revoked.state == api_keys_pb2.ApiKey.REVOKED
    for secret in (created.secret, rotated.secret):
        await expect_error(authn.tokens.CreateToken(exchange(secret)), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        authn.api_keys.RotateApiKey(
            api_keys_pb2.RotateApiKeyRequest(principal_id="me", api_key_id=created.api_key.id),
            metadata=bearer(token),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


async def test_api_key_expiry(authn: Authn) -> None:
    token = await user_token(authn, "exp@example.test")
    expire = timestamp_pb2.Timestamp()
    expire.FromDatetime(authn.clock.now() + timedelta(hours=2))
    created = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="short", expire_time=expire)
        ),
        metadata=bearer(token),
    )
    await authn.tokens.CreateToken(exchange(created.secret))
    authn.clock.advance(hours=2)
    await expect_error(authn.tokens.CreateToken(exchange(created.secret)), grpc.StatusCode.UNAUTHENTICATED)
    token = (await authn.login("exp@example.test", PASSWORD)).access_token
    listed = await authn.api_keys.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(principal_id="me", filter="state = EXPIRED"), metadata=bearer(token)
    )
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    assert listed.api_keys[0].state == api_keys_pb2.ApiKey.EXPIRED
    past = timestamp_pb2.Timestamp()
    past.FromDatetime(authn.clock.now() - timedelta(seconds=1))
    await expect_error(
        authn.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(
                principal_id="me", api_key=api_keys_pb2.ApiKey(expire_time=past)
            ),
            metadata=bearer(token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


async def test_create_api_key_retry_returns_key_without_secret(authn: Authn) -> None:
    token = await user_token(authn, "retry@example.test")
    request = api_keys_pb2.CreateApiKeyRequest(
        principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="once"), request_id="key-request-1"
    )
    first = await authn.api_keys.CreateApiKey(request, metadata=bearer(token))
    second = await authn.api_keys.CreateApiKey(request, metadata=bearer(token))
    assert first.secret
    assert second.secret == ""
    assert second.api_key.id == first.api_key.id
    listed = await authn.api_keys.ListApiKeys(
        api_keys_pb2.ListApiKeysRequest(principal_id="me"), metadata=bearer(token)
    )
    assert len(listed.api_keys) == 1


async def test_users_cannot_touch_other_principals_keys(authn: Authn) -> None:
    token = await user_token(authn, "mine@example.test")
    other = await authn.create_user("theirs@example.test")
    await expect_error(
        authn.api_keys.ListApiKeys(
            api_keys_pb2.ListApiKeysRequest(principal_id=other.id), metadata=bearer(token)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        authn.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(principal_id=other.id, api_key=api_keys_pb2.ApiKey()),
            metadata=bearer(token),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_service_account_keys_and_deactivation(authn: Authn) -> None:
    account = await authn.service_accounts.CreateServiceAccount(
        service_accounts_pb2.CreateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(display_name="ci-bot", description="CI")
        ),
        metadata=authn.admin,
    )
    assert account.creator_id == authn.admin_id
    await expect_error(
        authn.service_accounts.CreateServiceAccount(
            service_accounts_pb2.CreateServiceAccountRequest(
                service_account=service_accounts_pb2.ServiceAccount(display_name="ci-bot")
            ),
            metadata=authn.admin,
        ),
        grpc.StatusCode.ALREADY_EXISTS,
    )
    key = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id=account.id, api_key=api_keys_pb2.ApiKey(display_name="k")
        ),
        metadata=authn.admin,
    )
    response = await authn.tokens.CreateToken(exchange(key.secret))
    claims = jwt.decode(response.access_token, options={"verify_signature": False})
    assert (claims["sub"], claims["typ"]) == (account.id, "service_account")
    # The service account may read itself through the self rule.
    itself = await authn.service_accounts.GetServiceAccount(
        service_accounts_pb2.GetServiceAccountRequest(service_account_id=account.id),
        metadata=bearer(response.access_token),
    )
    assert itself.display_name == "ci-bot"

    updated = await authn.service_accounts.UpdateServiceAccount(
        service_accounts_pb2.UpdateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(
                id=account.id, description="builds", etag=account.etag
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["description"]),
        ),
        metadata=authn.admin,
    )
    assert (updated.display_name, updated.description) == ("ci-bot", "builds")
    await expect_error(
        authn.service_accounts.UpdateServiceAccount(
            service_accounts_pb2.UpdateServiceAccountRequest(
                service_account=service_accounts_pb2.ServiceAccount(
                    id=account.id, description="x", etag=account.etag
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["description"]),
            ),
            metadata=authn.admin,
        ),
        grpc.StatusCode.ABORTED,
    )

    deactivated = await authn.service_accounts.DeactivateServiceAccount(
        service_accounts_pb2.DeactivateServiceAccountRequest(service_account_id=account.id),
        metadata=authn.admin,
    )
    assert deactivated.state == service_accounts_pb2.ServiceAccount.DEACTIVATED
    await expect_error(authn.tokens.CreateToken(exchange(key.secret)), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        authn.service_accounts.GetServiceAccount(
            service_accounts_pb2.GetServiceAccountRequest(service_account_id=account.id),
            metadata=bearer(response.access_token),
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect_error(
        authn.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(principal_id=account.id, api_key=api_keys_pb2.ApiKey()),
            metadata=authn.admin,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    listed = await authn.service_accounts.ListServiceAccounts(
        service_accounts_pb2.ListServiceAccountsRequest(filter="state = DEACTIVATED"), metadata=authn.admin
    )
    assert [a.id for a in listed.service_accounts] == [account.id]
