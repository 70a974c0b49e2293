"""Output metadata inference, run once per (op, input metadata) signature and cached.

Meta kernels are the source of truth for shapes, dtypes and strides; most are Python in
recent torch (100-400 us each), so the capture path only calls them on a cache miss. Ops with
no meta kernel are inferred by running the real CPU kernel on zero-filled inputs of the same
layout: the metadata of a non-data-dependent op cannot depend on values.
"""

from __future__ import annotations

import torch

from .. import _torch
from .._torch import eager_kernels
from ..graph.node import TensorSpec, intern_spec, spec_of
from ..ops.schema import get_arg

META = torch.device("meta")
CPU = torch.device("cpu")


# Ops whose meta kernels disagree with the CPU kernels on output strides or on the shape of
# auxiliary outputs (found by the conformance suite). Their metadata comes from the real kernel
# on zero-filled stand-ins, so what a LazyTensor reports is what eager reports.
REAL_KERNEL_METADATA = frozenset({
    "aten::_linalg_svd", "aten::linalg_eig", "aten::max_unpool2d", "aten::max_unpool3d",
    "aten::_fft_r2c", "aten::_fft_c2r", "aten::_fft_c2c", "aten::_fused_rms_norm",
    "aten::_embedding_bag_forward_only", "aten::_embedding_bag", "aten::native_batch_norm",
    "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_no_training",
    "aten::native_layer_norm", "aten::layer_norm", "aten::_batch_norm_with_update", "aten::nonzero_static",
    "aten::mkldnn_rnn_layer",  # the meta kernel gives the workspace 0 bytes; mkldnn sizes it
    "aten::multilabel_margin_loss_forward",  # meta: loss (1,) for a 1-d input with reduction='none'; CPU: ()
    "prims::signbit",  # meta: the input's dtype; the kernel: bool
    "aten::addbmm_",  # eager resizes a broadcastable self ([1] -> [n, m]); the meta kernel rejects it
})


class NoMetaKernel(Exception):
    """Neither the meta kernel nor the zero-input CPU kernel could infer this op's outputs."""


class DataDependent(Exception):
    """The op's outputs depend on values: a sparse output's structure is its data."""


class Inferred:
    """The cached answer for one signature: output specs in return order and the specs of the
    written arguments after the op (they change when out= tensors are resized)."""

    __slots__ = ("outs", "mutated", "error")

    def __init__(self, outs, mutated, error=None):
        self.outs = outs
        self.mutated = mutated
        self.error = error


def _stand_in(t, device, spec: TensorSpec, fill: bool, storages=None, ones=False):
    """A tensor on ``device`` with exactly ``spec``'s layout, storage size included. Tensors of
    one alias group share one stand-in storage (``storages``), so kernels see their aliasing.
    ``fill``: zero-filled (else uninitialised); ``ones``: filled with ones instead."""
    group = getattr(t, "_storage", None)
    storage = storages.get(id(group)) if storages is not None and group is not None else None
    if storage is None:
        storage = torch.empty(spec.storage_nbytes, dtype=torch.uint8, device=device)
        if fill:
            storage.zero_()
        storage = storage.untyped_storage()
        if storages is not None and group is not None:
            storages[id(group)] = storage
    out = torch.empty(0, dtype=spec.dtype, device=device)
    out.set_(storage, spec.offset, spec.shape, spec.stride)
    if ones:
        out.fill_(1)
    if spec.conj:
        _torch.set_conj(out, True)
    if spec.neg:
        _torch.set_neg(out, True)
    return out


def _convert(a, device, fill, lazy_cls, is_remote_device, storages, ones=False):
    if isinstance(a, lazy_cls):
        return _stand_in(a, device, a._spec, fill, storages, ones)
    if isinstance(a, torch.Tensor):
        if device.type == "meta" and a.dim() > 0:
            return _stand_in(a, device, spec_of(a), fill)
        return a
    if isinstance(a, (list, tuple)):
        conv = [_convert(x, device, fill, lazy_cls, is_remote_device, storages, ones) for x in a]
        return conv if isinstance(a, list) else tuple(conv)
    if isinstance(a, torch.device) and is_remote_device(a):
        return device
    if isinstance(a, str) and a.startswith("remote_accelerator"):
        return device
    return a


