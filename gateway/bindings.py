"""The HTTP bindings of RPCs, read from their `google.api.http` options at start-up.

Each RPC yields one `Binding` per HTTP rule (the rule itself and each of its
`additional_bindings`), with its path template parsed and every field path it
names resolved against the request and response descriptors, so that a
broken annotation stops the gateway at start rather than failing requests.
Service discovery walks the generated `keel` package.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf import descriptor, message_factory
from google.protobuf.message import Message

import keel
from gateway.routes import PathTemplate, TemplateError, parse_template

FieldDescriptor = descriptor.FieldDescriptor

# Well-known types whose JSON form is a single string (they can be query parameters or path values).
STRING_FORM_TYPES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
    }
)
WRAPPER_TYPES = frozenset(
    {
        f"google.protobuf.{name}Value"
        for name in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String", "Bytes")
    }
)
WELL_KNOWN_PREFIX = "google.protobuf."


class BindingError(ValueError):
    """An RPC whose HTTP annotation cannot be served; the message names the RPC."""


def message_of(field: FieldDescriptor) -> descriptor.Descriptor:
    """The message type of a message field."""
    if field.message_type is None:
        raise TypeError(f"{field.full_name} is not a message field")
    return field.message_type


def enum_of(field: FieldDescriptor) -> descriptor.EnumDescriptor:
    """The enum type of an enum field."""
    if field.enum_type is None:
        raise TypeError(f"{field.full_name} is not an enum field")
    return field.enum_type


def is_map(field: FieldDescriptor) -> bool:
    """Whether the field is a map (a repeated map-entry message)."""
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and field.message_type is not None
        and field.message_type.GetOptions().map_entry
    )


def is_plain_message(field: FieldDescriptor) -> bool:
    """A singular message field that is not a well-known type: its JSON form is an object of its fields."""
    return (
        field.type == FieldDescriptor.TYPE_MESSAGE
        and not field.is_repeated
        and not message_of(field).full_name.startswith(WELL_KNOWN_PREFIX)
    )


def field_behaviors(field: FieldDescriptor) -> frozenset[int]:
    """The google.api.field_behavior values of a field."""
    return frozenset(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def find_field(message: descriptor.Descriptor, name: str) -> FieldDescriptor | None:
    """A field by its proto name or its JSON (lowerCamel) name."""
    found = message.fields_by_name.get(name)
    if found is not None:
        return found
    for candidate in message.fields:
        if candidate.json_name == name:
            return candidate
    return None


def resolve_path(message: descriptor.Descriptor, path: str) -> tuple[FieldDescriptor, ...]:
    """The fields along a dotted path of proto names; ValueError names the broken step."""
    chain: list[FieldDescriptor] = []
    current = message
    parts = path.split(".")
    for index, part in enumerate(parts):
        field = current.fields_by_name.get(part)
        if field is None:
            raise ValueError(f"{message.full_name} has no field {'.'.join(parts[: index + 1])!r}")
        chain.append(field)
        if index < len(parts) - 1:
            if not is_plain_message(field):
                raise ValueError(f"{path!r}: {part!r} is not a singular message")
            current = message_of(field)
    return tuple(chain)


@dataclass(frozen=True)
class Binding:
    """One HTTP binding of one RPC: how a request on (method, template) becomes the RPC's request."""

    service: descriptor.ServiceDescriptor
    method: descriptor.MethodDescriptor
    # 0 for the rule itself, 1.. for its additional_bindings, in order.
    index: int
    http_method: str
    template: PathTemplate
    # "" (no body), "*" (the whole request) or the name of one top-level request field.
    body: str
    # "" (the whole response) or the name of one top-level response field.
    response_body: str
    request_class: type[Message]
    response_class: type[Message]
    # Field chains of the template's variables, keyed by their dotted path.
    path_fields: dict[str, tuple[FieldDescriptor, ...]]

    @property
    def grpc_path(self) -> str:
        """The gRPC method path, "/pkg.Service/Method"."""
        return f"/{self.service.full_name}/{self.method.name}"

    @property
    def name(self) -> str:
        """The RPC's full name, e.g. keel.orgs.v1.TeamService.GetTeam."""
        return self.method.full_name

    @property
    def body_field(self) -> FieldDescriptor | None:
        """The request field the body maps to when `body` names one."""
        if self.body in ("", "*"):
            return None
        return self.method.input_type.fields_by_name[self.body]

    @property
    def response_field(self) -> FieldDescriptor | None:
        """The response field the HTTP body is, when `response_body` names one."""
        if not self.response_body:
            return None
        return self.method.output_type.fields_by_name[self.response_body]


