"""HTTP request → proto request, and proto response → JSON, for one `Binding`.

The request message is filled in three steps: the JSON body (proto3 JSON,
unknown fields refused) into the whole message or its body field, then the
path variables, then every query parameter (a field not bound by the path or
the body, named by its proto or JSON name, nested with dots, repeated by
repeating the parameter). A PATCH whose body is one resource and that names no
`update_mask` gets one derived from the JSON keys it sent. Bad input raises a
400 `GatewayError` naming the field by its proto path; nothing here is a 500.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

from gateway.bindings import (
    STRING_FORM_TYPES,
    WRAPPER_TYPES,
    Binding,
    enum_of,
    field_behaviors,
    find_field,
    is_map,
    is_plain_message,
    message_of,
)
from gateway.errors import REASON_MALFORMED_BODY, GatewayError, bad_request

FieldDescriptor = descriptor.FieldDescriptor
UPDATE_MASK = "update_mask"
FIELD_MASK_TYPE = "google.protobuf.FieldMask"
# Never part of a derived update mask: the server reads it to check concurrency (AIP-154).
_NOT_UPDATABLE_NAMES = frozenset({"etag"})
_NOT_UPDATABLE_BEHAVIORS = frozenset(
    {
        field_behavior_pb2.OUTPUT_ONLY,
        getattr(field_behavior_pb2, "IDENTIFIER", field_behavior_pb2.OUTPUT_ONLY),
    }
)

_INTEGER_RANGES: dict[int, tuple[int, int]] = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})

_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field")
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')
_LOCATION_SUFFIX = re.compile(r"\s+at\s+\"?[\w.\[\]]+\"?[.]*\s*$")
_CAMEL_HUMP = re.compile(r"(?<!^)([A-Z])")
# json_format's Python-flavoured messages, in the words of a JSON API.
_PLAIN_DESCRIPTIONS = (
    (re.compile(r"^expected string or bytes-like object"), "must be a string"),
    (re.compile(r"^invalid literal for int\(\)"), "must be an integer"),
)


def _proto_path(chain: Iterable[FieldDescriptor]) -> str:
    return ".".join(field.name for field in chain)


def _scalar_from_text(field: FieldDescriptor, text: str) -> Any:
    """A path or query value as the field's Python value; ValueError says what is wrong."""
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return text
    if kind in _INTEGER_RANGES:
        try:
            number = int(text, 10)
        except ValueError:
            raise ValueError("must be an integer") from None
        low, high = _INTEGER_RANGES[kind]
        if not low <= number <= high:
            raise ValueError(f"must be between {low} and {high}")
        return number
    if kind in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        try:
            return float(text)
        except ValueError:
            raise ValueError("must be a number") from None
    if kind == FieldDescriptor.TYPE_BOOL:
        lowered = text.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError("must be true or false")
    if kind == FieldDescriptor.TYPE_ENUM:
        enum = enum_of(field)
        value = enum.values_by_name.get(text)
        if value is not None:
            return value.number
        if text.lstrip("-").isdigit() and int(text) in enum.values_by_number:
            return int(text)
        names = ", ".join(enum.values_by_name)
        raise ValueError(f"must be one of {names}")
    if kind == FieldDescriptor.TYPE_BYTES:
        padded = text + "=" * (-len(text) % 4)
        try:
            return base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
    raise ValueError("cannot be given as text")


def _snake_case(path: str) -> str:
    # A FieldMask path as lowerCamel JSON ("displayName") or as proto names ("display_name").
    return ".".join(_CAMEL_HUMP.sub(r"_\1", part).lower() for part in path.split("."))


def _message_from_text(target: Message, text: str) -> None:
    """Fills a well-known message whose JSON form is one string (or a wrapper) from text."""
    name = target.DESCRIPTOR.full_name
    try:
        if name == "google.protobuf.Timestamp":
            # A '+' of a UTC offset that the client did not percent-encode arrives as a space.
            target.FromJsonString(text.replace(" ", "+"))  # type: ignore[attr-defined]
        elif name == "google.protobuf.Duration":
            target.FromJsonString(text)  # type: ignore[attr-defined]
        elif name == FIELD_MASK_TYPE:
            paths = [_snake_case(part.strip()) for part in text.split(",") if part.strip()]
            target.paths.extend(paths)  # type: ignore[attr-defined]
        else:  # a wrapper: {"value": ...}
            value_field = target.DESCRIPTOR.fields_by_name["value"]
            target.value = _scalar_from_text(value_field, text)  # type: ignore[attr-defined,arg-type]
    except ValueError as error:
        if name == "google.protobuf.Timestamp":
            raise ValueError("must be an RFC 3339 timestamp, e.g. 2024-05-01T12:00:00Z") from None
        if name == "google.protobuf.Duration":
            raise ValueError('must be a duration in seconds with an "s" suffix, e.g. 1.5s') from None
        raise ValueError(str(error)) from None


