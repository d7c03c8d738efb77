"""The evaluator over the declarative role table: every built-in role, inheritance, teams, shares."""

from __future__ import annotations

import pytest

from services.rbac.catalog import ALL_PERMISSIONS, BUILT_IN_ROLES, BuiltInRole
from services.rbac.evaluator import (
    NOT_HELD,
    ON_RESOURCE,
    SCOPE_WIDE,
    Binding,
    Membership,
    OrganizationIndex,
    Ref,
)

ORG = "org-1"
ALICE = ("user", "alice")
BOB = ("user", "bob")
ROBOT = ("service_account", "robot")
AT_LEVEL = {
    "organization": Ref(ORG),
    "workspace": Ref(ORG, "ws-1"),
    "project": Ref(ORG, "ws-1", "proj-1"),
}


def index(
    *bindings: Binding,
    members: tuple[Membership, ...] = (),
    custom: dict[str, frozenset[tuple[str, str]]] | None = None,
) -> OrganizationIndex:
    return OrganizationIndex(bindings, members, custom or {})


def bind(subject: tuple[str, str], role_id: str, scope: Ref) -> Binding:
    return Binding(subject[0], subject[1], role_id, scope)


@pytest.mark.parametrize(
    "role", [r for r in BUILT_IN_ROLES.values() if r.level != "resource"], ids=lambda role: role.id
)
def test_built_in_role_allows_exactly_its_table_entries(role: BuiltInRole) -> None:
    scope = AT_LEVEL[role.level]
    evaluated = index(bind(ALICE, role.id, scope))

    granted = {permission for permission in ALL_PERMISSIONS if evaluated.check(ALICE, permission, scope)}

    assert granted == set(role.permissions)
    assert not any(evaluated.check(BOB, permission, scope) for permission in ALL_PERMISSIONS)


def test_owner_holds_every_action_on_its_resource_only() -> None:
    pipeline = Ref(ORG, "ws-1", "proj-1", "pipeline", "p-1")
    evaluated = index(bind(ALICE, "owner", pipeline))

    granted = {permission for permission in ALL_PERMISSIONS if evaluated.check(ALICE, permission, pipeline)}

    assert granted == {p for p in ALL_PERMISSIONS if p[0] == "pipeline"}
    assert not evaluated.check(ALICE, ("pipeline", "read"), Ref(ORG, "ws-1", "proj-1", "pipeline", "p-2"))
    assert not evaluated.check(ALICE, ("pipeline", "read"), Ref(ORG, "ws-1", "proj-1"))


def test_organization_binding_grants_in_workspaces_projects_and_resources() -> None:
    evaluated = index(bind(ALICE, "organization_viewer", Ref(ORG)))

    for ref in (Ref(ORG, "ws-9"), Ref(ORG, "ws-9", "proj-9"), Ref(ORG, "ws-9", "proj-9", "run", "r-1")):
        assert evaluated.check(ALICE, ("run", "read"), ref)


def test_project_binding_does_not_grant_at_the_workspace_or_a_sibling_project() -> None:
    evaluated = index(bind(ALICE, "project_editor", Ref(ORG, "ws-1", "proj-1")))

    assert evaluated.check(ALICE, ("pipeline", "update"), Ref(ORG, "ws-1", "proj-1", "pipeline", "p-1"))
    assert not evaluated.check(ALICE, ("pipeline", "update"), Ref(ORG, "ws-1"))
    assert not evaluated.check(ALICE, ("pipeline", "update"), Ref(ORG, "ws-1", "proj-2", "pipeline", "p-1"))


def test_workspace_binding_does_not_grant_in_another_workspace() -> None:
    evaluated = index(bind(ALICE, "workspace_viewer", Ref(ORG, "ws-1")))

    assert evaluated.check(ALICE, ("model", "read"), Ref(ORG, "ws-1", "proj-1", "model", "m-1"))
    assert not evaluated.check(ALICE, ("model", "read"), Ref(ORG, "ws-2", "proj-1", "model", "m-1"))


def test_team_binding_grants_through_membership() -> None:
    team = ("team", "t-1")
    evaluated = index(
        bind(team, "workspace_editor", Ref(ORG, "ws-1")),
        members=(Membership("t-1", "user", "alice"), Membership("t-1", "service_account", "robot")),
    )

    assert evaluated.check(ALICE, ("run", "create"), Ref(ORG, "ws-1", "proj-1"))
    assert evaluated.check(ROBOT, ("run", "create"), Ref(ORG, "ws-1", "proj-1"))
    assert not evaluated.check(BOB, ("run", "create"), Ref(ORG, "ws-1", "proj-1"))


