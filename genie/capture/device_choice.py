"""Composite ops that choose their kernels by device type, run as the execution device chooses.

Some CompositeImplicitAutograd ops look at the device type of their inputs before picking what
to call: ``scaled_dot_product_attention`` asks a per-device dispatch stub which fused kernel to
use (a Python backend cannot register one, so on a PrivateUse1 device it always takes the math
path), the RNNs call ``_thnn_fused_lstm_cell`` / ``_thnn_fused_gru_cell`` for PrivateUse1
(CUDA-only kernels) where CPU takes mkldnn or its own cell loop, and ``dropout`` takes the fused
``native_dropout`` where CPU draws ``bernoulli_`` on a mask laid out like the input. Decomposed on a LazyTensor,
those ops would compute something eager on the execution device never computes.

So these ops get a kernel of their own, at the device's autograd key (and on the capture path,
for calls that skip autograd): the composite is traced once per signature with ``make_fx`` on
fake tensors *of the execution device* (same shapes, strides, dtypes, requires_grad, grad mode),
which makes exactly the choices eager makes there, and the traced aten program is replayed on
the LazyTensors. Replayed ops go through autograd as eager's do, so backward is eager's too.
Non-tensor arguments and host tensors (an RNN's ``batch_sizes``) are part of the signature and
baked into the trace.
"""

from __future__ import annotations

import threading

import torch
from torch._subclasses.fake_tensor import FakeTensorMode, UnsupportedOperatorException
from torch.fx.experimental.proxy_tensor import make_fx

from .. import _torch
from ..ops.schema import WHOLE_WITHOUT_GRAD, execution_has_kernel

aten = torch.ops.aten
LazyTensor = None  # bound by lazy_tensor.py


def _ops():
    names = [
        ("scaled_dot_product_attention", "default"),
        ("lstm", "input"), ("lstm", "data"), ("gru", "input"), ("gru", "data"),
        ("rnn_tanh", "input"), ("rnn_tanh", "data"), ("rnn_relu", "input"), ("rnn_relu", "data"),
        ("lstm_cell", "default"), ("gru_cell", "default"),
        # dropout takes the fused native_dropout on CUDA and PrivateUse1 and bernoulli_ on a mask laid
        # out like the input on CPU: for a channels-last input the two draw different masks
        ("dropout", "default"),
    ]
    for packet, overload in names:
        op = getattr(getattr(aten, packet, None), overload, None)
        if op is not None:
            yield op


OPS = tuple(_ops())

_traces: dict = {}
_TRACE_LIMIT = 4096
_lock = threading.Lock()


class _Trace:
    """One traced program: the GraphModule, which flat argument positions are its inputs, and
    how to rebuild the op's (possibly nested) result from the program's flat outputs."""
    __slots__ = ("gm", "lazy_positions", "out_shape", "lowered")

    def __init__(self, gm, lazy_positions, out_shape, lowered=()):
        self.gm = gm
        self.lazy_positions = lazy_positions
        self.out_shape = out_shape
        self.lowered = lowered  # flat positions the trace casts to the autocast dtype (autocast only)


def _flatten(args, flat, shape):
    """Flatten arguments (tensors, lists of tensors, constants) into ``flat``; ``shape`` records
    the nesting so that the arguments can be rebuilt."""
    for a in args:
        if isinstance(a, (list, tuple)):
            shape.append(("seq", type(a), len(a)))
            _flatten(a, flat, shape)
        else:
            shape.append(("leaf",))
            flat.append(a)


def _rebuild(shape, flat, n_top):
    it_flat = iter(flat)
    it_shape = iter(shape)

    def take(n):
        out = []
        for _ in range(n):
            s = next(it_shape)
            out.append(s[1](take(s[2])) if s[0] == "seq" else next(it_flat))
        return out

    return take(n_top)


def _signature(func, flat, shape, names, index):
    key = [func, torch.is_grad_enabled(), tuple(shape), names, index]
    for a in flat:
        if isinstance(a, LazyTensor):
            # the spec (interned: shape, strides, offset, dtype, conj and neg bits, device) hashes fast
            key.append(("lazy", a._spec, a.requires_grad))
        elif isinstance(a, torch.Tensor):
            key.append(("host", a.device, a.dtype, tuple(a.shape), tuple(a.reshape(-1).tolist())))
        else:
            key.append((a.__class__, a))
    return tuple(key)


