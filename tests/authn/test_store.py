"""authn's store and domain on SQLite and PostgreSQL (the shared `engine` fixture)."""

from __future__ import annotations

import asyncio
import base64
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from services.authn.crypto import Keyring
from services.authn.server import MIGRATIONS, VERSION_TABLE
from services.authn.signing_keys import SigningKeys
from services.authn.store import (
    ApiKeyRecord,
    ApiKeySecretRecord,
    AuthnStore,
    Conflict,
    ListQuery,
    RefreshTokenRecord,
    SigningKeyRecord,
    UserRecord,
    metadata,
)
from services.kit.migrations import upgrade_to_head
from tests.clock import ManualClock

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
async def store(engine: AsyncEngine) -> AuthnStore:
    await upgrade_to_head(engine, MIGRATIONS, version_table=VERSION_TABLE)
    return AuthnStore(engine)


def user(email: str, *, created: datetime = NOW) -> UserRecord:
    return UserRecord(
        id=f"u-{email}",
        email=email,
        display_name="",
        state="active",
        platform_admin=False,
        password_hash=None,
        create_time=created,
        update_time=created,
        version=1,
    )


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    ignored = {VERSION_TABLE}
    return [
        d
        for d in compare_metadata(context, metadata)
        if not (d[0] == "remove_table" and d[1].name in ignored)
    ]


async def test_migration_matches_store_tables(store: AuthnStore) -> None:
    async with store.engine.connect() as conn:
        differences = await conn.run_sync(_diff)
    assert differences == []


async def test_unique_email_and_times_round_trip(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_user(user("a@example.test"))
    with pytest.raises(Conflict) as caught:
        async with store.transaction() as tx:
            await tx.insert_user(UserRecord(**{**user("a@example.test").__dict__, "id": "other"}))
    assert caught.value.constraint == "users.email"
    async with store.transaction() as tx:
        found = await tx.get_user_by_email("a@example.test")
    assert found is not None
    assert found.create_time == NOW
    assert found.create_time.tzinfo is not None


async def test_list_users_pages_and_filters(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        for index in range(5):
            await tx.insert_user(user(f"p{index}@example.test", created=NOW + timedelta(minutes=index)))
    seen: list[str] = []
    token = ""
    while True:
        async with store.transaction() as tx:
            page = await tx.list_users(ListQuery(page_size=2, page_token=token, order_by="create_time desc"))
        seen.extend(u.email or "" for u in page.items)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"p{index}@example.test" for index in reversed(range(5))]
    async with store.transaction() as tx:
        page = await tx.list_users(ListQuery(filter='create_time >= "2025-03-01T12:03:00Z"'))
    assert {u.email for u in page.items} == {"p3@example.test", "p4@example.test"}


async def test_deactivate_user_revokes_families_and_keys_in_one_transaction(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_user(user("d@example.test"))
        for family in ("f1", "f2"):
            await tx.insert_refresh_family(family, "u-d@example.test", NOW)
            await tx.insert_refresh_token(
                RefreshTokenRecord(
                    token_hash=family * 32,
                    family_id=family,
                    create_time=NOW,
                    expire_time=NOW + timedelta(days=1),
                    spent_time=None,
                )
            )
        await tx.insert_api_key(
            ApiKeyRecord(
                id="k1",
                principal_id="u-d@example.test",
                principal_kind="user",
                display_name="",
                state="active",
                public_id="0badc0de",
                expire_time=None,
                last_use_time=None,
                create_time=NOW,
                rotate_time=None,
                revoke_time=None,
            ),
            ApiKeySecretRecord(
                public_id="0badc0de", api_key_id="k1", secret_hash="0" * 64, create_time=NOW, expire_time=None
            ),
        )

    # A failure inside the transaction leaves everything as it was.
    async def deactivate_then_fail() -> None:
        async with store.transaction() as tx:
            await tx.deactivate_user("u-d@example.test", NOW)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await deactivate_then_fail()
    async with store.transaction() as tx:
        assert await tx.is_family_live("f1")
        unchanged = await tx.get_api_key("u-d@example.test", "k1")
    assert unchanged is not None
    assert unchanged.state == "active"

    async with store.transaction() as tx:
        deactivated = await tx.deactivate_user("u-d@example.test", NOW)
    assert deactivated is not None
    assert deactivated.state == "deactivated"
    async with store.transaction() as tx:
        assert not await tx.is_family_live("f1")
        assert not await tx.is_family_live("f2")
        found = await tx.find_api_key_secret("0badc0de")
    assert found is not None
    assert found.key.state == "revoked"
    assert found.secret.expire_time == NOW
    assert found.principal_state == "deactivated"


async def test_refresh_token_is_spent_once(store: AuthnStore) -> None:
    async with store.transaction() as tx:
        await tx.insert_user(user("r@example.test"))
        await tx.insert_refresh_family("fam", "u-r@example.test", NOW)
        await tx.insert_refresh_token(
            RefreshTokenRecord(
                token_hash="h" * 64,
                family_id="fam",
                create_time=NOW,
                expire_time=NOW + timedelta(days=1),
                spent_time=None,
            )
        )
    async with store.transaction() as tx:
        assert await tx.spend_refresh_token("h" * 64, NOW)
    async with store.transaction() as tx:
        assert not await tx.spend_refresh_token("h" * 64, NOW)


async def test_only_one_current_signing_key(store: AuthnStore) -> None:
    def key(kid: str) -> SigningKeyRecord:
        return SigningKeyRecord(
            id=kid,
            algorithm="EdDSA",
            state="current",
            private_key_sealed=b"x",
            public_x="x",
            public_y="",
            create_time=NOW,
            retire_time=None,
            expire_time=None,
        )

    async with store.transaction() as tx:
        await tx.insert_signing_key(key("one"))
    with pytest.raises(Conflict) as caught:
        async with store.transaction() as tx:
            await tx.insert_signing_key(key("two"))
    assert caught.value.constraint == "signing_keys.current"


async def test_concurrent_scheduled_rotations_leave_one_current_key(store: AuthnStore) -> None:
    clock = ManualClock(NOW)
    keyring = Keyring(base64.urlsafe_b64decode(base64.urlsafe_b64encode(secrets.token_bytes(32))))

    def replica() -> SigningKeys:
        return SigningKeys(
            store,
            keyring.box,
            clock,
            access_token_ttl=timedelta(minutes=15),
            leeway=timedelta(seconds=60),
            rotation_interval=timedelta(days=30),
            algorithm="ES256",
        )

    first = await replica().ensure_current()
    clock.advance(days=31)
    replicas = [replica() for _ in range(4)]
    await asyncio.gather(*(r.rotate_if_due() for r in replicas))
    async with store.transaction() as tx:
        published = await tx.published_signing_keys(clock.now())
        current = await tx.current_signing_key()
    assert current is not None
    assert current.id != first.id
    assert [k.id for k in published if k.state == "current"] == [current.id]
    assert first.id in {k.id for k in published}
    # Every replica signs with the one current key.
    assert {(await r.signer()).kid for r in replicas} == {current.id}
