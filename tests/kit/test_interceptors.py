"""The kit's server interceptors, exercised through a real KeelServer running EchoService."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from keel.testing.v1 import echo_pb2, echo_pb2_grpc
from services.kit.interceptors import Denial
from services.kit.logs import JsonFormatter
from services.kit.server import KeelServer
from services.kit.status import error_info_of, rich_status_of
from services.kit.tokens import TokenVerifier
from tests.kit.conftest import KeySet, OpenChannel, RecordingChecker, StartServer, kit_settings
from tests.kit.echo_service import ECHO_SERVICE, EchoServicer, echo_registration

Kind = echo_pb2.FailRequest.ErrorKind


def _metadata(metadata: object) -> dict[str, str]:
    return {str(key): str(value) for key, value in metadata}  # type: ignore[attr-defined]


async def _stub(
    start_server: StartServer, open_channel: OpenChannel, **settings: object
) -> echo_pb2_grpc.EchoServiceAsyncStub:
    server = await start_server(**settings)
    return echo_pb2_grpc.EchoServiceStub(open_channel(server.port))


def _bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


async def test_request_id_is_generated_and_echoed_when_absent(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel)
    call = stub.Echo(echo_pb2.EchoRequest(message="hi"))

    assert (await call).message == "hi"
    request_id = _metadata(await call.trailing_metadata())["x-request-id"]
    assert uuid.UUID(request_id).version == 4


async def test_valid_request_id_is_adopted_and_visible_to_handlers(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet
) -> None:
    stub = await _stub(start_server, open_channel)
    call = stub.WhoAmI(
        echo_pb2.WhoAmIRequest(), metadata=(("x-request-id", "req-1.A_b"), *_bearer(keys.mint()))
    )

    assert (await call).request_id == "req-1.A_b"
    assert _metadata(await call.trailing_metadata())["x-request-id"] == "req-1.A_b"


@pytest.mark.parametrize("supplied", ["has space", "x" * 129, "semi;colon"])
async def test_unsafe_request_id_is_replaced(
    start_server: StartServer, open_channel: OpenChannel, supplied: str
) -> None:
    stub = await _stub(start_server, open_channel)
    call = stub.Echo(echo_pb2.EchoRequest(), metadata=(("x-request-id", supplied),))
    await call

    echoed = _metadata(await call.trailing_metadata())["x-request-id"]
    assert echoed != supplied
    assert uuid.UUID(echoed).version == 4


async def test_default_deadline_applies_when_caller_sets_none(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel, default_deadline_seconds=0.2)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Wait(echo_pb2.WaitRequest(duration=duration_pb2.Duration(seconds=30)))

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == "DEADLINE_EXCEEDED"


async def test_caller_deadline_overrides_the_default(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel, default_deadline_seconds=0.05)

    response = await stub.Wait(
        echo_pb2.WaitRequest(duration=duration_pb2.Duration(nanos=200_000_000)), timeout=10
    )

    assert response.completed


@pytest.mark.parametrize(
    ("kind", "code", "reason"),
    [
        (Kind.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "NOT_FOUND"),
        (Kind.ALREADY_EXISTS, grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"),
        (Kind.FAILED_PRECONDITION, grpc.StatusCode.FAILED_PRECONDITION, "FAILED_PRECONDITION"),
        (Kind.ABORTED, grpc.StatusCode.ABORTED, "ABORTED"),
        (Kind.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"),
        (Kind.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"),
        (Kind.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"),
    ],
)
async def test_domain_error_maps_to_code_and_error_info(
    start_server: StartServer,
    open_channel: OpenChannel,
    kind: echo_pb2.FailRequest.ErrorKind.ValueType,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Fail(echo_pb2.FailRequest(error=kind, message="it broke"))

    assert raised.value.code() == code
    assert raised.value.details() == "it broke"
    info = error_info_of(raised.value)
    assert info is not None
    assert (info.reason, info.domain) == (reason, "keel.dev")


def _detail(error: grpc.aio.AioRpcError, kind: type) -> object:
    status = rich_status_of(error)
    assert status is not None
    for detail in status.details:
        found = kind()
        if detail.Unpack(found):
            return found
    raise AssertionError(f"no {kind.__name__} in status details")


async def test_invalid_argument_carries_bad_request_field_violations(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Fail(
            echo_pb2.FailRequest(error=Kind.INVALID_ARGUMENT, field="page_size", message="too big")
        )

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    bad_request = _detail(raised.value, error_details_pb2.BadRequest)
    violations = [(v.field, v.description) for v in bad_request.field_violations]  # type: ignore[attr-defined]
    assert violations == [("page_size", "too big")]


async def test_resource_exhausted_carries_retry_info(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Fail(echo_pb2.FailRequest(error=Kind.RESOURCE_EXHAUSTED, retry_after_seconds=2.5))

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = _detail(raised.value, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta().total_seconds() == 2.5  # type: ignore[attr-defined]


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything logged during the test, formatted as the kit's JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter("test"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


async def test_unexpected_exception_is_internal_without_internals(
    start_server: StartServer, open_channel: OpenChannel, captured_logs: io.StringIO
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Fail(echo_pb2.FailRequest(error=Kind.UNEXPECTED), metadata=(("x-request-id", "req-boom"),))

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error (request id req-boom)"
    assert _metadata(raised.value.trailing_metadata())["x-request-id"] == "req-boom"
    assert b"secret internals" not in rich_status_of(raised.value).SerializeToString()  # type: ignore[union-attr]
    logged = captured_logs.getvalue()
    assert "secret internals" in logged
    assert "Traceback" in logged
    assert '"request_id": "req-boom"' in logged


async def test_malformed_request_bytes_are_invalid_argument(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    server = await start_server()
    raw = open_channel(server.port).unary_unary(f"/{ECHO_SERVICE}/Echo", None, None)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await raw(b"\x0a\xff\xff\xff")  # field 1, length far beyond the data

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info_of(raised.value)
    assert info is not None
    assert info.reason == "MALFORMED_REQUEST"


async def test_authenticated_rpc_without_token_is_unauthenticated(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.WhoAmI(echo_pb2.WhoAmIRequest())

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_authenticated_rpc_with_invalid_token_is_unauthenticated(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.WhoAmI(echo_pb2.WhoAmIRequest(), metadata=_bearer(keys.mint(aud="elsewhere")))

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "invalid or expired access token"


async def test_authenticated_rpc_sees_the_principal(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet
) -> None:
    stub = await _stub(start_server, open_channel)

    who = await stub.WhoAmI(echo_pb2.WhoAmIRequest(), metadata=_bearer(keys.mint(sub="u-42", org="o-7")))

    assert (who.subject, who.kind, who.organization_id) == ("u-42", "user", "o-7")


async def test_public_rpc_ignores_an_invalid_token(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet
) -> None:
    stub = await _stub(start_server, open_channel)

    response = await stub.Echo(echo_pb2.EchoRequest(message="ok"), metadata=_bearer(keys.mint(iss="evil")))

    assert response.message == "ok"


@pytest.mark.parametrize("owner", ["u-1", "me"])
async def test_self_rule_grants_without_asking_the_checker(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet, checker: RecordingChecker, owner: str
) -> None:
    stub = await _stub(start_server, open_channel)

    thing = await stub.GetThing(
        echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1", owner_id=owner),
        metadata=_bearer(keys.mint(sub="u-1")),
    )

    assert thing.thing_id == "t-1"
    assert checker.calls == []


async def test_checker_allow_lets_the_call_through_with_resource_and_scope(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet, checker: RecordingChecker
) -> None:
    checker.grants.add(("u-1", "thing", "read", "t-1", "o-1"))
    stub = await _stub(start_server, open_channel)

    thing = await stub.GetThing(
        echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1", owner_id="someone-else"),
        metadata=_bearer(keys.mint(sub="u-1")),
    )

    assert thing.owner_id == "someone-else"
    assert checker.calls == [("u-1", "thing", "read", "t-1", "o-1")]


@pytest.mark.parametrize("thing_id", ["t-1", "missing"])
async def test_checker_deny_is_permission_denied_whether_or_not_the_resource_exists(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet, thing_id: str
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(
            echo_pb2.GetThingRequest(organization_id="o-1", thing_id=thing_id),
            metadata=_bearer(keys.mint(sub="u-1")),
        )

    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    info = error_info_of(raised.value)
    assert info is not None
    assert info.metadata["permission"] == "thing.read"


async def test_permission_rpc_without_token_is_unauthenticated(
    start_server: StartServer, open_channel: OpenChannel, checker: RecordingChecker
) -> None:
    stub = await _stub(start_server, open_channel)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(echo_pb2.GetThingRequest(thing_id="t-1", owner_id="me"))

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert checker.calls == []


async def test_access_log_has_one_line_per_call_and_never_the_token(
    start_server: StartServer, open_channel: OpenChannel, keys: KeySet, captured_logs: io.StringIO
) -> None:
    stub = await _stub(start_server, open_channel)
    token = keys.mint(sub="u-log")

    await stub.WhoAmI(echo_pb2.WhoAmIRequest(), metadata=(("x-request-id", "req-log"), *_bearer(token)))

    lines = [line for line in captured_logs.getvalue().splitlines() if '"logger": "keel.access"' in line]
    assert len(lines) == 1
    line = lines[0]
    for expected in (
        '"grpc_method": "/keel.testing.v1.EchoService/WhoAmI"',
        '"grpc_code": "OK"',
        '"request_id": "req-log"',
        '"principal": "u-log"',
        '"duration_ms"',
    ):
        assert expected in line
    assert token not in captured_logs.getvalue()
    assert token.split(".")[2] not in captured_logs.getvalue()


async def test_failed_call_echoes_request_id_in_trailers(
    start_server: StartServer, open_channel: OpenChannel
) -> None:
    stub = await _stub(start_server, open_channel)
    call = stub.Fail(echo_pb2.FailRequest(error=Kind.NOT_FOUND), metadata=(("x-request-id", "req-err"),))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call

    assert _metadata(raised.value.trailing_metadata())["x-request-id"] == "req-err"


@pytest.mark.parametrize(("trusted", "expected"), [(True, "10.0.0.1"), (False, "ipv4:127.0.0.1:")])
async def test_peer_comes_from_forwarded_for_only_when_trusted(
    start_server: StartServer, open_channel: OpenChannel, trusted: bool, expected: str
) -> None:
    servicer = EchoServicer()
    server = await start_server(servicer, trust_forwarded_for=trusted)
    stub = echo_pb2_grpc.EchoServiceStub(open_channel(server.port))

    await stub.Echo(echo_pb2.EchoRequest(), metadata=(("x-forwarded-for", "203.0.113.9, 10.0.0.1"),))

    assert servicer.peers[0].startswith(expected)


# ----------------------------------------------------------------------------------- denials


class DenialLog:
    """A denial recorder that keeps what it is given, or fails while `failing` is set."""

    def __init__(self) -> None:
        self.denials: list[Denial] = []
        self.failing = False

    async def __call__(self, denial: Denial) -> None:
        if self.failing:
            raise ConnectionError("outbox unreachable")
        self.denials.append(denial)


@pytest.fixture
async def denial_server(
    verifier: TokenVerifier, checker: RecordingChecker
) -> AsyncIterator[tuple[echo_pb2_grpc.EchoServiceAsyncStub, DenialLog]]:
    log = DenialLog()
    server = KeelServer(
        "test",
        kit_settings(),
        [echo_registration(EchoServicer())],
        verifier,
        checker,
        denial_recorder=log,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        yield echo_pb2_grpc.EchoServiceStub(channel), log
    finally:
        await channel.close(None)
        await server.stop()


async def test_a_refused_permission_is_handed_to_the_denial_recorder_with_request_id_and_peer(
    denial_server: tuple[echo_pb2_grpc.EchoServiceAsyncStub, DenialLog], keys: KeySet
) -> None:
    stub, log = denial_server

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(
            echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-9"),
            metadata=(("x-request-id", "req-denied-1"), *_bearer(keys.mint(sub="u-7"))),
        )

    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    [denial] = log.denials
    assert denial.method == "/keel.testing.v1.EchoService/GetThing"
    assert (denial.principal.subject, denial.principal.kind) == ("u-7", "user")
    assert (denial.resource_type, denial.action) == ("thing", "read")
    assert (denial.resource_id, denial.scope_id) == ("t-9", "o-1")
    assert denial.request_id == "req-denied-1"
    assert denial.peer.startswith("ipv4:127.0.0.1:")


async def test_a_failing_denial_recorder_leaves_the_answer_permission_denied(
    denial_server: tuple[echo_pb2_grpc.EchoServiceAsyncStub, DenialLog],
    keys: KeySet,
    captured_logs: io.StringIO,
) -> None:
    stub, log = denial_server
    log.failing = True

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(
            echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1"),
            metadata=(("x-request-id", "req-denied-2"), *_bearer(keys.mint(sub="u-1"))),
        )

    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "could not record the denial" in captured_logs.getvalue()
    assert "req-denied-2" in captured_logs.getvalue()


async def test_unauthenticated_and_allowed_calls_record_no_denial(
    denial_server: tuple[echo_pb2_grpc.EchoServiceAsyncStub, DenialLog],
    keys: KeySet,
    checker: RecordingChecker,
) -> None:
    stub, log = denial_server
    checker.grants.add(("u-1", "thing", "read", "t-1", "o-1"))

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1"))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetThing(
            echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1"), metadata=_bearer("not-a-jwt")
        )
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    await stub.GetThing(
        echo_pb2.GetThingRequest(organization_id="o-1", thing_id="t-1"),
        metadata=_bearer(keys.mint(sub="u-1")),
    )

    assert log.denials == []
