"""Checks the deploy/ manifests without a cluster: every YAML parses, every object names its kind.

Run by `make lint`; no Docker engine or Kubernetes API server is needed (or available) in CI.
Also checks that each kustomization lists files that exist, that every container (init
containers included) runs as non-root with a read-only root filesystem and resource limits,
that every serving container has gRPC probes, and that Secret volumes give others nothing.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import yaml

DEPLOY = pathlib.Path(__file__).resolve().parent
WORKLOAD_KINDS = {"Deployment", "Job", "StatefulSet", "DaemonSet"}


def documents(path: pathlib.Path) -> list[Any]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


def workload_problems(obj: dict[str, Any]) -> Iterator[str]:
    """Security and probe rules every container of a workload must follow."""
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    spec = pod_spec(obj)
    pod_security = spec.get("securityContext", {})
    containers = [(False, c) for c in spec.get("initContainers", [])]
    containers += [(True, c) for c in spec.get("containers", [])]
    for serving, container in containers:
        security = {**pod_security, **container.get("securityContext", {})}
        where = f"{name} container {container.get('name')}"
        if security.get("runAsNonRoot") is not True:
            yield f"{where}: runAsNonRoot must be true"
        if container.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            yield f"{where}: readOnlyRootFilesystem must be true"
        if "resources" not in container or "limits" not in container["resources"]:
            yield f"{where}: resources.requests/limits are required"
        if obj["kind"] == "Deployment" and serving:
            # gRPC services: native grpc probes; the HTTP gateway: httpGet on /readyz and /healthz.
            kinds = ("grpc", "httpGet")
            for probe in ("readinessProbe", "livenessProbe"):
                if not any(kind in container.get(probe, {}) for kind in kinds):
                    yield f"{where}: {probe} must be a native grpc probe (httpGet for the gateway)"
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            mode = volume["secret"].get("defaultMode")
            if not isinstance(mode, int) or mode & 0o007:
                yield f"{name} volume {volume.get('name')}: Secret defaultMode must give others nothing"


def kustomization_problems(path: pathlib.Path, doc: dict[str, Any]) -> Iterator[str]:
    for resource in doc.get("resources", []):
        if not (path.parent / resource).exists():
            yield f"{path}: resource {resource} does not exist"


def problems() -> Iterator[str]:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    if not files:
        yield "no YAML files under deploy/"
    for path in files:
        try:
            docs = documents(path)
        except yaml.YAMLError as error:
            yield f"{path}: {error}"
            continue
        for doc in docs:
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                yield f"{path}: every document needs apiVersion and kind"
                continue
            if doc["kind"] == "Kustomization":
                yield from kustomization_problems(path, doc)
            elif doc["kind"] in WORKLOAD_KINDS:
                yield from workload_problems(doc)


def main() -> int:
    found = list(problems())
    for problem in found:
        print(problem, file=sys.stderr)
    if found:
        return 1
    print("deploy manifests: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
