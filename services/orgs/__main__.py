"""Command line of orgs: serve (default), `migrate`, `verify-audit --organization-id O`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.kit.cli import serve, with_engine
from services.kit.config import load_settings
from services.kit.logs import setup_logging
from services.orgs.audit_cli import verify_audit_command
from services.orgs.server import SERVICE_NAME, build_service, migrate
from services.orgs.settings import OrgsSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.orgs", description="Keel orgs service")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    verify_audit = commands.add_parser(
        "verify-audit", help="verify an organization's audit hash chain (exit 1 at a broken link)"
    )
    verify_audit.add_argument(
        "--organization-id", required=True, help="id of the organization ('' for installation-wide events)"
    )
    args = parser.parse_args(argv)
    settings = load_settings(OrgsSettings)
    setup_logging(SERVICE_NAME, settings.log_level)
    if args.command == "migrate":
        asyncio.run(with_engine(settings, SERVICE_NAME, lambda engine: migrate(engine, settings)))
        return 0
    if args.command == "verify-audit":
        return verify_audit_command(settings, args.organization_id)
    return serve(SERVICE_NAME, settings, lambda: build_service(settings))


if __name__ == "__main__":
    sys.exit(main())
