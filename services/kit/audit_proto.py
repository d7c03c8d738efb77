"""Kit `AuditEvent` ⇄ `keel.orgs.v1.AuditEvent`: how events travel from an outbox to the audit log.

Details travel as a `google.protobuf.Struct`, whose numbers are doubles. So
that an event means the same on both sides and hashes the same wherever it
is chained, details numbers are put into one *wire form* before sending and
after receiving (`wire_details`):

- an integral number with |n| ≤ 2^53 (exact in a double) is an int: `3` and
  `3.0` both arrive as `3`, so counts stay ints;
- any other finite float stays a float (a double carries it exactly);
- an int beyond ±2^53 travels as its decimal string, so no digit is lost.

An event whose details are already in wire form (nearly all: ids, names,
counts) converts to proto and back into an equal event with the same chain
hash. The audit log applies `wire_form` to events it receives in process, so
an event is stored identically whichever way it arrived.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from keel.orgs.v1 import audit_pb2
from services.kit.audit import ACTOR_KINDS, Actor, AuditEvent, Outcome

_EXACT_INT = 2**53
_OUTCOME_TO_PROTO: dict[str, audit_pb2.AuditEvent.Outcome.ValueType] = {
    "SUCCESS": audit_pb2.AuditEvent.SUCCESS,
    "DENIED": audit_pb2.AuditEvent.DENIED,
    "FAILED": audit_pb2.AuditEvent.FAILED,
}
_OUTCOME_FROM_PROTO: dict[int, Outcome] = {
    audit_pb2.AuditEvent.SUCCESS: "SUCCESS",
    audit_pb2.AuditEvent.DENIED: "DENIED",
    audit_pb2.AuditEvent.FAILED: "FAILED",
}


def wire_details(value: Any) -> Any:
    """`value` with every number in wire form (see the module text); other JSON values unchanged."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -_EXACT_INT <= value <= _EXACT_INT else str(value)
    if isinstance(value, float):
        if value.is_integer() and -_EXACT_INT <= value <= _EXACT_INT:
            return int(value)
        return value
    if isinstance(value, Mapping):
        return {key: wire_details(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [wire_details(item) for item in value]
    raise ValueError(f"a {type(value).__name__} is not a JSON value")


def wire_form(event: AuditEvent) -> AuditEvent:
    """The event as it is after a trip through the proto (the same object when nothing changes)."""
    details = wire_details(event.details)
    if details == event.details and _same_types(details, event.details):
        return event
    return dataclasses.replace(event, details=details)


def _same_types(left: Any, right: Any) -> bool:
    # 3 == 3.0 in Python, but they hash differently in the chain: compare types too.
    if type(left) is not type(right):
        return False
    if isinstance(left, Mapping):
        return all(_same_types(left[key], right[key]) for key in left)
    if isinstance(left, list):
        return all(_same_types(a, b) for a, b in zip(left, right, strict=True))
    return True


def event_to_proto(
    event: AuditEvent, *, sequence: int = 0, previous_hash: str = "", chained_hash: str = ""
) -> audit_pb2.AuditEvent:
    """The proto of an event; the log position (sequence and hashes) when it has one."""
    occur_time = timestamp_pb2.Timestamp()
    occur_time.FromDatetime(event.occur_time)
    return audit_pb2.AuditEvent(
        id=event.id,
        organization_id=event.organization_id,
        sequence=sequence,
        actor_kind=event.actor.kind,
        actor_id=event.actor.subject,
        on_behalf_of=event.on_behalf_of,
        action=event.action,
        resource_type=event.resource_type,
        resource_id=event.resource_id,
        outcome=_OUTCOME_TO_PROTO[event.outcome],
        request_id=event.request_id,
        source_address=event.source_address,
        occur_time=occur_time,
        details=_struct(wire_details(event.details)),
        previous_hash=previous_hash,
        hash=chained_hash,
    )


def event_from_proto(message: audit_pb2.AuditEvent) -> AuditEvent:
    """The kit event of a proto (output-only fields ignored); ValueError when it is not a valid event.

    The kit event's own checks apply: a credential-shaped value is refused here.
    """
    # Checked here with messages that never echo the value: a caller may have put a secret in it.
    try:
        uuid.UUID(message.id)
    except ValueError:
        raise ValueError("id must be a UUID") from None
    if message.actor_kind not in ACTOR_KINDS:
        raise ValueError(f"actor_kind must be one of {sorted(ACTOR_KINDS)}")
    outcome = _OUTCOME_FROM_PROTO.get(message.outcome)
    if outcome is None:
        raise ValueError("outcome is required")
    if not message.HasField("occur_time"):
        raise ValueError("occur_time is required")
    return AuditEvent(
        id=message.id,
        organization_id=message.organization_id,
        actor=Actor(message.actor_id, message.actor_kind),
        on_behalf_of=message.on_behalf_of,
        action=message.action,
        resource_type=message.resource_type,
        resource_id=message.resource_id,
        outcome=outcome,
        request_id=message.request_id,
        source_address=message.source_address,
        occur_time=message.occur_time.ToDatetime(tzinfo=dt.UTC),
        details=wire_details(_from_struct(message.details)),
    )


def _struct(details: Mapping[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    for key, item in details.items():
        _set_value(struct.fields[key], item)
    return struct


def _set_value(target: struct_pb2.Value, value: Any) -> None:
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, Mapping):
        target.struct_value.SetInParent()
        for key, item in value.items():
            _set_value(target.struct_value.fields[key], item)
    elif isinstance(value, list | tuple):
        target.list_value.SetInParent()
        for item in value:
            _set_value(target.list_value.values.add(), item)
    else:
        raise ValueError(f"a {type(value).__name__} is not a JSON value")


def _from_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    return {key: _from_value(value) for key, value in struct.fields.items()}


def _from_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "struct_value":
        return _from_struct(value.struct_value)
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    return None  # null_value, or a Value with nothing set
