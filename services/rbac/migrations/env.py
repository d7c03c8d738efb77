"""Alembic environment of RBAC: everything is in the kit."""

from services.kit.migrations import run_env
from services.rbac.store import metadata

run_env(metadata)
