"""ServiceCredential against a real authn: key exchange, caching, renewal before expiry, key-file rules."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest

from keel.authn.v1 import api_keys_pb2, service_accounts_pb2
from services.kit.service_identity import RENEW_BEFORE, ServiceCredential, read_api_key_file
from tests.authn.conftest import Authn, authn, clock  # noqa: F401  (fixtures)


async def service_key(authn: Authn) -> tuple[str, str]:  # noqa: F811
    """(service account id, API key secret) of a new service account."""
    account = await authn.service_accounts.CreateServiceAccount(
        service_accounts_pb2.CreateServiceAccountRequest(
            service_account=service_accounts_pb2.ServiceAccount(display_name="keel-orgs")
        ),
        metadata=authn.admin,
    )
    key = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id=account.id, api_key=api_keys_pb2.ApiKey(display_name="k")
        ),
        metadata=authn.admin,
    )
    return account.id, key.secret


async def test_exchanges_the_key_once_and_renews_before_expiry(authn: Authn) -> None:  # noqa: F811
    account_id, secret = await service_key(authn)
    credential = ServiceCredential(authn.tokens, secret, authn.clock)

    first = await credential.token()
    again = await credential.token()
    claims = jwt.decode(first, options={"verify_signature": False})
    lifetime = claims["exp"] - claims["iat"]
    authn.clock.advance(seconds=lifetime - RENEW_BEFORE.total_seconds() - 1)
    still = await credential.token()
    authn.clock.advance(seconds=2)
    renewed = await credential.token()
    metadata = await credential.metadata()

    assert claims["sub"] == account_id
    assert claims["typ"] == "service_account"
    assert first == again == still
    assert renewed != first
    assert metadata == (("authorization", f"Bearer {renewed}"),)


def test_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "orgs.key"
    path.write_text("keel_ak_x_y\n")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        read_api_key_file(path)
    os.chmod(path, 0o600)
    assert read_api_key_file(path) == "keel_ak_x_y"
