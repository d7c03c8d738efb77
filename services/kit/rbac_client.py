"""The kit's `PermissionChecker` backed by the RBAC service (`keel.rbac.v1.PermissionService.Check`).

Every service plugs an `RbacPermissionChecker` into `KeelServer`:

```python
rbac = connect(rbac_address)
checker = RbacPermissionChecker(rbac, SystemClock())
```

Mapping: the kit's rule carries one `scope_id` (the organization for
control-plane RPCs) and a `resource_id`, so a check asks RBAC about
`ResourceRef(organization_id=scope_id, resource_type=<rule's type>,
resource_id=resource_id)`; the resource type is sent only with a resource id
(an empty id names the collection, e.g. for create, which the proto says is a
scope). Workspace/project chains are not sent yet: they come when the
workspace services supply them, which is a later change of the
`PermissionChecker` protocol. A principal RBAC cannot hold permissions for (a
workload) or a rule without a scope is denied without asking.

Calls carry the principal's own token (`authorization: Bearer ...`), so the
question is a self-check, which RBAC answers without any extra grant.

Caching: allowed and denied answers are kept per (principal kind, id,
resource type, action, resource id, scope id) for `cache_ttl_seconds`
(at most 4 s: with RBAC's own ≤ 1 s replica staleness a removed binding takes
effect everywhere within 5 s), in a bounded LRU. Concurrent identical misses
share one in-flight call. A service that changes RBAC state calls
`invalidate()` (drop answers) and/or `note_revision(revision)` (the next
checks ask for state at least that fresh, and cached answers evaluated at an
older revision are not used), so it sees its own write at once.

Scope-wide answers: when RBAC says an allow on a resource is `scope_wide` (it
comes from a binding at the organization, workspace or project level above
the resource, not from a share or ownership of it), the subject holds the
permission on every resource of that type under the same ancestors. The
answer is then cached under (principal kind, id, resource type, action, scope
id) without the resource id, and that entry is consulted first: a project
Editor recording 100 new runs a second asks RBAC once per TTL, not once per
run. Same TTL, revision and invalidation rules; denials never generalize. This
relies on the scope mapping giving every resource of one type under one scope
id the same ancestors, the resource id naming only the resource's own level
(both mappings below do; RBAC never counts that own level as scope-wide).

Failure: RBAC UNAVAILABLE (including a revision not reached yet,
`REVISION_NOT_REACHED`), DEADLINE_EXCEEDED or RESOURCE_EXHAUSTED raises
`errors.Unavailable` — fail closed, never allow. A cached answer younger
than the TTL is still served during an outage. Any other RBAC error (a
bug: unknown permission, token rejected) is logged and denies; it is not
cached.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc

from keel.rbac.v1 import rbac_pb2, rbac_pb2_grpc
from services.kit import errors
from services.kit.clock import Clock
from services.kit.context import Principal
from services.kit.interceptors import AUTHORIZATION_KEY

logger = logging.getLogger(__name__)

MAX_CACHE_TTL_SECONDS = 4.0
DEFAULT_MAX_ENTRIES = 10_000

_SUBJECT_KINDS = {
    "user": rbac_pb2.Subject.USER,
    "service_account": rbac_pb2.Subject.SERVICE_ACCOUNT,
}
_TRANSIENT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

# (principal kind, principal id, resource type, action, resource id, scope id)
CacheKey = tuple[str, str, str, str, str, str]
# (principal kind, principal id, resource type, action, scope id): a scope-wide allow.
ScopeKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class _Answer:
    allowed: bool
    revision: int
    at: datetime
    scope_wide: bool = False


@dataclass
class _Flight:
    task: asyncio.Task[_Answer | None]
    at_least_revision: int


# The resource (with its scope chain) a check names: (resource_type, resource_id, scope_id) → ref.
ScopeMapping = Callable[[str, str, str], rbac_pb2.ResourceRef]


def organization_scope(resource_type: str, resource_id: str, scope_id: str) -> rbac_pb2.ResourceRef:
    """Control-plane rules: `scope_id` is the organization."""
    return rbac_pb2.ResourceRef(
        organization_id=scope_id,
        # A workspace is also the scope of its contents: its own bindings apply to it.
        workspace_id=resource_id if resource_type == "workspace" else "",
        resource_type=resource_type if resource_id else "",
        resource_id=resource_id,
    )


def workspace_scope(organization_id: str, workspace_id: str) -> ScopeMapping:
    """Workspace-server rules: `scope_id` is this server's workspace, or else a project in it.

    The server's own organization and workspace complete the chain; a project is
    also the scope of its contents, so project bindings apply to the project itself.
    """

    def mapping(resource_type: str, resource_id: str, scope_id: str) -> rbac_pb2.ResourceRef:
        project_id = "" if scope_id == workspace_id else scope_id
        if resource_type == "project" and resource_id:
            project_id = resource_id
        return rbac_pb2.ResourceRef(
            organization_id=organization_id,
            workspace_id=workspace_id,
            project_id=project_id,
            resource_type=resource_type if resource_id else "",
            resource_id=resource_id,
        )

    return mapping


class RbacPermissionChecker:
    """`PermissionChecker` asking RBAC's Check, with a short-lived answer cache."""

    def __init__(
        self,
        rbac: grpc.aio.Channel | rbac_pb2_grpc.PermissionServiceStub | Any,
        clock: Clock,
        *,
        cache_ttl_seconds: float = MAX_CACHE_TTL_SECONDS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        timeout_seconds: float | None = None,
        scope: ScopeMapping = organization_scope,
    ) -> None:
        """`rbac`: a channel from `services.kit.clients.connect` or a PermissionService stub.

        `timeout_seconds` bounds each Check; None leaves it to the channel (the kit's
        `connect` caps it by the time left on the call being served). `scope` turns a
        rule's (type, resource id, scope id) into the resource RBAC is asked about:
        `organization_scope` on the control plane, `workspace_scope(...)` on a workspace server.
        """
        if not 0 <= cache_ttl_seconds <= MAX_CACHE_TTL_SECONDS:
            raise ValueError(f"cache_ttl_seconds must be between 0 and {MAX_CACHE_TTL_SECONDS}")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if isinstance(rbac, grpc.aio.Channel):
            rbac = rbac_pb2_grpc.PermissionServiceStub(rbac)
        self._stub: Any = rbac
        self._clock = clock
        self._ttl = timedelta(seconds=cache_ttl_seconds)
        self._max_entries = max_entries
        self._timeout = timeout_seconds
        self._scope = scope
        self._cache: OrderedDict[CacheKey, _Answer] = OrderedDict()
        # Allowed scope-wide answers (fewer keys than resources: bounded by the same max_entries).
        self._scope_wide: OrderedDict[ScopeKey, _Answer] = OrderedDict()
        self._flights: dict[CacheKey, _Flight] = {}
        self._min_revision = 0
        # Bumped by invalidate(): an answer asked for before it is not cached after it.
        self._generation = 0

    @property
    def min_revision(self) -> int:
        """The revision every check currently asks RBAC for at least (0: any)."""
        return self._min_revision

    def note_revision(self, revision: int) -> None:
        """Remembers a revision this service wrote: later checks see state at least that fresh."""
        self._min_revision = max(self._min_revision, revision)

    def invalidate(self, principal_subject: str | None = None) -> None:
        """Drops cached answers: all of them, or those about one subject id."""
        self._generation += 1
        if principal_subject is None:
            self._cache.clear()
            self._scope_wide.clear()
            self._flights.clear()
            return
        for key in [k for k in self._cache if k[1] == principal_subject]:
            del self._cache[key]
        for scope_key in [k for k in self._scope_wide if k[1] == principal_subject]:
            del self._scope_wide[scope_key]
        for key in [k for k in self._flights if k[1] == principal_subject]:
            del self._flights[key]

    def __len__(self) -> int:
        """How many answers are cached (fresh or not), scope-wide ones included."""
        return len(self._cache) + len(self._scope_wide)

    async def check(
        self, principal: Principal, resource_type: str, action: str, resource_id: str, scope_id: str
    ) -> bool:
        """Whether `principal` may do `action` on the resource (or collection) in organization `scope_id`."""
        if principal.kind not in _SUBJECT_KINDS or not scope_id:
            return False
        if resource_id and self._fresh(
            self._scope_wide, (principal.kind, principal.subject, resource_type, action, scope_id)
        ):
            return True
        key: CacheKey = (principal.kind, principal.subject, resource_type, action, resource_id, scope_id)
        cached = self._fresh(self._cache, key)
        if cached is not None:
            return cached.allowed
        flight = self._flights.get(key)
        if flight is None or flight.at_least_revision < self._min_revision:
            flight = self._start(key, principal)
        # shield: one waiter giving up must not cancel the call the others share.
        answer = await asyncio.shield(flight.task)
        return answer is not None and answer.allowed

    def _fresh(self, cache: OrderedDict[Any, _Answer], key: Any) -> _Answer | None:
        answer = cache.get(key)
        if answer is None:
            return None
        age = self._clock.now() - answer.at
        if not timedelta(0) <= age < self._ttl or answer.revision < self._min_revision:
            return None
        cache.move_to_end(key)
        return answer

    def _start(self, key: CacheKey, principal: Principal) -> _Flight:
        at_least = self._min_revision
        generation = self._generation
        task = asyncio.create_task(self._ask(key, principal, at_least, generation), name="rbac-check")
        flight = _Flight(task, at_least)
        self._flights[key] = flight

        def landed(done: asyncio.Task[_Answer | None]) -> None:
            if self._flights.get(key) is flight:
                del self._flights[key]
            if not done.cancelled():
                done.exception()  # retrieved: every waiter may have given up already

        task.add_done_callback(landed)
        return flight

    async def _ask(
        self, key: CacheKey, principal: Principal, at_least_revision: int, generation: int
    ) -> _Answer | None:
        kind, subject, resource_type, action, resource_id, scope_id = key
        request = rbac_pb2.CheckRequest(
            principal=rbac_pb2.Subject(kind=_SUBJECT_KINDS[kind], id=subject),
            permission=rbac_pb2.Permission(resource_type=resource_type, action=action),
            resource=self._scope(resource_type, resource_id, scope_id),
            at_least_revision=at_least_revision,
        )
        metadata = ((AUTHORIZATION_KEY, f"Bearer {principal.token}"),) if principal.token else None
        try:
            response = await self._stub.Check(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            code = error.code()
            if code in _TRANSIENT:
                raise errors.Unavailable("the permission service is unavailable") from error
            logger.error("RBAC Check failed with %s; denying", code.name)
            return None
        scope_wide = response.allowed and response.scope_wide and bool(resource_id)
        answer = _Answer(response.allowed, response.revision, self._clock.now(), scope_wide)
        if generation == self._generation and self._ttl > timedelta(0):
            if scope_wide:
                # It answers every resource of the type in the scope; no per-resource entry needed.
                self._remember(self._scope_wide, (kind, subject, resource_type, action, scope_id), answer)
            else:
                self._remember(self._cache, key, answer)
        return answer

    def _remember(self, cache: OrderedDict[Any, _Answer], key: Any, answer: _Answer) -> None:
        cache[key] = answer
        cache.move_to_end(key)
        while len(cache) > self._max_entries:
            cache.popitem(last=False)
