"""The OpenAPI 3.1 document of every served binding, generated from the descriptors.

Paths and parameters come from the HTTP rules, schemas from the messages in
their proto3 JSON form, text from the proto comments (keel/descriptors.binpb,
written with source info by `make protos`), and each operation's description
ends with its authorization rule (`keel.authz.v1.rule`), also given as the
`x-keel-authorization` extension. Errors share one schema (see errors.py).
Server-streaming bindings, served as SSE (streams.py), answer `text/event-stream`;
`x-keel-event-schema` gives the schema of each event's `data`.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor, descriptor_pb2

from gateway.bindings import (
    STRING_FORM_TYPES,
    WRAPPER_TYPES,
    Binding,
    enum_of,
    field_behaviors,
    is_map,
    is_plain_message,
    message_of,
)
from gateway.routes import ONE, REST
from gateway.streams import CURSOR_FIELD, SSE_MEDIA_TYPE
from keel.authz.v1 import authz_pb2

logger = logging.getLogger(__name__)

FieldDescriptor = descriptor.FieldDescriptor
Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
SECURITY_SCHEME = "bearer"
ERROR_SCHEMA = "Error"
_REF = "#/components/schemas/"
# The schema of each event's `data` in a text/event-stream response (a `$ref` to the event message).
EVENT_SCHEMA = "x-keel-event-schema"
LAST_EVENT_ID_HEADER = "Last-Event-ID"

_SCALAR_SCHEMAS: dict[int, Schema] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "minimum": 0, "maximum": 4294967295},
    # proto3 JSON writes 64-bit integers as decimal strings (JavaScript numbers lose precision).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
}

_WELL_KNOWN_SCHEMAS: dict[str, Schema] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
        "examples": ["1.5s"],
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths in lowerCamel, e.g. displayName,description.",
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {"description": "Any JSON value."},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}

_ERROR: Schema = {
    "type": "object",
    "description": "An error: the google.rpc.Status of the call, in the HTTP form of AIP-193.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "integer", "description": "The HTTP status."},
                "status": {"type": "string", "description": "The gRPC status code's name, e.g. NOT_FOUND."},
                "message": {"type": "string", "description": "What went wrong, for a developer."},
                "details": {
                    "type": "array",
                    "description": "google.rpc details: ErrorInfo (reason, domain keel.dev), "
                    "BadRequest (field violations), RetryInfo.",
                    "items": _WELL_KNOWN_SCHEMAS["google.protobuf.Any"],
                },
            },
            "required": ["code", "status", "message", "details"],
        }
    },
    "required": ["error"],
}


def _collect(
    comments: dict[str, str],
    locations: dict[tuple[int, ...], str],
    scope: str,
    path: tuple[int, ...],
    message: descriptor_pb2.DescriptorProto,
) -> None:
    name = f"{scope}.{message.name}"
    if path in locations:
        comments[name] = locations[path]
    for index, field in enumerate(message.field):
        if (*path, 2, index) in locations:
            comments[f"{name}.{field.name}"] = locations[(*path, 2, index)]
    for index, nested in enumerate(message.nested_type):
        _collect(comments, locations, name, (*path, 3, index), nested)
    for index, enum in enumerate(message.enum_type):
        _collect_enum(comments, locations, name, (*path, 4, index), enum)


def _collect_enum(
    comments: dict[str, str],
    locations: dict[tuple[int, ...], str],
    scope: str,
    path: tuple[int, ...],
    enum: descriptor_pb2.EnumDescriptorProto,
) -> None:
    name = f"{scope}.{enum.name}"
    if path in locations:
        comments[name] = locations[path]
    for index, value in enumerate(enum.value):
        if (*path, 2, index) in locations:
            comments[f"{name}.{value.name}"] = locations[(*path, 2, index)]


def comments_of(files: descriptor_pb2.FileDescriptorSet) -> dict[str, str]:
    """Leading comments by full element name (messages, fields, enums, values, services, methods)."""
    comments: dict[str, str] = {}
    for file in files.file:
        locations = {
            tuple(location.path): " ".join(location.leading_comments.split())
            for location in file.source_code_info.location
            if location.leading_comments.strip()
        }
        package = file.package
        for index, message in enumerate(file.message_type):
            _collect(comments, locations, package, (4, index), message)
        for index, enum in enumerate(file.enum_type):
            _collect_enum(comments, locations, package, (5, index), enum)
        for index, service in enumerate(file.service):
            name = f"{package}.{service.name}"
            if (6, index) in locations:
                comments[name] = locations[(6, index)]
            for method_index, method in enumerate(service.method):
                if (6, index, 2, method_index) in locations:
                    comments[f"{name}.{method.name}"] = locations[(6, index, 2, method_index)]
    return comments


def load_comments() -> dict[str, str]:
    """The comments of the generated keel protos; empty when the descriptor set is missing."""
    resource = importlib.resources.files("keel") / "descriptors.binpb"
    try:
        data = resource.read_bytes()
    except (FileNotFoundError, OSError):
        logger.warning("keel/descriptors.binpb is missing: the OpenAPI document has no descriptions")
        return {}
    return comments_of(descriptor_pb2.FileDescriptorSet.FromString(data))


def rule_text(method: descriptor.MethodDescriptor) -> tuple[str, dict[str, str]]:
    """(sentence, machine-readable form) of an RPC's authorization rule."""
    options = method.GetOptions()
    if not options.HasExtension(authz_pb2.rule):
        return "No authorization rule: every call is denied.", {"kind": "none"}
    rule = options.Extensions[authz_pb2.rule]
    kind = rule.WhichOneof("rule")
    if kind == "public":
        reason = rule.public.reason
        return (
            f"Public ({reason}); a valid bearer token, when sent, identifies the caller.",
            {"kind": "public", "reason": reason},
        )
    if kind == "authenticated":
        return "Any authenticated caller (a valid bearer token).", {"kind": "authenticated"}
    if kind == "permission":
        permission = rule.permission
        text = f"Requires the permission `{permission.resource_type}.{permission.action}`"
        if permission.resource_field:
            text += f" on the resource named by `{permission.resource_field}`"
        if permission.scope_field:
            text += f" in the scope named by `{permission.scope_field}`"
        if permission.self_field:
            text += (
                f'; callers acting on themselves (`{permission.self_field}` is their id or "me") need none'
            )
        machine = {
            "kind": "permission",
            "permission": f"{permission.resource_type}.{permission.action}",
            "resourceField": permission.resource_field,
            "scopeField": permission.scope_field,
            "selfField": permission.self_field,
        }
        return text + ".", {key: value for key, value in machine.items() if value}
    return "No authorization rule: every call is denied.", {"kind": "none"}


