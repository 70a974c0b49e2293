"""A recognized pattern: its kind, the graph nodes it covers, its anchor and what it binds."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from ...graph.node import Node


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
