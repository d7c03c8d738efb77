"""Starts the mesh's child processes, waits until they serve, and stops them.

Each child writes its JSON log lines to <data dir>/logs/<service>.log; when a
child dies early, the error quotes the tail of that file.
"""

from __future__ import annotations

import contextlib
import ctypes
import pathlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.mesh.catalog import ServiceSpec

PR_SET_PDEATHSIG = 1
# How often a not-yet-ready child is probed again (the pause also returns at once if it exits).
PROBE_INTERVAL_SECONDS = 0.2


class ChildFailed(Exception):
    """A child exited, or did not become ready in time; the message says which and why."""


@dataclass
class Child:
    """A running service process of the mesh."""

    spec: ServiceSpec
    address: str
    process: subprocess.Popen[bytes]
    log_path: pathlib.Path


def log_tail(path: pathlib.Path, lines: int = 20) -> str:
    """The last lines of a child's log file, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, SIGTERM it if the mesh itself dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (checked by binding it briefly)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def start_child(spec: ServiceSpec, address: str, env: Mapping[str, str], log_dir: pathlib.Path) -> Child:
    """Starts `python -m <module>` with its output appended to <log_dir>/<name>.log."""
    log_path = log_dir / f"{spec.name}.log"
    with log_path.open("ab") as log:
        # The command is this interpreter and a module name from the catalog, never user input.
        process = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", spec.module_name],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # only calls prctl, between fork and exec
        )
    return Child(spec=spec, address=address, process=process, log_path=log_path)


def grpc_serving(address: str, timeout: float) -> bool:
    """One grpc.health.v1 Check of the whole server ("" service): True when SERVING."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def tcp_accepting(address: str, timeout: float) -> bool:
    """True when the address accepts a TCP connection (used for the HTTP gateway)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def is_ready(child: Child, timeout: float) -> bool:
    """Runs the child's readiness probe once."""
    if child.spec.probe == "grpc":
        return grpc_serving(child.address, timeout)
    return tcp_accepting(child.address, timeout)


def exited_message(child: Child, code: int) -> str:
    return (
        f"{child.spec.name} exited with code {code}; last lines of {child.log_path}:\n"
        f"{log_tail(child.log_path)}"
    )


def wait_until_ready(child: Child, deadline: float) -> None:
    """Probes the child until it is ready, it exits, or the monotonic deadline passes."""
    while True:
        code = child.process.poll()
        if code is not None:
            raise ChildFailed(exited_message(child, code))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ChildFailed(
                f"{child.spec.name} was not ready at {child.address} in time; "
                f"last lines of {child.log_path}:\n{log_tail(child.log_path)}"
            )
        if is_ready(child, min(1.0, remaining)):
            return
        # The pause between probes ends early when the child exits.
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=min(PROBE_INTERVAL_SECONDS, max(remaining, 0.0)))


def first_exited(children: Sequence[Child]) -> Child | None:
    """A child that has exited, if any."""
    return next((child for child in children if child.process.poll() is not None), None)


def stop_all(children: Sequence[Child], timeout: float) -> None:
    """SIGTERM to every child, wait for all up to `timeout` seconds, then SIGKILL what is left."""
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.process.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            print(f"mesh: {child.spec.name} did not stop in {timeout:g}s; killing it", file=sys.stderr)
            child.process.kill()
            child.process.wait()


def child_environment(
    base: Mapping[str, str],
    spec: ServiceSpec,
    addresses: Mapping[str, str],
    data_dir: pathlib.Path,
    secrets: Mapping[str, str],
) -> dict[str, str]:
    """The environment of one child: the mesh's own, plus its address, the others' and the data dir.

    Every child learns every address as KEEL_<NAME>_ADDRESS; only the child that
    owns a secret receives it (`secrets` is already filtered for this child).
    """
    env = dict(base)
    env.update({f"KEEL_{name.upper()}_ADDRESS": address for name, address in addresses.items()})
    env.update(
        {
            "KEEL_LISTEN_ADDRESS": addresses[spec.name],
            "KEEL_DATA_DIR": str(data_dir),
            # The embedded default: one SQLite file per service under the data dir.
            "KEEL_DATABASE_URL": "",
            "PYTHONUNBUFFERED": "1",
        }
    )
    # No load balancer to notice NOT_SERVING on a laptop: a short drain keeps Ctrl-C quick.
    env.setdefault("KEEL_DRAIN_SECONDS", "1")
    env.update(secrets)
    return env