class _Builder:
    def __init__(self, comments: dict[str, str]) -> None:
        self.comments = comments
        self.schemas: dict[str, Schema] = {ERROR_SCHEMA: _ERROR}

    def _describe(self, schema: Schema, full_name: str, extra: str = "") -> Schema:
        text = " ".join(part for part in (self.comments.get(full_name, ""), extra) if part)
        if text:
            schema["description"] = text
        return schema

    def enum_ref(self, enum: descriptor.EnumDescriptor) -> Schema:
        name = enum.full_name
        if name not in self.schemas:
            values = [value.name for value in enum.values]
            lines = [
                f"- {value.name}: {self.comments[f'{name}.{value.name}']}"
                for value in enum.values
                if f"{name}.{value.name}" in self.comments
            ]
            schema: Schema = {"type": "string", "enum": values}
            self.schemas[name] = self._describe(schema, name, "\n".join(lines))
        return {"$ref": _REF + name}

    def message_ref(self, message: descriptor.Descriptor) -> Schema:
        name = message.full_name
        if name in _WELL_KNOWN_SCHEMAS:
            return dict(_WELL_KNOWN_SCHEMAS[name])
        if name in WRAPPER_TYPES:
            inner = dict(self.value_schema(message.fields_by_name["value"]))
            inner["type"] = [inner.get("type", "string"), "null"]
            return inner
        if name not in self.schemas:
            self.schemas[name] = {}  # reserved first: messages may refer to themselves
            self.schemas[name] = self.object_schema(message, exclude=())
        return {"$ref": _REF + name}

    def object_schema(self, message: descriptor.Descriptor, exclude: Iterable[str]) -> Schema:
        skipped = set(exclude)
        properties = {
            field.json_name: self.field_schema(field) for field in message.fields if field.name not in skipped
        }
        schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
        return self._describe(schema, message.full_name)

    def value_schema(self, field: FieldDescriptor) -> Schema:
        """The schema of one value of a field (an element, for repeated fields)."""
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            return self.message_ref(message_of(field))
        if field.type == FieldDescriptor.TYPE_ENUM:
            return self.enum_ref(enum_of(field))
        return dict(_SCALAR_SCHEMAS.get(field.type, {"type": "string"}))

    def field_schema(self, field: FieldDescriptor) -> Schema:
        if is_map(field):
            schema: Schema = {
                "type": "object",
                "additionalProperties": self.value_schema(message_of(field).fields_by_name["value"]),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self.value_schema(field)}
        else:
            schema = self.value_schema(field)
        behaviors = field_behaviors(field)
        notes: list[str] = []
        if field_behavior_pb2.REQUIRED in behaviors:
            notes.append("Required.")
        if field_behavior_pb2.OUTPUT_ONLY in behaviors:
            schema["readOnly"] = True
        if field_behavior_pb2.INPUT_ONLY in behaviors:
            schema["writeOnly"] = True
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            members = ", ".join(member.json_name for member in oneof.fields)
            notes.append(f"One of `{oneof.name}`: set at most one of {members}.")
        return self._describe(schema, field.full_name, " ".join(notes))

    def query_parameters(self, binding: Binding) -> list[Schema]:
        if binding.body == "*":
            return []
        bound = set(binding.path_fields)
        found: list[Schema] = []

        def walk(
            message: descriptor.Descriptor, proto_prefix: str, json_prefix: str, seen: tuple[str, ...]
        ) -> None:
            for field in message.fields:
                proto_path = proto_prefix + field.name
                if not proto_prefix and field.name == binding.body:
                    continue
                if proto_path in bound:
                    continue
                if is_plain_message(field):
                    nested = message_of(field)
                    if nested.full_name in seen:
                        continue
                    walk(
                        nested,
                        proto_path + ".",
                        json_prefix + field.json_name + ".",
                        (*seen, nested.full_name),
                    )
                    continue
                if is_map(field) or (
                    field.type == FieldDescriptor.TYPE_MESSAGE
                    and message_of(field).full_name not in STRING_FORM_TYPES
                    and message_of(field).full_name not in WRAPPER_TYPES
                ):
                    continue  # not expressible as query text
                schema = self.field_schema(field)
                parameter: Schema = {"name": json_prefix + field.json_name, "in": "query", "schema": schema}
                if "description" in schema:
                    parameter["description"] = schema["description"]
                if field.is_repeated:
                    parameter["style"] = "form"
                    parameter["explode"] = True
                found.append(parameter)

        walk(binding.method.input_type, "", "", (binding.method.input_type.full_name,))
        return found

    def request_body(self, binding: Binding) -> Schema | None:
        if not binding.body:
            return None
        body_field = binding.body_field
        if body_field is None:
            top_level_path_fields = [path for path in binding.path_fields if "." not in path]
            if top_level_path_fields:
                schema = self.object_schema(binding.method.input_type, exclude=top_level_path_fields)
            else:
                schema = self.message_ref(binding.method.input_type)
            required = False
        else:
            schema = self.field_schema(body_field)
            required = True
        return {"required": required, "content": {"application/json": {"schema": schema}}}

    def response_schema(self, binding: Binding) -> Schema:
        field = binding.response_field
        if field is None:
            return self.message_ref(binding.method.output_type)
        return self.field_schema(field)


