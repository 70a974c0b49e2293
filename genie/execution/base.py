"""Execution targets. An executor turns a plan (nodes in topological order, all inputs either in
the plan or already materialized) into values. The scheduler decides what runs and what is kept;
executors decide only how one node runs and where its value lives, so a server-process executor
plugs in beside the local one."""

from __future__ import annotations

import abc

import torch

from ..graph.node import Node


class Executor(abc.ABC):
    device: torch.device

    @abc.abstractmethod
    def run_node(self, node: Node):
        """Compute ``node``'s value from its inputs' values (all present) and return it."""

    def execute(self, plan) -> None:
        """Run every node of ``plan`` in order; ``plan.executed`` releases what is no longer needed."""
        for i, node in enumerate(plan.nodes):
            node.value = self.run_node(node)
            plan.executed(i)
