"""The audit events of authn: one builder so every event is shaped alike; never a secret in them.

Action names are "authn.<resource>.<verb>". authn's resources are
installation-wide, so organization_id is '' except on a token grant that names
an organization. Work done outside any request (start-up, the key-maintenance
task, command-line bootstrap) is the SYSTEM actor's.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from services.kit.audit import Actor, AuditEvent, Outcome, service_event


def authn_event(
    action: str,
    resource_type: str,
    resource_id: str,
    occur_time: datetime,
    *,
    actor: Actor | None = None,
    organization_id: str = "",
    outcome: Outcome = "SUCCESS",
    details: Mapping[str, Any] | None = None,
) -> AuditEvent:
    """An event of the request being served (or of SYSTEM outside one); `actor` overrides the caller.

    Caller-supplied text (e-mails, names) that looks like a credential is redacted, never refused.
    """
    return service_event(
        action=action,
        resource_type=resource_type,
        resource_id=resource_id,
        organization_id=organization_id,
        occur_time=occur_time,
        outcome=outcome,
        details=details,
        actor=actor,
    )