def _is_text_message(field: FieldDescriptor) -> bool:
    return field.type == FieldDescriptor.TYPE_MESSAGE and (
        message_of(field).full_name in STRING_FORM_TYPES or message_of(field).full_name in WRAPPER_TYPES
    )


def _container(message: Message, chain: tuple[FieldDescriptor, ...]) -> Message:
    """The message holding the chain's last field (creating the messages on the way)."""
    target = message
    for field in chain[:-1]:
        target = getattr(target, field.name)
    return target


def _describe_parse_error(error: json_format.ParseError, root: descriptor.Descriptor) -> tuple[str, str]:
    """(proto field path, description) of a json_format error; its text names JSON fields."""
    text = str(error)
    path: list[str] = []
    current: descriptor.Descriptor | None = root
    for name in _FAILED_FIELD.findall(text):
        field = find_field(current, name) if current is not None else None
        path.append(field.name if field is not None else name)
        current = field.message_type if field is not None and field.message_type is not None else None
    unknown = _UNKNOWN_FIELD.search(text)
    if unknown is not None:
        path.append(unknown.group(1))
        known = ", ".join(field.json_name for field in current.fields) if current is not None else ""
        return ".".join(path), f"unknown field (known fields: {known})" if known else "unknown field"
    innermost = text.rsplit("field: ", 1)[-1].split("\n", 1)[0]
    description = _LOCATION_SUFFIX.sub("", innermost).rstrip(".").strip() or "is invalid"
    for pattern, plain in _PLAIN_DESCRIPTIONS:
        if pattern.search(description):
            description = plain
            break
    return ".".join(path) or "body", description


def _parse_body(binding: Binding, message: Message, body: bytes) -> Any:
    """Parses the JSON body into the message (or its body field); returns the decoded JSON."""
    if not body.strip():
        decoded: Any = {}
    else:
        try:
            decoded = json.loads(body)
        except (ValueError, RecursionError) as error:
            raise bad_request("body", f"is not valid JSON: {error}", reason=REASON_MALFORMED_BODY) from None
    body_field = binding.body_field
    if body_field is None:
        if not isinstance(decoded, dict):
            raise bad_request("body", "must be a JSON object", reason=REASON_MALFORMED_BODY)
        document = decoded
    else:
        if is_plain_message(body_field) and not isinstance(decoded, dict):
            raise bad_request(body_field.name, "must be a JSON object", reason=REASON_MALFORMED_BODY)
        document = {body_field.name: decoded}
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=False)
    except json_format.ParseError as error:
        field, description = _describe_parse_error(error, binding.method.input_type)
        raise bad_request(field, description) from None
    return decoded


def _apply_path(binding: Binding, message: Message, values: Mapping[str, str]) -> None:
    for field_path, text in values.items():
        chain = binding.path_fields[field_path]
        leaf = chain[-1]
        target = _container(message, chain)
        try:
            if leaf.type == FieldDescriptor.TYPE_MESSAGE:
                _message_from_text(getattr(target, leaf.name), text)
                continue
            value = _scalar_from_text(leaf, text)
        except ValueError as error:
            raise bad_request(field_path, str(error)) from None
        current = getattr(target, leaf.name)
        if current and current != value:
            raise bad_request(field_path, "the body's value differs from the one in the URL path")
        setattr(target, leaf.name, value)


def _query_chain(binding: Binding, name: str) -> tuple[FieldDescriptor, ...]:
    chain: list[FieldDescriptor] = []
    current = binding.method.input_type
    parts = name.split(".")
    for index, part in enumerate(parts):
        field = find_field(current, part)
        if field is None:
            raise bad_request(name, "unknown query parameter")
        chain.append(field)
        if index < len(parts) - 1:
            if not is_plain_message(field):
                raise bad_request(_proto_path(chain), "cannot be set field by field from the query")
            current = message_of(field)
    proto_path = _proto_path(chain)
    if binding.body == "*" or chain[0].name == binding.body:
        raise bad_request(proto_path, "is set by the request body, not the query")
    for bound in binding.path_fields:
        if proto_path == bound or proto_path.startswith(bound + ".") or bound.startswith(proto_path + "."):
            raise bad_request(proto_path, "is set by the URL path, not the query")
    return tuple(chain)


