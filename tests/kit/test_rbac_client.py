"""RbacPermissionChecker against a real RBAC server on an ephemeral port (both backends).

RBAC-side evidence counts the Check calls that reached RBAC: a spy around the
server's own `Decisions.decide` (the real one answers), which only the Check
RPC reaches here (a self-check skips RBAC's own authorization).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from services.kit.clients import connect
from services.kit.context import Principal
from services.kit.errors import Unavailable
from services.kit.rbac_client import RbacPermissionChecker, workspace_scope
from services.rbac.evaluator import Ref
from tests.clock import ManualClock
from tests.rbac.conftest import Server, server  # noqa: F401  (the real RBAC server fixture)

ORG = "org-1"
ADMIN = "admin-1"
MEMBER = "member-1"


class CheckSpy:
    """Records the questions RBAC's Decisions.decide receives, and lets the real one answer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[tuple[Any, ...]] = []

    async def __call__(self, subject: Any, permission: Any, resource: Ref, at_least_revision: int = 0) -> Any:
        self.calls.append((subject, permission, resource, at_least_revision))
        return await self.inner(subject, permission, resource, at_least_revision)


@pytest.fixture
async def rbac_channel(server: Server) -> AsyncIterator[grpc.aio.Channel]:  # noqa: F811
    channel = connect(f"127.0.0.1:{server.service.port}")
    try:
        yield channel
    finally:
        await channel.close(None)


@pytest.fixture
def spy(server: Server, monkeypatch: pytest.MonkeyPatch) -> CheckSpy:  # noqa: F811
    decisions = server.service.domain.decisions
    recorder = CheckSpy(decisions.decide)
    monkeypatch.setattr(decisions, "decide", recorder)
    return recorder


def principal(server: Server, subject: str = MEMBER) -> Principal:  # noqa: F811
    return Principal(subject, "user", token=server.keys.mint(sub=subject, typ="user"))


async def seed(server: Server) -> str:  # noqa: F811
    """Admin and member of ORG; the member also an organization viewer. The viewer binding's id."""
    administration = server.service.domain.administration
    await administration.bootstrap_organization_admin(ORG, ADMIN)
    await administration.create_binding(ORG, ("user", MEMBER), "organization_member", Ref(ORG))
    viewer = await administration.create_binding(ORG, ("user", MEMBER), "organization_viewer", Ref(ORG))
    return viewer.id


async def test_answers_allowed_and_denied_as_rbac_says(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock())
    member = principal(server)

    read = await checker.check(member, "project", "read", "p-1", ORG)
    delete = await checker.check(member, "project", "delete", "p-1", ORG)
    create = await checker.check(member, "workspace", "create", "", ORG)
    workload = await checker.check(Principal("wl-1", "workload", token="x"), "project", "read", "p-1", ORG)
    no_scope = await checker.check(member, "project", "read", "p-1", "")

    assert (read, delete, create, workload, no_scope) == (True, False, False, False, False)
    assert [(c[0], c[1], c[2]) for c in spy.calls] == [
        (("user", MEMBER), ("project", "read"), Ref(ORG, resource_type="project", resource_id="p-1")),
        (("user", MEMBER), ("project", "delete"), Ref(ORG, resource_type="project", resource_id="p-1")),
        (("user", MEMBER), ("workspace", "create"), Ref(ORG)),
    ]


async def test_a_principal_without_a_token_is_denied_and_not_cached(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock())

    first = await checker.check(Principal(MEMBER, "user"), "project", "read", "p-1", ORG)

    assert not first  # RBAC answered UNAUTHENTICATED: fail closed
    assert spy.calls == []
    assert len(checker) == 0


