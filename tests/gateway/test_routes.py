"""Path templates and the router: grammar, precedence, verbs, decoding, conflicts."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

from gateway.app import build_router
from gateway.bindings import BindingError, bindings_of, keel_services
from gateway.routes import Match, MethodNotAllowed, RouteConflict, Router, TemplateError, parse_template

FieldType = descriptor_pb2.FieldDescriptorProto.Type
Label = descriptor_pb2.FieldDescriptorProto.Label


def router_of(*routes: tuple[str, str]) -> Router[str]:
    router: Router[str] = Router()
    for method, template in routes:
        router.add(method, parse_template(template), f"{method} {template}", f"{method} {template}")
    return router


def matched(router: Router[str], method: str, path: str) -> tuple[str, dict[str, str]]:
    found = router.match(method, path)
    assert isinstance(found, Match), found
    return found.route.target, found.values


def test_template_grammar_with_nested_fields_patterns_and_verb() -> None:
    template = parse_template("/v1/{parent=folders/*/sets/*}/files/{file.path=**}:download")
    assert template.segments == ("v1", "folders", "*", "sets", "*", "files", "**")
    assert template.verb == "download"
    assert [(v.field_path, v.start, v.end) for v in template.variables] == [
        ("parent", 1, 5),
        ("file.path", 6, None),
    ]


@pytest.mark.parametrize(
    "text",
    ["v1/x", "/v1/{a", "/v1/{}", "/v1/{a}/{a}", "/v1/**/x", "/v1/x:", "/v1//x", "/v1/{a=}", "/v1/{1a}"],
)
def test_malformed_templates_are_refused(text: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(text)


def test_literal_segments_win_over_variables_and_the_router_backtracks() -> None:
    router = router_of(
        ("GET", "/v1/users/{user_id}"),
        ("GET", "/v1/users/me/settings"),
        ("POST", "/v1/users/me:changePassword"),
        ("POST", "/v1/users/{user_id}:deactivate"),
    )
    assert matched(router, "GET", "/v1/users/me") == ("GET /v1/users/{user_id}", {"user_id": "me"})
    assert matched(router, "GET", "/v1/users/me/settings")[0] == "GET /v1/users/me/settings"
    assert matched(router, "POST", "/v1/users/me:changePassword") == ("POST /v1/users/me:changePassword", {})
    # "me" is a literal of another route, but only the variable route has the verb.
    assert matched(router, "POST", "/v1/users/me:deactivate") == (
        "POST /v1/users/{user_id}:deactivate",
        {"user_id": "me"},
    )


def test_a_colon_without_a_matching_verb_belongs_to_the_value() -> None:
    router = router_of(("GET", "/v1/things/{id}"), ("POST", "/v1/things/{id}:run"))
    assert matched(router, "GET", "/v1/things/a:b")[1] == {"id": "a:b"}
    assert matched(router, "POST", "/v1/things/a:run")[1] == {"id": "a"}


def test_values_are_percent_decoded_but_multi_segment_values_keep_encoded_slashes() -> None:
    router = router_of(("GET", "/v1/things/{id}"), ("GET", "/v1/files/{path=**}"))
    assert matched(router, "GET", "/v1/things/a%2Fb%20c")[1] == {"id": "a/b c"}
    assert matched(router, "GET", "/v1/files/a/b%2Fc/d%20e")[1] == {"path": "a/b%2Fc/d e"}
    assert matched(router, "GET", "/v1/files")[1] == {"path": ""}


def test_unknown_paths_and_empty_segments_do_not_match() -> None:
    router = router_of(("GET", "/v1/things/{id}"))
    assert router.match("GET", "/v1/things/") is None
    assert router.match("GET", "/v1/things/a/b") is None
    assert router.match("GET", "/v2/things/a") is None
    assert router.match("GET", "") is None


def test_a_known_path_with_another_method_reports_the_allowed_methods() -> None:
    router = router_of(("GET", "/v1/things/{id}"), ("DELETE", "/v1/things/{id}"), ("POST", "/v1/things"))
    found = router.match("PUT", "/v1/things/a")
    assert found == MethodNotAllowed(("DELETE", "GET"))


def test_the_same_method_and_shape_twice_is_a_conflict_naming_both() -> None:
    router = router_of(("GET", "/v1/things/{id}"))
    with pytest.raises(
        RouteConflict, match=r"GET /v1/things/\{other\} is bound by both GET /v1/things/\{id\}"
    ):
        router.add("GET", parse_template("/v1/things/{other}"), "x", "GET /v1/things/{other}")


def test_every_keel_service_routes_without_conflicts() -> None:
    # Workspace services and the test services included: a clash anywhere would stop some gateway.
    bindings = [binding for service in keel_services() for binding in bindings_of(service)]
    router = build_router(bindings)
    assert len(router.routes) == len(bindings)


def test_an_rpc_that_binds_a_gateway_path_is_refused() -> None:
    echo = next(service for service in keel_services(["keel.testing.v1"]) if service.name == "EchoService")
    bindings = bindings_of(echo)
    clash = parse_template("/healthz")
    bindings = [*bindings, type(bindings[0])(**{**bindings[1].__dict__, "template": clash})]
    with pytest.raises(RouteConflict, match="/healthz is the gateway's own"):
        build_router(bindings)


def _service_with_rules(rules: dict[str, http_pb2.HttpRule]) -> descriptor.ServiceDescriptor:
    """A descriptor-only service (request: string id, repeated string tags) with these HTTP rules."""
    package = f"keel.gatewaytest{len(rules)}x{id(rules)}.v1"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}/test.proto", package=package, syntax="proto3"
    )
    request = file.message_type.add(name="Request")
    request.field.add(
        name="id", number=1, type=FieldType.TYPE_STRING, label=Label.LABEL_OPTIONAL, json_name="id"
    )
    request.field.add(
        name="tags", number=2, type=FieldType.TYPE_STRING, label=Label.LABEL_REPEATED, json_name="tags"
    )
    service = file.service.add(name="TestService")
    for name, rule in rules.items():
        method = service.method.add(
            name=name, input_type=f".{package}.Request", output_type=f".{package}.Request"
        )
        method.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    descriptor_pool.Default().AddSerializedFile(file.SerializeToString())
    return descriptor_pool.Default().FindServiceByName(f"{package}.TestService")


def test_broken_annotations_fail_start_up_naming_each_rpc() -> None:
    service = _service_with_rules(
        {
            "NoSuchField": http_pb2.HttpRule(get="/v1/things/{nope}"),
            "RepeatedPath": http_pb2.HttpRule(get="/v1/things/{tags}"),
            "NoSuchBody": http_pb2.HttpRule(post="/v1/things", body="nope"),
            "NoSuchResponseField": http_pb2.HttpRule(post="/v1/things:x", body="*", response_body="nope"),
            "BadTemplate": http_pb2.HttpRule(get="/v1/{id"),
            "Fine": http_pb2.HttpRule(get="/v1/things/{id}"),
        }
    )
    with pytest.raises(BindingError) as raised:
        bindings_of(service)
    problems = str(raised.value)
    for name in ("NoSuchField", "RepeatedPath", "NoSuchBody", "NoSuchResponseField", "BadTemplate"):
        assert f"TestService.{name}:" in problems
    assert "TestService.Fine" not in problems
