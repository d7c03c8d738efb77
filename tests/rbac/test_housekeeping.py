"""RBAC housekeeping: remembered request ids are forgotten after a day, not before."""

from __future__ import annotations

from keel.rbac.v1 import rbac_pb2
from services.rbac.server import REQUEST_ID_RETENTION
from tests.clock import ManualClock
from tests.rbac.conftest import Server, server  # noqa: F401  (the real RBAC server fixture)


async def test_request_ids_are_forgotten_after_the_retention(server: Server) -> None:  # noqa: F811
    await server.service.domain.administration.bootstrap_organization_admin("org-1", "admin-1")
    clock = server.service.domain.clock
    assert isinstance(clock, ManualClock)
    request = rbac_pb2.CreateRoleRequest(
        organization_id="org-1",
        role=rbac_pb2.Role(
            display_name="Readers",
            level=rbac_pb2.ORGANIZATION,
            permissions=[rbac_pb2.Permission(resource_type="team", action="read")],
        ),
        request_id="r-1",
    )
    first = await server.roles.CreateRole(request, metadata=server.token("admin-1"))

    clock.advance(seconds=REQUEST_ID_RETENTION.total_seconds() - 60)
    early = await server.service.forget_old_request_ids()
    clock.advance(seconds=120)
    late = await server.service.forget_old_request_ids()

    assert (early, late) == (0, 1)
    assert first.id