def _out_spec(o):
    if isinstance(o, torch.Tensor):
        if o.layout != torch.strided or o.is_nested:  # the structure of the output is data
            raise DataDependent(f"{'nested' if o.is_nested else o.layout} output")
        return spec_of(o)
    if isinstance(o, (list, tuple)):
        return tuple(_out_spec(x) for x in o)
    if o is None:
        return None
    raise NoMetaKernel(f"non-tensor output {type(o).__name__}")


def infer(func, opclass, args, kwargs, lazy_cls, is_remote_device) -> Inferred:
    """Run ``func`` on stand-ins and describe its outputs. Errors that eager would raise are
    returned inside ``Inferred.error`` so the cache can replay them."""
    # the real kernel where meta disagrees with it, and for writes whose overlap checks (made by
    # eager, skipped by meta kernels) can fire
    real = func._schema.name in REAL_KERNEL_METADATA or _writes_overlapping(opclass, args, kwargs, func, lazy_cls) \
        or (opclass.writes and _aliased_arguments(args, kwargs, lazy_cls)) \
        or (func._schema.name in SLOW_META and _small_on_cpu(opclass, args, kwargs, lazy_cls)) \
        or (func._schema.name in LAYOUT_BY_KERNEL and _execution_is_cpu() and _any_not_contiguous(args, lazy_cls))
    if not real:
        try:
            inf = _infer_on(META, func, opclass, args, kwargs, lazy_cls, is_remote_device, fill=False)
            inf = _wrapped_number_strides(func, opclass, args, kwargs, lazy_cls, is_remote_device, inf)
            if _kernel_checks_more(func, opclass, args, kwargs, lazy_cls):
                error = _kernel_rejects(func, opclass, args, kwargs, lazy_cls, is_remote_device)
                if error is not None:
                    return Inferred(None, None, error)
            return inf
        except NotImplementedError:
            pass
        except (NoMetaKernel, DataDependent):
            raise
        except Exception as e:  # the op rejects these inputs: eager would raise the same
            if not _looks_like_missing_meta(e):
                meta_error = e
                if _execution_is_cpu():
                    # a meta kernel may be stricter than the kernel that will run (``_grouped_mm``
                    # in float32), or raise another error than it: the execution device's kernel
                    # decides, once per signature
                    try:
                        return _infer_on(CPU, func, opclass, args, kwargs, lazy_cls, is_remote_device, fill=True)
                    except Exception:
                        pass
                    kernel_error = _kernel_rejects(func, opclass, args, kwargs, lazy_cls, is_remote_device) \
                        if not opclass.random else None
                    if kernel_error is not None:
                        return Inferred(None, None, kernel_error)
                return Inferred(None, None, meta_error)
    try:
        return _infer_on(CPU, func, opclass, args, kwargs, lazy_cls, is_remote_device, fill=True)
    except NotImplementedError as e:
        raise NoMetaKernel(str(e)) from e
    except DataDependent:
        raise
    except Exception as e:
        if not real:
            # no meta kernel, and the kernel refused zero-filled stand-ins: the refusal may come from
            # their values (the jagged kernels check offsets against a length), so the call runs on
            # its real values, which raise eager's error if it has one
            raise DataDependent(f"stand-ins refused without a meta kernel: {e}") from e
        return Inferred(None, None, e)


# Pointwise kernels check dtypes and arguments that their meta kernels do not (bool subtraction,
# a float alpha for integers, an integer to a negative power, maximum of complex): eager raises at
# the call, so capture must too. For small inputs on CPU execution the CPU kernel runs once per
# signature on stand-ins filled with zeros and again with ones; an error both raise does not come
# from values, and it is eager's. Random ops are left out (they would draw from the host generator).
KERNEL_CHECK_MAX_BYTES = 1 << 20


def _pointwise(func) -> bool:
    """Pointwise by aten tag, or the in-place variant of a pointwise op (``heaviside_`` is untagged)."""
    if torch.Tag.pointwise in func.tags:
        return True
    name = func._schema.name
    if name.endswith("_") and name.startswith("aten::"):
        packet = getattr(torch.ops.aten, name[len("aten::"):-1], None)
        functional = getattr(packet, func._overloadname, None) if packet is not None else None
        return functional is not None and torch.Tag.pointwise in functional.tags
    return False


