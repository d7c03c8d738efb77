"""`python -m services.mesh` (`make run`): the whole Keel mesh on localhost, on the embedded default.

Creates the control plane's own service accounts, starts every service that
exists as its own process, waits until each reports SERVING, bootstraps the
first admin with a default organization and workspace (services/mesh/bootstrap.py),
prints the addresses, and on Ctrl-C or SIGTERM stops every child before exiting 0.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from services.mesh.bootstrap import (
    advertised_endpoint,
    create_default_organization,
    default_organization,
    ensure_service_accounts,
    service_account_environment,
    workspace_environment,
)
from services.mesh.catalog import IDENTITY_SERVICE, SERVICES, ServiceSpec, runnable_services
from services.mesh.master_key import ensure_master_key
from services.mesh.supervisor import (
    Child,
    ChildFailed,
    child_environment,
    exited_message,
    first_exited,
    log_tail,
    port_is_free,
    start_child,
    stop_all,
    wait_until_ready,
)

DEFAULT_ADMIN_EMAIL = "admin@keel.local"
LOWEST_DEFAULT_PORT = min(spec.default_port for spec in SERVICES if spec.probe == "grpc")


@dataclass(frozen=True)
class Options:
    data_dir: pathlib.Path
    host: str
    base_port: int | None
    ports: dict[str, int]
    ready_file: pathlib.Path | None
    admin_email: str
    startup_timeout: float
    stop_timeout: float


def parse_port_override(text: str) -> tuple[str, int]:
    """NAME=PORT, e.g. authn=60051."""
    name, sep, port = text.partition("=")
    known = {spec.name for spec in SERVICES}
    if not sep or name not in known or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected NAME=PORT with NAME one of {', '.join(sorted(known))}")
    return name, int(port)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m services.mesh", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=pathlib.Path(".keel-data"),
        help="SQLite files, master key and logs/ (default: .keel-data)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface every service listens on")
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help=f"shift every default port so that {LOWEST_DEFAULT_PORT} becomes this port",
    )
    parser.add_argument(
        "--port",
        action="append",
        type=parse_port_override,
        default=[],
        metavar="NAME=PORT",
        help="port of one service (repeatable); wins over --base-port",
    )
    parser.add_argument(
        "--ready-file",
        type=pathlib.Path,
        default=None,
        help="write the addresses and pids as JSON here once everything is ready",
    )
    parser.add_argument("--admin-email", default=DEFAULT_ADMIN_EMAIL, help="email of the bootstrapped admin")
    parser.add_argument("--startup-timeout", type=float, default=60.0, help="seconds for all to be SERVING")
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=20.0,
        help="seconds children get to drain after SIGTERM before SIGKILL",
    )
    args = parser.parse_args(argv)
    return Options(
        data_dir=args.data_dir.resolve(),
        host=args.host,
        base_port=args.base_port,
        ports=dict(args.port),
        ready_file=args.ready_file.resolve() if args.ready_file else None,
        admin_email=args.admin_email,
        startup_timeout=args.startup_timeout,
        stop_timeout=args.stop_timeout,
    )


def resolve_addresses(specs: Sequence[ServiceSpec], options: Options) -> dict[str, str]:
    """host:port of each service: an explicit --port, else the default shifted by --base-port."""
    shift = 0 if options.base_port is None else options.base_port - LOWEST_DEFAULT_PORT
    addresses = {}
    for spec in specs:
        port = options.ports.get(spec.name, spec.default_port + shift)
        addresses[spec.name] = f"{options.host}:{port}"
    return addresses


def check_ports_free(addresses: Mapping[str, str]) -> None:
    busy = [
        f"{name} ({address})" for name, address in addresses.items() if not port_is_free(*_host_port(address))
    ]
    if busy:
        raise ChildFailed(
            f"ports already in use: {', '.join(busy)}. Is another mesh running? "
            "Choose others with --base-port or --port NAME=PORT."
        )


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def secrets_for(spec: ServiceSpec, data_dir: pathlib.Path) -> dict[str, str]:
    """Secrets only the owning service receives; the authn master key is random per data dir."""
    if spec.name != IDENTITY_SERVICE:
        return {}
    key = os.environ.get("KEEL_AUTHN_MASTER_KEY") or ensure_master_key(data_dir)
    return {"KEEL_AUTHN_MASTER_KEY": key}


PASSWORD_PREFIX = "admin password: "


def bootstrap_admin(child: Child, env: Mapping[str, str], email: str, timeout: float) -> str | None:
    """Runs `python -m services.authn bootstrap-admin`, relays its stdout; the password when just created."""
    command = [sys.executable, "-m", child.spec.module_name, "bootstrap-admin", "--email", email]
    try:
        result = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
            command, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise ChildFailed(f"bootstrap-admin did not finish in {timeout:g}s") from error
    if result.stderr:
        with child.log_path.open("a", encoding="utf-8") as log:
            log.write(result.stderr)
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    if result.returncode != 0:
        raise ChildFailed(
            f"bootstrap-admin failed with code {result.returncode}; last lines of {child.log_path}:\n"
            f"{log_tail(child.log_path)}"
        )
    line = result.stdout.strip()
    return line.removeprefix(PASSWORD_PREFIX) if line.startswith(PASSWORD_PREFIX) else None


def ready_document(children: Sequence[Child], data_dir: pathlib.Path) -> dict[str, Any]:
    """What --ready-file holds: gRPC services, the gateway (if any), pids and folders."""
    services = {
        c.spec.name: {"address": c.address, "pid": c.process.pid} for c in children if c.spec.probe == "grpc"
    }
    gateway = next(
        ({"url": f"http://{c.address}", "pid": c.process.pid} for c in children if c.spec.probe == "tcp"),
        None,
    )
    return {
        "mesh_pid": os.getpid(),
        "data_dir": str(data_dir),
        "logs_dir": str(data_dir / "logs"),
        "services": services,
        "gateway": gateway,
        "default_organization": default_organization(data_dir),
    }


def write_ready_file(path: pathlib.Path, document: Mapping[str, Any]) -> None:
    """Written to a temporary name and renamed, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def print_summary(document: Mapping[str, Any]) -> None:
    lines = ["", "Keel mesh is running:"]
    lines += [f"  {name:<12} {entry['address']}" for name, entry in document["services"].items()]
    gateway = document["gateway"]
    lines.append(f"  {'gateway':<12} {gateway['url']}" if gateway else "  gateway      (not built yet)")
    lines += [f"Logs: {document['logs_dir']}/<service>.log", "Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def supervise(children: Sequence[Child]) -> None:
    """Returns never while all run; raises ChildFailed when one exits on its own."""
    idle = threading.Event()  # never set: its timed wait is interruptible by signals
    while True:
        gone = first_exited(children)
        if gone is not None:
            raise ChildFailed(exited_message(gone, gone.process.returncode))
        idle.wait(1.0)


def run(options: Options) -> int:
    specs = runnable_services()
    if not specs:
        print("mesh: no service packages found under services/", file=sys.stderr)
        return 1
    data_dir = options.data_dir
    (data_dir / "logs").mkdir(parents=True, exist_ok=True, mode=0o700)
    data_dir.chmod(0o700)
    addresses = resolve_addresses(specs, options)
    children: list[Child] = []
    envs: dict[str, dict[str, str]] = {}
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        check_ports_free(addresses)
        account_ids: dict[str, str] = {}
        identity_spec = next((spec for spec in specs if spec.name == IDENTITY_SERVICE), None)
        if identity_spec is not None:
            authn_env = child_environment(
                os.environ, identity_spec, addresses, data_dir, secrets_for(identity_spec, data_dir)
            )
            account_ids = ensure_service_accounts(
                identity_spec.module_name, list(addresses), authn_env, data_dir, options.startup_timeout
            )

        def start(spec: ServiceSpec, extra: Mapping[str, str]) -> Child:
            secrets = secrets_for(spec, data_dir) | dict(extra)
            secrets |= service_account_environment(spec.name, account_ids, data_dir)
            envs[spec.name] = child_environment(os.environ, spec, addresses, data_dir, secrets)
            child = start_child(spec, addresses[spec.name], envs[spec.name], data_dir / "logs")
            children.append(child)
            return child

        # The control plane first: the workspace servers register with it, with the credential of
        # the default workspace that its bootstrap creates.
        control = [start(spec, {}) for spec in specs if spec.plane == "control"]
        print(f"mesh: started {', '.join(c.spec.name for c in control)}; waiting for SERVING", flush=True)
        deadline = time.monotonic() + options.startup_timeout
        for child in control:
            wait_until_ready(child, deadline)
        identity = next((c for c in children if c.spec.name == IDENTITY_SERVICE), None)
        if identity is not None:
            password = bootstrap_admin(
                identity, envs[identity.spec.name], options.admin_email, options.startup_timeout
            )
            if password is not None and "orgs" in addresses and default_organization(data_dir) is None:
                print(
                    create_default_organization(
                        addresses, options.admin_email, password, data_dir, options.startup_timeout
                    ),
                    flush=True,
                )
        later = [spec for spec in specs if spec.plane != "control"]
        workspace_env = workspace_environment(data_dir)
        if workspace_env is None and any(spec.plane == "workspace" for spec in later):
            print("mesh: no default workspace credential in this data folder: workspace services skipped")
            later = [spec for spec in later if spec.plane != "workspace"]
        rest = [start(spec, (workspace_env or {}) | advertised_endpoint(spec, addresses)) for spec in later]
        if rest:
            print(f"mesh: started {', '.join(c.spec.name for c in rest)}; waiting for SERVING", flush=True)
        for child in rest:
            wait_until_ready(child, deadline)
        document = ready_document(children, data_dir)
        if options.ready_file is not None:
            write_ready_file(options.ready_file, document)
        print_summary(document)
        supervise(children)
    except KeyboardInterrupt:
        print("\nmesh: stopping", flush=True)
    except ChildFailed as error:
        print(f"mesh: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        # A second Ctrl-C must not cut the orderly stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_all(children, options.stop_timeout)
        if options.ready_file is not None:
            options.ready_file.unlink(missing_ok=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
