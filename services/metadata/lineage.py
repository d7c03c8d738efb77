"""Lineage: the upstream or downstream graph of an artifact version or a run; no gRPC.

The walk is level by level, one query per level (a self-join of the step
input/output links: versions → the steps that made or used them → those
steps' other side), so its cost is bounded by the depth, never by the number
of nodes (no N+1). Bounds: depth 1-10 (0 means 3), at most MAX_NODES nodes,
at most MAX_ROWS link rows read per level. Past a bound the graph is cut and
`truncated` is set; so is it when the depth ran out while more lineage
exists (one extra existence query). Cycles cannot be recorded in practice
(a version is produced once, before it is used), but the walk keeps a visited
set and the depth bound, so a malformed graph still ends.

Depth counts hops through steps: from an artifact version, hop k reaches the
steps and the versions k steps away; from a run, its linked steps are depth 0
and hop k reaches versions (and then steps) k hops away.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, exists, select
from sqlalchemy.ext.asyncio import AsyncConnection

from services.kit.errors import InvalidArgument, NotFound
from services.kit.rbac_lookup import Lookup
from services.metadata import artifact_store as st
from services.metadata.artifact_store import artifact_versions, step_artifacts
from services.metadata.run_store import runs
from services.metadata.store import MetadataStore

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
DEFAULT_DEPTH = 3
MAX_DEPTH = 10
MAX_NODES = 1000
MAX_ROWS = 10_000

ARTIFACT_VERSION = "artifact_version"
STEP_RUN = "step_run"


@dataclass(frozen=True)
class Node:
    """An artifact version or step run of the graph, with its distance from the start."""

    kind: str
    id: str
    run_id: str
    artifact_id: str
    depth: int


@dataclass(frozen=True)
class Edge:
    """A step run consumed (input) or produced (output) an artifact version."""

    step_run_id: str
    artifact_version_id: str
    direction: str
    name: str


@dataclass
class Graph:
    """Nodes nearest first, the edges between them, and whether a bound cut the walk."""

    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    truncated: bool = False


def check_depth(depth: int) -> int:
    """The depth to walk: 0 means DEFAULT_DEPTH; outside 0..MAX_DEPTH is INVALID_ARGUMENT."""
    if depth == 0:
        return DEFAULT_DEPTH
    if depth < 0 or depth > MAX_DEPTH:
        raise InvalidArgument("depth", f"must be between 1 and {MAX_DEPTH} (0 means {DEFAULT_DEPTH})")
    return depth


class _Walk:
    def __init__(self, max_nodes: int) -> None:
        self.max_nodes = max_nodes
        self.nodes: dict[tuple[str, str], Node] = {}
        self.edges: dict[tuple[str, str, str, str], Edge] = {}
        self.truncated = False

    def add(self, node: Node) -> bool:
        """Adds a node not seen yet; False when seen or the node bound is reached."""
        key = (node.kind, node.id)
        if key in self.nodes:
            return False
        if len(self.nodes) >= self.max_nodes:
            self.truncated = True
            return False
        self.nodes[key] = node
        return True

    def edge(self, step_run_id: str, version_id: str, direction: str, name: str) -> None:
        self.edges[(step_run_id, version_id, direction, name)] = Edge(
            step_run_id, version_id, direction, name
        )

    def graph(self) -> Graph:
        present = self.nodes.keys()
        edges = [
            edge
            for edge in self.edges.values()
            if (STEP_RUN, edge.step_run_id) in present
            and (ARTIFACT_VERSION, edge.artifact_version_id) in present
        ]
        edges.sort(key=lambda e: (e.step_run_id, e.direction, e.name))
        nodes = sorted(self.nodes.values(), key=lambda n: (n.depth, n.kind, n.id))
        return Graph(nodes, edges, self.truncated)


def _sides(direction: str) -> tuple[str, str]:
    """(link from a version to a step, link from that step onward) for a direction."""
    return (st.OUTPUT, st.INPUT) if direction == UPSTREAM else (st.INPUT, st.OUTPUT)


async def walk_from_version(
    conn: AsyncConnection,
    project_id: str,
    version_id: str,
    direction: str,
    depth: int,
    *,
    max_nodes: int = MAX_NODES,
) -> Graph:
    """The lineage of an artifact version of the project; NOT_FOUND when there is none such."""
    start = await st.get_version(conn, project_id, version_id)
    if start is None:
        raise NotFound("artifact version not found")
    walk = _Walk(max_nodes)
    walk.add(Node(ARTIFACT_VERSION, start.id, start.producer_run_id, start.artifact_id, 0))
    await _hops(conn, project_id, walk, [start.id], direction, 1, depth)
    return walk.graph()


async def walk_from_run(
    conn: AsyncConnection,
    project_id: str,
    run_id: str,
    direction: str,
    depth: int,
    *,
    max_nodes: int = MAX_NODES,
) -> Graph:
    """The lineage of a run: its steps' inputs (upstream) or outputs (downstream), onward."""
    found = await conn.scalar(select(runs.c.id).where(runs.c.id == run_id, runs.c.project_id == project_id))
    if found is None:
        raise NotFound("run not found")
    _, onward = _sides(direction)
    version = artifact_versions
    rows = (
        await conn.execute(
            select(
                step_artifacts.c.step_run_id,
                step_artifacts.c.artifact_version_id,
                step_artifacts.c.artifact_id,
                step_artifacts.c.name,
                version.c.producer_run_id,
            )
            .select_from(
                step_artifacts.outerjoin(version, version.c.id == step_artifacts.c.artifact_version_id)
            )
            .where(
                step_artifacts.c.project_id == project_id,
                step_artifacts.c.run_id == run_id,
                step_artifacts.c.direction == onward,
            )
            .limit(MAX_ROWS + 1)
        )
    ).all()
    walk = _Walk(max_nodes)
    walk.truncated = len(rows) > MAX_ROWS
    frontier: list[str] = []
    for row in rows[:MAX_ROWS]:
        walk.add(Node(STEP_RUN, row.step_run_id, run_id, "", 0))
    for row in rows[:MAX_ROWS]:
        walk.edge(row.step_run_id, row.artifact_version_id, onward, row.name)
        if walk.add(
            Node(ARTIFACT_VERSION, row.artifact_version_id, row.producer_run_id or "", row.artifact_id, 1)
        ):
            frontier.append(row.artifact_version_id)
    await _hops(conn, project_id, walk, frontier, direction, 2, depth)
    return walk.graph()