# Indexed writes check index shapes and value types in the kernel too (``index_fill_`` with a
# complex value, index lists that do not broadcast); their zero and one stand-ins are both valid
# indices only where the real ones may be, so an error both raise is not about the index values.
INDEXED_WRITES = frozenset({"aten::index_fill_", "aten::index_fill", "aten::index_put_", "aten::index_put",
                            "aten::_index_put_impl_", "aten::index_copy_", "aten::index_copy", "aten::index_add_",
                            "aten::index_add"})


# Ops whose meta kernels are Python references far slower than the CPU kernel on small inputs
# (``cat``: about 400 us a signature, against tens for the kernel). A decode step whose KV cache
# grows meets a new ``cat`` signature every step; on CPU execution, small ones are inferred by the
# kernel that will run them (its layout and errors are eager's by definition).
SLOW_META = frozenset({"aten::cat"})

# Ops whose CPU kernels choose the output memory format from their inputs' by rules their meta
# kernels do not follow: a 1x1 convolution of a channels-last input is channels-last on CPU
# (mkldnn and the slow path take it if input or weight suggests it) and contiguous by the meta
# kernel, so every later op, and the backward's gradients, ran in another layout than eager's
# (a segmentation decode head: dropout masks drawn in another order, gradients apart by 3e-9).
# With a non-contiguous tensor argument, the CPU kernel decides the layout, once per signature.
LAYOUT_BY_KERNEL = frozenset({"aten::convolution", "aten::_convolution", "aten::convolution_backward"})


def _any_not_contiguous(args, lazy_cls) -> bool:
    return any(isinstance(a, lazy_cls) and not a.is_contiguous() for a in args)


def _small_on_cpu(opclass, args, kwargs, lazy_cls) -> bool:
    return not opclass.random and _execution_is_cpu() and _input_bytes(args, kwargs, lazy_cls) <= KERNEL_CHECK_MAX_BYTES


def _kernel_checks_more(func, opclass, args, kwargs, lazy_cls) -> bool:
    if opclass.random or not (_pointwise(func) or func._schema.name in INDEXED_WRITES) or not _execution_is_cpu():
        return False
    return _input_bytes(args, kwargs, lazy_cls) <= KERNEL_CHECK_MAX_BYTES


def _input_bytes(args, kwargs, lazy_cls) -> int:
    total = 0
    stack = [args, tuple(kwargs.values())]
    while stack:
        for a in stack.pop():
            if isinstance(a, lazy_cls):
                total += a._spec.storage_nbytes
            elif isinstance(a, (list, tuple)):
                stack.append(a)
    return total


def _kernel_rejects(func, opclass, args, kwargs, lazy_cls, is_remote_device):
    errors = []
    for ones in (False, True):
        try:
            _infer_on(CPU, func, opclass, args, kwargs, lazy_cls, is_remote_device, fill=True, ones=ones)
        except (NoMetaKernel, DataDependent):
            return None
        except Exception as e:
            errors.append(e)
            continue
        return None
    return errors[0] if type(errors[0]) is type(errors[1]) and str(errors[0]) == str(errors[1]) else None


_NUMBERS = (bool, int, float, complex)