def _fake_like(t, device):
    n = t.untyped_storage().nbytes() // t.dtype.itemsize if t.dtype.itemsize else 0
    n = max(n, t.storage_offset() + 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()) if s > 0))
    base = torch.empty(n, dtype=t.dtype, device=device)
    out = base.as_strided(t.shape, t.stride(), t.storage_offset()).detach()
    return out.requires_grad_(t.requires_grad) if t.requires_grad else out


def _retarget_devices(gm, device, remote) -> None:
    """Factory calls in the trace name the execution device; on replay they create on the device."""
    def fix(a):
        if isinstance(a, torch.device) and a.type == device.type:
            return remote
        if isinstance(a, (list, tuple)):
            return type(a)(fix(x) for x in a)
        return a
    for node in gm.graph.nodes:
        node.args = fix(node.args)
        node.kwargs = {k: fix(v) for k, v in node.kwargs.items()}


def _trace(func, flat, shape, n_args, names, device, remote, autocast_dtype=None):
    lazy_positions = [i for i, a in enumerate(flat) if isinstance(a, LazyTensor)]
    out_shape = []
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fakes = [_fake_like(flat[i], device) for i in lazy_positions]

    def program(*tensors):
        leaves = list(flat)
        for i, t in zip(lazy_positions, tensors):
            leaves[i] = t
        top = _rebuild(shape, leaves, n_args + len(names))
        if autocast_dtype is None:
            out = func(*top[:n_args], **dict(zip(names, top[n_args:])))
        else:  # the execution device's autocast casts the inputs; the trace records the casts
            with torch.autocast(device.type, dtype=autocast_dtype, cache_enabled=False):
                out = func(*top[:n_args], **dict(zip(names, top[n_args:])))
        seq = isinstance(out, (list, tuple))
        out_shape[:] = [seq, type(out) if seq else None]
        return list(out) if seq else [out]

    with mode:
        gm = make_fx(program, tracing_mode="real")(*fakes)
    gm.graph.eliminate_dead_code()
    _retarget_devices(gm, device, remote)
    gm.recompile()
    lowered = ()
    if autocast_dtype is not None:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        lowered = frozenset(pos for pos, ph in zip(lazy_positions, placeholders)
                            if any(_casts_to(user, autocast_dtype) for user in ph.users))
    return _Trace(gm, lazy_positions, tuple(out_shape), lowered)


def _casts_to(node, dtype) -> bool:
    return node.op == "call_function" and node.target in (aten._to_copy.default, aten.to.dtype) and \
        (node.kwargs.get("dtype") == dtype or dtype in node.args[1:])


_TRACE_TIMEOUT_S = 600.0


def _isolated(trace, *args):
    """``trace(*args)`` on a thread of its own, under the caller's grad mode and nothing else of
    its thread-local state. The trace runs autograd on fake tensors, and whatever watches the
    caller's thread would see it: ``torch.utils.checkpoint`` counts the tensors autograd saves
    (saved-tensor hooks) and logs the ops (dispatch modes), so a trace made in a checkpointed
    forward and reused by its recomputation made the two disagree ("a different number of
    tensors was saved"). Traces are cached per signature, so this costs one thread per trace."""
    grad = torch.is_grad_enabled()
    outcome: list = []

    def body():
        try:
            with torch.set_grad_enabled(grad):
                outcome.append((True, trace(*args)))
        except BaseException as e:  # re-raised on the caller's thread
            outcome.append((False, e))

    worker = threading.Thread(target=body, name="genie-device-choice-trace", daemon=True)
    worker.start()
    worker.join(_TRACE_TIMEOUT_S)
    if not outcome:
        raise RuntimeError(f"genie: tracing {args[0]} for the execution device did not finish in "
                           f"{_TRACE_TIMEOUT_S:.0f} s")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def run(func, args, kwargs):
    """``func(*args, **kwargs)`` on LazyTensors, as eager on the execution device would run it."""
    call = Call(func, args, kwargs)
    if not any(isinstance(a, LazyTensor) for a in call.flat):
        # no LazyTensor: a tracer's tensors at this key (torch.export's fake tensors of the device)
        return func.decompose(*args, **kwargs)
    try:
        trace = call.trace()
    except UnsupportedOperatorException:
        # the fake kernels cannot trace it: the op's own decomposition, on the device
        return func.decompose(*args, **kwargs)
    return call.replay(trace)


