"""authn's revocation feed: revoked subjects and sessions, numbered in commit order by a counter row.

Revision ID: 0003
Revises: 0002
Create Date: 2025-06-15
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the feed with its expiry index, and the counter row that numbers it."""
    op.create_table(
        "authn_revocations",
        sa.Column("sequence", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("subject_id", sa.String(36), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("revoke_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_authn_revocations_expire_time", "authn_revocations", ["expire_time"])
    counter = op.create_table(
        "authn_revocation_counter",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_sequence", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "last_sequence": 0}])


def downgrade() -> None:
    """Drops the feed and its counter."""
    op.drop_table("authn_revocation_counter")
    op.drop_table("authn_revocations")
