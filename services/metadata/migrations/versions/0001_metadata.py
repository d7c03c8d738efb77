"""Workspace identity, projects, stacks and components, code repositories, remembered request ids.

Revision ID: 0001_metadata
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_metadata"
down_revision = None
branch_labels = None
depends_on = None


def _time(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _text(name: str, length: int) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def _stamps() -> list[sa.Column[object]]:
    return [_time("create_time"), _time("update_time"), sa.Column("version", sa.Integer, nullable=False)]


def upgrade() -> None:
    """Creates the tables of 0001."""
    op.create_table(
        "metadata_workspace",
        sa.Column("workspace_id", sa.String(36), primary_key=True),
        _text("organization_id", 64),
        _time("register_time"),
    )
    op.create_table(
        "metadata_projects",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("name", 100),
        _text("display_name", 100),
        _text("description", 1000),
        *_stamps(),
        sa.UniqueConstraint("name", name="uq_metadata_projects_name"),
    )
    op.create_index("ix_metadata_projects_create", "metadata_projects", ["create_time", "id"])
    op.create_table(
        "metadata_components",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("name", 100),
        _text("type", 32),
        _text("flavor", 64),
        sa.Column("configuration", sa.JSON, nullable=False),
        _text("connector_id", 64),
        _text("description", 1000),
        *_stamps(),
        sa.UniqueConstraint("type", "name", name="uq_metadata_components_type_name"),
    )
    op.create_index("ix_metadata_components_create", "metadata_components", ["create_time", "id"])
    op.create_table(
        "metadata_stacks",
        sa.Column("id", sa.String(36), primary_key=True),
        _text("name", 100),
        _text("description", 1000),
        *_stamps(),
        sa.UniqueConstraint("name", name="uq_metadata_stacks_name"),
    )
    op.create_index("ix_metadata_stacks_create", "metadata_stacks", ["create_time", "id"])
    op.create_table(
        "metadata_stack_components",
        sa.Column(
            "stack_id",
            sa.String(36),
            sa.ForeignKey("metadata_stacks.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("type", sa.String(32), primary_key=True),
        sa.Column("component_id", sa.String(36), sa.ForeignKey("metadata_components.id"), nullable=False),
    )
    op.create_index("ix_metadata_stack_components_component", "metadata_stack_components", ["component_id"])
    op.create_table(
        "metadata_code_repositories",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(36), sa.ForeignKey("metadata_projects.id"), nullable=False),
        _text("name", 100),
        _text("type", 32),
        _text("url", 2048),
        _text("credentials_ref", 256),
        _text("description", 1000),
        *_stamps(),
        sa.UniqueConstraint("project_id", "name", name="uq_metadata_code_repositories_project_name"),
    )
    op.create_index(
        "ix_metadata_code_repositories_project_create",
        "metadata_code_repositories",
        ["project_id", "create_time", "id"],
    )
    op.create_table(
        "metadata_request_ids",
        _text("method", 200),
        _text("principal", 255),
        _text("request_id", 64),
        sa.Column("response", sa.LargeBinary, nullable=False),
        _time("create_time"),
        sa.PrimaryKeyConstraint("method", "principal", "request_id", name="pk_metadata_request_ids"),
    )
    op.create_index("ix_metadata_request_ids_create_time", "metadata_request_ids", ["create_time"])


def downgrade() -> None:
    """Drops the tables of 0001."""
    for table in (
        "metadata_request_ids",
        "metadata_code_repositories",
        "metadata_stack_components",
        "metadata_stacks",
        "metadata_components",
        "metadata_projects",
        "metadata_workspace",
    ):
        op.drop_table(table)
