"""Graph nodes: one captured op call each.

Invariants (stated once, relied on everywhere):
- A node's inputs are the ``Node`` objects embedded in ``args``/``kwargs`` (nested in lists for
  TensorList arguments) plus, for random ops, the previous link of the RNG chain in ``rng``.
- Node ids grow monotonically, so every input has a smaller id than its consumer: sorting by id
  is a topological order.
- ``value is None`` means "not executed (or dropped)". An executed node whose value is kept is
  *collapsed*: its inputs are released so the graph upstream can be freed; ``op`` and ``spec``
  stay for inspection. A node whose value was dropped keeps its inputs, so it can be recomputed.
- Values are never mutated after they are stored: in-place ops execute on a copy.
- ``runtime`` holds what execution must know beyond the call (grad mode, default dtype, reads of
  written memory) and is part of the plan fingerprint; ``ctx`` and ``notes`` hold meaning
  (module, phase, residency, user notes) and never change what runs.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import torch

_ids = itertools.count()

_EMPTY: dict = {}


class _Scope(threading.local):
    """The semantic context new nodes are captured in (a ``semantics.context.Context``, set by the
    module and phase hooks of genie/semantics; None while nothing sets one)."""
    ctx = None


scope = _Scope()


class _KeepStructure:
    """While ``depth`` > 0 (``genie.keep_structure()``), computed nodes keep their inputs and
    values computed eagerly (data-dependent ops) record theirs, so the whole captured program
    stays inspectable. Values upstream of kept nodes then stay alive until the nodes go."""
    depth = 0


keep_structure = _KeepStructure()


class TensorSpec:
    """Exact metadata of one tensor value: what a LazyTensor reports before anything runs.

    Specs are interned (one object per distinct metadata), so they compare and hash by
    identity; that keeps the capture cache key cheap to build and hash. ``index`` is the
    ``remote_accelerator`` device the value lives on (``remote_accelerator:index``): part of the
    metadata, so every signature the capture cache keys on names its device, and ops whose inputs
    sit on two devices are refused once per signature, as eager refuses them.
    """

    __slots__ = ("shape", "stride", "offset", "dtype", "storage_nbytes", "conj", "neg", "layout", "index",
                 "__weakref__")

    def __init__(self, shape, stride, offset, dtype, storage_nbytes, conj=False, neg=False, layout=torch.strided,
                 index=0):
        self.shape = shape
        self.stride = stride
        self.offset = offset
        self.dtype = dtype
        self.storage_nbytes = storage_nbytes
        # the lazy conjugate / negative view bits (``x.conj()`` on complex tensors)
        self.conj = conj
        self.neg = neg
        # strided, or a sparse layout (sparse values are always materialized: their structure is data)
        self.layout = layout
        self.index = index

    def __repr__(self) -> str:
        where = f", index={self.index}" if self.index else ""
        return (f"TensorSpec(shape={tuple(self.shape)}, stride={self.stride}, offset={self.offset}, "
                f"dtype={self.dtype}, storage_nbytes={self.storage_nbytes}{where})")


_spec_intern: dict[tuple, TensorSpec] = {}


def intern_spec(shape, stride, offset, dtype, storage_nbytes, conj=False, neg=False,
                layout=torch.strided, index=0) -> TensorSpec:
    key = (tuple(shape), tuple(stride), offset, dtype, storage_nbytes, conj, neg, layout, index)
    spec = _spec_intern.get(key)
    if spec is None:
        spec = _spec_intern.setdefault(
            key, TensorSpec(torch.Size(shape), tuple(stride), offset, dtype, storage_nbytes, conj, neg, layout, index))
    return spec


def on_index(spec, index: int):
    """``spec`` (or a tuple of specs, None kept) on device ``index``."""
    if spec is None:
        return None
    if spec.__class__ is tuple:
        return tuple(on_index(s, index) for s in spec)
    if spec.index == index:
        return spec
    return intern_spec(spec.shape, spec.stride, spec.offset, spec.dtype, spec.storage_nbytes, spec.conj, spec.neg,
                       spec.layout, index)


def index_of(node) -> int | None:
    """The device index of ``node``'s value (None for nodes without a tensor spec: seed nodes)."""
    spec = node.spec
    if spec.__class__ is tuple:
        spec = next((s for s in spec if s is not None), None)
        if spec.__class__ is tuple:
            spec = next((s for s in spec if s is not None), None)
    return None if spec is None else spec.index


