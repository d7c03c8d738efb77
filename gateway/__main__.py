"""Command line of the gateway: `serve` (default) and `openapi` (print the OpenAPI document)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import uvloop

from gateway.app import build_gateway, create_app
from gateway.bindings import BindingError
from gateway.routes import RouteConflict
from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from services.kit.config import load_settings
from services.kit.logs import setup_logging
from services.kit.telemetry import setup_tracing, shutdown_tracing

SERVICE_NAME = "gateway"


async def _serve(settings: GatewaySettings) -> None:
    # Built inside the loop: the backend channels bind to the running loop.
    app = create_app(settings)
    server = GatewayServer(
        app, settings.listen_host, settings.listen_port, drain_seconds=settings.drain_seconds
    )
    await server.serve_until_signalled()


async def _document(settings: GatewaySettings) -> bytes:
    gateway = build_gateway(settings)
    await gateway.backends.close()
    return gateway.openapi


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m gateway", description="Keel REST gateway")
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="serve HTTP on KEEL_LISTEN_ADDRESS (the default)")
    commands.add_parser("openapi", help="print the OpenAPI document of the configured backends and exit")
    args = parser.parse_args(argv)
    settings = load_settings(GatewaySettings)
    setup_logging(SERVICE_NAME, settings.log_level)
    try:
        if args.command == "openapi":
            print(json.dumps(json.loads(asyncio.run(_document(settings))), indent=2))
            return 0
        setup_tracing(SERVICE_NAME, settings.otlp_endpoint)
        try:
            # uvloop: the event loop's own work is a large part of a proxied call's cost.
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(_serve(settings))
        finally:
            shutdown_tracing()
    except (BindingError, RouteConflict) as error:
        # A contract the gateway cannot serve: say which RPCs, without a traceback.
        print(f"gateway: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
