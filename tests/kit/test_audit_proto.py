"""Kit AuditEvent ⇄ keel.orgs.v1.AuditEvent: lossless for wire-form details, same chain hash."""

from __future__ import annotations

import datetime as dt

import pytest

from keel.orgs.v1 import audit_pb2
from services.kit.audit import Actor, AuditEvent
from services.kit.audit_chain import GENESIS, chain_hash
from services.kit.audit_proto import event_from_proto, event_to_proto, wire_details, wire_form

OCCUR = dt.datetime(2026, 11, 26, 9, 30, 15, 123456, tzinfo=dt.UTC)


def make_event(**changes: object) -> AuditEvent:
    fields: dict[str, object] = {
        "organization_id": "org-1",
        "actor": Actor("sa-1", "service_account"),
        "on_behalf_of": "user-7",
        "action": "orgs.workspace.register",
        "resource_type": "workspace",
        "resource_id": "ws-1",
        "outcome": "DENIED",
        "request_id": "req-1",
        "source_address": "ipv4:10.0.0.1:5000",
        "occur_time": OCCUR,
        "details": {
            "count": 3,
            "ratio": 0.25,
            "negative": -17,
            "flag": True,
            "nothing": None,
            "nested": {"list": [1, "two", {"three": 3.5}, [False, None]], "deep": {"name": "x"}},
            "big": 2**53,
        },
    }
    fields.update(changes)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def proto_trip(event: AuditEvent) -> AuditEvent:
    wire = event_to_proto(event).SerializeToString()
    return event_from_proto(audit_pb2.AuditEvent.FromString(wire))


def test_round_trip_gives_an_equal_event_with_the_same_chain_hash() -> None:
    event = make_event()

    back = proto_trip(event)

    assert back == event
    assert back.details == event.details
    assert back.occur_time == OCCUR  # microseconds survive
    assert back.to_record() == event.to_record()
    assert chain_hash(GENESIS, back) == chain_hash(GENESIS, event)


@pytest.mark.parametrize("outcome", ["SUCCESS", "DENIED", "FAILED"])
def test_every_outcome_survives(outcome: str) -> None:
    assert proto_trip(make_event(outcome=outcome)).outcome == outcome


def test_ints_stay_ints_although_struct_carries_doubles() -> None:
    back = proto_trip(make_event(details={"count": 3, "list": [1, 2]}))

    assert type(back.details["count"]) is int
    assert [type(item) for item in back.details["list"]] == [int, int]


def test_integral_floats_and_huge_ints_take_their_wire_form() -> None:
    event = make_event(details={"whole": 3.0, "huge": 2**60 + 1, "tiny": -(2**60), "half": 0.5})

    back = proto_trip(event)

    assert back.details == {"whole": 3, "huge": str(2**60 + 1), "tiny": str(-(2**60)), "half": 0.5}
    assert type(back.details["whole"]) is int
    # The in-process path normalizes the same way, so both paths store and hash alike.
    assert back.to_record() == wire_form(event).to_record()
    assert chain_hash(GENESIS, back) == chain_hash(GENESIS, wire_form(event))
    assert chain_hash(GENESIS, back) != chain_hash(GENESIS, event)


def test_wire_form_returns_an_event_already_in_wire_form_unchanged() -> None:
    event = make_event()
    assert wire_form(event) is event
    assert wire_details({"a": [True, 1, 1.5, None]}) == {"a": [True, 1, 1.5, None]}
    assert type(wire_details(True)) is bool  # a bool is not the int 1


def test_log_position_fields_are_set_on_the_proto() -> None:
    message = event_to_proto(make_event(), sequence=7, previous_hash="a" * 64, chained_hash="b" * 64)

    assert (message.sequence, message.previous_hash, message.hash) == (7, "a" * 64, "b" * 64)
    assert message.actor_kind == "service_account"
    assert message.actor_id == "sa-1"
    assert message.outcome == audit_pb2.AuditEvent.DENIED


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.ClearField("occur_time"), "occur_time"),
        (lambda m: setattr(m, "outcome", audit_pb2.AuditEvent.OUTCOME_UNSPECIFIED), "outcome"),
        (lambda m: setattr(m, "id", "not-a-uuid"), "UUID"),
        (lambda m: setattr(m, "actor_kind", "robot"), "actor_kind"),
        (lambda m: setattr(m, "action", ""), "action"),
        (lambda m: m.details.update({"password": "hunter2"}), "credential"),
        (lambda m: setattr(m, "resource_id", "keel_rt_" + "A" * 32), "credential"),
    ],
)
def test_an_invalid_proto_is_refused(change: object, message: str) -> None:
    proto = event_to_proto(make_event())
    change(proto)  # type: ignore[operator]

    with pytest.raises(ValueError, match=message):
        event_from_proto(proto)