def _path_parts(binding: Binding) -> tuple[str, list[tuple[str, str | None, str]]]:
    """(OpenAPI path, [(parameter name, request field path or None, pattern)]) of a binding."""
    template = binding.template
    starts = {variable.start: variable for variable in template.variables}
    parts: list[str] = []
    parameters: list[tuple[str, str | None, str]] = []
    index = 0
    while index < len(template.segments):
        variable = starts.get(index)
        if variable is not None:
            parts.append("{" + variable.field_path + "}")
            parameters.append((variable.field_path, variable.field_path, "/".join(variable.pattern)))
            index = len(template.segments) if variable.end is None else variable.end
            continue
        segment = template.segments[index]
        if segment in (ONE, REST):
            name = f"segment{index + 1}"
            parts.append("{" + name + "}")
            parameters.append((name, None, segment))
        else:
            parts.append(segment)
        index += 1
    path = "/" + "/".join(parts) + (f":{template.verb}" if template.verb else "")
    return path, parameters


def _shape(path: str, names: Sequence[str]) -> str:
    for name in names:
        path = path.replace("{" + name + "}", "{}", 1)
    return path


def _path_parameters(
    builder: _Builder, binding: Binding, parts: Sequence[tuple[str, str | None, str]], names: Sequence[str]
) -> list[Schema]:
    """The path parameters of a binding, under the path's canonical variable `names`."""
    parameters: list[Schema] = []
    for (_, field_path, pattern), name in zip(parts, names, strict=True):
        if field_path is None:
            parameters.append(
                {
                    "name": name,
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": f"Any {'path' if pattern == REST else 'segment'}; not passed on.",
                }
            )
            continue
        leaf = binding.path_fields[field_path][-1]
        schema = dict(builder.value_schema(leaf))
        text = builder.comments.get(leaf.full_name, "")
        if name != field_path:
            text = f"{text} Sets `{field_path}`.".strip()
        if pattern != ONE:
            text = f"{text} Matches `{pattern}` (slashes included).".strip()
        parameter: Schema = {"name": name, "in": "path", "required": True, "schema": schema}
        if text:
            parameter["description"] = text
        if name != field_path:
            parameter["x-keel-field"] = field_path
        parameters.append(parameter)
    return parameters


