"""The audit hash chain: canonical encoding, links, and verification reporting the first broken link."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest

from services.kit.audit import Actor, AuditEvent
from services.kit.audit_chain import (
    GENESIS,
    canonical_encoding,
    canonical_json,
    chain_hash,
    format_time,
    verify_chain,
)

START = dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)


def event(number: int) -> AuditEvent:
    return AuditEvent(
        id=f"00000000-0000-4000-8000-{number:012d}",
        organization_id="org-1",
        actor=Actor("user-1", "user"),
        action="orgs.members.add",
        resource_type="membership",
        resource_id=f"membership-{number}",
        outcome="SUCCESS",
        occur_time=START + dt.timedelta(seconds=number, microseconds=7),
        request_id=f"req-{number}",
        details={"role": "viewer", "number": number},
    )


def chained(count: int) -> list[tuple[AuditEvent, str]]:
    links: list[tuple[AuditEvent, str]] = []
    previous = GENESIS
    for number in range(count):
        current = event(number)
        previous = chain_hash(previous, current)
        links.append((current, previous))
    return links


def test_genesis_is_64_zeros() -> None:
    assert GENESIS == "0" * 64


def test_times_are_utc_rfc3339_with_microseconds() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    assert format_time(dt.datetime(2026, 1, 2, 4, 5, 6, tzinfo=paris)) == "2026-01-02T03:05:06.000000Z"
    with pytest.raises(ValueError, match="aware"):
        format_time(dt.datetime(2026, 1, 2))


def test_canonical_json_sorts_keys_without_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": "é"}}) == b'{"a":{"c":"\\u00e9","d":[1,2]},"b":1}'


def test_encoding_does_not_depend_on_the_time_zone_of_occur_time() -> None:
    utc = event(1)
    shifted = dataclasses.replace(
        utc, occur_time=utc.occur_time.astimezone(dt.timezone(dt.timedelta(hours=-5)))
    )
    assert canonical_encoding(GENESIS, utc) == canonical_encoding(GENESIS, shifted)


def test_chain_hash_is_sha256_of_the_canonical_encoding() -> None:
    first = event(0)
    encoded = canonical_encoding(GENESIS, first)
    assert chain_hash(GENESIS, first) == hashlib.sha256(encoded).hexdigest()
    decoded = json.loads(encoded)
    assert decoded["previous_hash"] == GENESIS
    assert decoded["event"]["occur_time"] == "2026-11-26T09:00:00.000007Z"


def test_chain_hash_depends_on_the_previous_hash() -> None:
    assert chain_hash(GENESIS, event(0)) != chain_hash("f" * 64, event(0))


def test_chain_hash_refuses_a_malformed_previous_hash() -> None:
    with pytest.raises(ValueError, match="previous_hash"):
        chain_hash("abc", event(0))


def test_intact_chain_verifies() -> None:
    assert verify_chain(chained(6)) is None


def test_empty_chain_verifies() -> None:
    assert verify_chain([]) is None


def test_chain_verifies_in_pages_from_a_stored_hash() -> None:
    links = chained(6)
    assert verify_chain(links[3:], previous_hash=links[2][1]) is None
    assert verify_chain(links[3:]) == 0  # without its predecessor the page does not link to GENESIS


def test_tampered_field_of_a_middle_event_is_the_first_broken_link() -> None:
    links = chained(6)
    original, stored_hash = links[3]
    links[3] = (dataclasses.replace(original, outcome="DENIED"), stored_hash)
    assert verify_chain(links) == 3


def test_tampered_details_of_a_middle_event_is_the_first_broken_link() -> None:
    links = chained(6)
    original, stored_hash = links[2]
    links[2] = (dataclasses.replace(original, details={**original.details, "role": "admin"}), stored_hash)
    assert verify_chain(links) == 2


def test_tampered_hash_is_the_first_broken_link() -> None:
    links = chained(6)
    links[4] = (links[4][0], "a" * 64)
    assert verify_chain(links) == 4


def test_rehashed_tampered_event_still_breaks_the_next_link() -> None:
    # An attacker who recomputes the altered event's hash must rewrite every later hash too.
    links = chained(6)
    altered = dataclasses.replace(links[2][0], resource_id="someone-else")
    links[2] = (altered, chain_hash(links[1][1], altered))
    assert verify_chain(links) == 3


def test_deleted_event_breaks_the_link_at_its_position() -> None:
    links = chained(6)
    del links[3]
    assert verify_chain(links) == 3


def test_reordered_events_break_the_first_swapped_link() -> None:
    links = chained(6)
    links[1], links[2] = links[2], links[1]
    assert verify_chain(links) == 1


def test_inserted_event_breaks_the_link_at_its_position() -> None:
    links = chained(4)
    forged = event(99)
    links.insert(2, (forged, chain_hash(links[1][1], forged)))
    assert verify_chain(links) == 3
