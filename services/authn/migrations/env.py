"""Alembic environment of authn: everything is in the kit."""

from services.authn.store import metadata
from services.kit.migrations import run_env

run_env(metadata)
