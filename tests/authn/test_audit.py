"""authn's audit events: one event per change in the change's transaction, none for a failed change.

Real authn servers on SQLite and PostgreSQL; events are read back from authn's
own outbox (`audit_outbox`), where they wait to be shipped to orgs.
"""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from keel.authn.v1 import api_keys_pb2, service_accounts_pb2, signing_keys_pb2, tokens_pb2, users_pb2
from services.authn.server import migrate
from services.authn.store import AuthnStore, audit_outbox
from services.kit.audit import SYSTEM, Actor, AuditEvent, event_for_request
from tests.authn.conftest import ADMIN_EMAIL, Authn, authn_settings, bearer
from tests.authn.helpers import expect_error
from tests.clock import ManualClock

PASSWORD = "correct horse battery"


async def outbox_mark(authn: Authn) -> int:
    """The highest outbox seq so far: events recorded later have a higher one."""
    async with authn.service.domain.engine.connect() as conn:
        return int((await conn.execute(select(func.coalesce(func.max(audit_outbox.c.seq), 0)))).scalar_one())


async def events_since(authn: Authn, mark: int = 0) -> list[AuditEvent]:
    """The events recorded after `mark`, oldest first."""
    async with authn.service.domain.engine.connect() as conn:
        payloads = (
            await conn.execute(
                select(audit_outbox.c.payload).where(audit_outbox.c.seq > mark).order_by(audit_outbox.c.seq)
            )
        ).scalars()
        return [AuditEvent.from_record(json.loads(payload)) for payload in payloads]


def summary(event: AuditEvent) -> tuple[str, str, str, str]:
    return event.action, event.resource_type, event.resource_id, event.outcome


def with_request_id(request_id: str, metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return (("x-request-id", request_id), *metadata)


async def test_start_up_records_the_first_signing_key_and_the_bootstrap_admin_as_system(
    authn: Authn,
) -> None:
    first, admin, login = await events_since(authn)

    assert (first.action, first.actor, first.organization_id) == ("authn.signing_key.create", SYSTEM, "")
    assert summary(admin) == ("authn.user.create", "user", authn.admin_id, "SUCCESS")
    assert admin.actor == SYSTEM
    assert admin.details == {"email": ADMIN_EMAIL, "platform_admin": True}
    assert summary(login)[:2] == ("authn.token.create", "session")
    assert login.actor == Actor(authn.admin_id, "user")


async def test_user_changes_each_record_one_event_with_actor_and_request_id(authn: Authn) -> None:
    mark = await outbox_mark(authn)
    created = await authn.users.CreateUser(
        users_pb2.CreateUserRequest(user=users_pb2.User(email="ann@example.test"), password=PASSWORD),
        metadata=with_request_id("req-create-ann", authn.admin),
    )
    updated = await authn.users.UpdateUser(
        users_pb2.UpdateUserRequest(
            user=users_pb2.User(id=created.id, display_name="Ann", etag=created.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        ),
        metadata=authn.admin,
    )
    await authn.users.DeactivateUser(
        users_pb2.DeactivateUserRequest(user_id=updated.id), metadata=authn.admin
    )

    create, update, deactivate = await events_since(authn, mark)
    assert summary(create) == ("authn.user.create", "user", created.id, "SUCCESS")
    assert create.request_id == "req-create-ann"
    assert create.actor == Actor(authn.admin_id, "user")
    assert create.source_address.startswith("ipv4:127.0.0.1:")
    assert create.organization_id == ""
    assert summary(update) == ("authn.user.update", "user", created.id, "SUCCESS")
    assert update.details == {"fields": ["display_name"]}
    assert summary(deactivate) == ("authn.user.deactivate", "user", created.id, "SUCCESS")


async def test_a_failed_change_records_no_event(authn: Authn) -> None:
    created = await authn.create_user("bo@example.test")
    mark = await outbox_mark(authn)

    await expect_error(authn.create_user("bo@example.test"), grpc.StatusCode.ALREADY_EXISTS)
    await expect_error(
        authn.users.UpdateUser(
            users_pb2.UpdateUserRequest(
                user=users_pb2.User(id=created.id, display_name="B", etag='"99"'),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
            metadata=authn.admin,
        ),
        grpc.StatusCode.ABORTED,
    )
    await expect_error(
        authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id="missing"), metadata=authn.admin),
        grpc.StatusCode.NOT_FOUND,
    )

    assert await events_since(authn, mark) == []


async def test_logins_record_sessions_and_failures_without_the_submitted_email(authn: Authn) -> None:
    user = await authn.create_user("cy@example.test")
    mark = await outbox_mark(authn)

    session = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email="cy@example.test", password=PASSWORD),
            organization_id="org-77",
        )
    )
    await expect_error(authn.login("cy@example.test", "wrong password!!"), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        authn.login("nobody-typo-secret@example.test", PASSWORD), grpc.StatusCode.UNAUTHENTICATED
    )

    login, wrong, unknown = await events_since(authn, mark)
    assert (login.action, login.resource_type, login.outcome) == ("authn.token.create", "session", "SUCCESS")
    assert login.actor == Actor(user.id, "user")
    assert login.organization_id == "org-77"
    assert login.details == {"grant": "password"}
    assert jwt_claims(session.access_token)["sid"] == login.resource_id
    assert summary(wrong) == ("authn.token.create", "user", user.id, "FAILED")
    assert wrong.details == {"grant": "password", "reason": "wrong_password"}
    assert wrong.actor.kind == "anonymous"
    assert summary(unknown) == ("authn.token.create", "user", "", "FAILED")
    assert unknown.details == {"grant": "password", "reason": "unknown_account"}
    assert "nobody-typo-secret" not in json.dumps(unknown.to_record())


