"""REST → gRPC → REST through a real gateway and a real gRPC server (keel.testing.v1's services).

Each test sends HTTP and asserts the exact proto request the server received,
and the proto3 JSON that came back.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2, wrappers_pb2

from keel.testing.v1 import echo_pb2
from tests.gateway.conftest import EchoBackend, StartGateway
from tests.kit.conftest import KeySet

Probe = echo_pb2.Probe


def _timestamp(text: str) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    return stamp


async def test_query_parameters_fill_every_kind_of_field(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    params: list[tuple[str, str | int | float | bool | None]] = [
        ("pageSize", "25"),
        ("show_deleted", "true"),
        ("tags", "a"),
        ("tags", "b,c"),
        ("readMask", "displayName,inner.count,etag"),
        ("createdAfter", "2024-05-01T12:00:00+02:00"),
        ("example.id", "e1"),
        ("example.inner.count", "3"),
        ("example.inner.labels", "x"),
        ("example.int32Value", "-7"),
        ("example.int64_value", "-9007199254740993"),
        ("example.uint64Value", "18446744073709551615"),
        ("example.doubleValue", "1.5"),
        ("example.floatValue", "0.25"),
        ("example.boolValue", "false"),
        ("example.bytesValue", "AP8"),
        ("example.color", "GREEN"),
        ("example.numbers", "1"),
        ("example.numbers", "2"),
        ("example.colors", "RED"),
        ("example.colors", "2"),
        ("example.time", "2024-05-01T10:00:00.5Z"),
        ("example.duration", "1.5s"),
        ("example.mask", "int32Value,inner.id"),
        ("example.wrappedCount", "0"),
        ("example.etag", ""),
    ]
    response = await echo_gateway.get("/v1/probeSets/set%201/probes", params=params)
    assert response.status_code == 200, response.text
    expected_example = Probe(
        id="e1",
        inner=Probe.Inner(count=3, labels=["x"]),
        int32_value=-7,
        int64_value=-9007199254740993,
        uint64_value=2**64 - 1,
        double_value=1.5,
        float_value=0.25,
        bool_value=False,
        bytes_value=b"\x00\xff",
        color=Probe.GREEN,
        numbers=[1, 2],
        colors=[Probe.RED, Probe.GREEN],
        time=_timestamp("2024-05-01T10:00:00.5Z"),
        duration=duration_pb2.Duration(seconds=1, nanos=500_000_000),
        mask=field_mask_pb2.FieldMask(paths=["int32_value", "inner.id"]),
        wrapped_count=wrappers_pb2.Int64Value(value=0),
    )
    assert echo_backend.probes.received[-1] == echo_pb2.ListProbesRequest(
        parent_id="set 1",
        page_size=25,
        show_deleted=True,
        tags=["a", "b,c"],
        read_mask=field_mask_pb2.FieldMask(paths=["display_name", "inner.count", "etag"]),
        created_after=_timestamp("2024-05-01T10:00:00Z"),
        example=expected_example,
    )
    # proto3 JSON out: lowerCamel names, 64-bit integers as strings, enums by name, WKTs as strings.
    probe = response.json()["probes"][0]
    assert probe["int64Value"] == "-9007199254740993"
    assert probe["uint64Value"] == "18446744073709551615"
    assert probe["color"] == "GREEN"
    assert probe["colors"] == ["RED", "GREEN"]
    assert probe["time"] == "2024-05-01T10:00:00.500Z"
    assert probe["duration"] == "1.500s"
    assert probe["mask"] == "int32Value,inner.id"
    assert probe["wrappedCount"] == "0"
    assert probe["bytesValue"] == "AP8="
    assert probe["boolValue"] is False
    assert probe["tags"] == []
    assert "createTime" not in probe  # unset message fields stay out
    assert response.json()["nextPageToken"] == ""


async def test_additional_bindings_and_multi_segment_variables(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    listed = await echo_gateway.get("/v1/folders/f1/probeSets/s1/probes")
    assert listed.status_code == 200, listed.text
    assert echo_backend.probes.received[-1] == echo_pb2.ListProbesRequest(parent_id="folders/f1/probeSets/s1")
    by_id = await echo_gateway.get("/v1/probes/p%2F1")
    assert by_id.status_code == 200, by_id.text
    assert echo_backend.probes.received[-1] == echo_pb2.GetProbeRequest(probe_id="p/1")
    in_set = await echo_gateway.get("/v1/probeSets/s1/probes/p1")
    assert echo_backend.probes.received[-1] == echo_pb2.GetProbeRequest(parent_id="s1", probe_id="p1")
    assert in_set.json()["inner"] == {"id": "s1", "count": 0, "labels": []}
    assert in_set.json()["createTime"] == "2024-05-01T12:00:00.500Z"


async def test_double_star_takes_the_rest_of_the_path_and_anonymous_stars_match_one_segment(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    deep = await echo_gateway.get("/v1/probes/p1/files/a/b/c.txt")
    assert deep.json() == {"probeId": "p1", "path": "a/b/c.txt"}
    downloaded = await echo_gateway.get("/v1/archives/2024/probes/p1/files/a/b:download")
    assert downloaded.json() == {"probeId": "p1", "path": "a/b"}
    assert echo_backend.probes.received[-1] == echo_pb2.GetProbeFileRequest(probe_id="p1", path="a/b")


async def test_a_body_field_with_query_parameters_and_response_body(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    body = {
        "id": "p1",
        "color": "RED",
        "labels": {"k": "v"},
        "attributes": {"list": [1, "x", None], "nested": {"ok": True}},
        "int64Value": 5,
        "inner": {"id": "i"},
    }
    response = await echo_gateway.post("/v1/probeSets/s1/probes", params={"requestId": "r-1"}, json=body)
    assert response.status_code == 200, response.text
    attributes = struct_pb2.Struct()
    attributes.update({"list": [1, "x", None], "nested": {"ok": True}})
    assert echo_backend.probes.received[-1] == echo_pb2.CreateProbeRequest(
        parent_id="s1",
        request_id="r-1",
        probe=Probe(
            id="p1",
            color=Probe.RED,
            labels={"k": "v"},
            attributes=attributes,
            int64_value=5,
            inner=Probe.Inner(id="i"),
        ),
    )
    # response_body: the probe alone, without the response's other fields.
    created = response.json()
    assert created["id"] == "p1"
    assert created["attributes"] == {"list": [1.0, "x", None], "nested": {"ok": True}}
    assert "note" not in created
    assert "probe" not in created


async def test_patch_derives_the_update_mask_from_the_body_keys(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    body = {
        "int32Value": 3,
        "inner": {"count": 2},
        "tags": [],
        "etag": '"7"',
        "createTime": "2024-01-01T00:00:00Z",
        "id": "p1",
    }
    response = await echo_gateway.patch("/v1/probes/p1", json=body)
    assert response.status_code == 200, response.text
    received = echo_backend.probes.received[-1]
    assert isinstance(received, echo_pb2.UpdateProbeRequest)
    # The path's id, the etag and output-only fields are not changes; nested objects give nested paths.
    assert list(received.update_mask.paths) == ["int32_value", "inner.count", "tags"]
    assert received.probe.etag == '"7"'


async def test_patch_keeps_a_mask_the_client_sent_and_put_never_derives_one(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    await echo_gateway.patch("/v1/probes/p1", params={"updateMask": "color,inner.id"}, json={"int32Value": 1})
    received = echo_backend.probes.received[-1]
    assert isinstance(received, echo_pb2.UpdateProbeRequest)
    assert list(received.update_mask.paths) == ["color", "inner.id"]
    replaced = await echo_gateway.put("/v1/probes/p1", json={"int32Value": 1})
    assert replaced.status_code == 200, replaced.text
    assert echo_backend.probes.received[-1] == echo_pb2.UpdateProbeRequest(
        probe=Probe(id="p1", int32_value=1)
    )


async def test_patch_without_any_change_is_refused_rather_than_replacing_everything(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    response = await echo_gateway.patch("/v1/probes/p1", json={"etag": '"1"'})
    assert response.status_code == 400
    violations = response.json()["error"]["details"][1]["fieldViolations"]
    assert violations == [{"field": "update_mask", "description": "the PATCH body sets no updatable field"}]
    assert echo_backend.probes.received == []


async def test_delete_and_a_custom_verb_with_the_whole_body(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend
) -> None:
    deleted = await echo_gateway.delete("/v1/probes/p1", params={"etag": '"3"'})
    assert deleted.status_code == 200
    assert deleted.json() == {}
    assert echo_backend.probes.received[-1] == echo_pb2.DeleteProbeRequest(probe_id="p1", etag='"3"')
    touched = await echo_gateway.post(
        "/v1/probes/p1:touch", json={"inner": {"count": 4}, "delay": "2.5s", "note": "hi", "probeId": "p1"}
    )
    assert touched.status_code == 200, touched.text
    assert echo_backend.probes.received[-1] == echo_pb2.TouchProbeRequest(
        probe_id="p1",
        inner=Probe.Inner(count=4),
        delay=duration_pb2.Duration(seconds=2, nanos=500_000_000),
        note=wrappers_pb2.StringValue(value="hi"),
    )
    empty = await echo_gateway.post("/v1/probes/p2:touch")
    assert empty.status_code == 200, empty.text
    assert echo_backend.probes.received[-1] == echo_pb2.TouchProbeRequest(probe_id="p2")


def _violation(response: httpx.Response) -> dict[str, str]:
    details = response.json()["error"]["details"]
    bad_request = next(d for d in details if d["@type"].endswith("google.rpc.BadRequest"))
    violation: dict[str, str] = bad_request["fieldViolations"][0]
    return violation


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "field", "description"),
    [
        ("POST", "/v1/probes/p1:touch", {"content": b"{not json"}, "body", "is not valid JSON"),
        ("POST", "/v1/probes/p1:touch", {"json": [1, 2]}, "body", "must be a JSON object"),
        ("POST", "/v1/probeSets/s/probes", {"json": "text"}, "probe", "must be a JSON object"),
        ("POST", "/v1/probes/p1:touch", {"json": {"surprise": 1}}, "surprise", "unknown field"),
        ("POST", "/v1/probes/p1:touch", {"json": {"inner": {"nope": 1}}}, "inner.nope", "unknown field"),
        ("POST", "/v1/probes/p1:touch", {"json": {"inner": {"count": "many"}}}, "inner.count", "integer"),
        ("POST", "/v1/probes/p1:touch", {"json": {"delay": "soon"}}, "delay", "Duration"),
        ("POST", "/v1/probeSets/s/probes", {"json": {"color": "BLUE"}}, "probe.color", "BLUE"),
        ("POST", "/v1/probeSets/s/probes", {"json": {"time": "yesterday"}}, "probe.time", "timestamp"),
        ("POST", "/v1/probeSets/s/probes", {"json": {"tags": "a"}}, "probe.tags", "repeated"),
        ("POST", "/v1/probes/p1:touch", {"json": {"probeId": "p2"}}, "probe_id", "differs"),
        ("GET", "/v1/probeSets/s/probes", {"params": {"pageSise": "1"}}, "pageSise", "unknown query"),
        ("GET", "/v1/probeSets/s/probes", {"params": {"pageSize": "ten"}}, "page_size", "integer"),
        ("GET", "/v1/probeSets/s/probes", {"params": {"pageSize": "3000000000"}}, "page_size", "between"),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": [("pageSize", "1"), ("pageSize", "2")]},
            "page_size",
            "more",
        ),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": {"showDeleted": "yes"}},
            "show_deleted",
            "true or false",
        ),
        ("GET", "/v1/probeSets/s/probes", {"params": {"example.color": "BLUE"}}, "example.color", "one of"),
        ("GET", "/v1/probeSets/s/probes", {"params": {"createdAfter": "May"}}, "created_after", "RFC 3339"),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": {"example.duration": "5"}},
            "example.duration",
            "duration",
        ),
        ("GET", "/v1/probeSets/s/probes", {"params": {"example": "x"}}, "example", "is a message"),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": {"example.labels": "x"}},
            "example.labels",
            "is a message",
        ),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": {"example.bytesValue": "@@"}},
            "example.bytes_value",
            "base64",
        ),
        ("GET", "/v1/probeSets/s/probes", {"params": {"parentId": "t"}}, "parent_id", "URL path"),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": {"example.inner.id.x": "t"}},
            "example.inner.id",
            "field by",
        ),
        (
            "GET",
            "/v1/probeSets/s/probes",
            {"params": [("page_size", "1"), ("pageSize", "1")]},
            "page_size",
            "JSON name",
        ),
        (
            "POST",
            "/v1/probeSets/s/probes",
            {"params": {"probe.id": "x"}, "json": {}},
            "probe.id",
            "request body",
        ),
        ("POST", "/v1/probes/p1:touch", {"params": {"delay": "1s"}, "json": {}}, "delay", "request body"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    echo_gateway: httpx.AsyncClient,
    echo_backend: EchoBackend,
    method: str,
    path: str,
    kwargs: dict[str, object],
    field: str,
    description: str,
) -> None:
    response = await echo_gateway.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT"
    violation = _violation(response)
    assert violation["field"] == field
    assert description.lower() in violation["description"].lower(), violation
    assert echo_backend.probes.received == []


async def test_a_body_too_large_is_413_and_a_non_json_body_is_415(
    echo_backend: EchoBackend, start_gateway: StartGateway
) -> None:
    client = await start_gateway({"keel.testing.v1": echo_backend.address}, gateway_max_body_bytes=1024)
    large = await client.post("/v1/echo", json={"message": "x" * 2000})
    assert large.status_code == 413
    assert large.json()["error"]["details"][0]["reason"] == "REQUEST_TOO_LARGE"
    form = await client.post("/v1/echo", content=b"message=hi", headers={"content-type": "text/plain"})
    assert form.status_code == 415
    vendor_json = await client.post(
        "/v1/echo", content=b'{"message":"hi"}', headers={"content-type": "application/merge-patch+json"}
    )
    assert vendor_json.status_code == 200
    assert vendor_json.json() == {"message": "hi"}
    assert echo_backend.echo.echo_calls == 1


async def test_unknown_paths_are_404_and_wrong_methods_405_in_the_error_shape(
    echo_gateway: httpx.AsyncClient,
) -> None:
    missing = await echo_gateway.get("/v1/nothing/here")
    assert missing.status_code == 404
    assert missing.json()["error"]["status"] == "NOT_FOUND"
    assert missing.json()["error"]["details"][0]["reason"] == "HTTP_ROUTE_NOT_FOUND"
    wrong = await echo_gateway.delete("/v1/echo")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["details"][0]["reason"] == "HTTP_METHOD_NOT_ALLOWED"


async def test_bearer_tokens_reach_the_backend_and_a_missing_one_is_challenged(
    echo_gateway: httpx.AsyncClient, keys: KeySet
) -> None:
    token = keys.mint(sub="user-42")
    who = await echo_gateway.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
    assert who.status_code == 200, who.text
    assert who.json()["subject"] == "user-42"
    anonymous = await echo_gateway.get("/v1/whoami")
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Bearer realm="keel"'
    forged = await echo_gateway.get("/v1/whoami", headers={"Authorization": "Bearer not-a-token"})
    assert forged.status_code == 401
    assert forged.headers["www-authenticate"] == 'Bearer realm="keel", error="invalid_token"'
    # Other schemes are not forwarded: the backend sees no credentials at all.
    basic = await echo_gateway.get("/v1/whoami", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert basic.status_code == 401


async def test_request_ids_pass_through_and_are_echoed(
    echo_gateway: httpx.AsyncClient, echo_backend: EchoBackend, keys: KeySet
) -> None:
    headers = {"Authorization": f"Bearer {keys.mint()}", "X-Request-Id": "req-123"}
    given = await echo_gateway.get("/v1/whoami", headers=headers)
    assert given.headers["x-request-id"] == "req-123"
    assert given.json()["requestId"] == "req-123"
    generated = await echo_gateway.get("/v1/whoami", headers={**headers, "X-Request-Id": "bad id!"})
    request_id = generated.headers["x-request-id"]
    assert str(uuid.UUID(request_id)) == request_id
    assert generated.json()["requestId"] == request_id
    failed = await echo_gateway.get("/v1/whoami", headers={"X-Request-Id": "req-456"})
    assert failed.status_code == 401
    assert failed.headers["x-request-id"] == "req-456"
    # What the backend saw: the caller's id, and the client address for its logs and throttling.
    assert echo_backend.echo.seen_metadata[0]["x-request-id"] == "req-123"
    assert echo_backend.echo.seen_metadata[0]["x-forwarded-for"] == "127.0.0.1"
