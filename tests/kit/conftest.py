"""Fixtures for the kit's server, interceptor, token and client tests.

Real grpc.aio servers on ephemeral 127.0.0.1 ports, real channels, and access
tokens minted with PyJWT from test keys whose JWKS an in-memory fetch serves.
Every server and channel a test opens is closed at teardown.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from jwt.algorithms import ECAlgorithm, OKPAlgorithm
from opentelemetry.trace import TracerProvider

from keel.authz.v1 import authz_pb2
from services.kit.config import ServiceSettings
from services.kit.context import Principal
from services.kit.server import KeelServer, Registration
from services.kit.tokens import JwksCache, TokenVerifier
from tests.kit.echo_service import EchoServicer, echo_registration

ISSUER = "keel-test"
AUDIENCE = "keel"


def public_jwk(private_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    """The public JWK of a test key, shaped like GetJwksResponse keys."""
    if isinstance(private_key, Ed25519PrivateKey):
        jwk = dict(OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True))
        jwk["alg"] = "EdDSA"
    else:
        jwk = dict(ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True))
        jwk["alg"] = "ES256"
    jwk.update(kid=kid, use="sig")
    return jwk


@dataclass
class KeySet:
    """Test signing keys and the JWKS an in-memory 'authn' currently publishes."""

    ed25519: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    p256: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    published: list[dict[str, Any]] = field(default_factory=list)
    fetches: int = 0

    def __post_init__(self) -> None:
        self.published = [public_jwk(self.ed25519, "ed-1"), public_jwk(self.p256, "ec-1")]

    async def fetch(self) -> Sequence[Mapping[str, Any]]:
        self.fetches += 1
        return list(self.published)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": AUDIENCE,
            "exp": now + 300,
            "iat": now,
            "nbf": now,
            "jti": str(uuid.uuid4()),
            "typ": "user",
            "org": "org-1",
        }
        for name, value in overrides.items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(
        self,
        *,
        kid: str = "ed-1",
        algorithm: str = "EdDSA",
        key: Any = None,
        header_typ: str | None = "at+jwt",
        **claim_overrides: Any,
    ) -> str:
        """A token signed by the key of `kid` (or `key`), with claims overridden (None removes)."""
        signing_key = key if key is not None else (self.ed25519 if algorithm == "EdDSA" else self.p256)
        headers: dict[str, Any] = {"kid": kid}
        if header_typ is not None:
            headers["typ"] = header_typ
        return jwt.encode(self.claims(**claim_overrides), signing_key, algorithm=algorithm, headers=headers)


@pytest.fixture
def keys() -> KeySet:
    return KeySet()


@pytest.fixture
def jwks(keys: KeySet) -> JwksCache:
    return JwksCache(keys.fetch, min_refetch_interval_seconds=60)


@pytest.fixture
def verifier(jwks: JwksCache) -> TokenVerifier:
    return TokenVerifier(jwks, issuer=ISSUER, audience=AUDIENCE)


@dataclass
class RecordingChecker:
    """A permission checker with a fixed set of grants that records every question."""

    grants: set[tuple[str, str, str, str, str]] = field(default_factory=set)
    calls: list[tuple[str, str, str, str, str]] = field(default_factory=list)

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        question = (principal.subject, resource_type, action, resource_id, scope_id)
        self.calls.append(question)
        return question in self.grants


@pytest.fixture
def checker() -> RecordingChecker:
    return RecordingChecker()


def kit_settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"listen_address": "127.0.0.1:0", "drain_seconds": 0.0}
    values.update(overrides)
    return ServiceSettings(**values)


StartServer = Callable[..., Awaitable[KeelServer]]


@pytest.fixture
async def start_server(verifier: TokenVerifier, checker: RecordingChecker) -> AsyncIterator[StartServer]:
    """Starts KeelServers (EchoService by default); stops every one at teardown."""
    servers: list[KeelServer] = []

    async def start(
        servicer: EchoServicer | None = None,
        *,
        registrations: Sequence[Registration] | None = None,
        tracer_provider: TracerProvider | None = None,
        **settings: Any,
    ) -> KeelServer:
        regs = registrations if registrations is not None else [echo_registration(servicer or EchoServicer())]
        server = KeelServer(
            "test", kit_settings(**settings), regs, verifier, checker, tracer_provider=tracer_provider
        )
        servers.append(server)
        await server.start()
        return server

    yield start
    for server in servers:
        await server.stop()


OpenChannel = Callable[[int], grpc.aio.Channel]


@pytest.fixture
async def open_channel() -> AsyncIterator[OpenChannel]:
    """Plain channels (no kit client interceptors) to local ports; closed at teardown."""
    channels: list[grpc.aio.Channel] = []

    def open_(port: int) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel

    yield open_
    for channel in channels:
        await channel.close(None)


_defined = 0


def define_service(methods: Mapping[str, authz_pb2.AuthorizationRule | None]) -> str:
    """Adds a descriptor-only service to the default pool; returns its full name.

    Its request type `Outer` has `string id = 1` and `Inner inner = 2` (with
    `string id = 1`), so rules can name plain and nested field paths.
    """
    global _defined
    _defined += 1
    package = f"keel.kittest{_defined}.v1"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"keel/kittest{_defined}/v1/test.proto",
        package=package,
        syntax="proto3",
        dependency=["keel/authz/v1/authz.proto"],
    )
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    inner = file.message_type.add(name="Inner")
    inner.field.add(name="id", number=1, type=string, label=optional, json_name="id")
    outer = file.message_type.add(name="Outer")
    outer.field.add(name="id", number=1, type=string, label=optional, json_name="id")
    outer.field.add(
        name="inner",
        number=2,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=f".{package}.Inner",
        label=optional,
        json_name="inner",
    )
    service = file.service.add(name="TestService")
    for name, rule in methods.items():
        method = service.method.add(
            name=name, input_type=f".{package}.Outer", output_type=f".{package}.Outer"
        )
        if rule is not None:
            method.options.Extensions[authz_pb2.rule].CopyFrom(rule)
    descriptor_pool.Default().AddSerializedFile(file.SerializeToString())
    return f"{package}.TestService"


def outer_message(service_full_name: str) -> type[Message]:
    """The message class of a defined service's request type."""
    package = service_full_name.rsplit(".", 1)[0]
    return message_factory.GetMessageClass(
        descriptor_pool.Default().FindMessageTypeByName(f"{package}.Outer")
    )
