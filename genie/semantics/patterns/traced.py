"""Patterns written as plain PyTorch functions.

The function is captured by genie itself, on the device, with tensors shaped like the example
inputs, so the pattern decomposes exactly as a user's program does (``F.linear`` stays
``aten::linear`` without autograd and becomes ``aten::t`` + ``aten::addmm`` under it: both
variants are kept). Nothing runs: the capture only builds nodes.

Matching is anchored, in the spirit of inductor's pattern matcher: candidates are the graph's
nodes with the pattern output's op (from the op index), and the pattern is compared from there
up through the inputs. Pattern inputs are wildcards bound consistently (one argument, one graph
value); ops compare by normalized name; float constants compare by value; integer arguments
(sizes, dims) and shapes are not compared, and reshapes, transposes and casts are looked
through on both sides (``F.linear`` on a 3-d input adds views around its product that a 2-d
example does not have), so one pattern matches every size and layout. Graph nodes a match uses
inside the pattern may have other users.
"""

from __future__ import annotations

import inspect

import torch

from ...graph.graph import graph_of
from ...graph.node import Node
from .index import VIEW_OPS, PatternGraph, _first_tensor
from .match import make_match


class _PatternNode:
    __slots__ = ("op", "args", "input_name")

    def __init__(self, op, args, input_name=None):
        self.op = op  # normalized op name; None for a pattern input
        self.args = args  # tuple of _PatternNode / float / None (ignored) in argument order
        self.input_name = input_name


class TracedPattern:
    def __init__(self, kind, fn, example_inputs, predicate, variants):
        if variants not in ("both", "no_grad", "grad"):
            raise ValueError(f"genie.patterns.register: variants must be 'both', 'no_grad' or 'grad', not {variants!r}")
        self.kind = kind
        self.fn = fn
        self.predicate = predicate
        names = list(inspect.signature(fn).parameters)[:len(example_inputs)]
        self.variants = []
        for grad in {"both": (False, True), "no_grad": (False,), "grad": (True,)}[variants]:
            root = _trace(fn, example_inputs, names, grad)
            if not any(_same(root, v) for v in self.variants):
                self.variants.append(root)

    def __call__(self, pg: PatternGraph):
        found: dict = {}
        for root in self.variants:
            for cand in pg.ops(root.op):
                if id(cand) in found:
                    continue
                bindings: dict = {}
                covered: list = []
                if _match(pg, root, cand, bindings, covered):
                    m = make_match(self.kind, covered, cand, bindings=dict(bindings))
                    if self.predicate is None or self.predicate(m):
                        found[id(cand)] = m
        return list(found.values())


def _trace(fn, example_inputs, names, grad: bool) -> _PatternNode:
    """Capture ``fn`` on the device and turn its graph into pattern nodes."""
    from ...capture.dispatch import DEVICE
    from ...capture.rng import chain
    inputs = []
    for x in example_inputs:
        if not isinstance(x, torch.Tensor):
            raise TypeError("genie.patterns.register: example_inputs must be tensors")
        t = torch.empty(x.shape, dtype=x.dtype, device=DEVICE)
        inputs.append(t.requires_grad_(grad and (x.is_floating_point() or x.is_complex())))
    # random ops in the pattern (dropout) must not join the device's random chain: the program's
    # random numbers would then depend on a pattern registration
    with chain._lock:
        saved = chain.head, chain.pending
    try:
        with torch.set_grad_enabled(grad):
            out = fn(*inputs)
    finally:
        with chain._lock:
            chain.head, chain.pending = saved
    if not isinstance(out, torch.Tensor):
        raise TypeError("genie.patterns.register: a pattern returns one tensor")
    by_node = {id(t.genie_node): name for t, name in zip(inputs, names)}
    memo: dict = {}

    def convert(a):
        if isinstance(a, Node):
            hit = memo.get(id(a))
            if hit is None:
                name = by_node.get(id(a))
                if name is not None:
                    hit = _PatternNode(None, (), name)
                elif a.op in VIEW_OPS and _first_tensor(a) is not None:
                    hit = convert(_first_tensor(a))
                else:
                    hit = _PatternNode(a.op, tuple(convert(x) for x in a.args) + tuple(
                        convert(v) for v in a.kwargs.values()))
                memo[id(a)] = hit
            return hit
        if isinstance(a, (list, tuple)) and any(isinstance(x, Node) for x in a):
            return tuple(convert(x) for x in a)
        if isinstance(a, float):
            return a
        return None  # sizes, dims, dtypes, devices: not compared

    graph_of(out)  # the nodes exist; the conversion walks them from the output
    root = convert(out.genie_node)
    if root.op is None:
        raise ValueError("genie.patterns.register: the pattern returns one of its inputs unchanged")
    return root


def _match(pg, p, g, bindings: dict, covered: list) -> bool:
    if isinstance(p, _PatternNode):
        if not isinstance(g, Node):
            return False
        trail: list = []
        g = pg.source(g, trail)
        if p.op is None:
            bound = bindings.get(p.input_name)
            if bound is None:
                bindings[p.input_name] = g
                return True
            return bound is g
        if g.op != p.op:
            return False
        gargs = tuple(g.args) + tuple(g.kwargs.values())
        if len(gargs) != len(p.args):
            return False
        for pa, ga in zip(p.args, gargs):
            if not _match(pg, pa, ga, bindings, covered):
                return False
        covered.extend(trail)
        covered.append(g)
        return True
    if isinstance(p, tuple):
        return isinstance(g, (list, tuple)) and len(g) == len(p) and all(
            _match(pg, a, b, bindings, covered) for a, b in zip(p, g))
    if isinstance(p, float):
        return isinstance(g, (int, float)) and float(g) == p
    return True


def _same(a, b) -> bool:
    if isinstance(a, _PatternNode) and isinstance(b, _PatternNode):
        return a.op == b.op and a.input_name == b.input_name and len(a.args) == len(b.args) and all(
            _same(x, y) for x, y in zip(a.args, b.args))
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
