"""orgs housekeeping: remembered request ids are forgotten after their retention, not before."""

from __future__ import annotations

from keel.orgs.v1 import organizations_pb2 as pb
from tests.orgs.conftest import OrgsStack


async def test_request_ids_are_forgotten_after_the_retention(orgs_stack: OrgsStack) -> None:
    owner = await orgs_stack.user()
    request = pb.CreateOrganizationRequest(
        organization=pb.Organization(display_name="Acme"), request_id="r-1"
    )
    first = await orgs_stack.organizations.CreateOrganization(request, metadata=owner.metadata)
    retention = orgs_stack.orgs.domain.settings.orgs_request_id_retention_seconds

    orgs_stack.clock.advance(seconds=retention - 60)
    early = await orgs_stack.orgs.forget_old_request_ids()
    retried = await orgs_stack.organizations.CreateOrganization(request, metadata=owner.metadata)
    orgs_stack.clock.advance(seconds=120)
    late = await orgs_stack.orgs.forget_old_request_ids()
    after = await orgs_stack.organizations.CreateOrganization(request, metadata=owner.metadata)

    assert (early, late) == (0, 1)
    assert retried.id == first.id  # still remembered: the retry is answered, nothing new
    assert after.id != first.id  # forgotten: the same request id now creates anew