async def _hops(
    conn: AsyncConnection,
    project_id: str,
    walk: _Walk,
    frontier: list[str],
    direction: str,
    first_level: int,
    depth: int,
) -> None:
    toward, onward = _sides(direction)
    a = step_artifacts.alias("a")
    b = step_artifacts.alias("b")
    version = artifact_versions.alias("v")
    level = first_level
    while frontier and level <= depth and not walk.truncated:
        # One query per level: the steps on the far side of the frontier and their onward links.
        rows = (
            await conn.execute(
                select(
                    a.c.step_run_id,
                    a.c.run_id,
                    a.c.artifact_version_id.label("from_version"),
                    a.c.name.label("from_name"),
                    b.c.artifact_version_id.label("to_version"),
                    b.c.artifact_id.label("to_artifact"),
                    b.c.name.label("to_name"),
                    version.c.producer_run_id,
                )
                .select_from(
                    a.outerjoin(
                        b, and_(b.c.step_run_id == a.c.step_run_id, b.c.direction == onward)
                    ).outerjoin(version, version.c.id == b.c.artifact_version_id)
                )
                .where(
                    a.c.project_id == project_id,
                    a.c.artifact_version_id.in_(frontier),
                    a.c.direction == toward,
                )
                .limit(MAX_ROWS + 1)
            )
        ).all()
        if len(rows) > MAX_ROWS:
            walk.truncated = True
            rows = rows[:MAX_ROWS]
        following: list[str] = []
        for row in rows:
            walk.add(Node(STEP_RUN, row.step_run_id, row.run_id, "", level))
            walk.edge(row.step_run_id, row.from_version, toward, row.from_name)
        for row in rows:
            if row.to_version is None:
                continue
            walk.edge(row.step_run_id, row.to_version, onward, row.to_name)
            node = Node(ARTIFACT_VERSION, row.to_version, row.producer_run_id or "", row.to_artifact, level)
            if walk.add(node):
                following.append(row.to_version)
        frontier = following
        level += 1
    if frontier and not walk.truncated and level > depth:
        # The depth ran out: say whether the graph goes on.
        more = await conn.scalar(
            select(
                exists().where(
                    step_artifacts.c.project_id == project_id,
                    step_artifacts.c.artifact_version_id.in_(frontier),
                    step_artifacts.c.direction == toward,
                )
            )
        )
        walk.truncated = bool(more)


