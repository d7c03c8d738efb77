"""HTTP path templates of `google.api.http` and the router that matches request paths against them.

A template is `/` segments with an optional `:verb`; a segment is a literal,
`*` (one segment), `**` (the rest of the path) or a variable `{field.path}`
(`{field.path=pattern}` when the variable spans several segments). The router
is a tree of segments: at every level a literal child is tried before a
wildcard, so a request costs one step per segment whatever the number of
routes. Two routes with the same verb, method and shape fail start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import unquote

TargetT = TypeVar("TargetT")

ONE = "*"
REST = "**"
_FORBIDDEN_IN_LITERAL = set("{}*=:/")


class TemplateError(ValueError):
    """A path template that does not follow the google.api.http grammar."""


class RouteConflict(ValueError):
    """Two routes with the same method, verb and path shape."""


@dataclass(frozen=True)
class Variable:
    """A variable of a template: the request field it sets and the segments it spans."""

    field_path: str
    start: int
    # One past the last segment; None when the variable ends with `**` (the rest of the path).
    end: int | None
    pattern: tuple[str, ...]

    @property
    def single_segment(self) -> bool:
        """Whether the value is one segment (so it may contain an encoded '/')."""
        return self.pattern == (ONE,)


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template: its segments (literal text, `*` or `**`), variables and verb."""

    text: str
    segments: tuple[str, ...]
    variables: tuple[Variable, ...]
    verb: str

    def values(self, raw_segments: list[str]) -> dict[str, str]:
        """The variables' values in a matched request path (percent-decoded)."""
        found: dict[str, str] = {}
        for variable in self.variables:
            taken = raw_segments[variable.start : variable.end]
            if variable.single_segment:
                found[variable.field_path] = unquote(taken[0])
            else:
                # RFC 6570 reserved expansion: an encoded slash stays encoded inside a multi-segment value.
                joined = "/".join(taken)
                found[variable.field_path] = unquote(joined.replace("%2F", "%252F").replace("%2f", "%252f"))
        return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, problem: str) -> TemplateError:
        return TemplateError(f"path template {self.text!r}: {problem} at position {self.pos}")

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def literal(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in _FORBIDDEN_IN_LITERAL:
            self.pos += 1
        if self.pos == start:
            raise self.fail("expected a literal segment")
        return self.text[start : self.pos]

    def plain_segment(self) -> str:
        if self.text.startswith(REST, self.pos):
            self.pos += 2
            return REST
        if self.peek() == ONE:
            self.pos += 1
            return ONE
        return self.literal()

    def field_path(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "_."):
            self.pos += 1
        path = self.text[start : self.pos]
        if not path or any(not part or not part[0].isalpha() for part in path.split(".")):
            raise self.fail("expected a field path")
        return path

    def parse(self) -> PathTemplate:
        if not self.text.startswith("/"):
            raise self.fail("must start with '/'")
        segments: list[str] = []
        variables: list[Variable] = []
        verb = ""
        while True:
            self.pos += 1  # the '/' before each segment
            if self.peek() == "{":
                self.pos += 1
                path = self.field_path()
                pattern: list[str] = []
                if self.peek() == "=":
                    self.pos += 1
                    pattern.append(self.plain_segment())
                    while self.peek() == "/":
                        self.pos += 1
                        pattern.append(self.plain_segment())
                else:
                    pattern.append(ONE)
                if self.peek() != "}":
                    raise self.fail("expected '}'")
                self.pos += 1
                start = len(segments)
                segments.extend(pattern)
                end = None if pattern[-1] == REST else len(segments)
                variables.append(Variable(path, start, end, tuple(pattern)))
            else:
                segments.append(self.plain_segment())
            nxt = self.peek()
            if nxt == "/":
                continue
            if nxt == ":":
                self.pos += 1
                verb = self.literal()
                nxt = self.peek()
            if nxt:
                raise self.fail(f"unexpected {nxt!r}")
            break
        if REST in segments[:-1]:
            raise TemplateError(f"path template {self.text!r}: '**' must be the last segment")
        names = [variable.field_path for variable in variables]
        if len(set(names)) != len(names):
            raise TemplateError(f"path template {self.text!r}: a field is bound twice")
        return PathTemplate(self.text, tuple(segments), tuple(variables), verb)


def parse_template(text: str) -> PathTemplate:
    """Parses a google.api.http path template; TemplateError names the problem."""
    return _Parser(text).parse()


@dataclass(frozen=True)
class Route(Generic[TargetT]):
    """What one method + template leads to."""

    method: str
    template: PathTemplate
    target: TargetT
    name: str


@dataclass(frozen=True)
class Match(Generic[TargetT]):
    """A matched route and the values of its variables."""

    route: Route[TargetT]
    values: dict[str, str]


@dataclass(frozen=True)
class MethodNotAllowed:
    """The path exists, but not for this method."""

    allowed: tuple[str, ...]


# verb -> HTTP method -> route
_Ends = dict[str, dict[str, Route[TargetT]]]


@dataclass
class _Node(Generic[TargetT]):
    literals: dict[str, _Node[TargetT]] = field(default_factory=dict)
    wildcard: _Node[TargetT] | None = None
    # Routes ending here, and routes whose `**` takes the rest of the path from here.
    ends: _Ends[TargetT] = field(default_factory=dict)
    rest: _Ends[TargetT] = field(default_factory=dict)


class Router(Generic[TargetT]):
    """Routes (method, path) to targets: literal segments first, then `*`, then `**`."""

    def __init__(self) -> None:
        self._root: _Node[TargetT] = _Node()
        self.routes: list[Route[TargetT]] = []

    def add(self, method: str, template: PathTemplate, target: TargetT, name: str) -> None:
        """Adds a route; RouteConflict when the method, verb and shape are taken."""
        node = self._root
        ends = node.ends
        for segment in template.segments:
            if segment == REST:
                ends = node.rest
                break
            if segment == ONE:
                if node.wildcard is None:
                    node.wildcard = _Node()
                node = node.wildcard
            else:
                node = node.literals.setdefault(segment, _Node())
            ends = node.ends
        by_method = ends.setdefault(template.verb, {})
        method = method.upper()
        existing = by_method.get(method)
        if existing is not None:
            raise RouteConflict(
                f"{method} {template.text} is bound by both {existing.name} ({existing.template.text}) "
                f"and {name}"
            )
        route = Route(method, template, target, name)
        by_method[method] = route
        self.routes.append(route)

    def _walk(self, node: _Node[TargetT], segments: list[str], index: int) -> Iterator[_Ends[TargetT]]:
        if index == len(segments):
            if node.ends:
                yield node.ends
            if node.rest:
                yield node.rest
            return
        child = node.literals.get(segments[index])
        if child is not None:
            yield from self._walk(child, segments, index + 1)
        if node.wildcard is not None and segments[index]:
            yield from self._walk(node.wildcard, segments, index + 1)
        if node.rest:
            yield node.rest

    def match(self, method: str, raw_path: str) -> Match[TargetT] | MethodNotAllowed | None:
        """The route for a request (raw, still percent-encoded path), 405 information, or None."""
        if not raw_path.startswith("/"):
            return None
        segments = raw_path[1:].split("/")
        candidates: list[tuple[list[str], str]] = []
        head, colon, verb = segments[-1].rpartition(":")
        if colon:
            # A custom verb; failing that, the colon belongs to the last segment's value.
            candidates.append(([*segments[:-1], head], verb))
        candidates.append((segments, ""))
        allowed: set[str] = set()
        for candidate, candidate_verb in candidates:
            for ends in self._walk(self._root, candidate, 0):
                by_method = ends.get(candidate_verb)
                if not by_method:
                    continue
                route = by_method.get(method)
                if route is not None:
                    return Match(route, route.template.values(candidate))
                allowed.update(by_method)
        if allowed:
            return MethodNotAllowed(tuple(sorted(allowed)))
        return None
