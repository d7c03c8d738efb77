"""The local mesh (`python -m services.mesh`) as a user runs it: real processes on free ports.

Every listed service must answer grpc health and reflection, the admin password
is printed exactly once per data folder, and SIGINT leaves no child behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from keel.orgs.v1 import organizations_pb2, organizations_pb2_grpc, workspaces_pb2, workspaces_pb2_grpc
from services.mesh.catalog import SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_SECONDS = 90.0
STOP_TIMEOUT_SECONDS = 60.0
PASSWORD_PREFIX = "admin password: "


@dataclass
class Mesh:
    """One running `python -m services.mesh` and where its output goes."""

    process: subprocess.Popen[bytes]
    output: Path
    ready_file: Path

    def text(self) -> str:
        return self.output.read_text(encoding="utf-8", errors="replace")


StartMesh = Callable[[Path], Mesh]


def free_ports(count: int) -> list[int]:
    """Ports the OS reports free; all sockets are held until every port is chosen, so none repeats."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def port_arguments() -> list[str]:
    """--port NAME=PORT for every service the mesh knows, each on a free port."""
    arguments: list[str] = []
    for spec, port in zip(SERVICES, free_ports(len(SERVICES)), strict=True):
        arguments += ["--port", f"{spec.name}={port}"]
    return arguments


def wait_for_ready_file(mesh: Mesh) -> dict[str, Any]:
    """Polls for the ready file until a deadline; fails with the mesh's output if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not mesh.ready_file.exists():
        if mesh.process.poll() is not None:
            pytest.fail(f"mesh exited with {mesh.process.returncode} before ready:\n{mesh.text()}")
        if time.monotonic() > deadline:
            pytest.fail(f"mesh not ready after {START_TIMEOUT_SECONDS:g}s:\n{mesh.text()}")
        # The pause between polls ends early if the mesh exits.
        with contextlib.suppress(subprocess.TimeoutExpired):
            mesh.process.wait(timeout=0.2)
    document: dict[str, Any] = json.loads(mesh.ready_file.read_text(encoding="utf-8"))
    return document


def stop(mesh: Mesh) -> int:
    """SIGINT, as Ctrl-C does, and the mesh's exit code."""
    mesh.process.send_signal(signal.SIGINT)
    return mesh.process.wait(timeout=STOP_TIMEOUT_SECONDS)