class _NestedLayout:
    """The ``layout`` of a spec for a strided nested tensor (``t.is_nested``; its torch layout is
    ``torch.strided`` too). Like a sparse value, its structure is data: it is always materialized,
    and ops on it run on its value. Its LazyTensor reports the padded shape."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "nested"


NESTED = _NestedLayout()


def spec_of(t: torch.Tensor) -> TensorSpec:
    if t.is_nested and t.layout == torch.strided:
        sizes = t._nested_tensor_size()
        padded = (sizes.shape[0], *sizes.amax(0).tolist()) if sizes.numel() else (sizes.shape[0],)
        return intern_spec(padded, (), 0, t.dtype, 0, layout=NESTED)
    if t.layout != torch.strided:
        return intern_spec(t.shape, (), 0, t.dtype, 0, layout=t.layout)
    return intern_spec(t.shape, t.stride(), t.storage_offset(), t.dtype, t.untyped_storage().nbytes(),
                       t.is_conj(), t.is_neg())


_names: dict[Any, str] = {}


def op_name(op) -> str:
    """Normalized op name: ``aten::add`` for every overload of add."""
    name = _names.get(op)
    if name is None:
        schema = getattr(op, "_schema", None)
        if schema is not None:
            name = schema.name
        else:
            name = "genie::" + getattr(op, "__name__", str(op))
        _names[op] = name
    return name


class Node:
    """One captured call of ``target`` (an OpOverload, or a genie helper such as ``getitem``). ``spec`` is a TensorSpec, or a tuple of them (None for non-tensor
    outputs) for multi-output nodes, whose consumers go through ``getitem`` nodes."""

    __slots__ = ("target", "args", "kwargs", "spec", "value", "rng", "runtime", "ctx", "notes", "id")

    def __init__(self, target, args, kwargs, spec, value=None, rng=None):
        self.target = target
        self.args = args
        self.kwargs = kwargs
        self.spec = spec
        self.value = value
        self.rng = rng
        self.runtime = None
        self.ctx = scope.ctx
        self.notes = None
        self.id = next(_ids)

    @property
    def op(self) -> str:
        """Normalized op name, e.g. ``aten::add`` (``target`` is the OpOverload itself)."""
        return op_name(self.target)

    name = op

    @property
    def shape(self):
        spec = self.spec
        return spec.shape if isinstance(spec, TensorSpec) else tuple(s.shape if s else None for s in spec)

    @property
    def dtype(self):
        spec = self.spec
        return spec.dtype if isinstance(spec, TensorSpec) else tuple(s.dtype if s else None for s in spec)

    @property
    def inputs(self) -> list[Node]:
        return list(iter_inputs(self))

    @property
    def materialized(self) -> bool:
        return self.value is not None

    def note_runtime(self, key: str, value: Any) -> None:
        """Record state the kernel reads when it runs (part of the plan's fingerprint)."""
        if self.runtime is None:
            self.runtime = {}
        self.runtime[key] = value

    def annotate(self, key: str, value: Any) -> None:
        """Attach a semantic note (a scheduler's or a user's); it never changes what runs."""
        if self.notes is None:
            self.notes = {}
        self.notes[key] = value

    # -- semantics: typed accessors (genie/semantics fills ctx and notes)

    @property
    def module_path(self) -> str | None:
        """Qualified name of the nn.Module that issued the op (``encoder.layers.1.self_attn``; ``""``
        for the root module); None outside any module."""
        ctx = self.ctx
        return None if ctx is None else ctx.module

    @property
    def module_class(self) -> str | None:
        ctx = self.ctx
        return None if ctx is None else ctx.module_class

    @property
    def phase(self) -> str:
        """forward, backward, optimizer; prefill or decode for the forward of a generative model."""
        notes = self.notes
        if notes is not None and "phase" in notes:
            return notes["phase"]  # set by the graph heuristic of semantics.analyze
        ctx = self.ctx
        return "forward" if ctx is None else ctx.phase

    @property
    def phase_source(self) -> str:
        """Where the phase came from: explicit (``genie.phase``), call (autograd, optimizer.step, a KV
        cache passed to the forward), heuristic (graph shape), or default."""
        notes = self.notes
        if notes is not None and "phase_source" in notes:
            return notes["phase_source"]
        ctx = self.ctx
        return "default" if ctx is None else ctx.phase_source

    @property
    def residency(self) -> str:
        """weight, kv_cache, gradient, optimizer_state or activation: a mark set by semantics (context.py marks
        parameters, buffers, KV caches, gradients and optimizer state; analysis.py marks grown caches),
        else by phase (backward values are gradients, optimizer-step values optimizer state)."""
        notes = self.notes
        if notes is not None:
            mark = notes.get("residency")
            if mark is not None:
                return mark
        return _RESIDENCY_BY_PHASE.get(self.phase, "activation")

    @property
    def annotations(self) -> dict:
        """Everything known about this node: module, phase (and its source), residency, user notes,
        and the runtime state execution reads. A fresh dict: write with ``annotate``."""
        out = dict(self.runtime) if self.runtime else {}
        ctx = self.ctx
        if ctx is not None:
            out["module"] = ctx.module
            out["module_class"] = ctx.module_class
            out["phase"] = self.phase
            out["phase_source"] = self.phase_source
        out["residency"] = self.residency
        if self.notes:
            out.update(self.notes)
        return out

    def __repr__(self) -> str:
        return f"<Node %{self.id} {self.name} {getattr(self.spec, 'shape', '')}>"


_RESIDENCY_BY_PHASE = {"backward": "gradient", "optimizer": "optimizer_state"}


def iter_inputs(node: Node):
    """Yield the distinct input nodes of ``node`` (args, kwargs, and the RNG chain link)."""
    seen = set()
    stack = [node.args, tuple(node.kwargs.values()) if node.kwargs else ()]
    rng = node.rng
    if isinstance(rng, Node):
        stack.append((rng,))
    while stack:
        for a in stack.pop():
            if isinstance(a, Node):
                if id(a) not in seen:
                    seen.add(id(a))
                    yield a
            elif isinstance(a, (list, tuple)):
                stack.append(a)


def getitem(parent_value, index):
    """The op of a ``getitem`` node: one output of a multi-output node."""
    return parent_value[index]


_names[getitem] = "genie::getitem"
