"""Compiled replay: each plan structure is compiled once into Python code and replayed.

Most programs materialize the same structure again and again (every training step, every decode
step, every request). A plan's fingerprint (``plan.Plan.key``) holds what decides the code
that runs: each node's op overload, which earlier node or input each argument comes from, the
argument structure, every atom that can change which kernel runs (dtypes, bools, strings, None,
devices), the annotations marker, and which nodes are kept. It leaves out what only flows through
the kernels: shapes, int and float arguments, size lists, the materialized inputs themselves.
Those are the program's inputs, so a KV cache that grows by one position, or a new batch size,
replays the same program.

A ``Program`` is generated source, one line per node, in the manner of ``torch.fx``'s
GraphModule code: ops are called straight from value slots, intermediates are deleted after their
last use, and kept values are stored on their nodes as they are produced (so a failure midway
leaves every node either executed or not). Nodes that need more than a kernel call (writes,
random ops, annotations, supplements) go through the executor's ``call``.

Layouts: the executor keeps every value laid out as its spec says, re-laying out a kernel's
output when it differs from what the meta kernel promised. Kernel output layouts are a function
of the input layouts and the op, so a program checks every output (``checked`` code) until a run
with the same specs has been checked (``verified``); later runs with those specs use the code
without checks. Spec objects are interned, so the test is one tuple hash.

Programs are cached by fingerprint in a bounded LRU (``ProgramCache``); a fingerprint is compiled
the second time it is seen (one-off plans are interpreted). ``genie.replay_stats()`` shows hits,
misses, compiles and compile time. ``Program.fingerprint`` is a 16-byte digest of a canonical text
of the key, computable anywhere the key is: a server can cache on it and check it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import OrderedDict

import torch

from ..graph.node import getitem, op_name
from ..ops.errors import op_error
from ..ops.schema import classify
from .plan import _TENSOR, EXT, LIST, canonical, parse, refs

_OpOverload = torch._ops.OpOverload
_counter = iter(range(1 << 62))
_aten = torch.ops.aten
_TB = torch._C.TensorBase

# Kernels called through their Python bindings rather than the boxed call (``OpOverload._op``,
# which converts every argument against the schema on each call): 1-3 us less per node, most of
# the cost of a view. Each binding resolves to exactly this overload for the arguments a captured
# node of it holds (a Python number given for a Tensor parameter becomes the same wrapped-number
# tensor eager's ``z + 1`` makes). tests/test_replay.py runs real programs with every binding
# checked against its overload (values, dtype, layout) on the very arguments it is called with.
_V = torch._C._VariableFunctions
_NN = torch._C._nn
BINDINGS = {
    _aten.add.Tensor: _TB.add, _aten.sub.Tensor: _TB.sub, _aten.mul.Tensor: _TB.mul, _aten.div.Tensor: _TB.div,
    _aten.view.default: _TB.view, _aten.t.default: _TB.t, _aten.transpose.int: _TB.transpose,
    _aten.permute.default: _TB.permute, _aten.expand.default: _TB.expand, _aten.unsqueeze.default: _TB.unsqueeze,
    _aten.squeeze.dim: _TB.squeeze, _aten.select.int: _TB.select,
    _aten.mm.default: _V.mm, _aten.bmm.default: _V.bmm, _aten.addmm.default: _V.addmm,
    _aten.relu.default: _V.relu, _aten.gelu.default: _NN.gelu, _aten.silu.default: _NN.silu,
    _aten.native_layer_norm.default: _V.native_layer_norm, _aten.embedding.default: _V.embedding,
    _aten._softmax.default: _V._softmax, _aten.convolution.default: _V.convolution, _aten.cat.default: _V.cat,
    _aten.clone.default: _V.clone, _aten.neg.default: _V.neg, _aten.exp.default: _V.exp,
    _aten.tanh.default: _V.tanh, _aten.sigmoid.default: _V.sigmoid, _aten.rsqrt.default: _V.rsqrt,
    _aten.pow.Tensor_Scalar: _V.pow, _aten.mean.dim: _V.mean, _aten.where.self: _V.where,
    _aten.native_batch_norm.default: _V.native_batch_norm,
    _aten.linear.default: _NN.linear, _aten.layer_norm.default: _V.layer_norm,
    _aten.split.Tensor: _V.split, _aten._transformer_encoder_layer_fwd.default: _V._transformer_encoder_layer_fwd,
    _aten._scaled_dot_product_flash_attention_for_cpu.default: _V._scaled_dot_product_flash_attention_for_cpu,
}


class _Emitter:
    """Turns argument items into source expressions, consuming input slots in plan order."""

    def __init__(self):
        self.slot = 0
        self.resolve: list[int] = []  # slots holding devices or tensors: resolved to the execution device

    def expr(self, item) -> str:
        c = item.__class__
        if c is int:
            return f"v{item}"
        if c is tuple and item and item[0] is LIST:
            return "[" + ", ".join(self.expr(x) for x in item[1:]) + "]"
        # EXT, int, float, INTS, a tensor constant, a baked atom: the next input slot
        s = self.slot
        self.slot += 1
        if item is _TENSOR or (c is tuple and item[0] is torch.device):
            self.resolve.append(s)
        return f"I[{s}]"


class Program:
    """One compiled plan structure. ``code`` is the generated source (readable, as fx's is)."""

    __slots__ = ("key", "code", "_checked", "_fast", "_filename", "_lines", "verified", "runs",
                 "_fingerprint", "nodes", "_resolve")

    def __init__(self, key, supplements=()):
        self.key = key
        self._fingerprint = None
        self.verified: set = set()
        self.runs = 0
        nodes, kept = parse(key)
        self.nodes = len(nodes)
        kept_set = set(kept)
        last: dict[int, int] = {}
        for i, (_, args, _) in enumerate(nodes):
            for _, item in args:
                for j in refs(item):
                    last[j] = i
        frees: dict[int, list] = {}
        for j, i in last.items():
            if j not in kept_set:
                frees.setdefault(i, []).append(j)
        glb = {}
        # per variant: the generated lines, and the node each line belongs to (for error reports)
        lines = {"fast": [], "checked": []}
        owner = {"fast": [None], "checked": [None]}  # line 1 is the header
        em = _Emitter()
        for i, (target, args, annotated) in enumerate(nodes):
            pos = [em.expr(item) for name, item in args if name is None]
            kw = [(name, em.expr(item)) for name, item in args if name is not None]
            if target is getitem:
                step = [f"v{i} = {pos[0]}[{pos[1]}]"]
                check = step
            elif isinstance(target, _OpOverload) and _is_kernel_call(target, annotated, supplements):
                f = f"F{i}"
                # the C++ overload itself (OpOverload.__call__ only forwards to it), or its binding
                glb[f] = BINDINGS.get(target) or target._op
                call = f"{f}(" + ", ".join(pos + [f"{k}={v}" for k, v in kw]) + ")"
                if _returns_list(target):  # split, unbind: the node's value is a tuple, as ``call`` makes it
                    call = f"tuple({call})"
                step = [f"v{i} = {call}"]
                check = step + [f"v{i} = C(N[{i}], v{i})"]
            else:
                kws = "{" + ", ".join(f"{k!r}: {v}" for k, v in kw) + "}"
                steal = _steal_mode(target, annotated, args, i, last, kept_set)
                extra = f", {steal}" if steal else ""
                step = [f"v{i} = G(N[{i}], [{', '.join(pos)}], {kws}{extra})"]
                check = step
            tail = []
            if i in kept_set:
                tail.append(f"N[{i}].value = v{i}")
            if i in frees:
                tail.append("del " + ", ".join(f"v{j}" for j in sorted(frees[i])))
            for variant, body in (("fast", step + tail), ("checked", check + tail)):
                lines[variant].extend(body)
                owner[variant].extend([i] * len(body))
        self._lines = owner
        self._resolve = tuple(em.resolve)
        self._filename = f"<genie-replay-{next(_counter)}>"
        srcs = {v: "def run(I, N, G, C):\n" + "".join(f"    {ln}\n" for ln in body) + "    return\n"
                for v, body in lines.items()}
        self.code = srcs["checked"]
        self._fast = _function(srcs["fast"], glb, self._filename + "fast")
        self._checked = _function(srcs["checked"], glb, self._filename + "checked")

    def run(self, plan, executor) -> None:
        specs = tuple(plan.specs)
        fast = specs in self.verified
        fn = self._fast if fast else self._checked
        inputs = plan.inputs
        for s in self._resolve:
            inputs[s] = executor._resolve1(inputs[s])
        relaid = executor.relaid
        try:
            fn(inputs, plan.nodes, executor.call, executor.conform)
        except Exception as e:
            raise self._error(e, plan, "fast" if fast else "checked") from e
        self.runs += 1
        if not fast and executor.relaid == relaid:  # every kernel laid its output out as captured
            if len(self.verified) >= 64:
                self.verified.clear()
            self.verified.add(specs)

    def forget(self) -> None:
        """Evicted: its source leaves the traceback cache too (a long process sees many structures)."""
        import linecache
        for variant in ("fast", "checked"):
            linecache.cache.pop(self._filename + variant, None)

    def _error(self, e, plan, variant):
        if getattr(e, "_genie_formatted", False):
            return e
        tb = e.__traceback__
        i = None
        suffix = self._filename + variant
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == suffix:
                i = self._node_at(variant, tb.tb_lineno)
            tb = tb.tb_next
        if i is None:
            return e
        node = plan.nodes[i]
        return op_error(node.target, e, f"genie: executing {op_name(node.target)} (node %{node.id}) failed")

    def _node_at(self, variant, lineno):
        owner = self._lines[variant]
        return owner[lineno - 1] if 0 < lineno <= len(owner) else None

    @property
    def fingerprint(self) -> str:
        """16-byte digest (hex) of the key's canonical text: the same on every process and machine."""
        if self._fingerprint is None:
            self._fingerprint = hashlib.blake2b(canonical(self.key).encode(), digest_size=16).hexdigest()
        return self._fingerprint


def _steal_mode(target, annotated, args, i, last, kept_set):
    """For an in-place op writing its first argument: 1 if that argument is a value of the plan
    that this node uses last and nothing keeps, 2 if it is a materialized input (the executor
    checks at run time whether anything else holds it), 0 otherwise (the write runs on a copy).
    A foreach op writing a list (``_foreach_mul_(exp_avgs, beta)``) gets a tuple: one mode per
    element, and 0 for a value that appears more than once among the node's arguments."""
    if annotated or not isinstance(target, _OpOverload):
        return 0
    oc = classify(target)
    if oc.random or not args or args[0][0] is not None:
        return 0
    first = args[0][1]
    if oc.simple_inplace:
        return _steal_one(first, i, last, kept_set)
    if oc.mutated != [(0, True)] or oc.returns or first.__class__ is not tuple or first[:1] != (LIST,):
        return 0
    uses: dict = {}
    for _, item in args:
        for j in refs(item):
            uses[j] = uses.get(j, 0) + 1
    modes = tuple(0 if x.__class__ is int and uses[x] > 1 else _steal_one(x, i, last, kept_set) for x in first[1:])
    return modes if any(modes) else 0


def _steal_one(item, i, last, kept_set) -> int:
    if item.__class__ is int:
        return 1 if item not in kept_set and last.get(item) == i else 0
    return 2 if item is EXT else 0


def _is_kernel_call(op, annotated: bool, supplements) -> bool:
    """Whether a node of ``op`` is just its kernel called on its arguments' values."""
    if annotated or op in supplements:
        return False
    oc = classify(op)
    if oc.random or oc.writes or oc.composite or oc.dynamic:
        return False
    return oc.plain or oc.single_view or oc.fresh_tuple or _returns_list(op)


def _returns_list(op) -> bool:
    """One ``Tensor[]`` return, fresh or views of the first argument (split, unbind, chunk)."""
    returns = op._schema.returns
    return len(returns) == 1 and isinstance(returns[0].type, torch.ListType) \
        and classify(op).returns in ([("view", 0)], [("fresh",)])


def _function(src: str, glb: dict, filename: str):
    import linecache
    code = compile(src, filename, "exec")
    # keep the source findable for tracebacks, as fx does for its generated modules
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    ns = dict(glb)
    exec(code, ns)
    return ns["run"]


class ProgramCache:
    """Compiled programs by fingerprint, least recently used first out."""

    def __init__(self, limit: int | None = None, after: int | None = None, node_limit: int | None = None):
        self.limit = limit if limit is not None else int(os.environ.get("GENIE_REPLAY_CACHE", "256"))
        # a compiled program keeps about 1 KB per node (its two code objects, their source for
        # tracebacks, the key): the programs' nodes together are bounded too, so that many large
        # structures hold about 100 MB, not 256 programs of up to 20,000 nodes each
        self.node_limit = node_limit if node_limit is not None else \
            int(os.environ.get("GENIE_REPLAY_CACHE_NODES", "100000"))
        self.nodes = 0  # nodes of the cached programs
        # compile a fingerprint the ``after``-th time it is seen (1: at once; the suites use that)
        self.after = max(1, after if after is not None else int(os.environ.get("GENIE_REPLAY_AFTER", "2")))
        self._programs: OrderedDict = OrderedDict()
        self._seen: OrderedDict = OrderedDict()  # hash of a fingerprint not compiled yet -> sightings
        self.reset_stats()

    def reset_stats(self) -> None:
        self.hits = self.misses = self.compiles = self.evictions = self.uncompiled = 0
        self.compile_s = 0.0

    def get(self, key, supplements=()):
        """The program for ``key``, compiled now if ``key`` has been seen often enough; None:
        interpret this run."""
        try:
            prog = self._programs.get(key)
        except TypeError:  # an unhashable atom in the arguments: nothing to cache on
            self.uncompiled += 1
            return None
        if prog is not None:
            self._programs.move_to_end(key)
            self.hits += 1
            return prog
        self.misses += 1
        if self.after > 1:
            h = hash(key)
            seen = self._seen.pop(h, 0) + 1
            if seen < self.after:
                self._seen[h] = seen
                if len(self._seen) > 4 * self.limit:
                    self._seen.popitem(last=False)
                return None
        t0 = time.perf_counter()
        prog = Program(key, supplements)
        self.compile_s += time.perf_counter() - t0
        self.compiles += 1
        self._programs[key] = prog
        self.nodes += prog.nodes
        # least recently used first out; the program just compiled stays (it runs now)
        while len(self._programs) > 1 and (len(self._programs) > self.limit or self.nodes > self.node_limit):
            _, old = self._programs.popitem(last=False)
            self.nodes -= old.nodes
            old.forget()
            self.evictions += 1
        return prog

    def clear(self) -> None:
        for prog in self._programs.values():
            prog.forget()
        self._programs.clear()
        self.nodes = 0
        self._seen.clear()

    def stats(self) -> dict:
        return {"enabled": True, "compile_after": self.after, "hits": self.hits, "misses": self.misses, "compiles": self.compiles,
                "compile_s": self.compile_s, "programs": len(self._programs), "limit": self.limit,
                "nodes": self.nodes, "node_limit": self.node_limit,
                "evictions": self.evictions, "uncompiled": self.uncompiled}


def replay_enabled() -> bool:
    return os.environ.get("GENIE_REPLAY", "1") != "0"

