"""A REST caller for tests that derives each HTTP request from an RPC's `google.api.http` rule.

It reads the rule from the descriptor on its own (not through the gateway's
code): path variables are taken out of the request fields, the body is the
whole remainder or one field, and what is left becomes dotted query
parameters. Every call is recorded by RPC, so a test can tell which annotated
RPCs it has exercised.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from google.api import annotations_pb2
from google.protobuf import descriptor, descriptor_pool

_VARIABLE = re.compile(r"\{([A-Za-z0-9_.]+)(=[^}]*)?\}")


def method_descriptor(full_name: str) -> descriptor.MethodDescriptor:
    """A method by its full name, e.g. keel.orgs.v1.TeamService.GetTeam."""
    service_name, _, method_name = full_name.rpartition(".")
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return service.methods_by_name[method_name]


def _json_names(message: descriptor.Descriptor, proto_path: str) -> list[str]:
    names: list[str] = []
    current: descriptor.Descriptor | None = message
    for part in proto_path.split("."):
        assert current is not None, proto_path
        found = current.fields_by_name[part]
        names.append(found.json_name)
        current = found.message_type
    return names


def _take(fields: dict[str, Any], names: list[str]) -> Any:
    container = fields
    for name in names[:-1]:
        container = container[name]
    return container.pop(names[-1])


def _flatten(prefix: str, value: Any, out: list[tuple[str, str | int | float | bool | None]]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, item, out)
    elif isinstance(value, list):
        for item in value:
            _flatten(prefix, item, out)
    elif isinstance(value, bool):
        out.append((prefix, "true" if value else "false"))
    else:
        out.append((prefix, str(value)))


@dataclass
class RestApi:
    """Calls RPCs through the gateway's REST API by their full name; records each call."""

    client: httpx.AsyncClient
    exercised: dict[str, list[int]] = field(default_factory=dict)

    async def call(
        self,
        rpc: str,
        fields: dict[str, Any] | None = None,
        *,
        token: str | None = None,
        expect: int = 200,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """Sends the RPC's primary HTTP binding; asserts the status (and reason); returns the JSON."""
        method = method_descriptor(rpc)
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        assert verb is not None, rpc
        assert verb != "custom", rpc
        template = str(getattr(rule, verb))
        remaining: dict[str, Any] = copy.deepcopy(fields or {})

        def substitute(match: re.Match[str]) -> str:
            value = str(_take(remaining, _json_names(method.input_type, match.group(1))))
            return quote(value, safe="/" if match.group(2) else "")

        path = _VARIABLE.sub(substitute, template)
        body: Any = None
        query: list[tuple[str, str | int | float | bool | None]] = []
        if rule.body == "*":
            body = remaining
        elif rule.body:
            json_name = method.input_type.fields_by_name[rule.body].json_name
            body = remaining.pop(json_name, {})
            _flatten("", remaining, query)
        else:
            _flatten("", remaining, query)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = await self.client.request(
            verb.upper(), path, params=query, json=body if rule.body else None, headers=headers
        )
        self.exercised.setdefault(rpc, []).append(response.status_code)
        payload: dict[str, Any] = response.json()
        assert response.status_code == expect, f"{rpc}: {response.status_code} {payload}"
        if reason is not None:
            reasons = [d.get("reason") for d in payload["error"]["details"] if "reason" in d]
            assert reason in reasons, f"{rpc}: {payload}"
        return payload
