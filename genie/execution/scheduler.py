"""Materialization: find what a value depends on, run it, keep what is still needed.

Only unexecuted ancestors of the requested node are collected (iteratively: 1e6-op chains must
not recurse). Values produced in a run are kept when something outside the run still refers to
their node (a live LazyTensor, a storage root, a node captured later) and dropped otherwise, as
soon as their last consumer in the run has executed. Kept nodes are collapsed: their inputs are
released, so the graph behind a materialized value is freed.

A dropped node keeps its inputs, so if the reference count ever under-reports (an interpreter
that borrows references) the cost is a recomputation, never a wrong or missing value.
"""

from __future__ import annotations

import os
import sys
import threading

from ..graph.node import _EMPTY, Node, iter_inputs

_lock = threading.RLock()
_executor = None
# How long a materialization waits for another thread's run to finish before it gives up.
LOCK_TIMEOUT_S = float(os.environ.get("GENIE_MATERIALIZE_TIMEOUT_S", "600"))


def get_executor():
    global _executor
    if _executor is None:
        from .. import config
        from .local import LocalExecutor
        _executor = LocalExecutor(config.execution_device())
    return _executor


def set_executor(executor) -> None:
    """Plug in another execution target (e.g. a server-process executor)."""
    global _executor
    _executor = executor


def reset_executor() -> None:
    global _executor
    _executor = None


class Plan:
    __slots__ = ("nodes", "target", "deps", "remaining", "occ")

    def __init__(self, target: Node):
        self.target = target
        index: dict[int, Node] = {id(target): target}
        stack = [target]
        while stack:
            node = stack.pop()
            for dep in iter_inputs(node):
                if dep.value is None and id(dep) not in index:
                    index[id(dep)] = dep
                    stack.append(dep)
        nodes = sorted(index.values(), key=_node_id)
        del index, stack
        pos = {id(n): i for i, n in enumerate(nodes)}
        occ = [0] * len(nodes)
        remaining = [0] * len(nodes)
        deps = []
        for n in nodes:
            counts: dict[int, int] = {}
            _count_refs(n, pos, counts)
            deps.append(tuple(counts))
            for j, c in counts.items():
                occ[j] += c
                remaining[j] += 1
        self.nodes = nodes
        self.deps = deps
        self.remaining = remaining
        self.occ = occ

    def executed(self, i: int) -> None:
        remaining = self.remaining
        for j in self.deps[i]:
            remaining[j] -= 1
            if remaining[j] == 0:
                self._release(j)

    def _release(self, j: int) -> None:
        nodes = self.nodes
        if nodes[j] is self.target or nodes[j].rng is not None:
            return
        # references: getrefcount's argument, this list, and the plan's own nodes' arguments
        if sys.getrefcount(nodes[j]) - 2 - self.occ[j] <= 0:
            nodes[j].value = None

    def finish(self) -> None:
        for n in self.nodes:
            if n.value is not None:
                n.args = ()
                n.kwargs = _EMPTY
        self.nodes = ()


def _node_id(n: Node) -> int:
    return n.id


def _count_refs(node: Node, pos: dict, counts: dict) -> None:
    """Count, with multiplicity, the references ``node`` holds to nodes of the plan."""
    stack = [node.args, tuple(node.kwargs.values()) if node.kwargs else ()]
    if isinstance(node.rng, Node):
        stack.append((node.rng,))
    while stack:
        for a in stack.pop():
            if isinstance(a, Node):
                j = pos.get(id(a))
                if j is not None:
                    counts[j] = counts.get(j, 0) + 1
            elif isinstance(a, (list, tuple)):
                stack.append(a)


def materialize(node: Node):
    """The value of ``node``, computing whatever it depends on."""
    value = node.value
    if value is not None:
        return value
    if not _lock.acquire(timeout=LOCK_TIMEOUT_S):
        raise TimeoutError(f"genie: waited {LOCK_TIMEOUT_S:.0f} s for another thread's materialization "
                           f"(set GENIE_MATERIALIZE_TIMEOUT_S to wait longer); {node!r} was not computed")
    try:
        if node.value is None:
            plan = Plan(node)
            try:
                get_executor().execute(plan)
            finally:
                plan.finish()
    finally:
        _lock.release()
    return node.value
