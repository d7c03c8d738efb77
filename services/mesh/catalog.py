"""Which processes make up the local mesh, their modules and default ports.

Adding a service to `make run` is one line in SERVICES; a service whose package
does not exist yet is skipped, so the list can run ahead of the code.
"""

from __future__ import annotations

import importlib.util
import pathlib
from dataclasses import dataclass
from typing import Literal

Probe = Literal["grpc", "tcp"]
# control: starts first; workspace: needs the default workspace's credential, made after the control
# plane's bootstrap; edge: the gateway, last.
Plane = Literal["control", "workspace", "edge"]


@dataclass(frozen=True)
class ServiceSpec:
    """One process of the mesh: its name, `python -m` module, default port and readiness probe."""

    name: str
    default_port: int
    module: str = ""
    # grpc: the grpc.health.v1 Check reports SERVING; tcp: the port accepts connections (HTTP gateway).
    probe: Probe = "grpc"
    plane: Plane = "control"

    @property
    def module_name(self) -> str:
        return self.module or f"services.{self.name}"


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("authn", 50051),
    ServiceSpec("orgs", 50052),
    ServiceSpec("rbac", 50053),
    ServiceSpec("metadata", 50061, plane="workspace"),
    ServiceSpec("workloads", 50062, plane="workspace"),
    ServiceSpec("credentials", 50063, plane="workspace"),
    ServiceSpec("gateway", 8080, module="gateway", probe="tcp", plane="edge"),
)

# The service whose admin bootstrap runs once everything is SERVING.
IDENTITY_SERVICE = "authn"


def is_runnable(spec: ServiceSpec) -> bool:
    """True when the package exists and has a __main__ (found without importing it)."""
    try:
        found = importlib.util.find_spec(spec.module_name)
    except (ImportError, ValueError):
        return False
    if found is None or not found.submodule_search_locations:
        return False
    return any((pathlib.Path(p) / "__main__.py").is_file() for p in found.submodule_search_locations)


def runnable_services() -> list[ServiceSpec]:
    """The services of SERVICES that exist in this checkout, in start order."""
    return [spec for spec in SERVICES if is_runnable(spec)]