def _wrapped_number_strides(func, opclass, args, kwargs, lazy_cls, is_remote_device, inf: Inferred) -> Inferred:
    """A Python number where a pointwise op takes a Tensor (``t / 2.0``) is a wrapped 0-dim tensor.
    On CPU it is an operand of the iteration like any other, so the output's shape differs from
    the operands' and the output keeps the input's strides; the meta kernel drops it as a CPU
    scalar beside meta tensors, takes the same-shape fast setup and lays out a size-1 dimension
    otherwise (``(1,16,4,4)`` with strides ``(16,1,64,16)``: ``(256,1,64,16)``). A later kernel's
    memory-format heuristic reads that stride (group_norm took another path than eager's). When a
    tensor argument is not contiguous, the number is given to the meta kernel as a 0-dim meta
    tensor, and the output takes that run's strides; dtypes stay the first run's (a 0-dim tensor
    promotes otherwise than a number)."""
    if opclass.writes or len(inf.outs) != 1 or inf.outs[0].__class__ is not TensorSpec or not _pointwise(func):
        return inf
    if all(a.is_contiguous() for a in args if isinstance(a, lazy_cls)):
        return inf
    target = func
    schema_args = func._schema.arguments
    if func._overloadname == "Scalar":  # ``3 - t`` is rsub.Scalar: its kernel wraps ``other`` as div.Tensor's binding does
        target = getattr(func.overloadpacket, "Tensor", None)
        if target is None:
            return inf
        schema_args = target._schema.arguments
    numbers = [i for i, a in enumerate(args)
               if a.__class__ in _NUMBERS and i < len(schema_args) and isinstance(schema_args[i].type, torch.TensorType)]
    if not numbers:
        return inf
    as_tensors = list(args)
    for i in numbers:
        as_tensors[i] = torch.tensor(args[i], device=META)
    try:
        alt = _infer_on(META, target, opclass, tuple(as_tensors), kwargs, lazy_cls, is_remote_device, fill=False)
    except Exception:
        return inf
    out, other = inf.outs[0], alt.outs[0]
    if other.__class__ is not TensorSpec or other.shape != out.shape or other.stride == out.stride:
        return inf
    spec = intern_spec(out.shape, other.stride, out.offset, out.dtype, out.storage_nbytes, out.conj, out.neg,
                       out.layout, out.index)
    return Inferred((spec,), inf.mutated)


def _execution_is_cpu() -> bool:
    from .. import config
    return config.execution_device().type == "cpu"


def _writes_overlapping(opclass, args, kwargs, func, lazy_cls) -> bool:
    if not opclass.writes:
        return False
    for where, is_list in opclass.mutated:
        a = get_arg(args, kwargs, where, func)
        for t in (a if is_list and a is not None else [a]):
            if isinstance(t, lazy_cls) and _has_internal_overlap(t._spec):
                return True
    return False


def _aliased_arguments(args, kwargs, lazy_cls) -> bool:
    """Do two distinct tensor arguments share memory?"""
    seen: dict = {}
    stack = [args, tuple(kwargs.values())]
    while stack:
        for a in stack.pop():
            if isinstance(a, lazy_cls):
                group = a._storage
                if group is not None:
                    other = seen.setdefault(id(group), a)
                    if other is not a:
                        return True
            elif isinstance(a, (list, tuple)):
                stack.append(a)
    return False


def _has_internal_overlap(spec) -> bool:
    """Certain self-overlap (a stride-0 dimension of size > 1), as at::has_internal_overlap says
    MemOverlap::Yes; computed from the spec so that no value is needed."""
    return any(st == 0 and n > 1 for n, st in zip(spec.shape, spec.stride))


def _looks_like_missing_meta(e: Exception) -> bool:
    msg = str(e)
    return ("meta" in msg.lower() and ("not implemented" in msg.lower() or "doesn't support" in msg
                                        or "does not support" in msg or "Could not run" in msg)) or \
        "data-dependent" in msg or "Cannot access data pointer" in msg or "cannot be called on meta" in msg


def _infer_on(device, func, opclass, args, kwargs, lazy_cls, is_remote_device, fill, ones=False):
    storages: dict = {}
    margs = _convert(args, device, fill, lazy_cls, is_remote_device, storages, ones)
    mkwargs = {k: _convert(v, device, fill, lazy_cls, is_remote_device, storages, ones) for k, v in kwargs.items()}
    grad = opclass.grad_mode and torch.is_grad_enabled()
    with eager_kernels(), torch.set_grad_enabled(grad):
        out = func(*margs, **mkwargs)
    outs = out if isinstance(out, tuple) and len(opclass.returns) != 1 else (out,)
    if len(opclass.returns) == 0:
        outs = ()
    specs = tuple(_out_spec(o) for o in outs)
    if device.type != "meta":
        _check_device(specs, outs)
    mutated = []
    for where, _is_list in opclass.mutated:
        a = get_arg(margs, mkwargs, where, func)
        mutated.append(_out_spec(a))
    return Inferred(specs, tuple(mutated))


def _check_device(specs, outs):
    for o in outs:
        if isinstance(o, torch.Tensor) and o.device.type not in ("cpu", "meta"):
            raise NoMetaKernel("output on an unexpected device")
