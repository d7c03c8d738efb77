"""Fixtures of the authn tests: a real authn server on an ephemeral port, moved by a manual clock.

The server runs in the test's event loop on the shared `database_url` fixture
(SQLite file or a fresh PostgreSQL database), with a generated master key and
cheap argon2 parameters (t=1, 8 MiB, p=1) so the suite stays fast; production
defaults are RFC 9106's (t=3, 64 MiB, p=4).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from keel.authn.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    service_accounts_pb2,
    service_accounts_pb2_grpc,
    signing_keys_pb2_grpc,
    tokens_pb2,
    tokens_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)
from services.authn.server import AuthnService, build_service
from services.authn.settings import AuthnSettings
from tests.clock import ManualClock

ADMIN_EMAIL = "admin@example.test"


def new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def authn_settings(database_url: str, data_dir: Path, **overrides: Any) -> AuthnSettings:
    values: dict[str, Any] = {
        "authn_master_key": new_master_key(),
        "database_url": database_url,
        "data_dir": data_dir,
        "listen_address": "127.0.0.1:0",
        "drain_seconds": 0,
        "authn_password_time_cost": 1,
        "authn_password_memory_kib": 8,
        "authn_password_parallelism": 1,
        "authn_login_max_failures_per_account": 3,
        "authn_login_max_failures_per_source": 8,
        "authn_login_lockout_base_seconds": 30,
        "authn_login_lockout_max_seconds": 600,
        **overrides,
    }
    return AuthnSettings(**values)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Authn:
    """A running authn with clients and a logged-in platform admin."""

    service: AuthnService
    clock: ManualClock
    channel: grpc.aio.Channel
    admin_password: str = field(repr=False)
    admin_id: str = ""
    admin_token: str = field(default="", repr=False)

    @property
    def users(self) -> users_pb2_grpc.UserServiceAsyncStub:
        return users_pb2_grpc.UserServiceStub(self.channel)

    @property
    def tokens(self) -> tokens_pb2_grpc.TokenServiceAsyncStub:
        return tokens_pb2_grpc.TokenServiceStub(self.channel)

    @property
    def api_keys(self) -> api_keys_pb2_grpc.ApiKeyServiceAsyncStub:
        return api_keys_pb2_grpc.ApiKeyServiceStub(self.channel)

    @property
    def service_accounts(self) -> service_accounts_pb2_grpc.ServiceAccountServiceAsyncStub:
        return service_accounts_pb2_grpc.ServiceAccountServiceStub(self.channel)

    @property
    def signing_keys(self) -> signing_keys_pb2_grpc.SigningKeyServiceAsyncStub:
        return signing_keys_pb2_grpc.SigningKeyServiceStub(self.channel)

    @property
    def admin(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.admin_token)

    async def login(self, email: str, password: str) -> tokens_pb2.CreateTokenResponse:
        request = tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email=email, password=password)
        )
        return await self.tokens.CreateToken(request)

    async def refresh_admin(self) -> None:
        """A fresh admin token (after the clock moved past the old one's expiry)."""
        self.admin_token = (await self.login(ADMIN_EMAIL, self.admin_password)).access_token

    async def service_account_key(self, display_name: str) -> tuple[str, str]:
        """(id, API key secret) of a new service account, made by the platform admin."""
        account = await self.service_accounts.CreateServiceAccount(
            service_accounts_pb2.CreateServiceAccountRequest(
                service_account=service_accounts_pb2.ServiceAccount(display_name=display_name)
            ),
            metadata=self.admin,
        )
        key = await self.api_keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(
                principal_id=account.id, api_key=api_keys_pb2.ApiKey(display_name=display_name)
            ),
            metadata=self.admin,
        )
        return account.id, key.secret

    async def create_user(self, email: str, password: str = "correct horse battery") -> users_pb2.User:
        request = users_pb2.CreateUserRequest(user=users_pb2.User(email=email), password=password)
        return await self.users.CreateUser(request, metadata=self.admin)


async def start_authn(database_url: str, data_dir: Path, clock: ManualClock, **overrides: Any) -> Authn:
    settings = authn_settings(database_url, data_dir, **overrides)
    service = build_service(settings, clock=clock)
    port = await service.start()
    result = await service.domain.users.bootstrap_admin(ADMIN_EMAIL)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    authn = Authn(service, clock, channel, admin_password=result.password)
    response = await authn.login(ADMIN_EMAIL, result.password)
    authn.admin_id = response.subject
    authn.admin_token = response.access_token
    return authn


async def stop_authn(authn: Authn) -> None:
    await authn.channel.close(None)
    await authn.service.stop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def authn(database_url: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Authn]:
    """A running authn on the parametrized backend."""
    running = await start_authn(database_url, tmp_path, clock)
    try:
        yield running
    finally:
        await stop_authn(running)
