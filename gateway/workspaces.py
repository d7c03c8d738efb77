"""Which workspace server serves a workspace's request: orgs' registry, asked with the caller's token.

Workspace RPCs (keel.metadata.v1) carry `workspace_id`; the registry
(`WorkspaceService.LookupWorkspace`) names the server's endpoint and whether
it is ACTIVE. The gateway asks with the caller's own token, so orgs' rule
(workspace.read, checked before existence) decides what the caller may learn:
an unknown workspace and a forbidden one answer alike, and the gateway holds
no credential of its own. LookupWorkspace is keyed by organization too; the
organization is the token's `org` claim when it has one (a hint only: orgs
verifies the token), else each organization the caller belongs to
(ListOrganizations) is asked in turn.

An ACTIVE location is cached per workspace for a bounded time (and a bounded
number of workspaces); any caller's request may use it, because the workspace
server checks every call itself. A workspace that is not ACTIVE is a 503
naming its state and reason, never cached, so recovery shows at once. A
connection failure on a cached endpoint drops the entry and asks the registry
once more (`WorkspaceRouter.refresh`).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from gateway.errors import GatewayError
from keel.orgs.v1 import organizations_pb2, organizations_pb2_grpc, workspaces_pb2, workspaces_pb2_grpc
from services.kit.interceptors import AUTHORIZATION_KEY

WORKSPACE_PACKAGES = ("keel.metadata.v1",)
WORKSPACE_FIELD = "workspace_id"
REASON_WORKSPACE_UNAVAILABLE = "WORKSPACE_UNAVAILABLE"
REASON_WORKSPACE_NOT_VISIBLE = "WORKSPACE_NOT_VISIBLE"
# ListOrganizations' largest page: the organizations a caller belongs to, asked once per uncached workspace.
_ORGANIZATIONS_PAGE = 500

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Location:
    """Where an ACTIVE workspace's server is, and until when the gateway trusts that answer."""

    workspace_id: str
    organization_id: str
    endpoint: str
    expires_at: float


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """The gRPC target of a registered endpoint (host:port or http(s)://host[:port]/…); whether it is TLS."""
    if "://" not in endpoint:
        return endpoint, False
    parts = urlsplit(endpoint)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    # gRPC has no path prefix: a URL's path is ignored.
    return f"{host}:{parts.port or (443 if secure else 80)}", secure


def token_organization(metadata: Metadata) -> str:
    """The `org` claim of the caller's bearer token, unverified ('' without one): a routing hint only."""
    for key, value in metadata:
        if key != AUTHORIZATION_KEY:
            continue
        parts = value[7:].strip().split(".")
        if len(parts) != 3:
            return ""
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (binascii.Error, ValueError):
            return ""
        organization = claims.get("org", "") if isinstance(claims, dict) else ""
        return organization if isinstance(organization, str) else ""
    return ""


def _unavailable(workspace_id: str, why: str) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        f"workspace {workspace_id} is unavailable: {why}",
        reason=REASON_WORKSPACE_UNAVAILABLE,
    )


class WorkspaceRouter:
    """Workspace id → its server's endpoint, from orgs' registry, cached with a time and size bound."""

    def __init__(
        self,
        orgs_channel: grpc.aio.Channel,
        *,
        cache_seconds: float = 30.0,
        max_entries: int = 10_000,
        lookup_timeout_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workspaces = workspaces_pb2_grpc.WorkspaceServiceStub(orgs_channel)
        self._organizations = organizations_pb2_grpc.OrganizationServiceStub(orgs_channel)
        self._cache_seconds = cache_seconds
        self._max_entries = max_entries
        self._timeout = lookup_timeout_seconds
        self._clock = clock
        self._cache: OrderedDict[str, Location] = OrderedDict()

    def cached(self, workspace_id: str) -> Location | None:
        """The cached, unexpired location of a workspace."""
        found = self._cache.get(workspace_id)
        if found is None:
            return None
        if found.expires_at <= self._clock():
            del self._cache[workspace_id]
            return None
        return found

    async def locate(self, workspace_id: str, metadata: Metadata) -> Location:
        """The workspace's ACTIVE location: cached, else asked of the registry with the caller's token."""
        found = self.cached(workspace_id)
        if found is not None:
            return found
        return await self._ask(workspace_id, metadata)

    async def refresh(self, stale: Location, metadata: Metadata) -> Location:
        """After a connection failure on `stale`'s endpoint: forgets it and asks the registry once more."""
        if self._cache.get(stale.workspace_id) == stale:
            del self._cache[stale.workspace_id]
        return await self._ask(stale.workspace_id, metadata)

    async def _ask(self, workspace_id: str, metadata: Metadata) -> Location:
        answer = await self._lookup(workspace_id, metadata)
        if answer.state != workspaces_pb2.ACTIVE:
            state = workspaces_pb2.WorkspaceState.Name(answer.state)
            raise _unavailable(workspace_id, f"{state}: {answer.state_reason or 'not serving'}")
        if not answer.endpoint:
            raise _unavailable(workspace_id, "its server has no endpoint")
        location = Location(
            workspace_id, answer.organization_id, answer.endpoint, self._clock() + self._cache_seconds
        )
        self._cache[workspace_id] = location
        self._cache.move_to_end(workspace_id)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        return location

    async def _lookup(self, workspace_id: str, metadata: Metadata) -> workspaces_pb2.WorkspaceLocation:
        hinted = token_organization(metadata)
        if hinted:
            return await self._lookup_in(hinted, workspace_id, metadata)
        listed = await self._organizations.ListOrganizations(
            organizations_pb2.ListOrganizationsRequest(page_size=_ORGANIZATIONS_PAGE),
            metadata=metadata,
            timeout=self._timeout,
        )
        for organization in listed.organizations:
            try:
                return await self._lookup_in(organization.id, workspace_id, metadata)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
                    raise
        # No organization of the caller names a workspace the caller may read: one answer whether it
        # does not exist or is forbidden (permission before existence).
        raise GatewayError(
            grpc.StatusCode.PERMISSION_DENIED,
            f"the caller may not use workspace {workspace_id}, or it does not exist",
            reason=REASON_WORKSPACE_NOT_VISIBLE,
        )

    async def _lookup_in(
        self, organization_id: str, workspace_id: str, metadata: Metadata
    ) -> workspaces_pb2.WorkspaceLocation:
        answer: workspaces_pb2.WorkspaceLocation = await self._workspaces.LookupWorkspace(
            workspaces_pb2.LookupWorkspaceRequest(organization_id=organization_id, workspace_id=workspace_id),
            metadata=metadata,
            timeout=self._timeout,
        )
        return answer


def unreachable(workspace_id: str) -> GatewayError:
    """503 for a workspace whose registered server does not answer."""
    return _unavailable(workspace_id, "its server does not answer")
