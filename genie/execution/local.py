"""Execution in this process, on the CPU or a CUDA device.

Invariant kept for every node: its value has exactly the node's spec (shape, dtype, strides,
storage offset) in a storage of at least ``spec.storage_nbytes``. Alias re-derivation
(``as_strided`` from a storage root) depends on it, so a kernel whose output strides differ
from what the meta kernel promised is re-laid-out here, never passed on.
"""

from __future__ import annotations

import contextlib
import sys

import torch

from .. import _torch
from .._torch import eager_kernels
from ..graph.node import Node, TensorSpec, getitem, intern_spec, op_name
from ..ops.errors import op_error
from ..ops.rng_links import SPENT, seed_state
from ..ops.schema import classify, get_arg
from .base import Executor
from .replay import ProgramCache, replay_enabled


def clone_exact(v: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """A copy of ``v`` (same logical values) laid out exactly as ``spec`` says, in a storage of
    its own, carrying the spec's lazy conjugate/negative bits.

    Where it can, the whole storage behind ``v`` is copied, not just ``v``'s elements: an
    in-place op on the copy then leaves the complete new state of the storage behind it, which
    is how a write through a view becomes the storage's new root (see dispatch._mutate), and it
    also works for views that overlap themselves (expand), which an elementwise copy cannot fill.
    """
    if v.dtype == spec.dtype and _covers_storage(spec):
        # the value is its whole storage, densely: a copy of its elements is a copy of the storage
        out = torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype, device=v.device)
        out.copy_(v)
        return out
    itemsize = spec.dtype.itemsize
    n = (spec.storage_nbytes + itemsize - 1) // itemsize
    buf = torch.empty(n, dtype=spec.dtype, device=v.device)
    same_bits = v.is_conj() == spec.conj and v.is_neg() == spec.neg
    if same_bits and v.dtype == spec.dtype and v.stride() == spec.stride and v.storage_offset() == spec.offset \
            and v.untyped_storage().nbytes() >= spec.storage_nbytes:  # same layout: the raw storage is the value
        if spec.storage_nbytes % itemsize:
            # a storage a narrower dtype's view grew (an int8 view resized to 33 bytes under a
            # float64): copy its bytes
            nbytes = spec.storage_nbytes
            buf = torch.empty(nbytes, dtype=torch.uint8, device=v.device)
            buf.copy_(torch.empty(0, dtype=torch.uint8, device=v.device).set_(v.untyped_storage(), 0, (nbytes,), (1,)))
        else:
            raw = v.as_strided((n,), (1,), 0)
            raw = raw.conj() if v.is_conj() else raw  # logical value of the raw memory
            raw = raw.neg() if v.is_neg() else raw
            buf.copy_(raw)
        # set_, not as_strided: a view would keep ``buf`` alive as its base, and the buffer would
        # look shared to the in-place buffer reuse (``_stealable``) forever after
        out = torch.empty(0, dtype=spec.dtype, device=v.device).set_(buf.untyped_storage(), spec.offset,
                                                                      spec.shape, spec.stride)
    else:
        out = buf.as_strided(spec.shape, spec.stride, spec.offset)
        # copy_ copies logical values; a bit set afterwards flips them once more, so pre-flip
        src = v.conj() if spec.conj else v
        src = src.neg() if spec.neg else src
        out.copy_(src)
    if spec.conj:
        _torch.set_conj(out, True)
    if spec.neg:
        _torch.set_neg(out, True)
    return out


_non_overlapping_and_dense = torch._prims_common._is_non_overlapping_and_dense_or_false
_covering: dict = {}  # spec -> _covers_storage(spec) (specs are interned and never freed)


def _covers_storage(spec: TensorSpec) -> bool:
    """Does a value laid out as ``spec`` cover its whole storage, each byte once (a plain strided
    tensor, no lazy bits, at offset 0, non-overlapping and dense, in a storage of exactly its
    elements)? Then ``empty_strided`` gives a storage of exactly ``spec.storage_nbytes``."""
    covers = _covering.get(spec)
    if covers is None:
        covers = False
        if spec.layout == torch.strided and not (spec.conj or spec.neg) and spec.offset == 0:
            numel = spec.shape.numel()
            covers = bool(numel) and numel * spec.dtype.itemsize == spec.storage_nbytes \
                and _non_overlapping_and_dense(spec.shape, spec.stride)
        _covering[spec] = covers
    return covers