async def test_answers_are_cached_until_the_ttl_passes(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    viewer_binding = await seed(server)
    clock = ManualClock()
    checker = RbacPermissionChecker(rbac_channel, clock, cache_ttl_seconds=4)
    member = principal(server)

    assert await checker.check(member, "project", "read", "p-1", ORG)
    assert not await checker.check(member, "project", "delete", "p-1", ORG)
    await server.service.domain.administration.delete_binding(ORG, viewer_binding)
    clock.advance(seconds=3.9)
    still_allowed = await checker.check(member, "project", "read", "p-1", ORG)
    still_denied = await checker.check(member, "project", "delete", "p-1", ORG)
    calls_within_ttl = len(spy.calls)
    clock.advance(seconds=0.1)
    after_ttl = await checker.check(member, "project", "read", "p-1", ORG)

    assert (still_allowed, still_denied, calls_within_ttl) == (True, False, 2)
    assert not after_ttl
    assert len(spy.calls) == 3


async def test_a_cached_answer_outlives_an_rbac_outage_until_the_ttl(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
) -> None:
    await seed(server)
    clock = ManualClock()
    checker = RbacPermissionChecker(rbac_channel, clock, timeout_seconds=2)
    member = principal(server)
    assert await checker.check(member, "project", "read", "p-1", ORG)

    await server.service.server.stop()  # the fixture's later stop is a no-op
    clock.advance(seconds=3)
    during_outage = await checker.check(member, "project", "read", "p-1", ORG)
    clock.advance(seconds=1)

    assert during_outage
    with pytest.raises(Unavailable):
        await checker.check(member, "project", "read", "p-1", ORG)


async def test_an_unreachable_rbac_with_an_empty_cache_fails_closed() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    channel = connect(f"127.0.0.1:{port}")
    try:
        checker = RbacPermissionChecker(channel, ManualClock(), timeout_seconds=2)
        with pytest.raises(Unavailable):
            await checker.check(Principal(MEMBER, "user", token="t"), "project", "read", "p-1", ORG)
        assert len(checker) == 0
    finally:
        await channel.close(None)


async def test_invalidate_makes_a_deleted_binding_take_effect_at_once(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
) -> None:
    viewer_binding = await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock())
    member, admin = principal(server), principal(server, ADMIN)
    assert await checker.check(member, "project", "read", "p-1", ORG)
    assert await checker.check(admin, "project", "read", "p-1", ORG)

    await server.service.domain.administration.delete_binding(ORG, viewer_binding)
    checker.invalidate("someone-else")
    unaffected = await checker.check(member, "project", "read", "p-1", ORG)
    checker.invalidate(MEMBER)
    after = await checker.check(member, "project", "read", "p-1", ORG)

    assert unaffected  # still the cached answer
    assert not after
    assert len(checker) == 2  # the admin's answer stayed
    checker.invalidate()
    assert len(checker) == 0


async def test_note_revision_asks_for_state_at_least_that_fresh(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    viewer_binding = await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock())
    member = principal(server)
    assert await checker.check(member, "project", "read", "p-1", ORG)

    revision = await server.service.domain.administration.delete_binding(ORG, viewer_binding)
    checker.note_revision(revision)
    checker.note_revision(revision - 1)  # never moves back
    after = await checker.check(member, "project", "read", "p-1", ORG)
    again = await checker.check(member, "project", "read", "p-1", ORG)

    assert not after
    assert not again
    assert checker.min_revision == revision
    assert [call[3] for call in spy.calls] == [0, revision]  # the second answer is cached


async def test_concurrent_identical_checks_make_one_rbac_call(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock())
    member = principal(server)

    answers = await asyncio.gather(
        *(checker.check(member, "project", "delete", "p-1", ORG) for _ in range(20))
    )
    other = await checker.check(member, "project", "delete", "p-2", ORG)

    assert answers == [False] * 20
    assert not other
    assert len(spy.calls) == 2


async def test_the_cache_is_a_bounded_lru(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock(), max_entries=2)
    member = principal(server)

    # Denials: each is an answer about its own resource (an allowed, scope-wide one would serve them all).
    for resource_id in ("p-1", "p-2", "p-1", "p-3", "p-1", "p-2"):
        await checker.check(member, "project", "delete", resource_id, ORG)

    assert len(checker) == 2
    # p-1 stays recent and is asked once; p-2 was evicted by p-3 and asked again.
    assert [call[2].resource_id for call in spy.calls] == ["p-1", "p-2", "p-3", "p-2"]


