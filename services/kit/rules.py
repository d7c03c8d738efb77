"""Authorization rules declared in the contracts (`keel.authz.v1.rule` on each RPC).

Reads the rule of a method from the default protobuf descriptor pool, checks at
start that every RPC of a service has a valid one, and resolves the dotted
request-field paths a permission rule names. Enforcement lives in the
interceptors; this module only knows the contract.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from google.protobuf import descriptor, descriptor_pool
from google.protobuf.message import Message

from keel.authz.v1 import authz_pb2

RuleKind = Literal["public", "authenticated", "permission"]


@dataclass(frozen=True)
class MethodRule:
    """The authorization rule of one RPC, flattened for the interceptor's hot path."""

    full_method: str
    kind: RuleKind
    resource_type: str = ""
    action: str = ""
    resource_field: str = ""
    scope_field: str = ""
    self_field: str = ""
    # Whether the client streams requests: field paths cannot be read before the handler then.
    client_streaming: bool = False


class RuleError(ValueError):
    """One or more RPCs have no rule or an invalid one; the message names each."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid authorization rules:\n  " + "\n  ".join(self.problems))


def _pool() -> descriptor_pool.DescriptorPool:
    return descriptor_pool.Default()


def _method_descriptor(full_method: str) -> descriptor.MethodDescriptor | None:
    service_name, sep, method_name = full_method.lstrip("/").partition("/")
    if not sep:
        return None
    try:
        service = _pool().FindServiceByName(service_name)
    except KeyError:
        return None
    return service.methods_by_name.get(method_name)


def _rule_of(method: descriptor.MethodDescriptor) -> MethodRule | None:
    options = method.GetOptions()
    if not options.HasExtension(authz_pb2.rule):
        return None
    rule = options.Extensions[authz_pb2.rule]
    kind = rule.WhichOneof("rule")
    if kind is None:
        return None
    full_method = f"/{method.containing_service.full_name}/{method.name}"
    if kind != "permission":
        return MethodRule(full_method, kind, client_streaming=method.client_streaming)
    permission = rule.permission
    return MethodRule(
        full_method,
        "permission",
        resource_type=permission.resource_type,
        action=permission.action,
        resource_field=permission.resource_field,
        scope_field=permission.scope_field,
        self_field=permission.self_field,
        client_streaming=method.client_streaming,
    )


@functools.lru_cache(maxsize=4096)
def rule_for(full_method: str) -> MethodRule | None:
    """The rule of "/pkg.Service/Method", or None when the method is unknown or declares none."""
    method = _method_descriptor(full_method)
    return None if method is None else _rule_of(method)


def _field_path_problem(message: descriptor.Descriptor, path: str) -> str | None:
    current = message
    parts = path.split(".")
    for index, part in enumerate(parts):
        field = current.fields_by_name.get(part)
        if field is None:
            return f"field {path!r} does not exist in {message.full_name}"
        if field.is_repeated:
            return f"field {path!r} of {message.full_name} is repeated"
        last = index == len(parts) - 1
        if last:
            if field.type != descriptor.FieldDescriptor.TYPE_STRING:
                return f"field {path!r} of {message.full_name} is not a string"
        else:
            if field.message_type is None:
                return f"field {path!r} of {message.full_name} crosses a non-message field"
            current = field.message_type
    return None


def _method_problems(method: descriptor.MethodDescriptor) -> list[str]:
    name = f"{method.containing_service.full_name}.{method.name}"
    rule = _rule_of(method)
    if rule is None:
        return [f"{name}: no (keel.authz.v1.rule) option"]
    if rule.kind != "permission":
        return []
    problems: list[str] = []
    if not rule.resource_type or not rule.action:
        problems.append(f"{name}: permission rule needs both resource_type and action")
    for label, path in (
        ("resource_field", rule.resource_field),
        ("scope_field", rule.scope_field),
        ("self_field", rule.self_field),
    ):
        if not path:
            continue
        if method.client_streaming:
            # The interceptor checks before the handler reads the stream, so no request
            # message is available to read the field from.
            problems.append(f"{name}: {label} cannot be used on a client-streaming RPC")
            continue
        problem = _field_path_problem(method.input_type, path)
        if problem is not None:
            problems.append(f"{name}: {label}: {problem}")
    return problems


def validate_rules(service_full_names: Iterable[str]) -> None:
    """Raises RuleError naming every RPC of these services without a valid rule."""
    problems: list[str] = []
    for service_name in service_full_names:
        try:
            service = _pool().FindServiceByName(service_name)
        except KeyError:
            problems.append(f"{service_name}: service not found in the descriptor pool")
            continue
        for method in service.methods:
            problems.extend(_method_problems(method))
    if problems:
        raise RuleError(problems)


def field_value(message: Message, path: str) -> str:
    """The string at a dotted field path of a request; '' when a message on the way is unset."""
    current: Message = message
    parts = path.split(".")
    for part in parts[:-1]:
        if not current.HasField(part):
            return ""
        current = getattr(current, part)
    value = getattr(current, parts[-1])
    return value if isinstance(value, str) else str(value)
