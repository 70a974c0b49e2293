"""Pattern recognition on captured graphs, with a plugin API.

``recognize(graph)`` runs every registered recognizer and returns the matches, each with
``.kind``, ``.nodes`` (the graph nodes it covers), ``.anchor`` and the module path(s) involved.
Built in (builtin.py): ``attention``, ``conv_block``, ``mlp``, ``residual``, ``kv_cache_update``,
``recurrent``. A new kind takes a few lines (docs/patterns.md):

    @genie.patterns.register("swiglu", example_inputs=(torch.randn(4, 8), torch.randn(16, 8), torch.randn(16, 8)))
    def swiglu(x, w_gate, w_up):
        return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)

A function registered with ``example_inputs`` is a *pattern*: genie captures it as it captures
any program and matches the captured ops, anchored on the pattern's output op (traced.py).
Without ``example_inputs`` the function is a *recognizer*: it gets a ``PatternGraph`` and yields
``Match`` objects (how the built-in kinds are written).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from ...graph.graph import Graph, get_graph
from ...graph.node import Node
from .index import PatternGraph


@dataclasses.dataclass(frozen=True, eq=False)
class Match:
    kind: str
    nodes: tuple  # graph nodes the pattern covers, in capture order
    anchor: Node  # the node the match was found from
    details: dict = dataclasses.field(default_factory=dict)  # per kind: q/k/v, skip, gated, bindings...

    @property
    def modules(self) -> tuple:
        """The distinct module paths of the match's nodes, in capture order."""
        seen: dict = {}
        for n in self.nodes:
            path = n.module_path
            if path is not None:
                seen.setdefault(path, None)
        return tuple(seen)

    @property
    def module(self) -> str | None:
        """The innermost module containing the whole match (its paths' common prefix)."""
        paths = [p.split(".") if p else [] for p in self.modules]
        if not paths:
            return None
        common = paths[0]
        for p in paths[1:]:
            i = 0
            while i < len(common) and i < len(p) and common[i] == p[i]:
                i += 1
            common = common[:i]
        return ".".join(common)

    @property
    def phase(self) -> str:
        return self.anchor.phase

    def __repr__(self) -> str:
        return f"<Match {self.kind} at %{self.anchor.id} ({len(self.nodes)} nodes) in {self.module!r}>"


def make_match(kind: str, nodes: Iterable[Node], anchor: Node, **details) -> Match:
    unique = {id(n): n for n in nodes if isinstance(n, Node)}
    unique[id(anchor)] = anchor
    return Match(kind, tuple(sorted(unique.values(), key=lambda n: n.id)), anchor, details)


@dataclasses.dataclass
class _Entry:
    kind: str
    recognize: Callable  # (PatternGraph) -> iterable of Match
    source: Callable  # the function the user registered


_registry: list[_Entry] = []


def register(kind: str, *, example_inputs=None, predicate: Callable | None = None, variants: str = "both"):
    """Register a recognizer for ``kind`` (decorator).

    With ``example_inputs`` the decorated function is a pattern written in PyTorch: it is captured
    on the device with tensors shaped like ``example_inputs`` (ops are matched by name, shapes
    and sizes are not compared), without and with autograd (``variants``: "both", "no_grad",
    "grad"), since autograd changes how some ops decompose. ``predicate(match)`` may reject a
    match (shapes, dtypes, module paths: ``match.details["bindings"]`` maps the pattern's
    argument names to graph nodes). Without ``example_inputs`` the function takes a
    ``PatternGraph`` and yields ``Match`` objects itself."""
    def deco(fn):
        if example_inputs is not None:
            from .traced import TracedPattern
            recognizer = TracedPattern(kind, fn, example_inputs, predicate, variants)
        else:
            recognizer = fn if predicate is None else _filtered(fn, predicate)
        _registry.append(_Entry(kind, recognizer, fn))
        return fn
    return deco


def _filtered(fn, predicate):
    def run(pg):
        return (m for m in fn(pg) if predicate(m))
    return run


def unregister(kind: str) -> None:
    """Remove every recognizer of ``kind``."""
    _registry[:] = [e for e in _registry if e.kind != kind]


def kinds() -> list[str]:
    return list(dict.fromkeys(e.kind for e in _registry))


def recognize(graph: Graph | None = None, kinds: Iterable[str] | None = None) -> list[Match]:
    """The matches of every registered recognizer (or of ``kinds``) on ``graph`` (default: the
    graph of all live captured nodes), ordered by anchor. Recognizers run in registration order;
    each sees the matches of those before it in ``PatternGraph.matches``."""
    if graph is None:
        graph = get_graph()
    pg = graph if isinstance(graph, PatternGraph) else PatternGraph(graph)
    wanted = None if kinds is None else set(kinds)
    found: list[Match] = []
    for entry in _registry:
        if wanted is not None and entry.kind not in wanted and not _needed_by(entry.kind, wanted):
            continue
        matches = [m for m in entry.recognize(pg)]
        pg.matches.setdefault(entry.kind, []).extend(matches)
        if wanted is None or entry.kind in wanted:
            found.extend(matches)
    found.sort(key=lambda m: (m.anchor.id, m.kind))
    return found


def _needed_by(kind: str, wanted: set) -> bool:
    return kind == "attention" and "kv_cache_update" in wanted  # kv_cache_update reads attention's matches


from . import builtin  # noqa: E402,F401  (registers the built-in kinds)

__all__ = ["Match", "PatternGraph", "kinds", "make_match", "recognize", "register", "unregister"]