def _allows(readable: Lookup, resource_id: str, project_id: str) -> bool:
    return readable.all or resource_id in readable.ids or project_id in readable.project_ids


def readable_part(graph: Graph, project_id: str, versions: Lookup, runs: Lookup) -> Graph:
    """The part of a graph the caller may read, still connected to where the walk started.

    Artifact versions need `artifact_version.read`, steps `run.read` on their run
    (LookupResources answers). The walk does not pass through what is hidden: a
    readable node reached only through a hidden one is left out too, so the answer
    says nothing about what lies behind. A start the caller may not read is
    NOT_FOUND, as its own Get would be.
    """
    if versions.all and runs.all:
        return graph

    def visible(node: Node) -> bool:
        if node.kind == ARTIFACT_VERSION:
            return _allows(versions, node.id, project_id)
        return _allows(runs, node.run_id, project_id)

    shown = {node.id for node in graph.nodes if visible(node)}
    starts = [node.id for node in graph.nodes if node.depth == 0]
    if not any(start in shown for start in starts):
        raise NotFound("lineage start not found")
    neighbours: dict[str, list[str]] = {}
    for edge in graph.edges:
        if edge.step_run_id in shown and edge.artifact_version_id in shown:
            neighbours.setdefault(edge.step_run_id, []).append(edge.artifact_version_id)
            neighbours.setdefault(edge.artifact_version_id, []).append(edge.step_run_id)
    reached = {start for start in starts if start in shown}
    frontier = list(reached)
    while frontier:
        frontier = [n for node in frontier for n in neighbours.get(node, ()) if n not in reached]
        reached.update(frontier)
    return Graph(
        nodes=[node for node in graph.nodes if node.id in reached],
        edges=[e for e in graph.edges if e.step_run_id in reached and e.artifact_version_id in reached],
        truncated=graph.truncated,
    )


class Lineages:
    """GetLineage over the store."""

    def __init__(self, store: MetadataStore) -> None:
        self._store = store

    async def lineage(
        self, project_id: str, *, artifact_version_id: str = "", run_id: str = "", direction: str, depth: int
    ) -> Graph:
        """The graph from an artifact version or a run (exactly one), in a direction, to a depth."""
        if not project_id:
            raise InvalidArgument("project_id", "is required")
        if direction not in (UPSTREAM, DOWNSTREAM):
            raise InvalidArgument("direction", "must be UPSTREAM or DOWNSTREAM")
        levels = check_depth(depth)
        if bool(artifact_version_id) == bool(run_id):
            raise InvalidArgument(
                "artifact_version_id", "exactly one of artifact_version_id and run_id is required"
            )
        async with self._store.transaction() as tx:
            if artifact_version_id:
                return await walk_from_version(tx.conn, project_id, artifact_version_id, direction, levels)
            return await walk_from_run(tx.conn, project_id, run_id, direction, levels)
