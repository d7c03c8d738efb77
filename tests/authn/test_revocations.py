"""authn's revocation feed through a real server: what writes it, and ListRevocations.

Every revoking action adds its rows in the transaction of the change (a
refused or failed action adds none); ListRevocations serves them, in order
and paged, to service accounts only; the maintenance task forgets rows that no
token can match any more.
"""

from __future__ import annotations

from datetime import UTC, timedelta
from typing import Any

import grpc
import jwt
import pytest
from sqlalchemy import func, select

from keel.authn.v1 import api_keys_pb2, service_accounts_pb2, tokens_pb2, users_pb2
from services.authn.store import RevocationRecord, revocations
from tests.authn.conftest import Authn, bearer
from tests.authn.helpers import bad_fields, expect_error

Metadata = tuple[tuple[str, str], ...]
PASSWORD = "correct horse battery"


async def feed_rows(authn: Authn) -> list[RevocationRecord]:
    """Every row of the feed table, read straight from authn's database."""
    async with authn.service.domain.engine.connect() as conn:
        rows = (await conn.execute(select(revocations).order_by(revocations.c.sequence))).all()
    return [RevocationRecord(**row._asdict()) for row in rows]


async def service_account(authn: Authn, name: str = "keel-rbac") -> tuple[str, Metadata]:
    """A new service account and call metadata with an access token of its own."""
    account_id, secret = await authn.service_account_key(name)
    grant = tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=secret))
    return account_id, bearer((await authn.tokens.CreateToken(grant)).access_token)


def refresh(token: str) -> tokens_pb2.CreateTokenRequest:
    return tokens_pb2.CreateTokenRequest(refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=token))


async def test_user_deactivation_writes_one_subject_row(authn: Authn) -> None:
    user = await authn.create_user("leaver@example.test", PASSWORD)
    await authn.login("leaver@example.test", PASSWORD)
    await authn.login("leaver@example.test", PASSWORD)

    await authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id=user.id), metadata=authn.admin)

    [row] = await feed_rows(authn)
    # One subject entry covers both sessions: every token of the user predates it.
    assert (row.subject_id, row.session_id) == (user.id, "")
    assert row.revoke_time == authn.clock.now()
    settings = authn.service.domain.settings
    kept = settings.authn_access_token_ttl_seconds + settings.authn_token_leeway_seconds
    assert row.expire_time == row.revoke_time + timedelta(seconds=kept)


async def test_service_account_deactivation_writes_one_subject_row(authn: Authn) -> None:
    account_id, _ = await service_account(authn)
    await authn.service_accounts.DeactivateServiceAccount(
        service_accounts_pb2.DeactivateServiceAccountRequest(service_account_id=account_id),
        metadata=authn.admin,
    )
    assert [(r.subject_id, r.session_id) for r in await feed_rows(authn)] == [(account_id, "")]


async def test_failed_deactivations_write_nothing(authn: Authn) -> None:
    user = await authn.create_user("stays@example.test", PASSWORD)
    victim = await authn.login("stays@example.test", PASSWORD)
    await expect_error(
        authn.users.DeactivateUser(
            users_pb2.DeactivateUserRequest(user_id="no-such-user"), metadata=authn.admin
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # Refused before the handler: a user may not deactivate anyone.
    await expect_error(
        authn.users.DeactivateUser(
            users_pb2.DeactivateUserRequest(user_id=authn.admin_id), metadata=bearer(victim.access_token)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_error(
        authn.service_accounts.DeactivateServiceAccount(
            service_accounts_pb2.DeactivateServiceAccountRequest(service_account_id="no-such-account"),
            metadata=authn.admin,
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    assert await feed_rows(authn) == []
    assert (
        await authn.users.GetUser(users_pb2.GetUserRequest(user_id=user.id), metadata=authn.admin)
    ).state == (users_pb2.User.ACTIVE)


async def test_logout_writes_one_session_row_once(authn: Authn) -> None:
    await authn.create_user("bye@example.test", PASSWORD)
    login = await authn.login("bye@example.test", PASSWORD)
    session_id = _claims(login.access_token)["sid"]

    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=login.refresh_token))
    # A second logout of the same family, and one of an unknown token, change nothing.
    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=login.refresh_token))
    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token="keel_rt_" + "x" * 43))

    assert [(r.subject_id, r.session_id) for r in await feed_rows(authn)] == [("", session_id)]


