"""Login throttling through a real authn server (limits from conftest: 3 per account, 8 per source)."""

from __future__ import annotations

import grpc

from tests.authn.conftest import Authn
from tests.authn.helpers import expect_error, reason_of, retry_delay_seconds

PASSWORD = "correct horse battery"


async def test_unknown_user_wrong_password_and_deactivated_answer_identically(authn: Authn) -> None:
    await authn.create_user("real@example.test")
    unknown = await expect_error(authn.login("ghost@example.test", PASSWORD), grpc.StatusCode.UNAUTHENTICATED)
    wrong = await expect_error(
        authn.login("real@example.test", "not the password"), grpc.StatusCode.UNAUTHENTICATED
    )
    assert unknown.details() == wrong.details() == "invalid credentials"
    assert reason_of(unknown) == reason_of(wrong) == "INVALID_CREDENTIALS"


async def test_account_lockout_grows_and_success_resets(authn: Authn) -> None:
    await authn.create_user("target@example.test")
    for _ in range(2):
        await expect_error(
            authn.login("target@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED
        )
    # A success before the limit forgets the account's failures.
    await authn.login("target@example.test", PASSWORD)
    for _ in range(3):
        await expect_error(
            authn.login("target@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED
        )
    locked = await expect_error(
        authn.login("target@example.test", PASSWORD), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert reason_of(locked) == "TOO_MANY_LOGIN_ATTEMPTS"
    assert retry_delay_seconds(locked) == 30
    # An unknown account locks the same way (no existence oracle).
    for _ in range(3):
        await expect_error(
            authn.login("nobody@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED
        )
    ghost = await expect_error(
        authn.login("nobody@example.test", PASSWORD), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert ghost.details() == locked.details()

    authn.clock.advance(seconds=30)
    await expect_error(authn.login("target@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED)
    doubled = await expect_error(
        authn.login("target@example.test", PASSWORD), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert retry_delay_seconds(doubled) == 60
    authn.clock.advance(seconds=60)
    await authn.login("target@example.test", PASSWORD)


async def test_source_lockout_across_accounts(authn: Authn) -> None:
    await authn.create_user("victim@example.test")
    # 8 failures from this address spread over accounts that never reach their own limit.
    for index in range(8):
        await expect_error(
            authn.login(f"spray{index % 4}@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED
        )
    error = await expect_error(
        authn.login("victim@example.test", PASSWORD), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert retry_delay_seconds(error) == 30
