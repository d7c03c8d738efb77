"""What orgs' domain modules share: the store, RBAC, authn, the clock, ids and the audit hook."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from services.kit.audit import AuditEvent, service_event
from services.kit.clock import Clock
from services.kit.errors import FailedPrecondition, NotFound
from services.orgs.authn_calls import AuthnCalls
from services.orgs.rbac_calls import RbacCalls
from services.orgs.store import DELETING, OrganizationRecord, OrgsStore, OrgsTx


def _no_op() -> None:
    return None


@dataclass
class Deps:
    """The collaborators every orgs domain object uses."""

    store: OrgsStore
    rbac: RbacCalls
    authn: AuthnCalls
    clock: Clock
    # Called after a committed transaction that recorded audit events (wired to the shipper's notify).
    audit_recorded: Callable[[], None] = _no_op
    new_id: Callable[[], str] = field(default=lambda: str(uuid.uuid4()))


def audit_event(
    action: str,
    resource_type: str,
    resource_id: str,
    organization_id: str,
    now: datetime,
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An orgs audit event for the request being served."""
    return service_event(
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        organization_id=organization_id,
        occur_time=now,
        details=details,
    )


async def locked_active_organization(tx: OrgsTx, organization_id: str) -> OrganizationRecord:
    """The organization, write-locked for the transaction; NOT_FOUND / FAILED_PRECONDITION when deleting."""
    organization = await tx.lock_organization(organization_id)
    if organization is None:
        raise NotFound("organization not found")
    refuse_deleting(organization)
    return organization


def refuse_deleting(organization: OrganizationRecord) -> None:
    """FAILED_PRECONDITION while the organization is being deleted."""
    if organization.state == DELETING:
        raise FailedPrecondition("the organization is being deleted", reason="ORGANIZATION_DELETING")