_NO_ANNOTATIONS: dict = {}
_NULL = contextlib.nullcontext()


def _histc_integer(x, bins=100, min=0, max=0):
    """``histc`` of an integer tensor, which CUDA computes and CPU refuses ("histogram_cpu not
    implemented for 'Int'"). Libraries take that branch on any non-CPU device (transformers' MoE
    routing counts tokens per expert so), so the device offers it on CPU execution too: counts of
    integers are exact in float64, and the result has the input's dtype, as on CUDA."""
    return torch.histc(x.double(), bins, min, max).to(x.dtype)


# Kernels an accelerator has that the CPU lacks, for CPU execution: (op, applies?) -> replacement
_CPU_SUPPLEMENTS = {
    torch.ops.aten.histc.default: (lambda x, *a, **k: not (x.is_floating_point() or x.is_complex()), _histc_integer),
}


class LocalExecutor(Executor):
    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        # outputs a kernel laid out otherwise than capture inferred (and _conform re-laid): a
        # compiled program whose checked run re-laid any is not verified, since its fast variant
        # skips the re-laying (a meta kernel's strides for a size-1 dimension differ from the CPU
        # kernel's, and a later kernel's memory-format heuristic reads them)
        self.relaid = 0
        self._generator = torch.cuda.default_generators[self.device.index] if self.device.type == "cuda" \
            else torch.default_generator
        self._supplements = _CPU_SUPPLEMENTS if self.device.type == "cpu" else {}
        self.replays = replay_enabled()
        self.programs = ProgramCache()
        self.steals = 0  # in-place writes that reused their input's buffer instead of a copy
        self.last_mode = "interpreted"  # how the last plan ran: interpreted, compiled or replayed (syncs.py)

    def execute(self, plan) -> None:
        with eager_kernels():
            key = plan.key
            if key is not None:
                programs = self.programs
                compiles = programs.compiles
                program = programs.get(key, self._supplements)
                if program is not None:
                    self.last_mode = "compiled" if programs.compiles != compiles else "replayed"
                    program.run(plan, self)
                    return
            self.last_mode = "interpreted"
            self.interpret(plan)

    def adopt(self, src: torch.Tensor):
        with eager_kernels():
            out = torch.empty_strided(src.shape, src.stride(), dtype=src.dtype, device=self.device)
            out.copy_(src)
        return out

    def run_node(self, node: Node):
        op = node.target
        if op is getitem:
            parent, index = node.args
            return parent.value[index]
        args = self._resolve(node.args)
        kwargs = {k: self._resolve1(v) for k, v in node.kwargs.items()} if node.kwargs else {}
        return self.call(node, args, kwargs)

    def call(self, node: Node, args, kwargs, steal=0):
        """Run ``node`` on its arguments' values (resolved to this device) and return its value,
        laid out as its spec says. Errors name the op and the node, with eager's exception type.

        ``steal`` (compiled programs, in-place ops writing their first argument): 1 when that
        argument is a value of the plan this node is the last to use, 2 when it is a materialized
        input (a tuple of those for a foreach op's written list); the write then goes to that
        value's own buffer instead of a copy where nothing else can see the buffer (see ``_stealable``)."""
        op = node.target
        if op is seed_state:
            gen = torch.Generator(device=self.device)
            gen.manual_seed(node.args[0])
            node.rng = gen.get_state()
            return True
        oc = classify(op)
        listed = False
        if oc.writes:
            if oc.list_inplace and node.runtime is None and node.args and node.spec.__class__ is tuple \
                    and op not in self._supplements:
                args, written = self._prepare_list_write(node, oc, args, steal)
                listed = True
            else:
                args, kwargs, written, laid_out = self._prepare_writes(node, oc, args, kwargs, steal)
        try:
            if oc.random:
                out = self._run_random(node, op, args, kwargs)
            elif op in self._supplements and self._supplements[op][0](*args, **kwargs):
                out = self._supplements[op][1](*args, **kwargs)
            elif node.runtime is not None:
                out = self._run_annotated(node, oc, op, args, kwargs)
            else:
                out = op(*args, **kwargs)
        except Exception as e:
            # the kernel's own exception type, as eager raises it, with the op and node named
            err = op_error(op, e, f"genie: executing {op_name(op)} (node %{node.id}) failed")
            err._genie_formatted = True
            raise err from e
        spec = node.spec
        if listed:
            # each written tensor keeps its source's layout (a copy is laid out as the source's spec,
            # a reused buffer has it by the invariant): checked by identity of the interned specs
            srcs = node.args[0]
            return tuple(v if s.__class__ is Node and s.spec is sp else self._conform(node, v, sp)
                         for v, s, sp in zip(written, srcs, spec))
        if oc.writes:
            flat = written + _flatten_returns(out, oc, keep_alias=False)
            # a written value already laid out as its output spec needs no check (an optimizer's
            # foreach ops write dozens of tensors per call)
            n = len(laid_out)
            if spec.__class__ is TensorSpec:
                return flat[0] if n and laid_out[0] is spec else self._conform(node, flat[0], spec)
            return tuple(v if k < n and laid_out[k] is s else self._conform(node, v, s)
                         for k, (v, s) in enumerate(zip(flat, spec)))
        flat = _flatten_returns(out, oc, keep_alias=True)
        if spec.__class__ is TensorSpec:
            return self._conform(node, flat[0], spec)
        return tuple(self._conform(node, v, s) for v, s in zip(flat, spec))

    def conform(self, node: Node, out):
        """A kernel call's output laid out as ``node``'s spec says (for compiled programs)."""
        spec = node.spec
        if spec.__class__ is TensorSpec:
            return self._conform(node, out, spec)
        return tuple(self._conform(node, v, s) for v, s in zip(out, spec))

    def _run_annotated(self, node, oc, op, args, kwargs):
        """Kernels that read thread state at run time get the state of the call they stand for."""
        ann = node.runtime
        default_dtype = ann.get("default_dtype")
        saved = torch.get_default_dtype()
        if default_dtype is not None:
            torch.set_default_dtype(default_dtype)
        try:
            with torch.set_grad_enabled(ann.get("grad_enabled", False)) if oc.grad_mode else _NULL:
                return op(*args, **kwargs)
        finally:
            if default_dtype is not None:
                torch.set_default_dtype(saved)

    def _run_random(self, node, op, args, kwargs):
        prev = node.rng
        state = prev.rng
        if state.__class__ is not torch.Tensor:
            raise RuntimeError(f"genie: {op_name(node.target)} (node %{node.id}): the generator state it starts "
                               "from is gone (a random value was dropped and then needed again)")
        gen = self._generator
        saved = gen.get_state()
        gen.set_state(state)
        try:
            out = op(*args, **kwargs)
            node.rng = gen.get_state()
        finally:
            gen.set_state(saved)
        prev.rng = SPENT  # only this link started from that state (the chain is a line)
        return out

    def _prepare_list_write(self, node, oc, args, steal):
        """``_prepare_writes`` for an op writing the tensors of its first argument, a list, with no
        annotations (``oc.list_inplace``, ``node.runtime`` None: no written memory is shared or read
        elsewhere in the call): the arguments with that list replaced by the buffers the writes go to,
        and those buffers. An optimizer step is a few of these over every parameter, every step."""
        srcs = node.args[0]
        values = args[0]
        modes = steal if steal.__class__ is tuple else ()
        n_modes = len(modes)
        written = []
        for k in range(len(values)):
            # indexed, not zipped: a zip's reused result tuple would hold one more reference to
            # each node than _stealable's count allows
            v, s = values[k], srcs[k]
            if k < n_modes and modes[k] and _stealable(modes[k], s, v):
                self.steals += 1
            else:
                v = self._writable(v, s, oc)
            written.append(v)
        args = list(args)
        args[0] = written
        return args, written

    def _prepare_writes(self, node, oc, args, kwargs, steal=0):
        """The arguments with each written tensor replaced by the buffer the write goes to (a copy,
        or the value itself where ``steal`` allows), those buffers in flattened order, and per
        buffer the spec it is known to keep through the kernel (else None). That spec is its
        source's: ``clone_exact`` copies into the source spec's layout, and a value left stealable
        has it by the executor's invariant. An in-place op writing its own first argument keeps
        that layout, unless it is an in-place view op (``squeeze_``, ``resize_``), and an out=
        argument may be resized, so only the former are known."""
        args = list(args)
        written = []
        laid_out = []
        ann = node.runtime or _NO_ANNOTATIONS
        # written tensors sharing memory with an earlier one of this call write into its buffer
        # (capture.written_memory): flattened index -> the earlier one's index
        shared = dict(ann.get("shared_writes", ()))
        sizes = _buffer_sizes(node, oc, ann, shared) if ann is not _NO_ANNOTATIONS else None
        for where, is_list in oc.mutated:
            value = get_arg(args, kwargs, where, node.target)
            if value is None:
                continue
            src = get_arg(node.args, node.kwargs, where, node.target)
            if is_list:
                # a foreach op's per-element modes; indexed, not zipped: a zip's reused result tuple
                # would hold one more reference to each node than _stealable's count allows
                modes = steal if steal.__class__ is tuple and where == 0 else ()
                new = []
                base = len(written)
                for k in range(len(value)):
                    v, s = value[k], src[k]
                    g = shared.get(base + k) if shared else None
                    if g is not None:
                        v = _alias(written[g] if g < base else new[g - base], _spec_of_input(s, v))
                    elif k < len(modes) and modes[k] and _stealable(modes[k], s, v):
                        self.steals += 1
                    else:
                        v = self._writable(v, s, oc, sizes.get(base + k) if sizes else None)
                    new.append(v)
                written.extend(new)
                keeps = where == 0 and not oc.inplace_view
                laid_out.extend(_source_spec(s) if keeps else None for s in src)
            else:
                g = shared.get(len(written)) if shared else None
                if g is not None:
                    new = _alias(written[g], _spec_of_input(src, value))
                elif steal and where == 0 and _stealable(steal, src, value):
                    new = value
                    self.steals += 1
                else:
                    new = self._writable(value, src, oc, sizes.get(len(written)) if sizes else None)
                written.append(new)
                laid_out.append(_source_spec(src) if where == 0 and not oc.inplace_view else None)
            if isinstance(where, str):
                kwargs[where] = new
            else:
                args[where] = new
        for where, i, spec in ann.get("reads_written", ()):
            # an input sharing memory with a written tensor reads the memory being written, as in eager
            if isinstance(where, str):
                kwargs[where] = _alias(written[i], spec)
            else:
                args[where] = _alias(written[i], spec)
        for where, k, i, spec in ann.get("reads_written_items", ()):
            # the same for one tensor of a list argument (a foreach op reading what it writes)
            seq = list(kwargs[where] if isinstance(where, str) else args[where])
            seq[k] = _alias(written[i], spec)
            if isinstance(where, str):
                kwargs[where] = seq
            else:
                args[where] = seq
        return args, kwargs, written, laid_out

    def _writable(self, value, src, oc, nbytes=None):
        """The copy a write goes to; ``nbytes``: the size its storage must have, when views larger
        than the written one alias into it (``_buffer_sizes``)."""
        if oc.inplace_view:
            if not value.untyped_storage().resizable():
                # memory received over the wire (a server's uploads) cannot grow: resize_ gets a copy
                value = clone_exact(value, _spec_of_input(src, value))
            return value.as_strided(value.shape, value.stride(), value.storage_offset())
        spec = _spec_of_input(src, value)
        if nbytes is not None and nbytes > spec.storage_nbytes:
            spec = intern_spec(spec.shape, spec.stride, spec.offset, spec.dtype, nbytes, spec.conj, spec.neg,
                               spec.layout, spec.index)
        return clone_exact(value, spec)

    def _conform(self, node, value, spec):
        if spec is None or value is None:
            return value
        if value.dtype != spec.dtype or value.shape != spec.shape:
            raise RuntimeError(
                f"genie: {op_name(node.target)} (node %{node.id}) produced {tuple(value.shape)} {value.dtype}, but "
                f"capture inferred {tuple(spec.shape)} {spec.dtype}")
        if value.stride() != spec.stride or value.storage_offset() != spec.offset or \
                value.is_conj() != spec.conj or value.is_neg() != spec.neg:
            value = clone_exact(value, spec)
            self.relaid += 1
        return value

    def _resolve(self, args):
        return [self._resolve1(a) for a in args]

    def _resolve1(self, a):
        c = a.__class__
        if c is Node:
            return a.value
        if c is tuple or c is list:
            return [self._resolve1(x) for x in a]
        if c is torch.device:
            return self.device if a.type == "remote_accelerator" else a
        if isinstance(a, torch.Tensor) and a.device != self.device and a.dim() > 0:
            return a.to(self.device)
        return a