def jwt_claims(token: str) -> dict[str, object]:
    import jwt

    claims: dict[str, object] = jwt.decode(token, options={"verify_signature": False})
    return claims


async def test_refresh_token_reuse_and_logout_record_session_revocations(authn: Authn) -> None:
    await authn.create_user("di@example.test")
    first = await authn.login("di@example.test", PASSWORD)
    refresh = tokens_pb2.CreateTokenRequest(
        refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=first.refresh_token)
    )
    await authn.tokens.CreateToken(refresh)
    mark = await outbox_mark(authn)

    await expect_error(authn.tokens.CreateToken(refresh), grpc.StatusCode.UNAUTHENTICATED)
    second = await authn.login("di@example.test", PASSWORD)
    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=second.refresh_token))
    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=second.refresh_token))

    reused, login, logout = await events_since(authn, mark)
    assert summary(reused) == (
        "authn.session.revoke",
        "session",
        jwt_claims(first.access_token)["sid"],
        "SUCCESS",
    )
    assert reused.details["reason"] == "refresh_token_reused"
    assert login.action == "authn.token.create"
    assert summary(logout) == ("authn.session.revoke", "session", login.resource_id, "SUCCESS")
    assert logout.details["reason"] == "logout"  # the second revocation changed nothing: no event


async def test_api_key_and_service_account_changes_record_only_the_public_prefix(authn: Authn) -> None:
    mark = await outbox_mark(authn)
    account = await authn.service_accounts.CreateServiceAccount(
        service_accounts_pb2.CreateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(display_name="ci")
        ),
        metadata=authn.admin,
    )
    created = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id=account.id, api_key=api_keys_pb2.ApiKey(display_name="k")
        ),
        metadata=authn.admin,
    )
    exchanged = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            api_key=tokens_pb2.ApiKeyGrant(secret=created.secret), organization_id="org-5"
        )
    )
    rotated = await authn.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(principal_id=account.id, api_key_id=created.api_key.id),
        metadata=authn.admin,
    )
    await authn.api_keys.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(principal_id=account.id, api_key_id=created.api_key.id),
        metadata=authn.admin,
    )
    await authn.service_accounts.DeactivateServiceAccount(
        service_accounts_pb2.DeactivateServiceAccountRequest(service_account_id=account.id),
        metadata=authn.admin,
    )

    events = await events_since(authn, mark)
    assert [e.action for e in events] == [
        "authn.service_account.create",
        "authn.api_key.create",
        "authn.token.create",
        "authn.api_key.rotate",
        "authn.api_key.revoke",
        "authn.service_account.deactivate",
    ]
    _, create, grant, rotate, revoke, _ = events
    assert create.details == {
        "principal_id": account.id,
        "principal_kind": "service_account",
        "api_key_prefix": created.api_key.prefix,
    }
    assert (grant.actor, grant.organization_id) == (Actor(account.id, "service_account"), "org-5")
    assert grant.details == {"grant": "api_key", "api_key_prefix": created.api_key.prefix}
    assert exchanged.subject == account.id
    assert rotate.details["api_key_prefix"] == rotated.api_key.prefix != created.api_key.prefix
    assert revoke.resource_id == created.api_key.id
    recorded = json.dumps([e.to_record() for e in events])
    assert created.secret not in recorded
    assert rotated.secret not in recorded


