"""Command line of RBAC: serve (default), `migrate`, `bootstrap-org-admin --organization-id O --user-id U`.

`roles-table` prints the built-in roles table that docs/rbac.md carries.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.kit.clock import SystemClock
from services.kit.config import load_settings
from services.kit.db import create_engine_from_settings
from services.kit.logs import setup_logging
from services.kit.telemetry import setup_tracing, shutdown_tracing
from services.rbac.catalog import markdown_table
from services.rbac.server import SERVICE_NAME, build_domain, build_service, migrate
from services.rbac.settings import RbacSettings


async def _serve(settings: RbacSettings) -> None:
    service = build_service(settings)
    await service.start()
    try:
        await service.server.serve_until_signalled()
    finally:
        await service.stop()


async def _migrate(settings: RbacSettings) -> None:
    engine = create_engine_from_settings(settings, SERVICE_NAME)
    try:
        await migrate(engine, settings)
    finally:
        await engine.dispose()


async def _bootstrap_org_admin(settings: RbacSettings, organization_id: str, user_id: str) -> str:
    engine = create_engine_from_settings(settings, SERVICE_NAME)
    try:
        await migrate(engine, settings)
        domain = build_domain(settings, engine, SystemClock())
        binding = await domain.administration.bootstrap_organization_admin(organization_id, user_id)
    finally:
        await engine.dispose()
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
        asyncio.run(_migrate(settings))
        return 0
    if args.command == "bootstrap-org-admin":
        line = asyncio.run(_bootstrap_org_admin(settings, args.organization_id, args.user_id))
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return 0
    setup_tracing(SERVICE_NAME, settings.otlp_endpoint)
    try:
        asyncio.run(_serve(settings))
    finally:
        shutdown_tracing()
    return 0


if __name__ == "__main__":
    sys.exit(main())
