"""Schemathesis against /openapi.json of a running mesh: no 5xx, no response outside the schema.

The gateway serves the real control plane (authn, RBAC, orgs) and a workspace
server (metadata) on PostgreSQL. Schemathesis's Python API generates cases
from the gateway's own OpenAPI document, operation by operation, and sends
them over HTTP as the platform admin (control plane) or the workspace's
organization owner (metadata, with the real workspace id so that cases reach
the store). Each case must answer no 5xx and a body and content type that
match the document. Rounds go on until at least MIN_CASES cases ran; the run
stops at TIME_BUDGET_SECONDS whatever happens, so CI time stays bounded.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import APIOperation, Case
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err

from gateway.streams import SSE_MEDIA_TYPE
from tests.gateway.conftest import StartGateway
from tests.metadata.conftest import (  # noqa: F401  (the fixtures of the workspace server tests)
    MetadataStack,
    metadata_database_url,
    metadata_stack,
)

MIN_CASES = 1000
TIME_BUDGET_SECONDS = 75.0
EXAMPLES_PER_ROUND = 8
METADATA_PACKAGE = "keel.metadata.v1"

# Operations left out, each with its reason. A 5xx found in a service is reported to the lead
# and excluded here, naming the request that caused it.
EXCLUDED: dict[str, str] = {}
# Operations schemathesis cannot load, with the reason (the document itself is valid OpenAPI 3.1).
UNLOADABLE = {
    # A dotted path parameter name ({resource.organization_id}) is valid OpenAPI, but schemathesis fills
    # path templates with str.format, which reads "resource.organization_id" as an attribute lookup.
    "POST /v1/organizations/{resource.organization_id}/ownerships",
}


def _answers_an_event_stream(operation: APIOperation[Any, Any, Any, Any]) -> bool:
    """Whether a response of the operation is text/event-stream (a stream served as SSE)."""
    responses = operation.definition.raw.get("responses", {})
    return any(SSE_MEDIA_TYPE in response.get("content", {}) for response in responses.values())


@dataclass
class Findings:
    """Cases run and failures found (one line each: operation, request, what failed)."""

    cases: int = 0
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Target:
    """Where and as whom cases are sent."""

    base_url: str
    workspace_id: str
    examples: int


def _run_operation(
    operation: APIOperation[Any, Any, Any, Any], target: Target, token: str, seed: int, findings: Findings
) -> None:
    """Sends generated cases of one operation, recording failures instead of stopping at the first."""
    session = requests.Session()
    in_workspace = operation.path.startswith("/v1/workspaces/{workspace_id}")
    workspace = {"workspace_id": target.workspace_id} if in_workspace else None

    @hypothesis.settings(
        max_examples=target.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: a failure is reported as found, within the time budget
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=operation.as_strategy(path_parameters=workspace))
    def run(case: Case[Any]) -> None:
        findings.cases += 1
        response = case.call(
            base_url=target.base_url, session=session, headers={"authorization": f"Bearer {token}"}
        )
        try:
            case.validate_response(
                response,
                checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
            )
        except (AssertionError, FailureGroup) as failure:
            findings.failures.append(
                f"{operation.label}: {case.as_curl_command()} -> {response.status_code} "
                f"{response.text[:300]!r}: {str(failure)[:300]}"
            )

    run()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.timeout(150)
async def test_generated_requests_get_no_5xx_and_answers_that_match_the_schema(
    database_url: str,
    metadata_stack: MetadataStack,  # noqa: F811
    start_gateway: StartGateway,
) -> None:
    orgs = metadata_stack.orgs
    client = await start_gateway(
        {
            "keel.authn.v1": orgs.authn_address,
            "keel.rbac.v1": orgs.rbac_address,
            "keel.orgs.v1": orgs.orgs_address,
            METADATA_PACKAGE: metadata_stack.address,
        },
        gateway_rate_limit_address_per_second=0,
        gateway_rate_limit_principal_per_second=0,
    )
    document = (await client.get("/openapi.json")).json()
    schema = schemathesis.openapi.from_dict(document)
    target = Target(str(client.base_url), metadata_stack.workspace_id, EXAMPLES_PER_ROUND)
    operations: list[APIOperation[Any, Any, Any, Any]] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            error = result.err()
            label = f"{getattr(error, 'method', '').upper()} {getattr(error, 'path', '')}"
            assert label in UNLOADABLE, f"schemathesis cannot load {label}: {error}"
        # SSE is left out: a stream stays open (heartbeats), with no JSON body to check (see test_sse.py).
        elif result.ok().label not in EXCLUDED and not _answers_an_event_stream(result.ok()):
            operations.append(result.ok())
    assert len(operations) > 100
    findings = Findings()
    started = time.monotonic()
    rounds = 0
    while findings.cases < MIN_CASES and time.monotonic() - started < TIME_BUDGET_SECONDS:
        for operation in operations:
            if time.monotonic() - started > TIME_BUDGET_SECONDS:
                break
            metadata = operation.definition.raw.get("x-keel-rpc", "").startswith(METADATA_PACKAGE)
            # Fresh tokens each time: a generated Logout or RevokeSessions must not end the run's identity.
            await orgs.authn.refresh_admin()
            token = metadata_stack.owner.token if metadata else orgs.authn.admin_token
            await asyncio.to_thread(_run_operation, operation, target, token, rounds, findings)
        rounds += 1
    elapsed = time.monotonic() - started
    print(f"schemathesis: {findings.cases} cases over {len(operations)} operations in {elapsed:.1f} s")
    assert findings.failures == [], "\n".join(findings.failures[:20])
    assert findings.cases >= MIN_CASES, f"only {findings.cases} cases in {TIME_BUDGET_SECONDS} s"
