"""ServiceCredential against a real authn: key exchange, caching, renewal before expiry, key-file rules."""

from __future__ import annotations

import os
from pathlib import Path

import jwt
import pytest

from services.kit.service_identity import RENEW_BEFORE, ServiceCredential, read_api_key_file
from tests.authn.conftest import Authn, authn, clock  # noqa: F401  (fixtures)


async def test_exchanges_the_key_once_and_renews_before_expiry(authn: Authn) -> None:  # noqa: F811
    account_id, secret = await authn.service_account_key("keel-orgs")
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
