"""A plan: the nodes one materialization runs, what it keeps, and its fingerprint.

The fingerprint (``Plan.key``) is the structure of the run without its sizes and numbers: the
text compiled programs are cached on (``parse`` reads it back for execution/replay.py) and the
remote template mirrors (execution/remote/client.py). Its markers and encoder live here; the
inputs (materialized values, numbers, size lists) a program takes are listed in the order it
takes them.
"""

from __future__ import annotations

import operator
import os
import sys

import torch

from ..graph.node import _EMPTY, Node, keep_structure, op_name
from ..ops.schema import OpClass, _classes, classify

# Plans larger than this are interpreted, never compiled (a 1e6-op chain is read once).
MAX_COMPILED_NODES = int(os.environ.get("GENIE_REPLAY_MAX_NODES", "20000"))


# Markers of the fingerprint (see execution/replay.py for how a program reads them back).
class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name

    def __reduce__(self):
        return (_marker, (self.name,))


EXT = _Marker("EXT")  # a materialized node outside the plan: its value is an input
INTS = _Marker("INTS")  # a list of ints (sizes, dims): one input
END = _Marker("END")  # end of a node's record
ANN = _Marker("ANN")  # the node carries annotations (read from the node when it runs)
KW = _Marker("KW")  # (KW, name): the next item is keyword argument ``name``
LIST = _Marker("LIST")  # (LIST, *items): a list holding nodes or baked atoms
_MARKERS = {m.name: m for m in (EXT, INTS, END, ANN, KW, LIST)}


def _marker(name):
    return _MARKERS[name]


class Plan:
    """The nodes to run for ``target`` (topological order), what to keep, and the fingerprint.

    ``kept[i]``: node i's value is stored on the node (something outside the run refers to it).
    ``key``: the fingerprint, or None for plans too large to compile. ``inputs``: the values the
    fingerprint's input slots stand for. ``specs``: every spec the run produces or reads, which
    decides whether a compiled program may skip its layout checks (see replay.Program)."""

    __slots__ = ("nodes", "target", "key", "inputs", "specs", "kept", "last_use", "fetched")

    def __init__(self, target: Node, fingerprint: bool = True):
        self._build(target, _collect(target), fingerprint, None)

    @classmethod
    def over(cls, nodes: list, kept_set) -> Plan:
        """A plan over nodes rebuilt elsewhere (a server's session), fingerprinted for replay,
        keeping what the client keeps (``kept_set``: their indices)."""
        plan = cls.__new__(cls)
        plan._build(nodes[-1], nodes, True, [i in kept_set for i in range(len(nodes))])
        return plan

    def _build(self, target: Node, nodes: list, fingerprint: bool, kept) -> None:
        self.target = target
        self.fetched = None  # a remote executor brings the target's value back here when asked
        n = len(nodes)
        self.nodes = nodes
        if fingerprint and n <= MAX_COMPILED_NODES:
            occ, last = _encode(self, nodes)
        else:
            self.key = self.inputs = self.specs = None
            occ, last = _count(nodes)
        if kept is None:
            getref = sys.getrefcount
            # references to a node: getrefcount's argument, the nodes list, and occ[i] arguments of the plan
            kept = [getref(nodes[i]) - 2 > occ[i] or nodes[i].rng is not None for i in range(n)]
            kept[-1] = True  # the target (largest id)
        self.kept = kept
        self.last_use = last
        if self.key is not None:
            self.key.append(tuple(i for i in range(n) if kept[i]))
            self.key = tuple(self.key)

    def finish(self) -> None:
        """Collapse the kept nodes: their values stay, their inputs are released (unless the
        structure is being kept for analysis: ``genie.keep_structure()``)."""
        nodes = self.nodes
        for i, k in enumerate(() if keep_structure.depth else self.kept):
            if k:
                n = nodes[i]
                if n.value is not None:
                    n.args = ()
                    n.kwargs = _EMPTY
        self.nodes = ()
        self.inputs = None


_node_id = operator.attrgetter("id")


def _collect(target: Node) -> list:
    """The unexecuted ancestors of ``target`` (itself included), sorted by id: topological order."""
    index: dict[int, Node] = {id(target): target}
    stack = [target]
    push = stack.append
    pop = stack.pop
    while stack:
        node = pop()
        rng = node.rng
        if rng is not None and rng.__class__ is Node and rng.value is None and id(rng) not in index:
            index[id(rng)] = rng
            push(rng)
        for a in node.args:  # the common argument, a node, inline (_collect_nested does the same)
            c = a.__class__
            if c is Node:
                if a.value is None:
                    k = id(a)
                    if k not in index:
                        index[k] = a
                        push(a)
            elif c is tuple or c is list:
                _collect_nested(a, index, push)
        if node.kwargs:
            _collect_nested(node.kwargs.values(), index, push)
    nodes = list(index.values())
    del index
    nodes.sort(key=_node_id)
    return nodes


def _collect_nested(seq, index, push) -> None:
    for a in seq:
        c = a.__class__
        if c is Node:
            if a.value is None and id(a) not in index:
                index[id(a)] = a
                push(a)
        elif c is tuple or c is list:
            _collect_nested(a, index, push)