class Call:
    """One call of an op on LazyTensors, flattened: its trace for the execution device (looked up
    or made), and the replay of that trace on the call's tensors. ``autocast_dtype``: traced under
    the execution device's autocast to that dtype."""

    __slots__ = ("func", "n_args", "names", "flat", "shape", "autocast_dtype")

    def __init__(self, func, args, kwargs, autocast_dtype=None):
        self.func, self.n_args, self.names, self.autocast_dtype = func, len(args), tuple(kwargs), autocast_dtype
        self.flat: list = []
        self.shape: list = []
        _flatten(tuple(args) + tuple(kwargs.values()), self.flat, self.shape)

    def with_leaves(self, flat) -> Call:
        """The same call with other leaves (same structure)."""
        top = _rebuild(self.shape, flat, self.n_args + len(self.names))
        return Call(self.func, top[:self.n_args], dict(zip(self.names, top[self.n_args:])), self.autocast_dtype)

    def trace(self) -> _Trace:
        from .. import config
        from . import dispatch

        func, flat = self.func, self.flat
        # the device the trace's factories create on: the inputs' (a mixed call fails inside the trace)
        index = next((a._spec.index for a in flat if isinstance(a, LazyTensor)), 0)
        key = _signature(func, flat, self.shape, self.names, index)
        if self.autocast_dtype is not None:
            key = (*key, "autocast", self.autocast_dtype)
        trace = _traces.get(key)
        coarse = None
        if trace is None and self.autocast_dtype is None and func in _LENGTH_FREE \
                and config.execution_device().type == "cpu":
            coarse = _length_free_signature(key)
            trace = _traces.get(coarse)
        if trace is None:
            trace = _isolated(_trace, func, flat, self.shape, self.n_args, self.names, config.execution_device(),
                              dispatch.device_at(index), self.autocast_dtype)
            with _lock:
                if len(_traces) >= _TRACE_LIMIT:
                    _traces.clear()
                _traces[key] = trace
                if coarse is not None and _is_one_call(trace.gm):
                    _traces[coarse] = trace
        return trace

    def replay(self, trace: _Trace):
        flat = self.flat
        # forward itself: the Module call around it (hooks, tracing state) costs more than the program
        outs = trace.gm.forward(*[flat[i] for i in trace.lazy_positions])
        is_seq, seq_type = trace.out_shape
        return seq_type(outs) if is_seq else outs[0]


# Sequence lengths do not enter the CPU's attention choice (only whether they are zero), and a
# program that is one call of the chosen kernel on the inputs bakes no size in: such a trace serves
# every length, so a decode loop whose KV cache grows by one each step traces once, not per step.
_LENGTH_FREE = frozenset(op for op in OPS if op._schema.name == "aten::scaled_dot_product_attention")


def _length_free_signature(key) -> tuple:
    out = [("length-free",)]
    parts = _length_free_parts
    for part in key:
        if isinstance(part, tuple) and part and part[0] == "lazy":
            coarse = parts.get(part)
            if coarse is None:
                if len(parts) >= _TRACE_LIMIT:
                    parts.clear()
                coarse = parts[part] = _length_free_part(part)
            out.append(coarse)
        else:
            out.append(part)
    return tuple(out)


# ("lazy", spec, requires_grad) -> its length-free form. A decode step's keys and values have a new
# length each step, but every layer shares it, and the queries' spec repeats: most parts are seen.
_length_free_parts: dict = {}


def _length_free_part(part) -> tuple:
    _, spec, requires_grad = part
    size, stride, offset, dtype, conj, neg = spec.shape, spec.stride, spec.offset, spec.dtype, spec.conj, spec.neg
    order = tuple(sorted(range(len(size)), key=lambda d: (stride[d], d)))
    # the last two dims are (length, head dim) for q/k/v and (q length, kv length) for a mask
    pattern = tuple((n == 1, n == 0) if d >= len(size) - 2 else n for d, n in enumerate(size))
    return ("lazy", pattern, size[-1] if size else None, order, stride[-1] if stride else None,
            offset == 0, dtype, requires_grad, conj, neg)


def _is_one_call(gm) -> bool:
    """Is the traced program a single kernel call on its inputs (plus picking its outputs)?"""
    import operator
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    if len(calls) != 1:
        return False

    def size_free(a):
        if isinstance(a, (list, tuple)):
            return all(size_free(x) for x in a)
        return a is None or isinstance(a, (float, bool, torch.fx.Node))

    return size_free(calls[0].args) and size_free(tuple(calls[0].kwargs.values()))


