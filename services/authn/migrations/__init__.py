"""Alembic migrations of authn (applied by services.kit.migrations.upgrade_to_head)."""
