"""What the local mesh sets up besides starting processes.

- Mesh service accounts: before the services start, authn's
  `bootstrap-service-account` creates one service account per control-plane
  service (keel-authn, keel-rbac, keel-orgs) with its API key in a 0600 file
  under <data dir>/keys; every service learns the ids
  (KEEL_MESH_SERVICE_ACCOUNTS) and its own key file
  (KEEL_SERVICE_API_KEY_FILE). Reruns reuse the files.
- The default organization and workspace: once everything is SERVING and the
  admin was just created, the mesh logs in as that admin and creates
  organization "Default" (the admin becomes its organization Admin) and
  workspace "default"; the workspace server credential goes to
  <data dir>/keys/workspace-default.key. The ids are kept in
  <data dir>/default-organization.json so a rerun does not create them again.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence

import grpc

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc
from keel.orgs.v1 import organizations_pb2, organizations_pb2_grpc, workspaces_pb2, workspaces_pb2_grpc
from services.mesh.catalog import ServiceSpec
from services.mesh.supervisor import ChildFailed

# Services that act on their own account and so get a mesh service account.
ACCOUNT_SERVICES = ("authn", "rbac", "orgs")
DEFAULTS_FILE = "default-organization.json"


def key_file(data_dir: pathlib.Path, name: str) -> pathlib.Path:
    return data_dir / "keys" / f"{name}.key"


def write_private(path: pathlib.Path, text: str) -> None:
    """A new file readable only by this user, created so from the start."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)


def ensure_service_accounts(
    authn_module: str, services: Sequence[str], env: Mapping[str, str], data_dir: pathlib.Path, timeout: float
) -> dict[str, str]:
    """The mesh service account id of each of `services` that needs one, created on first use."""
    ids: dict[str, str] = {}
    for name in services:
        if name not in ACCOUNT_SERVICES:
            continue
        command = [sys.executable, "-m", authn_module, "bootstrap-service-account"]
        command += ["--name", f"keel-{name}", "--key-file", str(key_file(data_dir, name))]
        try:
            result = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
                command, env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise ChildFailed(f"bootstrap-service-account did not finish in {timeout:g}s") from error
        if result.returncode != 0:
            raise ChildFailed(f"bootstrap-service-account keel-{name} failed:\n{result.stderr[-2000:]}")
        ids[name] = result.stdout.strip()
    return ids


def service_account_environment(name: str, ids: Mapping[str, str], data_dir: pathlib.Path) -> dict[str, str]:
    """KEEL_MESH_SERVICE_ACCOUNTS for everyone, and the service's own key file when it has one."""
    env = {"KEEL_MESH_SERVICE_ACCOUNTS": ",".join(ids[n] for n in sorted(ids))}
    if name in ids:
        env["KEEL_SERVICE_API_KEY_FILE"] = str(key_file(data_dir, name))
    return env


def workspace_environment(data_dir: pathlib.Path) -> dict[str, str] | None:
    """KEEL_WORKSPACE_CREDENTIAL_FILE of the default workspace, once its credential exists."""
    path = key_file(data_dir, "workspace-default")
    return {"KEEL_WORKSPACE_CREDENTIAL_FILE": str(path)} if path.exists() else None


def advertised_endpoint(spec: ServiceSpec, addresses: Mapping[str, str]) -> dict[str, str]:
    """Where a workspace service tells the registry it listens (its mesh address)."""
    if spec.plane != "workspace":
        return {}
    return {f"KEEL_{spec.name.upper()}_ADVERTISED_ENDPOINT": addresses[spec.name]}


def create_default_organization(
    addresses: Mapping[str, str], email: str, password: str, data_dir: pathlib.Path, timeout: float
) -> str:
    """Creates organization "Default" and workspace "default" as the admin; a line to print."""
    try:
        return _create_default_organization(addresses, email, password, data_dir, timeout)
    except grpc.RpcError as error:
        raise ChildFailed(f"creating the default organization failed: {error}") from error


def _create_default_organization(
    addresses: Mapping[str, str], email: str, password: str, data_dir: pathlib.Path, timeout: float
) -> str:
    with grpc.insecure_channel(addresses["authn"]) as authn:
        login = tokens_pb2_grpc.TokenServiceStub(authn).CreateToken(
            tokens_pb2.CreateTokenRequest(password=tokens_pb2.PasswordGrant(email=email, password=password)),
            timeout=timeout,
        )
    metadata = (("authorization", f"Bearer {login.access_token}"),)
    with grpc.insecure_channel(addresses["orgs"]) as orgs:
        organization = organizations_pb2_grpc.OrganizationServiceStub(orgs).CreateOrganization(
            organizations_pb2.CreateOrganizationRequest(
                organization=organizations_pb2.Organization(display_name="Default"), request_id=_request_id()
            ),
            metadata=metadata,
            timeout=timeout,
        )
        created = workspaces_pb2_grpc.WorkspaceServiceStub(orgs).CreateWorkspace(
            workspaces_pb2.CreateWorkspaceRequest(
                organization_id=organization.id,
                workspace=workspaces_pb2.Workspace(display_name="default"),
                request_id=_request_id(),
            ),
            metadata=metadata,
            timeout=timeout,
        )
    write_private(key_file(data_dir, "workspace-default"), created.credential + "\n")
    document = {"organization_id": organization.id, "workspace_id": created.workspace.id}
    (data_dir / DEFAULTS_FILE).write_text(json.dumps(document) + "\n", encoding="utf-8")
    return f"default organization: {organization.id} (workspace {created.workspace.id})"


def default_organization(data_dir: pathlib.Path) -> dict[str, str] | None:
    """The ids recorded by create_default_organization, if it ran for this data dir."""
    path = data_dir / DEFAULTS_FILE
    if not path.exists():
        return None
    document: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
    return document


def _request_id() -> str:
    return str(uuid.uuid4())