async def test_signing_key_rotation_is_the_admin_s_by_rpc_and_system_s_on_schedule(authn: Authn) -> None:
    mark = await outbox_mark(authn)
    rotated = await authn.signing_keys.RotateSigningKey(
        signing_keys_pb2.RotateSigningKeyRequest(), metadata=authn.admin
    )
    authn.clock.advance(days=400)
    await authn.service.maintain_keys_once()

    by_admin, by_schedule, *expired = await events_since(authn, mark)
    assert summary(by_admin) == ("authn.signing_key.rotate", "signing_key", rotated.id, "SUCCESS")
    assert by_admin.actor == Actor(authn.admin_id, "user")
    assert by_schedule.action == "authn.signing_key.rotate"
    assert by_schedule.actor == SYSTEM
    assert by_schedule.details["retired_key_id"] == rotated.id
    assert [(e.action, e.actor) for e in expired] == [("authn.signing_key.expire", SYSTEM)]


async def test_a_denied_rpc_records_a_denied_event_with_the_request_id(authn: Authn) -> None:
    user = await authn.create_user("eve@example.test")
    token = (await authn.login("eve@example.test", PASSWORD)).access_token
    mark = await outbox_mark(authn)

    await expect_error(
        authn.users.ListUsers(
            users_pb2.ListUsersRequest(), metadata=with_request_id("req-eve", bearer(token))
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    [denied] = await events_since(authn, mark)
    assert denied.outcome == "DENIED"
    assert denied.action == "/keel.authn.v1.UserService/ListUsers"
    assert denied.actor == Actor(user.id, "user")
    assert (denied.request_id, denied.organization_id) == ("req-eve", "")
    assert denied.source_address.startswith("ipv4:127.0.0.1:")


async def test_outbox_rows_never_hold_a_secret_after_a_full_flow(authn: Authn) -> None:
    await authn.create_user("sec@example.test")
    login = await authn.login("sec@example.test", PASSWORD)
    refreshed = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=login.refresh_token)
        )
    )
    key = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="k")),
        metadata=bearer(refreshed.access_token),
    )
    exchanged = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(api_key=tokens_pb2.ApiKeyGrant(secret=key.secret))
    )
    rotated = await authn.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(principal_id="me", api_key_id=key.api_key.id),
        metadata=bearer(refreshed.access_token),
    )
    await authn.users.ChangePassword(
        users_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="another long secret"),
        metadata=bearer(refreshed.access_token),
    )
    await expect_error(
        authn.tokens.CreateToken(
            tokens_pb2.CreateTokenRequest(
                refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=login.refresh_token)
            )
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect_error(
        authn.login("typo-secret-xyz@example.test", "wrong password!"), grpc.StatusCode.UNAUTHENTICATED
    )
    await expect_error(authn.login("sec@example.test", "a wrong password"), grpc.StatusCode.UNAUTHENTICATED)
    await authn.signing_keys.RotateSigningKey(
        signing_keys_pb2.RotateSigningKeyRequest(), metadata=authn.admin
    )
    signer = await authn.service.domain.signing_keys.signer()
    private_body = (
        signer.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        .decode()
        .splitlines()[1]
    )

    secrets_in_clear = [
        PASSWORD,
        "another long secret",
        "a wrong password",
        authn.admin_password,
        login.refresh_token.removeprefix("keel_rt_"),
        refreshed.refresh_token.removeprefix("keel_rt_"),
        key.secret.split("_", 3)[3],
        rotated.secret.split("_", 3)[3],
        login.access_token.split(".")[2],
        refreshed.access_token.split(".")[2],
        exchanged.access_token.split(".")[2],
        authn.admin_token.split(".")[2],
        private_body,
        "typo-secret-xyz",
    ]
    assert all(len(secret) >= 11 for secret in secrets_in_clear)
    async with authn.service.domain.engine.connect() as conn:
        payloads = list((await conn.execute(select(audit_outbox.c.payload))).scalars())
    assert len(payloads) >= 12
    found = [secret[:6] for secret in secrets_in_clear for payload in payloads if secret in payload]
    assert found == []


async def test_the_audit_hook_runs_after_a_commit_that_recorded_events_only(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await migrate(engine, authn_settings("", tmp_path))
    calls: list[int] = []
    store = AuthnStore(engine, lambda: calls.append(1))
    clock = ManualClock()

    def event() -> AuditEvent:
        return event_for_request(
            action="authn.test.touch",
            resource_type="user",
            resource_id="u",
            organization_id="",
            occur_time=clock.now(),
        )

    async def failing_change() -> None:
        async with store.transaction() as tx:
            await tx.record_event(event())
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await failing_change()
    assert calls == []
    async with store.transaction() as tx:
        await tx.get_user("nobody")
    assert calls == []
    async with store.transaction() as tx:
        await tx.record_event(event())
        await tx.record_event(event())
    assert calls == [1]
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(audit_outbox))).scalar_one() == 2
