"""Ownership as a relation: `rbac_ownerships`, filled from the "owner" role bindings it replaces.

Each resource's first user or service-account "owner" binding (earliest
create_time, then id) becomes its ownership row, keeping the binding's id, and
leaves `rbac_role_bindings`. Any other "owner" binding (a team's, a second
owner bound through CreateRoleBinding) stays a binding: it grants exactly what
it granted before, as a share of the built-in owner role.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_MOVE = """
    INSERT INTO rbac_ownerships (organization_id, resource_type, resource_id, id, workspace_id,
        project_id, owner_kind, owner_id, create_time)
    SELECT b.organization_id, b.resource_type, b.resource_id, b.id, b.workspace_id, b.project_id,
        b.subject_kind, b.subject_id, b.create_time
    FROM rbac_role_bindings b
    -- The binding that becomes the ownership: no earlier owner binding of a user/service account on it.
    WHERE b.role_id = 'owner' AND b.level = 'resource'
    AND b.subject_kind IN ('user', 'service_account')
    AND NOT EXISTS (
        SELECT 1 FROM rbac_role_bindings o
        WHERE o.role_id = 'owner' AND o.level = 'resource'
          AND o.subject_kind IN ('user', 'service_account')
          AND o.organization_id = b.organization_id
          AND o.resource_type = b.resource_type
          AND o.resource_id = b.resource_id
          AND (o.create_time < b.create_time OR (o.create_time = b.create_time AND o.id < b.id))
    )
"""


def _id(name: str, length: int = 64) -> sa.Column[object]:
    return sa.Column(name, sa.String(length), nullable=False)


def upgrade() -> None:
    """Creates the ownerships table, moves the owner bindings into it."""
    op.create_table(
        "rbac_ownerships",
        sa.Column("organization_id", sa.String(64), primary_key=True),
        sa.Column("resource_type", sa.String(64), primary_key=True),
        sa.Column("resource_id", sa.String(64), primary_key=True),
        _id("id", 36),
        _id("workspace_id"),
        _id("project_id"),
        _id("owner_kind", 16),
        _id("owner_id"),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(
        "ix_rbac_ownerships_owner",
        "rbac_ownerships",
        [
            "organization_id",
            "owner_kind",
            "owner_id",
            "resource_type",
            "workspace_id",
            "project_id",
            "resource_id",
        ],
    )
    op.execute(_MOVE)
    op.execute("DELETE FROM rbac_role_bindings WHERE id IN (SELECT id FROM rbac_ownerships)")


def downgrade() -> None:
    """Turns every ownership back into an "owner" binding on its resource, and drops the table."""
    op.execute(
        "INSERT INTO rbac_role_bindings (id, organization_id, subject_kind, subject_id, role_id,"
        " workspace_id, project_id, resource_type, resource_id, level, create_time, revision)"
        " SELECT id, organization_id, owner_kind, owner_id, 'owner', workspace_id, project_id,"
        " resource_type, resource_id, 'resource', create_time, 0 FROM rbac_ownerships"
    )
    op.drop_table("rbac_ownerships")
