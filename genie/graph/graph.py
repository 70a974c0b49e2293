"""A read-only view of the captured graph, for inspection, semantics and export.

The capture path keeps no global list of nodes (that would cost time per op and keep dead
subgraphs alive): nodes live exactly as long as a tensor, a storage root or another node
refers to them. ``get_graph`` therefore finds the live nodes from the garbage collector's
object list; it is an inspection call, not a hot path.
"""

from __future__ import annotations

import gc
import operator
from collections.abc import Iterable

import torch
import torch.fx

from .node import Node, getitem, iter_inputs, op_name


class Graph:
    def __init__(self, nodes: Iterable[Node]):
        self.nodes = sorted(set(nodes), key=lambda n: n.id)
        ids = {id(n) for n in self.nodes}
        self._users: dict[int, list[Node]] = {id(n): [] for n in self.nodes}
        for n in self.nodes:
            for d in iter_inputs(n):
                if id(d) in ids:
                    self._users[id(d)].append(n)

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self):
        return iter(self.nodes)

    def topological_order(self) -> list[Node]:
        # ids grow with capture order and every input is captured before its consumer
        return list(self.nodes)

    def users(self, node: Node) -> list[Node]:
        return list(self._users.get(id(node), ()))

    def op_names(self) -> list[str]:
        return [n.op for n in self.nodes]

    def to_fx(self, device=None) -> torch.fx.GraphModule:
        """The captured program as an fx GraphModule that runs on ``device`` (default: the
        execution device). Materialized values and constants become placeholders, whose values
        are ``gm.genie_inputs`` in order; every node without users in this graph is an output."""
        from ..config import execution_device
        device = torch.device(device) if device is not None else execution_device()
        g = torch.fx.Graph()
        env: dict[int, torch.fx.Node] = {}
        inputs: list = []

        def arg(a):
            if isinstance(a, Node):
                fx_node = env.get(id(a))
                if fx_node is None:  # an input outside this graph
                    fx_node = g.placeholder(f"input_{a.id}")
                    inputs.append(a.value)
                    env[id(a)] = fx_node
                return fx_node
            if isinstance(a, (list, tuple)):
                return type(a)(arg(x) for x in a)
            if isinstance(a, torch.device) and a.type == "remote_accelerator":
                return device
            if isinstance(a, torch.Tensor):
                fx_node = g.placeholder(f"const_{len(inputs)}")
                inputs.append(a)
                return fx_node
            return a

        for n in self.nodes:
            if n.value is not None and not n.args:
                fx_node = g.placeholder(f"value_{n.id}")
                inputs.append(n.value)
            elif n.target is getitem:
                fx_node = g.call_function(operator.getitem, (arg(n.args[0]), n.args[1]))
            elif isinstance(n.target, torch._ops.OpOverload):
                fx_node = g.call_function(n.target, tuple(arg(a) for a in n.args),
                                          {k: arg(v) for k, v in n.kwargs.items()})
            else:
                fx_node = g.call_function(n.target, tuple(arg(a) for a in n.args))
            fx_node.meta["genie_op"] = op_name(n.target)
            fx_node.meta["genie_spec"] = n.spec
            fx_node.meta["genie_annotations"] = n.annotations
            if n.ctx is not None and n.ctx.module is not None:
                fx_node.meta["nn_module_path"] = n.ctx.module
            env[id(n)] = fx_node
        outputs = [env[id(n)] for n in self.nodes if not self._users[id(n)]]
        g.output(tuple(outputs))
        gm = torch.fx.GraphModule(torch.nn.Module(), g)
        gm.genie_inputs = inputs
        return gm


def get_graph() -> Graph:
    """The graph of live captured nodes."""
    return Graph(o for o in gc.get_objects() if type(o) is Node and o.spec is not None)


def graph_of(*tensors) -> Graph:
    """The subgraph that the given LazyTensors' values depend on."""
    seen: dict[int, Node] = {}
    # (a LazyTensor's node is its ``genie_node``; other tensors have none: the graph layer does not
    # import capture's tensor class)
    stack = [n for n in (getattr(t, "genie_node", None) for t in tensors) if n.__class__ is Node]
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen[id(n)] = n
        stack.extend(iter_inputs(n))
    return Graph(n for n in seen.values() if n.spec is not None)