def test_share_grants_on_one_resource_and_only_its_type() -> None:
    secret = Ref(ORG, "ws-1", "", "secret", "s-1")
    evaluated = index(bind(ALICE, "workspace_viewer", secret))

    assert evaluated.check(ALICE, ("secret", "read"), secret)
    assert not evaluated.check(ALICE, ("secret", "read"), Ref(ORG, "ws-1", "", "secret", "s-2"))
    assert not evaluated.check(ALICE, ("stack", "read"), Ref(ORG, "ws-1", "", "stack", "s-1"))


def test_custom_role_grants_its_permissions() -> None:
    custom = {"role-9": frozenset({("secret", "read_secret_value"), ("secret", "read")})}
    evaluated = index(bind(ALICE, "role-9", Ref(ORG, "ws-1")), custom=custom)

    assert evaluated.check(ALICE, ("secret", "read_secret_value"), Ref(ORG, "ws-1", "", "secret", "s-1"))
    assert not evaluated.check(ALICE, ("secret", "update"), Ref(ORG, "ws-1", "", "secret", "s-1"))


def test_lookup_is_all_when_held_at_the_scope_or_above() -> None:
    evaluated = index(bind(ALICE, "workspace_viewer", Ref(ORG, "ws-1")))

    assert evaluated.lookup(ALICE, ("run", "read"), Ref(ORG, "ws-1")).all
    assert evaluated.lookup(ALICE, ("run", "read"), Ref(ORG, "ws-1", "proj-3")).all


def test_lookup_lists_workspaces_projects_and_shared_ids_below_the_scope() -> None:
    evaluated = index(
        bind(ALICE, "workspace_viewer", Ref(ORG, "ws-1")),
        bind(ALICE, "project_viewer", Ref(ORG, "ws-2", "proj-2")),
        bind(ALICE, "project_viewer", Ref(ORG, "ws-3", "proj-3")),
        bind(ALICE, "owner", Ref(ORG, "ws-2", "proj-4", "run", "r-1")),
        bind(ALICE, "owner", Ref(ORG, "ws-2", "proj-4", "pipeline", "p-1")),
    )

    in_org = evaluated.lookup(ALICE, ("run", "read"), Ref(ORG))
    in_ws2 = evaluated.lookup(ALICE, ("run", "read"), Ref(ORG, "ws-2"))

    assert not in_org.all
    assert (in_org.workspace_ids, in_org.project_ids, in_org.resource_ids) == (
        {"ws-1"},
        {"proj-2", "proj-3"},
        {"r-1"},
    )
    assert (in_ws2.all, in_ws2.workspace_ids, in_ws2.project_ids, in_ws2.resource_ids) == (
        False,
        set(),
        {"proj-2"},
        {"r-1"},
    )


def test_effective_permissions_union_the_chain() -> None:
    evaluated = index(
        bind(ALICE, "organization_member", Ref(ORG)),
        bind(ALICE, "project_viewer", Ref(ORG, "ws-1", "proj-1")),
    )

    held = evaluated.effective(ALICE, Ref(ORG, "ws-1", "proj-1"))

    assert held == set(BUILT_IN_ROLES["organization_member"].permissions) | set(
        BUILT_IN_ROLES["project_viewer"].permissions
    )


def test_a_grant_above_the_resource_is_scope_wide_and_wins_over_one_on_it() -> None:
    team = ("team", "t-1")
    project = Ref(ORG, "ws-1", "proj-1", "project", "proj-1")
    evaluated = index(
        bind(team, "project_viewer", Ref(ORG, "ws-1", "proj-1")),
        bind(BOB, "project_viewer", Ref(ORG, "ws-1", "proj-1", "run", "r-1")),
        bind(BOB, "project_editor", Ref(ORG, "ws-1", "proj-1")),
        bind(ROBOT, "workspace_viewer", Ref(ORG, "ws-1")),
        members=(Membership("t-1", "user", "alice"),),
    )
    run = Ref(ORG, "ws-1", "proj-1", "run", "r-1")

    assert evaluated.grant(ALICE, ("run", "read"), run) == SCOPE_WIDE  # through the team's project role
    assert evaluated.grant(BOB, ("run", "read"), run) == SCOPE_WIDE  # the project role, not the share
    assert evaluated.grant(ALICE, ("project", "read"), project) == ON_RESOURCE  # the project's own level
    # A workspace role checked on the workspace itself: that level is the resource's own.
    assert evaluated.grant(ROBOT, ("workspace", "read"), Ref(ORG, "ws-1", "", "workspace", "ws-1")) == (
        ON_RESOURCE
    )
    assert evaluated.grant(ROBOT, ("project", "read"), project) == SCOPE_WIDE
    assert evaluated.grant(ALICE, ("run", "update"), run) == NOT_HELD