@pytest.mark.parametrize(
    ("ttl", "entries", "message"),
    [(4.01, 10, "cache_ttl_seconds"), (-1, 10, "cache_ttl_seconds"), (4, 0, "max_entries")],
)
def test_settings_are_validated(ttl: float, entries: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RbacPermissionChecker(object(), ManualClock(), cache_ttl_seconds=ttl, max_entries=entries)


async def test_workspace_bindings_apply_to_the_workspace_itself(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    await server.service.domain.administration.create_binding(
        ORG, ("user", "ws-admin"), "workspace_admin", Ref(ORG, workspace_id="ws-1")
    )
    checker = RbacPermissionChecker(rbac_channel, ManualClock())
    admin = principal(server, "ws-admin")

    own = await checker.check(admin, "workspace", "update", "ws-1", ORG)
    other = await checker.check(admin, "workspace", "update", "ws-2", ORG)

    assert (own, other) == (True, False)
    assert spy.calls[0][2] == Ref(ORG, workspace_id="ws-1", resource_type="workspace", resource_id="ws-1")


async def test_workspace_scope_names_the_servers_workspace_or_a_project_in_it(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await seed(server)
    administration = server.service.domain.administration
    await administration.create_binding(
        ORG, ("user", "editor"), "project_editor", Ref(ORG, workspace_id="ws-1", project_id="p-1")
    )
    checker = RbacPermissionChecker(rbac_channel, ManualClock(), scope=workspace_scope(ORG, "ws-1"))
    editor = principal(server, "editor")

    run_in_project = await checker.check(editor, "run", "update", "r-1", "p-1")
    run_in_other_project = await checker.check(editor, "run", "update", "r-1", "p-2")
    the_project = await checker.check(editor, "project", "read", "p-1", "ws-1")
    create_stack = await checker.check(editor, "stack", "create", "", "ws-1")

    assert (run_in_project, run_in_other_project, the_project, create_stack) == (True, False, True, False)
    assert [call[2] for call in spy.calls] == [
        Ref(ORG, "ws-1", "p-1", "run", "r-1"),
        Ref(ORG, "ws-1", "p-2", "run", "r-1"),
        Ref(ORG, "ws-1", "p-1", "project", "p-1"),
        Ref(ORG, "ws-1"),
    ]


# --- scope-wide answers ----------------------------------------------------------------------------


async def _project_editor(server: Server, subject: str = "editor") -> str:  # noqa: F811
    """`subject` edits project p-1 of ws-1; the binding's id."""
    await seed(server)
    binding = await server.service.domain.administration.create_binding(
        ORG, ("user", subject), "project_editor", Ref(ORG, workspace_id="ws-1", project_id="p-1")
    )
    return binding.id


async def test_a_scope_wide_allow_serves_new_resource_ids_without_asking_rbac(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await _project_editor(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock(), scope=workspace_scope(ORG, "ws-1"))
    editor = principal(server, "editor")

    recorded = [await checker.check(editor, "run", "update", f"r-{index}", "p-1") for index in range(100)]
    other_action = await checker.check(editor, "run", "delete", "r-0", "p-1")
    other_project = await checker.check(editor, "run", "update", "r-0", "p-2")

    assert recorded == [True] * 100
    assert (other_action, other_project) == (True, False)
    # One question per (type, action, scope): the 99 new runs were answered from the first.
    assert [(call[1], call[2].project_id, call[2].resource_id) for call in spy.calls] == [
        (("run", "update"), "p-1", "r-0"),
        (("run", "delete"), "p-1", "r-0"),
        (("run", "update"), "p-2", "r-0"),
    ]
    assert len(checker) == 3  # two scope-wide allows and one denial


async def test_a_share_or_an_ownership_never_generalizes_nor_does_a_denial(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    await _project_editor(server)
    domain = server.service.domain
    await domain.administration.create_binding(
        ORG, ("user", "friend"), "project_viewer", Ref(ORG, "ws-1", "p-1", "run", "r-1")
    )
    await domain.ownerships.record(("user", "editor"), Ref(ORG, "ws-1", "p-1", "run", "r-2"))
    checker = RbacPermissionChecker(rbac_channel, ManualClock(), scope=workspace_scope(ORG, "ws-1"))
    friend, editor = principal(server, "friend"), principal(server, "editor")
    spy.calls.clear()  # recording the ownership asked whether the editor may create runs

    shared = await checker.check(friend, "run", "read", "r-1", "p-1")
    not_shared = await checker.check(friend, "run", "read", "r-3", "p-1")
    owned = await checker.check(editor, "run", "share", "r-2", "p-1")  # an editor shares only what it owns
    not_owned = await checker.check(editor, "run", "share", "r-3", "p-1")
    denied_again = await checker.check(editor, "run", "share", "r-4", "p-1")

    assert (shared, not_shared, owned, not_owned, denied_again) == (True, False, True, False, False)
    assert [call[2].resource_id for call in spy.calls] == ["r-1", "r-3", "r-2", "r-3", "r-4"]


async def test_removing_the_project_binding_ends_scope_wide_answers_within_the_ttl(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    binding_id = await _project_editor(server)
    clock = ManualClock()
    checker = RbacPermissionChecker(
        rbac_channel, clock, cache_ttl_seconds=4, scope=workspace_scope(ORG, "ws-1")
    )
    editor = principal(server, "editor")
    assert await checker.check(editor, "run", "create", "r-1", "p-1")

    await server.service.domain.administration.delete_binding(ORG, binding_id)
    clock.advance(seconds=3.9)
    within_ttl = await checker.check(editor, "run", "create", "r-2", "p-1")
    clock.advance(seconds=0.1)
    after_ttl = await checker.check(editor, "run", "create", "r-3", "p-1")
    checker.invalidate()
    assert await checker.check(editor, "run", "create", "r-4", "p-1") is False

    assert (within_ttl, after_ttl) == (True, False)
    assert [call[2].resource_id for call in spy.calls] == ["r-1", "r-3", "r-4"]


async def test_invalidate_and_a_noted_revision_drop_scope_wide_answers(
    server: Server,  # noqa: F811
    rbac_channel: grpc.aio.Channel,
    spy: CheckSpy,
) -> None:
    binding_id = await _project_editor(server)
    checker = RbacPermissionChecker(rbac_channel, ManualClock(), scope=workspace_scope(ORG, "ws-1"))
    editor = principal(server, "editor")
    assert await checker.check(editor, "run", "read", "r-1", "p-1")

    checker.invalidate("editor")
    assert await checker.check(editor, "run", "read", "r-2", "p-1")
    revision = await server.service.domain.administration.delete_binding(ORG, binding_id)
    checker.note_revision(revision)
    after = await checker.check(editor, "run", "read", "r-3", "p-1")

    assert not after
    assert [call[2].resource_id for call in spy.calls] == ["r-1", "r-2", "r-3"]
