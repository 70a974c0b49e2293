"""The recognizers genie runs: registered functions (recognizers over a ``PatternGraph``) and
patterns written in PyTorch (traced.py), run by ``recognize``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

from ...graph.graph import Graph, get_graph
from .index import PatternGraph
from .match import Match
from .traced import TracedPattern


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
