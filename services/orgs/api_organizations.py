"""gRPC servicer of keel.orgs.v1.OrganizationService: request → domain call → response; no SQL."""

from __future__ import annotations

from keel.orgs.v1 import organizations_pb2 as pb
from keel.orgs.v1 import organizations_pb2_grpc as pb_grpc
from services.kit.context import require_principal
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import resolve_update_mask
from services.kit.idempotency import validate_request_id
from services.orgs.api_messages import Context, list_query, organization_message
from services.orgs.organizations import UPDATABLE, Organizations
from services.orgs.validation import required_id

_OUTPUT_ONLY = ("id", "state", "create_time", "update_time", "etag")


class OrganizationApi(pb_grpc.OrganizationServiceServicer):
    """OrganizationService."""

    def __init__(self, organizations: Organizations) -> None:
        self._organizations = organizations

    async def CreateOrganization(
        self, request: pb.CreateOrganizationRequest, context: Context
    ) -> pb.Organization:
        validate_request_id(request.request_id)
        if not request.HasField("organization"):
            raise InvalidArgument("organization", "is required")
        created = await self._organizations.create(
            require_principal(),
            request.organization.display_name,
            request.organization.description,
            request_id=request.request_id,
        )
        return organization_message(created)

    async def GetOrganization(self, request: pb.GetOrganizationRequest, context: Context) -> pb.Organization:
        organization_id = required_id(request.organization_id, "organization_id")
        return organization_message(await self._organizations.get(organization_id))

    async def ListOrganizations(
        self, request: pb.ListOrganizationsRequest, context: Context
    ) -> pb.ListOrganizationsResponse:
        records, token = await self._organizations.list_for(require_principal().subject, list_query(request))
        return pb.ListOrganizationsResponse(
            organizations=[organization_message(r) for r in records], next_page_token=token
        )

    async def UpdateOrganization(
        self, request: pb.UpdateOrganizationRequest, context: Context
    ) -> pb.Organization:
        if not request.HasField("organization"):
            raise InvalidArgument("organization", "is required")
        organization = request.organization
        organization_id = required_id(organization.id, "organization.id")
        paths = resolve_update_mask(list(request.update_mask.paths), UPDATABLE, output_only=_OUTPUT_ONLY)
        changes = {path: getattr(organization, path) for path in paths}
        updated = await self._organizations.update(organization_id, organization.etag, changes)
        return organization_message(updated)

    async def DeleteOrganization(
        self, request: pb.DeleteOrganizationRequest, context: Context
    ) -> pb.DeleteOrganizationResponse:
        organization_id = required_id(request.organization_id, "organization_id")
        deleted = await self._organizations.delete(organization_id, force=request.force, etag=request.etag)
        return pb.DeleteOrganizationResponse(deleted_workspaces=deleted)