async def test_revoking_an_api_key_ends_the_tokens_exchanged_from_it(authn: Authn) -> None:
    user = await authn.create_user("keys@example.test", PASSWORD)
    keys = []
    for name in ("ci", "laptop"):
        created = await authn.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(
                principal_id=user.id, api_key=api_keys_pb2.ApiKey(display_name=name)
            ),
            metadata=authn.admin,
        )
        exchanged = await authn.tokens.CreateToken(
            tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=created.secret))
        )
        keys.append((created.api_key.id, exchanged.access_token))
    (revoked_id, revoked_token), (kept_id, kept_token) = keys

    await authn.api_keys.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(principal_id=user.id, api_key_id=revoked_id), metadata=authn.admin
    )
    me = users_pb2.GetUserRequest(user_id="me")
    await expect_error(
        authn.users.GetUser(me, metadata=bearer(revoked_token)), grpc.StatusCode.UNAUTHENTICATED
    )
    still = await authn.users.GetUser(me, metadata=bearer(kept_token))

    assert _claims(revoked_token)["sid"] == f"apikey:{revoked_id}"
    assert _claims(kept_token)["sid"] == f"apikey:{kept_id}"
    assert still.id == user.id
    assert [(r.subject_id, r.session_id) for r in await feed_rows(authn)] == [("", f"apikey:{revoked_id}")]


async def test_refresh_token_reuse_writes_one_session_row(authn: Authn) -> None:
    await authn.create_user("copied@example.test", PASSWORD)
    login = await authn.login("copied@example.test", PASSWORD)
    await authn.tokens.CreateToken(refresh(login.refresh_token))
    assert await feed_rows(authn) == []  # an ordinary refresh revokes nothing

    await expect_error(
        authn.tokens.CreateToken(refresh(login.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )
    # The family is dead now: a third presentation is refused without a new revocation.
    await expect_error(
        authn.tokens.CreateToken(refresh(login.refresh_token)), grpc.StatusCode.UNAUTHENTICATED
    )

    session_id = _claims(login.access_token)["sid"]
    assert [(r.subject_id, r.session_id) for r in await feed_rows(authn)] == [("", session_id)]


async def test_change_password_writes_a_row_per_other_session(authn: Authn) -> None:
    await authn.create_user("chg@example.test", PASSWORD)
    current = await authn.login("chg@example.test", PASSWORD)
    others = [await authn.login("chg@example.test", PASSWORD) for _ in range(2)]
    await expect_error(
        authn.users.ChangePassword(
            users_pb2.ChangePasswordRequest(
                current_password="wrong password!", new_password="a new secret!!"
            ),
            metadata=bearer(current.access_token),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await feed_rows(authn) == []

    await authn.users.ChangePassword(
        users_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="a new secret!!"),
        metadata=bearer(current.access_token),
    )

    rows = await feed_rows(authn)
    assert sorted(r.session_id for r in rows) == sorted(_claims(o.access_token)["sid"] for o in others)
    assert {r.subject_id for r in rows} == {""}
    assert [r.sequence for r in rows] == [1, 2]


async def test_list_revocations_pages_in_sequence_order_after_a_sequence(authn: Authn) -> None:
    _, mesh = await service_account(authn)
    users = [await authn.create_user(f"u{i}@example.test", PASSWORD) for i in range(5)]
    for user in users:
        await authn.users.DeactivateUser(
            users_pb2.DeactivateUserRequest(user_id=user.id), metadata=authn.admin
        )

    seen: list[tokens_pb2.Revocation] = []
    after = 0
    while True:
        page = await authn.tokens.ListRevocations(
            tokens_pb2.ListRevocationsRequest(after_sequence=after, page_size=2), metadata=mesh
        )
        if not page.revocations:
            assert page.last_sequence == after
            break
        assert len(page.revocations) <= 2
        assert page.last_sequence == page.revocations[-1].sequence
        seen.extend(page.revocations)
        after = page.last_sequence

    assert [r.subject_id for r in seen] == [u.id for u in users]
    assert [r.sequence for r in seen] == [1, 2, 3, 4, 5]
    assert seen[0].revoke_time.ToDatetime(tzinfo=UTC) == authn.clock.now()
    assert not any(r.session_id for r in seen)
    later = await authn.tokens.ListRevocations(
        tokens_pb2.ListRevocationsRequest(after_sequence=3), metadata=mesh
    )
    assert [r.sequence for r in later.revocations] == [4, 5]
    assert later.last_sequence == 5


async def test_expired_revocations_are_not_listed_and_are_purged(authn: Authn) -> None:
    settings = authn.service.domain.settings
    kept = settings.authn_access_token_ttl_seconds + settings.authn_token_leeway_seconds
    first = await authn.create_user("first@example.test", PASSWORD)
    await authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id=first.id), metadata=authn.admin)
    authn.clock.advance(seconds=kept - 10)
    await authn.refresh_admin()
    second = await authn.create_user("second@example.test", PASSWORD)
    await authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id=second.id), metadata=authn.admin)

    await authn.service.maintain_keys_once()
    assert len(await feed_rows(authn)) == 2  # nothing expired yet

    authn.clock.advance(seconds=10)  # exactly the first one's expire_time
    _, mesh = await service_account(authn)
    listed = await authn.tokens.ListRevocations(tokens_pb2.ListRevocationsRequest(), metadata=mesh)
    assert [r.subject_id for r in listed.revocations] == [second.id]
    await authn.service.maintain_keys_once()
    assert [r.subject_id for r in await feed_rows(authn)] == [second.id]

    authn.clock.advance(seconds=kept)
    await authn.service.maintain_keys_once()
    assert await feed_rows(authn) == []


