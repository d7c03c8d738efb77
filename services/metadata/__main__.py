"""Command line of the metadata service (workspace server): serve (default) or `migrate`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from services.kit.cli import serve, with_engine
from services.kit.config import load_settings
from services.kit.logs import setup_logging
from services.metadata.identity import IdentityError
from services.metadata.server import SERVICE_NAME, build_service, migrate
from services.metadata.settings import MetadataSettings


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m services.metadata", description="Keel workspace server")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve gRPC (the default)")
    commands.add_parser("migrate", help="apply database migrations and exit")
    args = parser.parse_args(argv)
    settings = load_settings(MetadataSettings)
    setup_logging(SERVICE_NAME, settings.log_level)
    if args.command == "migrate":
        asyncio.run(with_engine(settings, SERVICE_NAME, lambda engine: migrate(engine, settings)))
        return 0
    try:
        return serve(SERVICE_NAME, settings, lambda: build_service(settings))
    except IdentityError as error:
        # Refusing to start is expected operation, not a crash: one clear line, no traceback.
        print(f"metadata: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
