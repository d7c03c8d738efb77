"""Initial authn schema: users, identities, service accounts, API keys, refresh families, signing keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Creates every authn table."""
    op.create_table(
        "users",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("email", sa.String(320), nullable=True, unique=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("platform_admin", sa.Boolean, nullable=False),
        sa.Column("password_hash", sa.Text, nullable=True),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "external_identities",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("issuer", sa.String(500), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("email", sa.String(320), nullable=True),
        _time("create_time"),
        sa.UniqueConstraint("issuer", "subject", name="uq_external_identities_issuer_subject"),
    )
    op.create_index("ix_external_identities_user_id", "external_identities", ["user_id"])
    op.create_table(
        "service_accounts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False, unique=True),
        sa.Column("description", sa.String(1000), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("creator_id", sa.String(36), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.Column("version", sa.Integer, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("principal_id", sa.String(36), nullable=False),
        sa.Column("principal_kind", sa.String(16), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("public_id", sa.String(16), nullable=False),
        _time("expire_time", nullable=True),
        _time("last_use_time", nullable=True),
        _time("create_time"),
        _time("rotate_time", nullable=True),
        _time("revoke_time", nullable=True),
    )
    op.create_index("ix_api_keys_principal_id", "api_keys", ["principal_id"])
    op.create_table(
        "api_key_secrets",
        sa.Column("public_id", sa.String(16), primary_key=True),
        sa.Column("api_key_id", sa.String(36), sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        _time("create_time"),
        _time("expire_time", nullable=True),
    )
    op.create_index("ix_api_key_secrets_api_key_id", "api_key_secrets", ["api_key_id"])
    op.create_table(
        "refresh_families",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id"), nullable=False),
        _time("create_time"),
        _time("revoke_time", nullable=True),
        sa.Column("revoke_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_refresh_families_user_id", "refresh_families", ["user_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(36), sa.ForeignKey("refresh_families.id"), nullable=False),
        _time("create_time"),
        _time("expire_time"),
        _time("spent_time", nullable=True),
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"])
    op.create_table(
        "signing_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("private_key_sealed", sa.LargeBinary, nullable=False),
        sa.Column("public_x", sa.String(128), nullable=False),
        sa.Column("public_y", sa.String(128), nullable=False, server_default=""),
        _time("create_time"),
        _time("retire_time", nullable=True),
        _time("expire_time", nullable=True),
    )
    op.create_index(
        "uq_signing_keys_one_current",
        "signing_keys",
        ["state"],
        unique=True,
        sqlite_where=sa.text("state = 'current'"),
        postgresql_where=sa.text("state = 'current'"),
    )
    op.create_table(
        "login_throttle",
        sa.Column("throttle_key", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        _time("last_failure_time"),
        _time("locked_until", nullable=True),
    )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("code_verifier_sealed", sa.LargeBinary, nullable=False),
        sa.Column("nonce_sealed", sa.LargeBinary, nullable=False),
        sa.Column("redirect_uri", sa.String(2000), nullable=False),
        _time("create_time"),
        _time("expire_time"),
    )
    op.create_index("ix_oidc_logins_expire_time", "oidc_logins", ["expire_time"])
    # The kit's idempotency table (services.kit.idempotency.idempotency_table).
    op.create_table(
        "request_ids",
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=False),
        _time("create_time"),
        sa.PrimaryKeyConstraint("method", "principal", "request_id", name="pk_request_ids"),
    )
    op.create_index("ix_request_ids_create_time", "request_ids", ["create_time"])


def downgrade() -> None:
    """Drops every authn table."""
    for table in (
        "request_ids",
        "oidc_logins",
        "login_throttle",
        "signing_keys",
        "refresh_tokens",
        "refresh_families",
        "api_key_secrets",
        "api_keys",
        "service_accounts",
        "external_identities",
        "users",
    ):
        op.drop_table(table)
