"""Configuration of the authn service (KEEL_AUTHN_* environment variables)."""

from __future__ import annotations

import base64
import binascii

from pydantic import Field, SecretStr, field_validator, model_validator

from services.authn.signing_keys import SigningAlgorithm
from services.kit.config import ServiceSettings

_DAY = 86_400


class AuthnSettings(ServiceSettings):
    """Settings of authn on top of the ones every service shares."""

    # urlsafe base64 of 32 random bytes; every at-rest key of authn derives from it.
    # Generate one with:
    #   python -c "import base64,secrets;print(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())"
    authn_master_key: SecretStr
    authn_access_token_ttl_seconds: int = Field(default=900, ge=30, le=_DAY)
    authn_refresh_token_ttl_seconds: int = Field(default=30 * _DAY, ge=60, le=365 * _DAY)
    # Algorithm of newly generated signing keys; a change takes effect at the next rotation.
    # ES256 by default: every service verifies every request, and P-256 verification is
    # faster than Ed25519 with OpenSSL (bench/token_verification.py).
    authn_signing_algorithm: SigningAlgorithm = "ES256"
    authn_signing_key_rotation_days: float = Field(default=30, gt=0, le=365)
    # How often the background task looks whether a rotation or an expiry is due.
    authn_signing_key_check_seconds: float = Field(default=300, gt=0)
    # Clock skew tolerated by verifiers; retired keys stay published this much longer.
    authn_token_leeway_seconds: int = Field(default=60, ge=0, le=600)
    authn_api_key_default_grace_seconds: int = Field(default=_DAY, ge=0, le=30 * _DAY)
    # Single sign-on; disabled when the issuer is empty.
    authn_oidc_issuer: str = ""
    authn_oidc_client_id: str = ""
    authn_oidc_client_secret: SecretStr = SecretStr("")
    # Exact redirect URIs StartOidcLogin accepts (JSON list in the environment).
    authn_oidc_redirect_uris: tuple[str, ...] = ()
    authn_oidc_login_ttl_seconds: int = Field(default=600, ge=30, le=3600)
    # Login throttling: failures allowed within the window before a lockout starts.
    authn_login_max_failures_per_account: int = Field(default=5, ge=1)
    authn_login_max_failures_per_source: int = Field(default=50, ge=1)
    authn_login_failure_window_seconds: int = Field(default=900, ge=1)
    # Lockout after the limit: base * 2^(failures beyond the limit), capped.
    authn_login_lockout_base_seconds: float = Field(default=30, gt=0)
    authn_login_lockout_max_seconds: float = Field(default=3600, gt=0)
    # argon2id cost; the defaults follow RFC 9106's second recommendation
    # (t=3, 64 MiB, p=4). Tests lower them to keep the suite fast.
    authn_password_time_cost: int = Field(default=3, ge=1)
    authn_password_memory_kib: int = Field(default=65_536, ge=8)
    authn_password_parallelism: int = Field(default=4, ge=1)

    @field_validator("authn_master_key")
    @classmethod
    def _master_key_is_32_bytes(cls, value: SecretStr) -> SecretStr:
        master_key_bytes(value)
        return value

    @model_validator(mode="after")
    def _oidc_complete(self) -> AuthnSettings:
        if self.authn_oidc_issuer and not self.authn_oidc_client_id:
            raise ValueError("KEEL_AUTHN_OIDC_CLIENT_ID is required when KEEL_AUTHN_OIDC_ISSUER is set")
        if self.authn_password_memory_kib < 8 * self.authn_password_parallelism:
            raise ValueError("KEEL_AUTHN_PASSWORD_MEMORY_KIB must be at least 8 * parallelism")
        return self

    @property
    def oidc_enabled(self) -> bool:
        """Whether single sign-on is configured."""
        return bool(self.authn_oidc_issuer and self.authn_oidc_client_id)


def master_key_bytes(value: SecretStr) -> bytes:
    """The decoded master key; ValueError (without the key's text) when it is not 32 bytes."""
    text = value.get_secret_value().strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("must be urlsafe base64 of 32 random bytes") from None
    if len(raw) != 32:
        raise ValueError("must be urlsafe base64 of exactly 32 random bytes")
    return raw
