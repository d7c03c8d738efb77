"""After real flows, no table of authn holds a password, refresh token, API key or private key in clear."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from sqlalchemy import LargeBinary, String, Text, select

from keel.authn.v1 import api_keys_pb2, tokens_pb2, users_pb2
from services.authn.store import metadata
from tests.authn.conftest import Authn, bearer

PASSWORD = "correct horse battery"


async def test_secrets_never_stored_in_clear(authn: Authn) -> None:
    await authn.create_user("sec@example.test", PASSWORD)
    login = await authn.login("sec@example.test", PASSWORD)
    refreshed = await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            refresh_token=tokens_pb2.RefreshTokenGrant(refresh_token=login.refresh_token)
        )
    )
    key = await authn.api_keys.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(
            principal_id="me", api_key=api_keys_pb2.ApiKey(display_name="k"), request_id="scan-1"
        ),
        metadata=bearer(refreshed.access_token),
    )
    rotated = await authn.api_keys.RotateApiKey(
        api_keys_pb2.RotateApiKeyRequest(principal_id="me", api_key_id=key.api_key.id),
        metadata=bearer(refreshed.access_token),
    )
    await authn.users.ChangePassword(
        users_pb2.ChangePasswordRequest(current_password=PASSWORD, new_password="another long secret"),
        metadata=bearer(refreshed.access_token),
    )
    # A password typed into the e-mail field of a failed login.
    await authn.tokens.CreateToken(
        tokens_pb2.CreateTokenRequest(
            password=tokens_pb2.PasswordGrant(email="typo-secret@example.test", password="wrong password!")
        )
    ).code()
    signer = await authn.service.domain.signing_keys.signer()
    private_pem = signer.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    private_body = private_pem.splitlines()[1]

    secrets_in_clear = [
        PASSWORD,
        "another long secret",
        authn.admin_password,
        login.refresh_token,
        refreshed.refresh_token,
        login.refresh_token.removeprefix("keel_rt_"),
        key.secret,
        rotated.secret,
        # The random part after `keel_ak_<public id>_`; it may itself contain "_".
        key.secret.split("_", 3)[3],
        rotated.secret.split("_", 3)[3],
        private_body,
        "typo-secret",
    ]
    assert all(len(secret) >= 11 for secret in secrets_in_clear)  # a short needle would match by chance
    found: list[str] = []
    scanned = 0
    async with authn.service.domain.engine.connect() as conn:
        for table in metadata.sorted_tables:
            columns = [
                c
                for c in table.columns
                if isinstance(c.type, String | Text | LargeBinary) or "hash" in c.name
            ]
            rows = (await conn.execute(select(*columns))).all() if columns else []
            for row in rows:
                for value in row:
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    scanned += 1
                    for secret in secrets_in_clear:
                        if secret in text:
                            found.append(f"{table.name}: {secret[:6]}...")
    assert scanned > 20
    assert found == []