def _json_success(builder: _Builder, binding: Binding) -> Schema:
    """The 200 response of a unary binding: its response (or `response_body` field) as JSON."""
    return {
        "description": "Success.",
        "content": {"application/json": {"schema": builder.response_schema(binding)}},
    }


def _resumable(binding: Binding) -> bool:
    """Whether streams.py resumes this stream from `Last-Event-ID` (its request has the cursor field)."""
    return CURSOR_FIELD in binding.method.input_type.fields_by_name


def _resume_parameters(binding: Binding) -> list[Schema]:
    """The optional `Last-Event-ID` header of a resumable stream."""
    if not _resumable(binding):
        return []
    cursor = binding.method.input_type.fields_by_name[CURSOR_FIELD].json_name
    return [
        {
            "name": LAST_EVENT_ID_HEADER,
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
            "description": "The resume cursor: the `id` of the last event received (EventSource sends it "
            f"when it reconnects). Sets `{CURSOR_FIELD}`, ahead of the `{cursor}` query parameter.",
        }
    ]


def _event_stream_success(builder: _Builder, binding: Binding) -> Schema:
    """The 200 response of a server-streaming binding, served as SSE (see streams.py).

    OpenAPI 3.1 has no schema for the events of a stream (3.2's `itemSchema` would be one), so the body
    is a string and `x-keel-event-schema` gives the schema of each event's `data`.
    """
    output = binding.method.output_type.full_name
    field = binding.response_field
    message = output if field is None else f"the `{field.json_name}` field of {output}"
    text = f"A Server-Sent Events stream. Each event's `data` is {message} in proto3 JSON "
    text += f"(schema: `{EVENT_SCHEMA}`)"
    if "cursor" in binding.method.output_type.fields_by_name:
        text += ", its `id` the event's `cursor`"
        if _resumable(binding):
            text += f" (sent back as `{LAST_EVENT_ID_HEADER}`, a reconnect resumes after it)"
    text += (
        ". `: heartbeat` comments keep an idle connection open. An error after the first event is an "
        "`event: error` whose `data` is an Error, and ends the stream; one before it is the JSON error."
    )
    return {
        "description": text,
        "content": {
            SSE_MEDIA_TYPE: {"schema": {"type": "string"}, EVENT_SCHEMA: builder.response_schema(binding)}
        },
    }


