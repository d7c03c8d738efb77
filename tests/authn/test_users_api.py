"""UserService through a real authn server: CRUD, etags, idempotency, permissions, deactivation."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from keel.authn.v1 import api_keys_pb2, tokens_pb2, users_pb2
from tests.authn.conftest import ADMIN_EMAIL, Authn, bearer
from tests.authn.helpers import bad_fields, expect_error, reason_of

PASSWORD = "correct horse battery"


async def test_create_get_and_list_users(authn: Authn) -> None:
    created = await authn.create_user("Zoe@Example.test")
    assert created.email == "zoe@example.test"
    assert created.state == users_pb2.User.ACTIVE
    assert created.has_password
    assert not created.platform_admin
    assert created.etag == '"1"'
    fetched = await authn.users.GetUser(users_pb2.GetUserRequest(user_id=created.id), metadata=authn.admin)
    assert fetched == created
    for index in range(3):
        await authn.create_user(f"user{index}@example.test")
    page = await authn.users.ListUsers(
        users_pb2.ListUsersRequest(page_size=2, order_by="email"), metadata=authn.admin
    )
    assert [u.email for u in page.users] == [ADMIN_EMAIL, "user0@example.test"]
    rest = await authn.users.ListUsers(
        users_pb2.ListUsersRequest(page_size=10, order_by="email", page_token=page.next_page_token),
        metadata=authn.admin,
    )
    assert [u.email for u in rest.users] == ["user1@example.test", "user2@example.test", "zoe@example.test"]
    assert rest.next_page_token == ""
    filtered = await authn.users.ListUsers(
        users_pb2.ListUsersRequest(filter='email = "zoe@example.test" AND state = ACTIVE'),
        metadata=authn.admin,
    )
    assert [u.id for u in filtered.users] == [created.id]
    error = await expect_error(
        authn.users.ListUsers(users_pb2.ListUsersRequest(filter="password_hash:*"), metadata=authn.admin),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["filter"]


async def test_duplicate_and_invalid_email(authn: Authn) -> None:
    await authn.create_user("dup@example.test")
    await expect_error(authn.create_user("DUP@example.test"), grpc.StatusCode.ALREADY_EXISTS)
    error = await expect_error(authn.create_user("not an email"), grpc.StatusCode.INVALID_ARGUMENT)
    assert bad_fields(error) == ["user.email"]
    error = await expect_error(
        authn.create_user("short@example.test", "short"), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert bad_fields(error) == ["password"]
    error = await expect_error(
        authn.users.CreateUser(users_pb2.CreateUserRequest(), metadata=authn.admin),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["user"]


async def test_update_own_profile_with_etag(authn: Authn) -> None:
    await authn.create_user("pat@example.test")
    token = (await authn.login("pat@example.test", PASSWORD)).access_token
    mine = await authn.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=bearer(token))
    updated = await authn.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id="me", display_name="Pat", etag=mine.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=bearer(token),
    )
    assert updated.display_name == "Pat"
    assert updated.email == "pat@example.test"
    assert updated.etag != mine.etag
    error = await expect_error(
        authn.users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id="me", display_name="Stale", etag=mine.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=bearer(token),
        ),
        grpc.StatusCode.ABORTED,
    )
    assert reason_of(error) == "ETAG_MISMATCH"
    error = await expect_error(
        authn.users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id="me"), update_mask=field_mask_pb2.FieldMask(paths=["platform_admin"])
            ),
            metadata=bearer(token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["update_mask"]
    again = await authn.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=bearer(token))
    assert again.display_name == "Pat"
    assert not again.platform_admin


async def test_create_user_request_id_is_idempotent(authn: Authn) -> None:
    request = users_pb2.CreateUserRequest(
        user=users_pb2.User(email="idem@example.test"), password=PASSWORD, request_id="3f0c8a1e-idem"
    )
    first = await authn.users.CreateUser(request, metadata=authn.admin)
    second = await authn.users.CreateUser(request, metadata=authn.admin)
    assert second.id == first.id
    listed = await authn.users.ListUsers(
        users_pb2.ListUsersRequest(filter='email = "idem@example.test"'), metadata=authn.admin
    )
    assert len(listed.users) == 1
    error = await expect_error(
        authn.users.CreateUser(
            users_pb2.CreateUserRequest(user=users_pb2.User(email="x@example.test"), request_id="bad id!"),
            metadata=authn.admin,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["request_id"]


async def test_non_admin_gets_same_denial_for_existing_and_missing_users(authn: Authn) -> None:
    await authn.create_user("nosy@example.test")
    other = await authn.create_user("other@example.test")
    token = (await authn.login("nosy@example.test", PASSWORD)).access_token
    existing = await expect_error(
        authn.users.GetUser(users_pb2.GetUserRequest(user_id=other.id), metadata=bearer(token)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    missing = await expect_error(
        authn.users.GetUser(
            users_pb2.GetUserRequest(user_id="00000000-0000-4000-8000-000000000000"), metadata=bearer(token)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    assert existing.details() == missing.details()
    assert reason_of(existing) == reason_of(missing)
    await expect_error(
        authn.users.ListUsers(users_pb2.ListUsersRequest(), metadata=bearer(token)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        authn.users.CreateUser(
            users_pb2.CreateUserRequest(user=users_pb2.User(email="sneaky@example.test"), password=PASSWORD),
            metadata=bearer(token),
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        authn.users.GetUser(users_pb2.GetUserRequest(user_id="me")), grpc.StatusCode.UNAUTHENTICATED
    )
    # The admin, by contrast, learns that the id does not exist.
    await expect_error(
        authn.users.GetUser(
            users_pb2.GetUserRequest(user_id="00000000-0000-4000-8000-000000000000"), metadata=authn.admin
        ),
        grpc.StatusCode.NOT_FOUND,
    )


async def test_deactivation_revokes_sessions_and_api_keys_at_once(authn: Authn) -> None:
    user = await authn.create_user("leaver@example.test")
    first = await authn.login("leaver@example.test", PASSWORD)
    second = await authn.login("leaver@example.test", PASSWORD)
    key = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="ci")),
        metadata=bearer(first.access_token),
    )
    deactivated = await authn.users.DeactivateUser(
        users_pb2.DeactivateUserRequest(user_id=user.id), metadata=authn.admin
    )
    assert deactivated.state == users_pb2.User.DEACTIVATED
    for login in (first, second):
        await expect_error(
            authn.tokens.CreateToken(
                tokens_pb2.CreateTokenRequest(
                    refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=login.refresh_token)
                )
            ),
            grpc.StatusCode.UNAUTHENTICATED,
        )
        await expect_error(
            authn.users.GetUser(users_pb2.GetUserRequest(user_id="me"), metadata=bearer(login.access_token)),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    await expect_error(
        authn.tokens.CreateToken(
            tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=key.secret))
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    stored = await authn.api_keys.GetApiKey(
        api_keys_pb2.GetApiKeyRequest(principal_id=user.id, api_key_id=key.api_key.id), metadata=authn.admin
    )
    assert stored.state == api_keys_pb2.ApiKey.REVOKED
    error = await expect_error(authn.login("leaver@example.test", PASSWORD), grpc.StatusCode.UNAUTHENTICATED)
    assert error.details() == "invalid credentials"


async def test_change_password_ends_other_sessions(authn: Authn) -> None:
    await authn.create_user("chg@example.test")
    current = await authn.login("chg@example.test", PASSWORD)
    other = await authn.login("chg@example.test", PASSWORD)
    error = await expect_error(
        authn.users.ChangePassword(
            users_pb2.ChangePasswordRequest(
                current_password="wrong password!", new_password="a brand new secret"
            ),
            metadata=bearer(current.access_token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == ["current_password"]
    await authn.users.ChangePassword(
        users_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="a brand new secret"),
        metadata=bearer(current.access_token),
    )
    await expect_error(
        authn.tokens.CreateToken(
            tokens_pb2.CreateTokenRequest(
                refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=other.refresh_token)
            )
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # The caller's own session survives.
    await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=current.refresh_token)
        )
    )
    await expect_error(authn.login("chg@example.test", PASSWORD), grpc.StatusCode.UNAUTHENTICATED)
    await authn.login("chg@example.test", "a brand new secret")


async def test_the_last_active_platform_admin_cannot_be_deactivated(authn: Authn) -> None:
    request = users_pb2.DeactivateUserRequest(user_id=authn.admin_id)
    refused = await expect_error(
        authn.users.DeactivateUser(request, metadata=authn.admin), grpc.StatusCode.FAILED_PRECONDITION
    )
    second = await authn.service.domain.users.create(
        "second-admin@example.test", "Second", PASSWORD, platform_admin=True
    )
    replaced = await authn.users.DeactivateUser(request, metadata=authn.admin)

    assert reason_of(refused) == "LAST_PLATFORM_ADMIN"
    assert replaced.state == users_pb2.User.DEACTIVATED
    assert await authn.service.domain.users.is_platform_admin(second.id)
