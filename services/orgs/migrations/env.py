"""Alembic environment of orgs: everything is in the kit."""

from services.kit.migrations import run_env
from services.orgs.store import metadata

run_env(metadata)
