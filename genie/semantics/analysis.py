"""``genie.analyze(graph)``: recognize patterns and write what they say onto the graph's nodes.

- every node a match covers gets ``notes["patterns"]``: the kinds (and anchors) it is part of;
- the result of a KV cache update is a KV cache (``residency == "kv_cache"``): the cache the
  next step will pass in;
- the last-resort phase heuristic: forward nodes whose phase nobody stated (source ``default``)
  in a graph whose attention all reads one query position against a longer key sequence are
  decode (source ``heuristic``); ones whose attention fills an empty cache are prefill. Graphs
  with a backward pass are training steps and keep ``forward``.
"""

from __future__ import annotations

import collections
import dataclasses

from ..graph.graph import Graph, get_graph
from .patterns import Match, PatternGraph, recognize


@dataclasses.dataclass
class Analysis:
    graph: Graph
    matches: list

    def by_kind(self) -> dict[str, list[Match]]:
        out: dict = collections.defaultdict(list)
        for m in self.matches:
            out[m.kind].append(m)
        return dict(out)

    def counts(self) -> dict[str, int]:
        return dict(collections.Counter(m.kind for m in self.matches))

    def phases(self) -> dict[str, int]:
        return dict(collections.Counter(n.phase for n in self.graph.nodes))

    def residency(self) -> dict[str, int]:
        return dict(collections.Counter(n.residency for n in self.graph.nodes))


def analyze(graph: Graph | None = None) -> Analysis:
    if graph is None:
        graph = get_graph()
    pg = PatternGraph(graph)
    matches = recognize(pg)
    for m in matches:
        for n in m.nodes:
            kinds = n.notes.get("patterns") if n.notes else None
            if kinds is None:
                n.annotate("patterns", [])
                kinds = n.notes["patterns"]
            entry = (m.kind, m.anchor.id)
            if entry not in kinds:
                kinds.append(entry)
        if m.kind == "kv_cache_update":
            n = m.anchor
            if n.residency != "kv_cache":
                n.annotate("residency", "kv_cache")
    _phase_heuristic(graph, pg.matches.get("attention", ()), pg.matches.get("kv_cache_update", ()))
    return Analysis(graph, matches)


def _phase_heuristic(graph: Graph, attention, updates) -> None:
    unstated = [n for n in graph.nodes if n.phase == "forward" and n.phase_source == "default"]
    attn = [m for m in attention if m.anchor.phase == "forward" and m.anchor.phase_source == "default"
            and "query_length" in m.details]  # built-in matches (a plugin's "attention" may say less)
    if not unstated or not attn or any(n.phase in ("backward", "optimizer") for n in graph.nodes):
        return  # nothing to decide, or a training step: its forward is a forward
    if attn and all(m.details["query_length"] == 1 and m.details["key_length"] > 1 for m in attn):
        phase = "decode"
    elif any(u.details.get("role") is not None for u in updates):
        phase = "prefill"
    else:
        return
    for n in unstated:
        n.annotate("phase", phase)
        n.annotate("phase_source", "heuristic")
