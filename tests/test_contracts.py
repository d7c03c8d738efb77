"""Every RPC of every Keel contract: an authorization rule and an HTTP binding.

Walks the generated `keel` package, so a new service or RPC is covered the
moment its proto is generated: nothing to register here.
"""

from __future__ import annotations

import importlib
import pkgutil

from google.api import annotations_pb2
from google.protobuf import descriptor

import keel
from services.kit.rules import validate_rules

# Services that exist for tests and benchmarks only still follow the rules.
EXPECTED_AT_LEAST = {
    "keel.authn.v1.UserService",
    "keel.authn.v1.ServiceAccountService",
    "keel.authn.v1.ApiKeyService",
    "keel.authn.v1.TokenService",
    "keel.authn.v1.SigningKeyService",
}


def keel_services() -> list[descriptor.ServiceDescriptor]:
    """Every service declared in a generated keel.*_pb2 module."""
    found: list[descriptor.ServiceDescriptor] = []
    for module_info in pkgutil.walk_packages(keel.__path__, prefix="keel."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        found.extend(module.DESCRIPTOR.services_by_name.values())
    return found


def test_every_keel_service_is_found() -> None:
    names = {service.full_name for service in keel_services()}
    assert names >= EXPECTED_AT_LEAST


def test_every_rpc_of_every_service_has_a_valid_authorization_rule() -> None:
    # Raises RuleError naming each RPC without a rule or with a broken one.
    validate_rules([service.full_name for service in keel_services()])


def test_every_rpc_has_an_http_binding() -> None:
    missing = [
        method.full_name
        for service in keel_services()
        for method in service.methods
        if not method.GetOptions().HasExtension(annotations_pb2.http)
    ]
    assert missing == []