async def test_only_service_accounts_read_the_feed(authn: Authn) -> None:
    await authn.create_user("curious@example.test", PASSWORD)
    curious = await authn.login("curious@example.test", PASSWORD)
    request = tokens_pb2.ListRevocationsRequest()
    await expect_error(authn.tokens.ListRevocations(request), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        authn.tokens.ListRevocations(request, metadata=bearer("not-a-token")), grpc.StatusCode.UNAUTHENTICATED
    )
    # Neither an ordinary user nor the platform admin: who was deactivated is for services.
    for metadata in (bearer(curious.access_token), authn.admin):
        await expect_error(
            authn.tokens.ListRevocations(request, metadata=metadata), grpc.StatusCode.PERMISSION_DENIED
        )


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [({"after_sequence": -1}, "after_sequence"), ({"page_size": -1}, "page_size")],
)
async def test_negative_values_are_invalid_arguments(
    authn: Authn, request_fields: dict[str, int], field: str
) -> None:
    _, mesh = await service_account(authn)
    error = await expect_error(
        authn.tokens.ListRevocations(tokens_pb2.ListRevocationsRequest(**request_fields), metadata=mesh),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert bad_fields(error) == [field]


async def test_page_size_is_capped_at_one_thousand(authn: Authn) -> None:
    _, mesh = await service_account(authn)
    now = authn.clock.now()
    async with authn.service.domain.store.transaction() as tx:
        await tx.record_revocations(
            session_ids=[f"s-{i}" for i in range(1001)],
            revoke_time=now,
            expire_time=now + timedelta(minutes=5),
        )
    default = await authn.tokens.ListRevocations(tokens_pb2.ListRevocationsRequest(), metadata=mesh)
    capped = await authn.tokens.ListRevocations(
        tokens_pb2.ListRevocationsRequest(page_size=5000), metadata=mesh
    )
    rest = await authn.tokens.ListRevocations(
        tokens_pb2.ListRevocationsRequest(after_sequence=capped.last_sequence, page_size=5000), metadata=mesh
    )
    assert len(default.revocations) == 500
    assert len(capped.revocations) == 1000
    assert [r.sequence for r in rest.revocations] == [1001]
    async with authn.service.domain.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(revocations))).scalar_one() == 1001


def _claims(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))
