"""RevocationFeed against a real authn: revoked subjects and sessions are refused after one poll.

The feed calls ListRevocations as a real service account (ServiceCredential),
and a kit TokenVerifier fed with authn's JWKS uses its principal_check, so
each test goes token → authn → feed → verifier. The feed runs on authn's
ManualClock: expiry is a clock move, never a wait.
"""

from __future__ import annotations

import logging
import socket

import grpc
import pytest

from keel.authn.v1 import tokens_pb2, tokens_pb2_grpc, users_pb2
from services.kit.errors import Unauthenticated
from services.kit.revocations import RevocationFeed
from services.kit.service_identity import ServiceCredential
from services.kit.tokens import JwksCache, TokenVerifier, jwks_from_authn
from tests.authn.conftest import Authn, authn, clock  # noqa: F401  (fixtures)

PASSWORD = "correct horse battery"


async def feed_for(
    authn: Authn,  # noqa: F811
    channel: grpc.aio.Channel | None = None,
    *,
    page_size: int = 1000,
    stale_after_seconds: float = 30.0,
) -> RevocationFeed:
    """A feed polling `authn` (or `channel`) as a new service account, on authn's clock."""
    _, secret = await authn.service_account_key("keel-rbac")
    credential = ServiceCredential(authn.tokens, secret, authn.clock)
    return RevocationFeed(
        tokens_pb2_grpc.TokenServiceStub(channel or authn.channel),
        credential.metadata,
        authn.clock,
        page_size=page_size,
        stale_after_seconds=stale_after_seconds,
    )


def verifier_for(authn: Authn, feed: RevocationFeed) -> TokenVerifier:  # noqa: F811
    settings = authn.service.domain.settings
    return TokenVerifier(
        JwksCache(jwks_from_authn(authn.channel), clock=authn.clock),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        clock=authn.clock,
        principal_check=feed.principal_check,
    )


async def signed_in(authn: Authn, email: str) -> tuple[str, tokens_pb2.CreateTokenResponse]:  # noqa: F811
    user = await authn.create_user(email, PASSWORD)
    return user.id, await authn.login(email, PASSWORD)


async def deactivate(authn: Authn, user_id: str) -> None:  # noqa: F811
    await authn.users.DeactivateUser(users_pb2.DeactivateUserRequest(user_id=user_id), metadata=authn.admin)


async def test_a_deactivated_users_token_is_refused_after_one_poll(authn: Authn) -> None:  # noqa: F811
    feed = await feed_for(authn)
    verifier = verifier_for(authn, feed)
    alice_id, alice = await signed_in(authn, "alice@example.test")
    _, bob = await signed_in(authn, "bob@example.test")
    assert (await verifier.verify_access_token(alice.access_token)).subject == alice_id  # now cached

    await deactivate(authn, alice_id)
    assert await feed.poll_once() == 1

    # Refused although the verifier had the token cached: the check runs on every call.
    with pytest.raises(Unauthenticated):
        await verifier.verify_access_token(alice.access_token)
    await verifier.verify_access_token(bob.access_token)
    # Tokens of other users signed in after the revocation are untouched, and so is a fresh
    # sign-in of bob.
    carol_id, carol = await signed_in(authn, "carol@example.test")
    assert (await verifier.verify_access_token(carol.access_token)).subject == carol_id
    await verifier.verify_access_token((await authn.login("bob@example.test", PASSWORD)).access_token)
    assert feed.healthy


async def test_an_ended_session_is_refused_and_another_session_is_not(authn: Authn) -> None:  # noqa: F811
    feed = await feed_for(authn)
    verifier = verifier_for(authn, feed)
    _, phone = await signed_in(authn, "dora@example.test")
    laptop = await authn.login("dora@example.test", PASSWORD)

    await authn.tokens.RevokeToken(tokens_pb2.RevokeTokenRequest(refresh_token=phone.refresh_token))
    await feed.poll_once()

    with pytest.raises(Unauthenticated):
        await verifier.verify_access_token(phone.access_token)
    await verifier.verify_access_token(laptop.access_token)


async def test_entries_are_dropped_after_their_expiry(authn: Authn) -> None:  # noqa: F811
    feed = await feed_for(authn)
    user_id, _ = await signed_in(authn, "erin@example.test")
    await deactivate(authn, user_id)
    await feed.poll_once()
    assert feed.tracked == 1
    settings = authn.service.domain.settings
    kept = settings.authn_access_token_ttl_seconds + settings.authn_token_leeway_seconds

    authn.clock.advance(seconds=kept - 1)
    await feed.poll_once()
    assert feed.tracked == 1
    authn.clock.advance(seconds=1)
    await feed.poll_once()
    assert feed.tracked == 0


async def test_a_poll_reads_every_page(authn: Authn) -> None:  # noqa: F811
    feed = await feed_for(authn, page_size=2)
    ids = [(await signed_in(authn, f"u{i}@example.test"))[0] for i in range(5)]
    for user_id in ids:
        await deactivate(authn, user_id)

    assert await feed.poll_once() == 5
    assert feed.last_sequence == 5
    assert feed.tracked == 5
    assert await feed.poll_once() == 0


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_authn_delays_start_only_briefly(authn: Authn) -> None:  # noqa: F811
    async with grpc.aio.insecure_channel(f"127.0.0.1:{unused_port()}") as nowhere:
        feed = await feed_for(authn, nowhere)
        with pytest.raises(grpc.aio.AioRpcError):
            await feed.poll_once()
        await feed.start(first_poll_timeout_seconds=2)
        await feed.stop()
    assert not feed.healthy


async def test_failing_polls_keep_the_known_set_and_warn_once_when_stale(
    authn: Authn,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{authn.service.port}")
    feed = await feed_for(authn, channel, stale_after_seconds=30)
    user_id, user = await signed_in(authn, "frank@example.test")
    await deactivate(authn, user_id)
    await feed.poll_once()
    await channel.close(None)  # authn is out of reach from now on

    def warnings() -> list[logging.LogRecord]:
        return [
            r for r in caplog.records if r.name == "services.kit.revocations" and r.levelno >= logging.WARNING
        ]

    with caplog.at_level(logging.WARNING, logger="services.kit.revocations"):
        await feed.poll_or_note_failure()
        authn.clock.advance(seconds=30)
        await feed.poll_or_note_failure()
        assert warnings() == []  # not stale yet: exactly the bound
        authn.clock.advance(seconds=1)
        await feed.poll_or_note_failure()
        authn.clock.advance(seconds=60)
        await feed.poll_or_note_failure()

    [warning] = warnings()
    assert "stale" in warning.getMessage()
    assert not feed.healthy
    # Fail open, but on the last known set: the revoked token is still refused.
    verifier = verifier_for(authn, feed)
    with pytest.raises(Unauthenticated):
        await verifier.verify_access_token(user.access_token)
