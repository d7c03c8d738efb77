"""A metadata domain over a bare store, for domain tests of creates that run without servers.

Creates go through `domain.create_owned`, which records ownership in RBAC.
A workload holds no bindings (`Ownership.record` makes no call for one), so
creates by `WORKLOAD` need no RBAC: the domain has none, and a call to it
would fail the test instead of passing unnoticed.
"""

from __future__ import annotations

from services.kit.context import Principal
from services.kit.rbac_client import RbacPermissionChecker
from services.kit.rbac_lookup import RbacLookup
from services.metadata.domain import MetadataDomain
from services.metadata.identity import ServedWorkspace, WorkspaceIdentity
from services.metadata.ownership import Ownership
from services.metadata.settings import MetadataSettings
from services.metadata.store import MetadataStore
from tests.clock import ManualClock

WORKLOAD = Principal(subject="workload-1", kind="workload")
OTHER_WORKLOAD = Principal(subject="workload-2", kind="workload")


def offline_domain(store: MetadataStore, clock: ManualClock) -> MetadataDomain:
    """The domain over `store` with no RBAC behind it (create as a workload)."""
    served = ServedWorkspace(WorkspaceIdentity("org-test", "ws-test"))
    no_rbac = None  # any RBAC call raises AttributeError
    checker = RbacPermissionChecker(no_rbac, clock)
    lookup = RbacLookup(no_rbac, clock)
    return MetadataDomain(
        settings=MetadataSettings(),
        engine=store.engine,
        store=store,
        clock=clock,
        workspace=served,
        checker=checker,
        lookup=lookup,
        ownership=Ownership(no_rbac, served, checker, lookup),
    )
