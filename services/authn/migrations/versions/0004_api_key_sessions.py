"""Revocations of API-key sessions: session ids up to 64 characters ("apikey:" + the key id).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Widens authn_revocations.session_id (batch mode: SQLite rebuilds the table)."""
    with op.batch_alter_table("authn_revocations") as batch:
        batch.alter_column(
            "session_id", type_=sa.String(64), existing_type=sa.String(36), existing_nullable=False
        )


def downgrade() -> None:
    """Narrows it back (fails while API-key session rows are stored)."""
    with op.batch_alter_table("authn_revocations") as batch:
        batch.alter_column(
            "session_id", type_=sa.String(36), existing_type=sa.String(64), existing_nullable=False
        )
