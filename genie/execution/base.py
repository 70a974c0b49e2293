"""Execution targets. An executor turns a plan (nodes in topological order, all inputs either in
the plan or already materialized) into values. The scheduler decides what runs and what is kept;
executors decide only how one node runs and where its value lives, so a server-process executor
plugs in beside the local one."""

from __future__ import annotations

import abc

import torch

from ..graph.node import Node

# An executor that sets ``replays = True`` gets plans with a fingerprint (``Plan.key``).

# ``Plan.fetched`` before a run: the caller wants the target's value in this process, and an
# executor whose values live elsewhere brings it back with the run (one round trip, not two)
WANT_VALUE = object()


class Executor(abc.ABC):
    device: torch.device
    replays = False
    remote = False  # values live in another process (``RemoteValue`` handles on the nodes)

    @abc.abstractmethod
    def run_node(self, node: Node):
        """Compute ``node``'s value from its inputs' values (all present) and return it."""

    def execute(self, plan) -> None:
        self.interpret(plan)

    def adopt(self, src: torch.Tensor):
        """A copy of host tensor ``src``, same layout, where this executor keeps input values (the
        value of ``x.to(device)``); None: capture the copy as an op instead."""
        return None

    def interpret(self, plan) -> None:
        """Run every node of ``plan`` in order, dropping each value that is not kept as soon as its
        last consumer in the plan has run."""
        nodes, kept = plan.nodes, plan.kept
        drops: dict[int, list] = {}
        for j, i in enumerate(plan.last_use):
            if i >= 0 and not kept[j]:
                drops.setdefault(i, []).append(j)
        for i, node in enumerate(nodes):
            node.value = self.run_node(node)
            for j in drops.get(i, ()):
                nodes[j].value = None