def _operation(builder: _Builder, binding: Binding, parameters: list[Schema], success: Schema) -> Schema:
    """The operation of a binding: ids, text ending with the authorization rule, errors, security."""
    rule, machine_rule = rule_text(binding.method)
    comment = builder.comments.get(binding.method.full_name, "")
    operation: Schema = {
        "operationId": binding.method.full_name + (f"_{binding.index + 1}" if binding.index else ""),
        "tags": [binding.service.name],
        "summary": comment.split(". ")[0].rstrip(".") if comment else binding.method.name,
        "description": f"{comment}\n\n**Authorization:** {rule}".strip(),
        "parameters": parameters,
        "responses": {"200": success, "default": {"$ref": "#/components/responses/Error"}},
        "security": [{SECURITY_SCHEME: []}]
        if machine_rule["kind"] != "public"
        else [{}, {SECURITY_SCHEME: []}],
        "x-keel-authorization": machine_rule,
        "x-keel-rpc": binding.grpc_path,
    }
    body = builder.request_body(binding)
    if body is not None:
        operation["requestBody"] = body
    return operation


def build_document(
    bindings: Sequence[Binding], comments: dict[str, str] | None = None, *, title: str = "Keel API"
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of these bindings; server-streaming ones are documented as SSE."""
    builder = _Builder(comments if comments is not None else {})
    paths: dict[str, dict[str, Any]] = {}
    # Templated paths that differ only in variable names are one OpenAPI path: the first names win.
    shapes: dict[str, tuple[str, list[str]]] = {}
    tags: dict[str, Schema] = {}
    for binding in bindings:
        path, path_parameters = _path_parts(binding)
        names = [name for name, _, _ in path_parameters]
        shape = _shape(path, names)
        path, canonical = shapes.setdefault(shape, (path, names))
        item = paths.setdefault(path, {})
        method = binding.http_method.lower()
        if method in item:
            logger.warning("%s %s is documented already; %s is left out", method, path, binding.name)
            continue
        parameters = _path_parameters(builder, binding, path_parameters, canonical)
        parameters.extend(builder.query_parameters(binding))
        if binding.method.server_streaming:
            parameters.extend(_resume_parameters(binding))
            success = _event_stream_success(builder, binding)
        else:
            success = _json_success(builder, binding)
        description = builder.comments.get(binding.service.full_name, binding.service.full_name)
        tags.setdefault(binding.service.name, {"name": binding.service.name, "description": description})
        item[method] = _operation(builder, binding, parameters, success)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": "v1",
            "description": "REST transcoding of Keel's gRPC contracts (google.api.http). "
            "JSON is proto3 JSON; errors are google.rpc.Status (see the Error schema).",
        },
        "tags": sorted(tags.values(), key=lambda tag: str(tag["name"])),
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(builder.schemas.items())),
            "responses": {
                "Error": {
                    "description": "An error (google.rpc.Status).",
                    "content": {"application/json": {"schema": {"$ref": _REF + ERROR_SCHEMA}}},
                }
            },
            "securitySchemes": {
                SECURITY_SCHEME: {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            },
        },
    }
