"""Create gadgets, which belong to widgets.

Revision ID: r0002
Revises: r0001
"""

import sqlalchemy as sa
from alembic import op

revision: str = "r0002"
down_revision: str | None = "r0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "gadgets",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("widget_id", sa.String(36), sa.ForeignKey("widgets.id"), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("gadgets")