@pytest.fixture
def start_mesh(tmp_path: Path) -> Iterator[StartMesh]:
    """Starts meshes on free ports; any still running at the end is interrupted, then killed."""
    started: list[Mesh] = []

    def start(data_dir: Path) -> Mesh:
        run = len(started)
        output = tmp_path / f"mesh-{run}.out"
        ready_file = tmp_path / f"ready-{run}.json"
        command = [sys.executable, "-m", "services.mesh", "--data-dir", str(data_dir)]
        command += ["--ready-file", str(ready_file), *port_arguments()]
        with output.open("wb") as sink:
            process = subprocess.Popen(
                command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
            )
        mesh = Mesh(process=process, output=output, ready_file=ready_file)
        started.append(mesh)
        return mesh

    yield start
    for mesh in started:
        if mesh.process.poll() is None:
            mesh.process.send_signal(signal.SIGINT)
            try:
                mesh.process.wait(timeout=STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                mesh.process.kill()
                mesh.process.wait()


def health_status(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=5
        )
    return int(reply.status)


def reflected_services(address: str) -> set[str]:
    """Service names the server lists over grpc reflection (v1alpha ListServices)."""
    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return {service.name for reply in replies for service in reply.list_services_response.service}


def process_exists(pid: int) -> bool:
    """True while the pid names a live process (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except FileNotFoundError:
        return False
    except OSError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 0)
            return True
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


def password_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(PASSWORD_PREFIX)]


@pytest.mark.timeout(300)
def test_mesh_services_serve_health_and_reflection_and_sigint_stops_every_child(
    start_mesh: StartMesh, tmp_path: Path
) -> None:
    mesh = start_mesh(tmp_path / "data")
    ready = wait_for_ready_file(mesh)
    services: dict[str, dict[str, Any]] = ready["services"]
    assert "authn" in services, ready

    for name, entry in services.items():
        assert health_status(entry["address"]) == health_pb2.HealthCheckResponse.SERVING, name
        listed = reflected_services(entry["address"])
        assert "grpc.health.v1.Health" in listed, (name, listed)
        assert any(service.startswith(f"keel.{name}.") for service in listed), (name, listed)

    child_pids = [entry["pid"] for entry in services.values()]
    if ready["gateway"] is not None:
        child_pids.append(ready["gateway"]["pid"])
    assert all(process_exists(pid) for pid in child_pids)

    assert stop(mesh) == 0, mesh.text()
    assert [pid for pid in child_pids if process_exists(pid)] == []
    assert not mesh.ready_file.exists()


@pytest.mark.timeout(400)
def test_admin_password_is_printed_once_per_data_dir(start_mesh: StartMesh, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"

    first = start_mesh(data_dir)
    wait_for_ready_file(first)
    assert stop(first) == 0, first.text()
    printed = password_lines(first.text())
    assert len(printed) == 1, first.text()
    password = printed[0].removeprefix(PASSWORD_PREFIX).strip()
    assert len(password) >= 12
    assert (data_dir / "master.key").stat().st_mode & 0o777 == 0o600
    keys = sorted(path.name for path in (data_dir / "keys").iterdir())
    assert keys == ["authn.key", "orgs.key", "rbac.key", "workspace-default.key"]
    assert all((data_dir / "keys" / name).stat().st_mode & 0o777 == 0o600 for name in keys)
    defaults = json.loads((data_dir / "default-organization.json").read_text())

    second = start_mesh(data_dir)
    ready = wait_for_ready_file(second)
    try:
        organization = admin_view_of_default_organization(ready, password, defaults)
    finally:
        assert stop(second) == 0, second.text()
    assert password_lines(second.text()) == [], second.text()
    assert ready["default_organization"] == defaults
    # The admin is the default organization's Admin and its workspace exists (no second one was
    # made), ACTIVE: the mesh's metadata server registered for it with the workspace credential.
    assert organization == ("Default", [("default", "ACTIVE")], "organization_admin")


def admin_view_of_default_organization(
    ready: dict[str, Any], password: str, defaults: dict[str, str]
) -> tuple[str, list[tuple[str, str]], str]:
    """(organization name, workspace names and states, the admin's member role) as the admin sees them."""
    services = ready["services"]
    with grpc.insecure_channel(services["authn"]["address"]) as authn:
        login = tokens_pb2_grpc.TokenServiceStub(authn).CreateToken(
            tokens_pb2.CreateTokenRequest(
                password=tokens_pb2.PasswordGrant(email="admin@keel.local", password=password)
            ),
            timeout=10,
        )
    metadata = (("authorization", f"Bearer {login.access_token}"),)
    organization_id = defaults["organization_id"]
    with grpc.insecure_channel(services["orgs"]["address"]) as orgs:
        organization = organizations_pb2_grpc.OrganizationServiceStub(orgs).GetOrganization(
            organizations_pb2.GetOrganizationRequest(organization_id=organization_id),
            metadata=metadata,
            timeout=10,
        )
        workspaces = workspaces_pb2_grpc.WorkspaceServiceStub(orgs).ListWorkspaces(
            workspaces_pb2.ListWorkspacesRequest(organization_id=organization_id),
            metadata=metadata,
            timeout=10,
        )
        member = organizations_pb2_grpc.MemberServiceStub(orgs).GetMember(
            organizations_pb2.GetMemberRequest(organization_id=organization_id, user_id="me"),
            metadata=metadata,
            timeout=10,
        )
    listed = [(w.display_name, workspaces_pb2.WorkspaceState.Name(w.state)) for w in workspaces.workspaces]
    return organization.display_name, listed, member.role_id