def _pattern(rule: http_pb2.HttpRule) -> tuple[str, str]:
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise ValueError("no HTTP method and path")
    if kind == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return kind.upper(), str(getattr(rule, kind))


def _binding(
    service: descriptor.ServiceDescriptor,
    method: descriptor.MethodDescriptor,
    rule: http_pb2.HttpRule,
    index: int,
) -> Binding:
    http_method, path = _pattern(rule)
    template = parse_template(path)
    request = method.input_type
    path_fields: dict[str, tuple[FieldDescriptor, ...]] = {}
    for variable in template.variables:
        chain = resolve_path(request, variable.field_path)
        leaf = chain[-1]
        if leaf.is_repeated or (
            leaf.type == FieldDescriptor.TYPE_MESSAGE and message_of(leaf).full_name not in WRAPPER_TYPES
        ):
            raise ValueError(f"path variable {variable.field_path!r} is not a singular scalar field")
        path_fields[variable.field_path] = chain
    if rule.body not in ("", "*"):
        body_field = request.fields_by_name.get(rule.body)
        if body_field is None:
            raise ValueError(f"body {rule.body!r} is not a field of {request.full_name}")
        if any(field_path.split(".")[0] == rule.body for field_path in path_fields) and not is_plain_message(
            body_field
        ):
            raise ValueError(f"body {rule.body!r} is also bound by the path")
    if rule.response_body and rule.response_body not in method.output_type.fields_by_name:
        raise ValueError(
            f"response_body {rule.response_body!r} is not a field of {method.output_type.full_name}"
        )
    return Binding(
        service=service,
        method=method,
        index=index,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        request_class=message_factory.GetMessageClass(request),
        response_class=message_factory.GetMessageClass(method.output_type),
        path_fields=path_fields,
    )


def http_rule(method: descriptor.MethodDescriptor) -> http_pb2.HttpRule | None:
    """The google.api.http option of an RPC, or None."""
    options = method.GetOptions()
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: http_pb2.HttpRule = options.Extensions[annotations_pb2.http]
    return rule


def bindings_of(service: descriptor.ServiceDescriptor, *, streaming: bool = False) -> list[Binding]:
    """Every HTTP binding of a service's annotated unary RPCs, or (`streaming`) of its server-streaming
    ones, which are served as Server-Sent Events and so must be GET; BindingError names each broken one.
    Client streams are not served.
    """
    found: list[Binding] = []
    problems: list[str] = []
    for method in service.methods:
        rule = http_rule(method)
        if rule is None or method.client_streaming or method.server_streaming != streaming:
            continue
        rules = [rule, *rule.additional_bindings]
        for index, each in enumerate(rules):
            if index > 0 and len(each.additional_bindings) > 0:
                problems.append(f"{method.full_name}: additional_bindings may not nest")
                continue
            try:
                binding = _binding(service, method, each, index)
            except (ValueError, TemplateError) as error:
                problems.append(f"{method.full_name}: {error}")
                continue
            if streaming and binding.http_method != "GET":
                problems.append(f"{method.full_name}: a stream is served as SSE, which is GET only")
                continue
            found.append(binding)
    if problems:
        raise BindingError("invalid HTTP bindings:\n  " + "\n  ".join(problems))
    return found


def keel_services(packages: Iterable[str] | None = None) -> list[descriptor.ServiceDescriptor]:
    """Services declared in the generated keel package, optionally only those of some proto packages."""
    wanted = None if packages is None else set(packages)
    found: list[descriptor.ServiceDescriptor] = []
    for module_info in pkgutil.walk_packages(keel.__path__, prefix="keel."):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(module_info.name)
        for service in module.DESCRIPTOR.services_by_name.values():
            if wanted is None or service.file.package in wanted:
                found.append(service)
    return sorted(found, key=lambda service: service.full_name)
