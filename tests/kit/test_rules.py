"""Authorization rules read from the descriptors, and start-up validation."""

from __future__ import annotations

import pytest

from keel.authz.v1 import authz_pb2
from keel.testing.v1 import echo_pb2
from services.kit.rules import RuleError, field_value, rule_for, validate_rules
from tests.kit.conftest import define_service, outer_message
from tests.kit.echo_service import ECHO_SERVICE


def _permission(**fields: str) -> authz_pb2.AuthorizationRule:
    return authz_pb2.AuthorizationRule(permission=authz_pb2.Permission(**fields))


def test_rule_kinds_are_read_from_echo_service_descriptors() -> None:
    echo = rule_for(f"/{ECHO_SERVICE}/Echo")
    who = rule_for(f"/{ECHO_SERVICE}/WhoAmI")
    thing = rule_for(f"/{ECHO_SERVICE}/GetThing")

    assert echo is not None
    assert echo.kind == "public"
    assert who is not None
    assert who.kind == "authenticated"
    assert thing is not None
    assert (thing.kind, thing.resource_type, thing.action) == ("permission", "thing", "read")
    assert (thing.resource_field, thing.scope_field, thing.self_field) == (
        "thing_id",
        "organization_id",
        "owner_id",
    )


def test_unknown_method_or_service_has_no_rule() -> None:
    assert rule_for(f"/{ECHO_SERVICE}/Nope") is None
    assert rule_for("/no.such.Service/Echo") is None
    assert rule_for("garbage") is None


def test_echo_service_rules_are_valid() -> None:
    validate_rules([ECHO_SERVICE])


def test_validation_names_every_rpc_without_a_rule() -> None:
    with pytest.raises(RuleError) as raised:
        validate_rules(["grpc.health.v1.Health"])

    assert "grpc.health.v1.Health.Check: no (keel.authz.v1.rule) option" in raised.value.problems
    assert "grpc.health.v1.Health.Watch: no (keel.authz.v1.rule) option" in raised.value.problems


def test_validation_rejects_incomplete_permissions_and_missing_fields() -> None:
    service = define_service(
        {
            "Fine": _permission(
                resource_type="x", action="read", resource_field="inner.id", scope_field="id"
            ),
            "NoAction": _permission(resource_type="x"),
            "BadField": _permission(resource_type="x", action="read", resource_field="nope"),
            "BadNested": _permission(resource_type="x", action="read", self_field="inner.nope"),
            "ThroughString": _permission(resource_type="x", action="read", scope_field="id.more"),
            "Missing": None,
        }
    )

    with pytest.raises(RuleError) as raised:
        validate_rules([service, "no.such.Service"])

    text = str(raised.value)
    assert f"{service}.NoAction: permission rule needs both resource_type and action" in text
    assert f"{service}.BadField: resource_field: field 'nope' does not exist" in text
    assert f"{service}.BadNested: self_field: field 'inner.nope' does not exist" in text
    assert f"{service}.ThroughString: scope_field: field 'id.more'" in text
    assert f"{service}.Missing: no (keel.authz.v1.rule) option" in text
    assert "no.such.Service: service not found" in text
    assert f"{service}.Fine" not in text


def test_field_value_resolves_plain_and_nested_paths() -> None:
    service = define_service({"Get": _permission(resource_type="x", action="read")})
    outer = outer_message(service)
    message = outer(id="top")
    assert field_value(message, "id") == "top"
    assert field_value(message, "inner.id") == ""  # unset parent: empty, not an error

    message.inner.id = "deep"  # type: ignore[attr-defined]
    assert field_value(message, "inner.id") == "deep"
    assert field_value(echo_pb2.GetThingRequest(thing_id="t1"), "thing_id") == "t1"
