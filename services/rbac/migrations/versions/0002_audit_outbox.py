"""RBAC's audit outbox (services.kit.audit.audit_outbox_table): events written with each change.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the outbox with its index of unsent rows and its index for purging sent ones."""
    op.create_table(
        "rbac_audit_outbox",
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("event_id", sa.String(36), nullable=False, unique=True),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("occur_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_time", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_rbac_audit_outbox_unsent",
        "rbac_audit_outbox",
        ["seq"],
        sqlite_where=sa.text("sent_time IS NULL"),
        postgresql_where=sa.text("sent_time IS NULL"),
    )
    op.create_index("ix_rbac_audit_outbox_sent_time", "rbac_audit_outbox", ["sent_time"])


def downgrade() -> None:
    """Drops the outbox."""
    op.drop_table("rbac_audit_outbox")
