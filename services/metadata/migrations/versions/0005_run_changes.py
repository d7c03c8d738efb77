"""The run change log (WatchRun / WatchRuns) and its commit-ordered counter.

Revision ID: 0005_run_changes
Revises: 0004_open_runs_index
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_run_changes"
down_revision = "0004_open_runs_index"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the change log and the counter row (sequence 0, nothing purged)."""
    op.create_table(
        "metadata_run_changes",
        sa.Column("sequence", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("step_run_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("change_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pipeline_id", sa.String(36), nullable=False),
        sa.Column("snapshot_id", sa.String(36), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("run", sa.JSON(), nullable=False),
        sa.Column("step_run", sa.JSON(), nullable=True),
    )
    op.create_index("ix_metadata_run_changes_run", "metadata_run_changes", ["run_id", "sequence"])
    op.create_index(
        "ix_metadata_run_changes_project", "metadata_run_changes", ["project_id", "step_run_id", "sequence"]
    )
    op.create_index("ix_metadata_run_changes_time", "metadata_run_changes", ["change_time"])
    counter = op.create_table(
        "metadata_run_change_counter",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("purged_through", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(counter, [{"id": 1, "last_sequence": 0, "purged_through": 0}])


def downgrade() -> None:
    """Drops both tables."""
    op.drop_table("metadata_run_change_counter")
    op.drop_table("metadata_run_changes")