_use_count = _torch.storage_use_count
_getrefcount = sys.getrefcount
# exact reference counts: CPython before 3.14, with the GIL (3.14 documents that getrefcount may
# under-report; free-threaded builds defer reference counting)
_REFCOUNTS_EXACT = sys.implementation.name == "cpython" and sys.version_info < (3, 14) and \
    getattr(sys, "_is_gil_enabled", lambda: True)()


def _stealable(steal: int, src, value) -> bool:
    """May an in-place write go to ``value``'s own buffer (the value of node ``src``)?

    Values are never mutated once stored, so writes run on a copy, unless nobody can observe the
    old value again: the node holding it is referenced by the writing node alone (a materialized
    input: its refcount; a value of the plan: the program saw this node is its last user and that
    it is not kept), no other tensor shares the buffer (the storage's use count: views of it alive
    anywhere count), and the buffer is laid out as the copy would be. Optimizer steps write every
    state tensor in place: without this, each write copied the tensor first."""
    if src.__class__ is not Node or src.spec.__class__ is not TensorSpec:
        return False
    # references to an input node: the writing node's args, this frame's and the caller's locals, getrefcount's.
    # This assumes sys.getrefcount counts every reference; where it may under-report (CPython 3.14
    # documents borrowed references it can omit, and free-threaded builds defer counts), an
    # under-report would let a write go to a buffer someone still reads: such interpreters never steal
    # an input's buffer (they copy, as any write does without stealing).
    if steal == 2 and (not _REFCOUNTS_EXACT or _getrefcount(src) > 4):
        return False
    spec = src.spec
    if value.dtype != spec.dtype or value.stride() != spec.stride or value.storage_offset() != spec.offset \
            or value.is_conj() or value.is_neg() or spec.conj or spec.neg:
        return False
    storage = value.untyped_storage()
    # the use count sees this storage object and the value's own TensorImpl: anything more is an alias
    return _use_count(storage._cdata) <= 2 and storage.nbytes() >= spec.storage_nbytes


