"""gRPC servicer of keel.authn.v1.ServiceAccountService."""

from __future__ import annotations

from keel.authn.v1 import service_accounts_pb2 as pb
from keel.authn.v1 import service_accounts_pb2_grpc
from services.authn.api import Context, idempotency_key, list_query, required_id, timestamp
from services.authn.service_accounts import UPDATABLE_SERVICE_ACCOUNT_FIELDS, ServiceAccounts
from services.authn.store import ServiceAccountRecord
from services.kit.context import require_principal, resolve_self
from services.kit.errors import InvalidArgument
from services.kit.fieldmask import etag, resolve_update_mask

_STATES = {"active": pb.ServiceAccount.ACTIVE, "deactivated": pb.ServiceAccount.DEACTIVATED}
_OUTPUT_ONLY = ("id", "state", "creator_id", "create_time", "update_time", "etag")


def service_account_message(account: ServiceAccountRecord) -> pb.ServiceAccount:
    """The ServiceAccount message of a record."""
    return pb.ServiceAccount(
        id=account.id,
        display_name=account.display_name,
        description=account.description,
        state=_STATES.get(account.state, pb.ServiceAccount.STATE_UNSPECIFIED),
        creator_id=account.creator_id,
        create_time=timestamp(account.create_time),
        update_time=timestamp(account.update_time),
        etag=etag(account.version),
    )


class ServiceAccountApi(service_accounts_pb2_grpc.ServiceAccountServiceServicer):
    """ServiceAccountService: request → ServiceAccounts → response."""

    def __init__(self, accounts: ServiceAccounts) -> None:
        self._accounts = accounts

    async def CreateServiceAccount(
        self, request: pb.CreateServiceAccountRequest, context: Context
    ) -> pb.ServiceAccount:
        if not request.HasField("service_account"):
            raise InvalidArgument("service_account", "is required")
        key = idempotency_key("CreateServiceAccount", request.request_id)
        account = await self._accounts.create(
            request.service_account.display_name,
            request.service_account.description,
            require_principal().subject,
            request_key=key,
        )
        return service_account_message(account)

    async def GetServiceAccount(
        self, request: pb.GetServiceAccountRequest, context: Context
    ) -> pb.ServiceAccount:
        account_id = resolve_self(required_id(request.service_account_id, "service_account_id"))
        return service_account_message(await self._accounts.get(account_id))

    async def ListServiceAccounts(
        self, request: pb.ListServiceAccountsRequest, context: Context
    ) -> pb.ListServiceAccountsResponse:
        page = await self._accounts.list(list_query(request))
        return pb.ListServiceAccountsResponse(
            service_accounts=[service_account_message(a) for a in page.items],
            next_page_token=page.next_page_token,
        )

    async def UpdateServiceAccount(
        self, request: pb.UpdateServiceAccountRequest, context: Context
    ) -> pb.ServiceAccount:
        if not request.HasField("service_account"):
            raise InvalidArgument("service_account", "is required")
        account_id = required_id(request.service_account.id, "service_account.id")
        fields = resolve_update_mask(
            request.update_mask.paths, UPDATABLE_SERVICE_ACCOUNT_FIELDS, output_only=_OUTPUT_ONLY
        )
        changes = {name: getattr(request.service_account, name) for name in fields}
        return service_account_message(
            await self._accounts.update(account_id, request.service_account.etag, changes)
        )

    async def DeactivateServiceAccount(
        self, request: pb.DeactivateServiceAccountRequest, context: Context
    ) -> pb.ServiceAccount:
        account_id = required_id(request.service_account_id, "service_account_id")
        return service_account_message(await self._accounts.deactivate(account_id))