def trace_count() -> int:
    return len(_traces)


# Ops with both a CompositeImplicitAutograd kernel and a backend kernel (``silu_backward``): on CPU
# the backend kernel wins, so eager never runs the decomposition; on a device without a kernel of
# its own the dispatcher decomposes. Where the execution device has the kernel, the device skips
# the decomposition and captures the op whole (eager's backend has no autograd formula for them
# either: they are backward helpers).
_BACKEND_KEYS = ("CPU", "CUDA")


def aten_ops_with_kernels(keys_all=(), keys_any=()):
    """Every aten overload with a kernel at each of ``keys_all`` and at one of ``keys_any`` at least."""
    has = _torch.has_kernel
    for schema in _torch.all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        name = schema.name + (f".{schema.overload_name}" if schema.overload_name else "")
        try:
            wanted = all(has(name, k) for k in keys_all) and (not keys_any or any(has(name, k) for k in keys_any))
        except RuntimeError:  # a JIT-only schema with no dispatcher entry
            continue
        if wanted:
            packet = getattr(aten, schema.name[len("aten::"):], None)
            op = getattr(packet, schema.overload_name or "default", None)
            if op is not None:
                yield op


def _backend_over_composite():
    return aten_ops_with_kernels(keys_all=("CompositeImplicitAutograd",), keys_any=_BACKEND_KEYS)


def _whole(func, args, kwargs):
    if execution_has_kernel(func):
        return _below_autograd(func, args, kwargs)
    return func.decompose(*args, **kwargs)


_dispatch_modes = _torch.dispatch_mode_depth
_capture = None  # dispatch.torch_dispatch (bound by register: dispatch imports this module)


def _below_autograd(func, args, kwargs):
    """``func`` re-dispatched below autograd, from a kernel at the device's autograd key. For these
    ops (neither views nor writes: ADInplaceOrView has nothing to do) that reaches only the Python
    key, this device's capture; with no dispatch mode to visit first, it is called directly: one
    trip through the dispatcher instead of two."""
    if not _dispatch_modes():
        return _capture(None, func, None, args, kwargs)
    with _torch.AutoDispatchBelowAutograd():
        return func(*args, **kwargs)


# Composites captured as one node when no gradient is needed: ``linear`` on a 3-d input is four
# ops (view, t, addmm, view), each a trip through the dispatcher into Python, and ``layer_norm`` is
# ``native_layer_norm`` with three outputs (three wrappers, three getitem nodes) of which it returns
# one; as one node each is one trip, and the execution device runs the same composite in C++ (the
# same kernels, the same bits). (``matmul`` stays decomposed: its graph says ``mm`` where eager ran
# ``mm``, and errors name that op.)
# When a gradient is needed, the composite decomposes as before, and autograd records its ops.
# (The one difference: eager's 3-d ``linear`` output is a view of an internal addmm result,
# ``_base`` set; the whole node's output is a fresh tensor.)
# (the list, WHOLE_WITHOUT_GRAD, is an op fact: ops/schema.py, where OpClass reads it too)


def _whole_without_grad(func, args, kwargs):
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return func.decompose(*args, **kwargs)
    return _below_autograd(func, args, kwargs)


def register(lib) -> None:
    """Kernels at the device's autograd key: replayed ops go through autograd themselves."""
    global _capture
    from .dispatch import torch_dispatch as _capture
    for func in WHOLE_WITHOUT_GRAD:
        def whole_without_grad(*args, _func=func, **kwargs):
            return _whole_without_grad(_func, args, kwargs)
        lib.impl(_impl_name(func), whole_without_grad, "AutogradPrivateUse1")
    for func in OPS:
        def kernel(*args, _func=func, **kwargs):
            return run(_func, args, kwargs)
        lib.impl(_impl_name(func), kernel, "AutogradPrivateUse1")
    for func in _backend_over_composite():
        def whole(*args, _func=func, **kwargs):
            return _whole(_func, args, kwargs)
        lib.impl(_impl_name(func), whole, "AutogradPrivateUse1")


def _impl_name(func) -> str:
    name = func._schema.name.split("::")[1]
    return name if func._overloadname == "default" else f"{name}.{func._overloadname}"