def _buffer_sizes(node, oc, ann, shared) -> dict | None:
    """Per written tensor whose copy other views alias into (``shared_writes``, ``reads_written``,
    ``reads_written_items``): the largest storage size among them. Views made before a ``resize_``
    grew the storage have a smaller one than views made after, and the copy must hold them all."""
    reads = ann.get("reads_written", ())
    items = ann.get("reads_written_items", ())
    if not (shared or reads or items):
        return None
    sources = []  # the written arguments' nodes, in the flattened order of ``written``
    for where, is_list in oc.mutated:
        src = get_arg(node.args, node.kwargs, where, node.target)
        if src is not None:
            sources.extend(src if is_list else (src,))
    sizes: dict = {}
    for i, g in shared.items():
        spec = _source_spec(sources[i]) if i < len(sources) else None
        if spec is not None and spec.storage_nbytes > sizes.get(g, 0):
            sizes[g] = spec.storage_nbytes
    for entry in tuple(reads) + tuple(items):
        i, spec = entry[-2], entry[-1]
        if spec.storage_nbytes > sizes.get(i, 0):
            sizes[i] = spec.storage_nbytes
    return sizes


def _alias(buffer: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """A tensor laid out as ``spec`` over ``buffer``'s storage (the memory a call writes)."""
    out = torch.empty(0, dtype=spec.dtype, device=buffer.device)
    out.set_(buffer.untyped_storage(), spec.offset, spec.shape, spec.stride)
    return out


def _source_spec(src):
    """The tensor spec of a written argument's source node (None when it is not one)."""
    if src.__class__ is Node:
        spec = src.spec
        if spec.__class__ is TensorSpec:
            return spec
    return None


def _spec_of_input(src, value):
    """The written argument's spec: its source node's, else the value's own layout."""
    spec = _source_spec(src)
    if spec is not None:
        return spec
    from ..graph.node import spec_of
    return spec_of(value)


def _flatten_returns(out, oc, keep_alias):
    returns = oc.returns
    if not returns:
        return []
    outs = out if len(returns) > 1 else (out,)
    flat = []
    for r, o in zip(returns, outs):
        if r[0] == "alias" and not keep_alias:
            continue
        if isinstance(o, (list, tuple)):
            flat.extend(o)
        else:
            flat.append(o)
    return flat