def _count(nodes):
    """Per node: how many arguments of the plan refer to it, and the index of its last consumer."""
    pos = {id(n): i for i, n in enumerate(nodes)}
    occ = [0] * len(nodes)
    last = [-1] * len(nodes)
    for i, n in enumerate(nodes):
        seqs = [n.args]
        if n.kwargs:
            seqs.append(tuple(n.kwargs.values()))
        rng = n.rng
        if rng.__class__ is Node:
            seqs.append((rng,))
        while seqs:
            for a in seqs.pop():
                c = a.__class__
                if c is Node:
                    j = pos.get(id(a))
                    if j is not None:
                        occ[j] += 1
                        last[j] = i
                elif c is tuple or c is list:
                    seqs.append(a)
    return occ, last


def _encode(plan, nodes):
    """Fingerprint, inputs and specs of the plan in one pass; returns (occ, last) as ``_count``."""
    pos = {id(n): i for i, n in enumerate(nodes)}
    occ = [0] * len(nodes)
    last = [-1] * len(nodes)
    key = []
    inputs = []
    specs = []
    k_add = key.append
    i_add = inputs.append
    s_add = specs.append

    def item(a, i):
        """The key item of argument ``a`` of node ``i`` (its inputs and specs appended as it goes)."""
        c = a.__class__
        if c is Node:
            j = pos.get(id(a))
            if j is None:
                i_add(a.value)
                s_add(a.spec)
                return EXT
            occ[j] += 1
            last[j] = i
            return j
        if c is int or c is float:
            i_add(a)
            return c
        if c is tuple or c is list:
            for x in a:
                if x.__class__ is not int:  # a list holding nodes or other atoms: item by item
                    out = [LIST]
                    for x in a:  # (a foreach op's lists hold a node per parameter: inline)
                        if x.__class__ is Node:
                            j = pos.get(id(x))
                            if j is None:
                                i_add(x.value)
                                s_add(x.spec)
                                out.append(EXT)
                            else:
                                occ[j] += 1
                                last[j] = i
                                out.append(j)
                        else:
                            out.append(item(x, i))
                    return tuple(out)
            i_add(a)
            return INTS
        i_add(a)
        if isinstance(a, _TENSOR):
            s_add(_tensor_layout(a))
            return _TENSOR
        return (c, a)

    classes = _classes
    for i, n in enumerate(nodes):
        # an op stands in the key for its OpClass, which hashes by identity (OpOverload's __hash__
        # is Python code, a measurable share of a lookup of a large plan's key)
        t = n.target
        oc = classes.get(id(t))
        if oc is None and t.__class__ is _OpOverload:
            oc = classify(t)
        k_add(t if oc is None else oc)
        s_add(n.spec)
        for a in n.args:
            c = a.__class__
            if c is Node:  # the common arguments, nodes and numbers, inline (``item`` does the same)
                j = pos.get(id(a))
                if j is None:
                    k_add(EXT)
                    i_add(a.value)
                    s_add(a.spec)
                else:
                    k_add(j)
                    occ[j] += 1
                    last[j] = i
            elif c is int or c is float:
                i_add(a)
                k_add(c)
            else:
                k_add(item(a, i))
        if n.kwargs:
            for name, a in n.kwargs.items():
                k_add((KW, name))
                k_add(item(a, i))
        rng = n.rng
        if rng.__class__ is Node:
            j = pos.get(id(rng))
            if j is not None:
                occ[j] += 1
                last[j] = i
        if n.runtime is not None:
            k_add(ANN)
        k_add(END)
    plan.key = key
    plan.inputs = inputs
    plan.specs = specs
    return occ, last


_TENSOR = torch.Tensor
_OpOverload = torch._ops.OpOverload


def _tensor_layout(t):
    return (tuple(t.shape), t.stride(), t.storage_offset(), t.dtype, t.device)


# -- reading the format back --------------------------------------------------------------------

def parse(key):
    """The fingerprint read back (execution/replay.py compiles from it). Per node: (target, [(kwarg name or None, item)], annotated); and the kept indices."""
    nodes = []
    target = None
    args: list = []
    name = None
    annotated = False
    for item in key[:-1]:
        if target is None:
            target = item.func if item.__class__ is OpClass else item
            args, name, annotated = [], None, False
        elif item is END:
            nodes.append((target, args, annotated))
            target = None
        elif item is ANN:
            annotated = True
        elif item.__class__ is tuple and item and item[0] is KW:
            name = item[1]
        else:
            args.append((name, item))
            name = None
    return nodes, key[-1]


def refs(item):
    """The plan-node indices an encoded argument refers to."""
    c = item.__class__
    if c is int:
        yield item
    elif c is tuple and item and item[0] is LIST:
        for x in item[1:]:
            yield from refs(x)


def canonical(key) -> str:
    """A text form of a fingerprint that names ops by their schema names, never by object ids."""
    parts = []
    for item in key:
        parts.append(_text(item))
    return " ".join(parts)


def _text(item) -> str:
    c = item.__class__
    if c is int:
        return f"%{item}"
    if c is OpClass:
        item = item.func
    if isinstance(item, torch._ops.OpOverload):
        return f"{op_name(item)}.{item._overloadname}"
    if c is tuple:
        if item and item[0] is LIST:
            return "[" + ",".join(_text(x) for x in item[1:]) + "]"
        if item and item[0] is KW:
            return f"{item[1]}="
        if len(item) == 2 and isinstance(item[0], type):
            return f"{item[0].__name__}:{item[1]!r}"
        return "kept(" + ",".join(str(i) for i in item) + ")"
    if item is _TENSOR:
        return "tensor"
    if isinstance(item, type):
        return item.__name__
    if item in (EXT, INTS, END, ANN):
        return repr(item)
    return op_name(item)
