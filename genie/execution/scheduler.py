"""Materialization: find what a value depends on, run it, keep what is still needed.

Only unexecuted ancestors of the requested node are collected (iteratively: 1e6-op chains must
not recurse). Values produced in a run are kept when something outside the run still refers to
their node (a live LazyTensor, a storage root, a node captured later) and dropped otherwise, as
soon as their last consumer in the run has executed. Kept nodes are collapsed: their inputs are
released, so the graph behind a materialized value is freed.

A plan also carries its *fingerprint* (``Plan.key``, see execution/replay.py): the structure of
the run without its sizes and numbers, on which compiled programs are cached, and the inputs
(materialized values, numbers, size lists) such a program takes, in the order it takes them.

A dropped node keeps its inputs, so if the reference count ever under-reports (an interpreter
that borrows references) the cost is a recomputation, never a wrong or missing value.
"""

from __future__ import annotations

import operator
import os
import sys
import threading
from time import perf_counter

import torch

from ..capture.schema import _classes, classify
from ..graph.node import _EMPTY, Node, TensorSpec, index_of, iter_inputs, keep_structure
from . import syncs
from .base import WANT_VALUE
from .remote.handle import RemoteValue

_lock = threading.RLock()
_executor = None  # device 0's executor: the only one unless several servers are configured
_others: tuple = ()  # executors of remote_accelerator:1, :2, ... (one server each)
# How long a materialization waits for another thread's run to finish before it gives up.
LOCK_TIMEOUT_S = float(os.environ.get("GENIE_MATERIALIZE_TIMEOUT_S", "600"))
# Plans larger than this are interpreted, never compiled (a 1e6-op chain is read once).
MAX_COMPILED_NODES = int(os.environ.get("GENIE_REPLAY_MAX_NODES", "20000"))


def _configured_servers() -> list[str]:
    return [a.strip() for a in os.environ.get("GENIE_SERVERS", "").split(",") if a.strip()]


def get_executor(index: int = 0):
    """The executor of ``remote_accelerator:index``."""
    global _executor
    if _executor is None:
        servers = _configured_servers()
        if servers:  # unmodified programs run on the configured servers, one device each
            from .remote import api
            token = os.environ.get("GENIE_SERVER_TOKEN")
            executors = [api.executor_for(a, token) for a in servers]
            set_executor(executors[0], executors[1:])
        else:
            from .. import config
            from .local import LocalExecutor
            _executor = LocalExecutor(config.execution_device())
    if index == 0:
        return _executor
    if index <= len(_others):
        return _others[index - 1]
    raise RuntimeError(f"remote_accelerator:{index} has no executor: there are {device_count()} devices "
                       "(each genie server is one device; see genie.remote)")


def device_count() -> int:
    """How many ``remote_accelerator`` devices there are: one per server, one when execution is local."""
    if _executor is None:
        return max(1, len(_configured_servers()))
    return 1 + len(_others)


def set_executor(executor, others=()) -> None:
    """Plug in another execution target (e.g. a server-process executor); ``others``: the
    executors of devices 1, 2, ... when there are several."""
    global _executor, _others
    _executor, _others = executor, tuple(others)
    _autograd_in_caller(bool(_others))


def reset_executor() -> None:
    set_executor(None)


_serial_backward = threading.local()


def _beyond_device_0() -> None:
    # a thread that makes tensors on remote_accelerator:1 or later will run their backward
    if getattr(_serial_backward, "was", None) is None:
        _autograd_in_caller(True)


def _autograd_in_caller(on: bool) -> None:
    """With several devices, backward runs in the thread that calls it (the autograd engine's
    "multithreading disabled" mode, which torch keeps per thread).

    torch's pure-Python PrivateUse1 device guard reports one device, so the engine makes one
    device thread and ready queue for the backend and stops at an internal assert on a gradient
    of ``remote_accelerator:1``; in the caller's thread every node goes through the CPU ready
    queue, which serves any device index. Nothing else changes: genie's backward ops are
    captured, not run, wherever the engine calls them."""
    was = getattr(_serial_backward, "was", None)
    if on and was is None:
        _serial_backward.was = torch._C._is_multithreading_enabled()
        torch._C._set_multithreading_enabled(False)
    elif not on and was is not None:
        torch._C._set_multithreading_enabled(was)
        _serial_backward.was = None


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


_NUMBERS = (int, float)