def _apply_query(binding: Binding, message: Message, pairs: Iterable[tuple[str, str]]) -> set[str]:
    """Sets every query parameter; returns the proto paths it set."""
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    set_paths: set[str] = set()
    for name, values in grouped.items():
        chain = _query_chain(binding, name)
        leaf = chain[-1]
        proto_path = _proto_path(chain)
        if proto_path in set_paths:
            raise bad_request(proto_path, "is given more than once (by its proto and its JSON name)")
        set_paths.add(proto_path)
        target = _container(message, chain)
        try:
            if is_map(leaf) or (leaf.type == FieldDescriptor.TYPE_MESSAGE and not _is_text_message(leaf)):
                raise ValueError("is a message: set its fields with dotted names, or send it in a body")
            if leaf.is_repeated:
                container = getattr(target, leaf.name)
                for text in values:
                    if leaf.type == FieldDescriptor.TYPE_MESSAGE:
                        _message_from_text(container.add(), text)
                    else:
                        container.append(_scalar_from_text(leaf, text))
                continue
            if len(values) > 1:
                raise ValueError("is given more than once")
            if leaf.type == FieldDescriptor.TYPE_MESSAGE:
                _message_from_text(getattr(target, leaf.name), values[0])
            else:
                setattr(target, leaf.name, _scalar_from_text(leaf, values[0]))
        except ValueError as error:
            raise bad_request(proto_path, str(error)) from None
    return set_paths


def _mask_paths(
    document: Mapping[str, Any], message: descriptor.Descriptor, prefix: str, excluded: set[str]
) -> list[str]:
    paths: list[str] = []
    for key, value in document.items():
        field = find_field(message, key)
        if field is None:  # json_format refused unknown fields already
            continue
        path = prefix + field.name
        if path in excluded or field_behaviors(field) & _NOT_UPDATABLE_BEHAVIORS:
            continue
        if not prefix and field.name in _NOT_UPDATABLE_NAMES:
            continue
        if is_plain_message(field) and isinstance(value, dict) and value:
            # A partial nested object updates only the fields it names (as grpc-gateway does).
            paths.extend(_mask_paths(value, message_of(field), path + ".", excluded))
        else:
            paths.append(path)
    return paths


def _derive_update_mask(binding: Binding, message: Message, decoded: Any) -> None:
    body_field = binding.body_field
    if body_field is None or not is_plain_message(body_field) or not isinstance(decoded, dict):
        return
    mask_field = binding.method.input_type.fields_by_name.get(UPDATE_MASK)
    if (
        mask_field is None
        or mask_field.message_type is None
        or mask_field.message_type.full_name != FIELD_MASK_TYPE
    ):
        return
    prefix = body_field.name + "."
    # Fields the URL path sets (the resource's id) identify it; they are not changes.
    excluded = {path[len(prefix) :] for path in binding.path_fields if path.startswith(prefix)}
    paths = _mask_paths(decoded, message_of(body_field), "", excluded)
    if not paths:
        raise bad_request(UPDATE_MASK, "the PATCH body sets no updatable field")
    getattr(message, UPDATE_MASK).paths.extend(paths)


def build_request(
    binding: Binding, path_values: Mapping[str, str], query: Iterable[tuple[str, str]], body: bytes
) -> Message:
    """The RPC's request message for an HTTP request; a 400 GatewayError names any bad field."""
    message = binding.request_class()
    decoded: Any = None
    if binding.body:
        decoded = _parse_body(binding, message, body)
    _apply_path(binding, message, path_values)
    query_paths = _apply_query(binding, message, query)
    if binding.http_method == "PATCH" and UPDATE_MASK not in query_paths:
        _derive_update_mask(binding, message, decoded)
    return message


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def render_response(binding: Binding, response: Message) -> bytes:
    """The JSON body of a response: proto3 JSON of the message, or of its `response_body` field.

    Fields without presence are always written (an empty list, false, 0, the zero enum), so
    clients see every field of the schema; unset message fields are left out.
    """
    field = binding.response_field
    if field is None:
        return _json_bytes(json_format.MessageToDict(response, always_print_fields_with_no_presence=True))
    if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
        value = getattr(response, field.name)
        return _json_bytes(json_format.MessageToDict(value, always_print_fields_with_no_presence=True))
    whole = json_format.MessageToDict(response, always_print_fields_with_no_presence=True)
    return _json_bytes(whole.get(field.json_name))


__all__ = ["GatewayError", "build_request", "render_response"]
