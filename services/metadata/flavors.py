"""The built-in flavor catalogue: which flavors each component type has, and their configuration schemas.

A component's configuration is validated against its flavor's JSON schema
(draft 2020-12, `jsonschema`). Schemas never ask for secrets: access comes from
a service connector the component references by id. Unknown keys are refused
(`additionalProperties: false`), so a typo is an error rather than silence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from services.kit.errors import InvalidArgument, NotFound

# Component types in stack order (the proto enum's names); the first two are required in a stack.
TYPES = (
    "ORCHESTRATOR",
    "ARTIFACT_STORE",
    "CONTAINER_REGISTRY",
    "STEP_OPERATOR",
    "EXPERIMENT_TRACKER",
    "MODEL_DEPLOYER",
    "IMAGE_BUILDER",
    "ALERTER",
)
REQUIRED_IN_STACK = ("ORCHESTRATOR", "ARTIFACT_STORE")
# A configuration is small; big blobs belong in artifacts.
MAX_CONFIGURATION_BYTES = 64 * 1024


@dataclass(frozen=True)
class Flavor:
    """One built-in flavor of a component type."""

    type: str
    name: str
    display_name: str
    description: str
    schema: Mapping[str, Any]


def _object(properties: Mapping[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(required),
        "additionalProperties": False,
    }


_TEXT = {"type": "string", "minLength": 1, "maxLength": 1024}
_URI = {"type": "string", "minLength": 1, "maxLength": 2048, "pattern": "^[a-z][a-z0-9+.-]*://"}
_BUCKET_PATH = {"type": "string", "minLength": 6, "maxLength": 2048}
_SECONDS = {"type": "integer", "minimum": 1, "maximum": 7 * 24 * 3600}

CATALOGUE: tuple[Flavor, ...] = (
    Flavor(
        "ORCHESTRATOR",
        "local",
        "Local",
        "Runs every step in the client's own process, one after another.",
        _object({"synchronous": {"type": "boolean"}}),
    ),
    Flavor(
        "ORCHESTRATOR",
        "kubernetes",
        "Kubernetes",
        "Runs each step as a pod of a Kubernetes cluster.",
        _object(
            {
                "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "kubernetes_context": _TEXT,
                "service_account_name": _TEXT,
                "step_timeout_seconds": _SECONDS,
                "node_selector": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            ("namespace",),
        ),
    ),
    Flavor(
        "ARTIFACT_STORE",
        "local",
        "Local",
        "A folder on the machine that runs the steps.",
        _object({"path": _TEXT}, ("path",)),
    ),
    Flavor(
        "ARTIFACT_STORE",
        "s3",
        "Amazon S3",
        "An S3 (or S3-compatible) bucket.",
        _object(
            {
                "path": {**_BUCKET_PATH, "pattern": "^s3://"},
                "region": _TEXT,
                "endpoint_url": _URI,
            },
            ("path",),
        ),
    ),
    Flavor(
        "ARTIFACT_STORE",
        "gcs",
        "Google Cloud Storage",
        "A GCS bucket.",
        _object({"path": {**_BUCKET_PATH, "pattern": "^gs://"}}, ("path",)),
    ),
    Flavor(
        "CONTAINER_REGISTRY",
        "default",
        "Container registry",
        "Any OCI registry reachable by URI.",
        _object({"uri": _TEXT}, ("uri",)),
    ),
    Flavor(
        "CONTAINER_REGISTRY",
        "ecr",
        "Amazon ECR",
        "An Amazon Elastic Container Registry.",
        _object(
            {"uri": {"type": "string", "pattern": r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com"}},
            ("uri",),
        ),
    ),
    Flavor(
        "STEP_OPERATOR",
        "kubernetes",
        "Kubernetes",
        "Runs single steps as pods, e.g. on GPU nodes.",
        _object(
            {
                "namespace": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"},
                "kubernetes_context": _TEXT,
                "gpu_count": {"type": "integer", "minimum": 0, "maximum": 64},
            },
            ("namespace",),
        ),
    ),
    Flavor(
        "EXPERIMENT_TRACKER",
        "mlflow",
        "MLflow",
        "Logs parameters and metrics to an MLflow tracking server.",
        _object({"tracking_uri": _URI, "experiment_name": _TEXT}, ("tracking_uri",)),
    ),
)

_BY_KEY = {(flavor.type, flavor.name): flavor for flavor in CATALOGUE}
_VALIDATORS = {key: Draft202012Validator(flavor.schema) for key, flavor in _BY_KEY.items()}
for _validator in _VALIDATORS.values():
    Draft202012Validator.check_schema(_validator.schema)  # a broken built-in schema fails at import


def component_type(value: str, field: str) -> str:
    """A known component type name."""
    if value not in TYPES:
        raise InvalidArgument(field, f"must be one of {', '.join(TYPES)}")
    return value


def list_flavors(type_: str = "") -> list[Flavor]:
    """Every flavor (of one type when given), by type order then name."""
    chosen = [flavor for flavor in CATALOGUE if not type_ or flavor.type == type_]
    return sorted(chosen, key=lambda flavor: (TYPES.index(flavor.type), flavor.name))


def get_flavor(type_: str, name: str) -> Flavor:
    """One flavor; NOT_FOUND when the type has no such flavor."""
    flavor = _BY_KEY.get((type_, name))
    if flavor is None:
        raise NotFound(f"no flavor {name!r} of type {type_}")
    return flavor


def check_flavor(type_: str, name: str, field: str) -> Flavor:
    """A flavor named in a component: INVALID_ARGUMENT naming the field when unknown."""
    flavor = _BY_KEY.get((type_, name))
    if flavor is None:
        known = ", ".join(f.name for f in list_flavors(type_)) or "none"
        raise InvalidArgument(field, f"{type_} has no flavor {name!r}; flavors: {known}")
    return flavor


def validate_configuration(flavor: Flavor, configuration: Mapping[str, Any], field: str) -> dict[str, Any]:
    """The configuration if it satisfies the flavor's schema; INVALID_ARGUMENT naming the first bad path."""
    if len(json.dumps(configuration, separators=(",", ":"))) > MAX_CONFIGURATION_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_CONFIGURATION_BYTES} bytes as JSON")
    validator = _VALIDATORS[(flavor.type, flavor.name)]
    errors = sorted(validator.iter_errors(configuration), key=lambda error: list(error.absolute_path))
    if errors:
        first = errors[0]
        path = "".join(f".{part}" if isinstance(part, str) else f"[{part}]" for part in first.absolute_path)
        raise InvalidArgument(f"{field}{path}", _describe(first.validator, first.message))
    return dict(configuration)


def _describe(keyword: Any, message: str) -> str:
    # jsonschema's messages quote the offending value; keep them short and never echo long values.
    return message if len(message) <= 200 else f"does not satisfy '{keyword}'"