class Plan:
    """The nodes to run for ``target`` (topological order), what to keep, and the fingerprint.

    ``kept[i]``: node i's value is stored on the node (something outside the run refers to it).
    ``key``: the fingerprint, or None for plans too large to compile. ``inputs``: the values the
    fingerprint's input slots stand for. ``specs``: every spec the run produces or reads, which
    decides whether a compiled program may skip its layout checks (see replay.Program)."""

    __slots__ = ("nodes", "target", "key", "inputs", "specs", "kept", "last_use", "fetched")

    def __init__(self, target: Node, fingerprint: bool = True):
        self.target = target
        self.fetched = None  # a remote executor brings the target's value back here when asked
        nodes = _collect(target)
        n = len(nodes)
        self.nodes = nodes
        if fingerprint and n <= MAX_COMPILED_NODES:
            occ, last = _encode(self, nodes)
        else:
            self.key = self.inputs = self.specs = None
            occ, last = _count(nodes)
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


def materialize(node: Node, local: bool = False, index: int | None = None):
    """The value of ``node``, computing whatever it depends on. ``local``: a tensor in this
    process is wanted (a value resident on a server is brought back, with the run that computes
    it when there is one). ``index``: the device of a node without a tensor spec (a generator
    state). Every call that runs or reads something is a sync point (syncs.py)."""
    value = node.value
    if value is not None:
        if local and value.__class__ is RemoteValue:
            t0 = perf_counter()
            conn = value.conn
            down = conn.bytes_down
            value = conn.fetch(value, node.spec)
            syncs.record(0, "read", 0, conn.bytes_down - down, perf_counter() - t0)
        elif not local and value.__class__ is torch.Tensor and _executor is not None and _executor.remote:
            # held in this process (an upload not yet used): materializing makes it resident there
            t0 = perf_counter()
            executor = _executor if not _others else get_executor(_device_of(node, index))
            with _lock:
                if node.value is value:
                    executor.put(node)
            syncs.record(0, "put", executor.last_up, 0, perf_counter() - t0)
        return value
    if not _lock.acquire(timeout=LOCK_TIMEOUT_S):
        raise TimeoutError(f"genie: waited {LOCK_TIMEOUT_S:.0f} s for another thread's materialization "
                           f"(set GENIE_MATERIALIZE_TIMEOUT_S to wait longer); {node!r} was not computed")
    fetched = None
    try:
        if node.value is None:
            t0 = perf_counter()
            executor = get_executor()
            if _others:  # several devices: this one's executor, after the inputs other devices hold
                here = _device_of(node, index)
                executor = get_executor(here)
                _run_other_devices(node, here)
                if node.value is not None:
                    return materialize(node, local, index)
            if not executor.remote and RemoteValue.live:
                _bring_back(node)  # values left on a server by an earlier remote block
            plan = Plan(node, getattr(executor, "replays", False))
            if local and executor.remote:
                plan.fetched = WANT_VALUE
            try:
                executor.execute(plan)
                fetched = plan.fetched
                n = len(plan.nodes)
            finally:
                plan.finish()
            syncs.record(n, getattr(executor, "last_mode", "interpreted"), getattr(executor, "last_up", 0),
                         getattr(executor, "last_down", 0), perf_counter() - t0)
    finally:
        _lock.release()
    if local and fetched is not None and fetched is not WANT_VALUE:
        return fetched
    return materialize(node, local, index) if local else node.value


def _device_of(node: Node, index: int | None) -> int:
    i = index_of(node)
    return i if i is not None else (index or 0)


def _run_other_devices(target: Node, index: int) -> None:
    """Materialize what ``target``'s device (``index``) reads from other devices (the sources of
    copies between devices), each on its own device, so the plan for ``target`` holds nodes of one
    device only and takes those values as inputs (the client moves them between servers)."""
    for n in _collect(target):
        i = index_of(n)
        if i is not None and i != index:
            continue
        for a in iter_inputs(n):
            j = index_of(a)
            # not yet computed, or held in this process (an upload): computed or put on its own device
            if j is not None and j != index and (a.value is None or a.value.__class__ is torch.Tensor):
                materialize(a)


def _bring_back(target: Node) -> None:
    """Before a local run: inputs whose values are resident on a server come back to this process."""
    for n in _collect(target):
        for a in iter_inputs(n):
            v = a.value
            if v.__class__ is RemoteValue:
                a.value = v.fetch() if a.spec.__class__ is TensorSpec else \
                    tuple(None if s is None else v.conn.fetch(v, s, k) for k, s in enumerate(a.spec))
            if a.rng.__class__ is RemoteValue:  # the generator state a random node left
                a.rng = a.rng.fetch()
