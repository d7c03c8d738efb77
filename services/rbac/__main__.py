"""Command line of RBAC: serve (default), `migrate`, `bootstrap-org-admin --organization-id O --user-id U`.

`roles-table` prints the built-in roles table that docs/rbac.md carries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from sqlalchemy.ext.asyncio import AsyncEngine

from services.kit.cli import serve, with_engine
from services.kit.clock import SystemClock
from services.kit.config import load_settings
from services.kit.logs import setup_logging
from services.rbac.catalog import markdown_table
from services.rbac.server import SERVICE_NAME, build_domain, build_service, migrate
from services.rbac.settings import RbacSettings


async def _bootstrap_org_admin(
    settings: RbacSettings, engine: AsyncEngine, organization_id: str, user_id: str
) -> str:
    await migrate(engine, settings)
    domain = build_domain(settings, engine, SystemClock())
    binding = await domain.administration.bootstrap_organization_admin(organization_id, user_id)
    return f"organization admin binding: {binding.id} (revision {binding.revision})"


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.rbac", description="Keel RBAC service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    bootstrap = commands.add_parser(
        "bootstrap-org-admin", help="bind organization Admin to a user (no-op when already bound)"
    )
    bootstrap.add_argument("--organization-id", required=True, help="id of the organization")
    bootstrap.add_argument("--user-id", required=True, help="authn id of the user")
    commands.add_parser("roles-table", help="print the built-in roles table of docs/rbac.md")
    args = parser.parse_args(argv)
    if args.command == "roles-table":
        sys.stdout.write(markdown_table())
        return 0
    settings = load_settings(RbacSettings)
    setup_logging(SERVICE_NAME, settings.log_level)
    if args.command == "migrate":
        asyncio.run(with_engine(settings, SERVICE_NAME, lambda engine: migrate(engine, settings)))
        return 0
    if args.command == "bootstrap-org-admin":
        line = asyncio.run(
            with_engine(
                settings,
                SERVICE_NAME,
                lambda engine: _bootstrap_org_admin(settings, engine, args.organization_id, args.user_id),
            )
        )
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return 0
    return serve(SERVICE_NAME, settings, lambda: build_service(settings))


if __name__ == "__main__":
    sys.exit(main())
