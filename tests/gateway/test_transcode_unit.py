"""Transcoding without sockets, over the descriptors of keel.testing.v1's ProbeService."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.bindings import Binding, bindings_of, keel_services
from gateway.errors import GatewayError
from gateway.transcode import build_request, render_response
from keel.testing.v1 import echo_pb2


def _binding(method: str, index: int = 0) -> Binding:
    service = next(s for s in keel_services(["keel.testing.v1"]) if s.name == "ProbeService")
    return next(b for b in bindings_of(service) if b.method.name == method and b.index == index)


def test_proto_and_json_names_in_the_query_build_the_same_request() -> None:
    binding = _binding("ListProbes")
    by_json = build_request(
        binding, {"parent_id": "s"}, [("example.int64Value", "5"), ("showDeleted", "1")], b""
    )
    by_proto = build_request(
        binding, {"parent_id": "s"}, [("example.int64_value", "5"), ("show_deleted", "1")], b""
    )
    assert by_json == by_proto
    assert by_json == echo_pb2.ListProbesRequest(
        parent_id="s", show_deleted=True, example=echo_pb2.Probe(int64_value=5)
    )


def test_every_binding_of_an_rpc_is_built_from_its_own_rule() -> None:
    primary, additional = _binding("UpdateProbe", 0), _binding("UpdateProbe", 1)
    assert (primary.http_method, additional.http_method) == ("PATCH", "PUT")
    assert primary.template.text == additional.template.text == "/v1/probes/{probe.id}"
    assert primary.grpc_path == "/keel.testing.v1.ProbeService/UpdateProbe"


def test_response_body_may_name_a_repeated_field() -> None:
    binding = dataclasses.replace(_binding("ListProbes"), response_body="probes")
    response = echo_pb2.ListProbesResponse(probes=[echo_pb2.Probe(id="a"), echo_pb2.Probe(id="b")])
    rendered = json.loads(render_response(binding, response))
    assert [probe["id"] for probe in rendered] == ["a", "b"]


def test_a_query_value_that_does_not_fit_the_field_is_a_400() -> None:
    binding = _binding("ListProbes")
    with pytest.raises(GatewayError) as raised:
        build_request(binding, {"parent_id": "s"}, [("pageSize", "1.5")], b"")
    assert raised.value.status.code == 3  # INVALID_ARGUMENT
    assert "page_size" in raised.value.status.message
