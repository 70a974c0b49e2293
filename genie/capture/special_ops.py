"""Ops the capture path does not take as they come: copies leaving or entering the device, storage
ops a device without host-visible storage cannot honour, composites with a host-side contract,
quantized tensors, and the composites that choose kernels by device type. Each has a handler in
the op's ``OpClass.special``; a handler returns ``dispatch.FALLTHROUGH`` to have the call captured
as usual."""

from __future__ import annotations

import torch

from .._torch import eager_kernels
from ..graph.node import _EMPTY, Node, op_name
from ..ops.schema import classify, get_arg
from . import aliasing, device_choice, dispatch
from .dispatch import DEVICE_TYPE, FALLTHROUGH, value_of

aten = torch.ops.aten
_dense = torch._prims_common.is_non_overlapping_and_dense_or_false


def _to_copy(func, args, kwargs):
    device = kwargs.get("device")
    if device is None or torch.device(device).type == DEVICE_TYPE:
        return FALLTHROUGH
    # leaving the device: .cpu(), .to("cpu"), .to("cuda")
    src = args[0]
    value = value_of(src)
    if getattr(value, "_genie_private", False) and len(args) == 1 and _as_is(value, kwargs):
        # fresh memory just brought from a server, laid out as eager's copy would be: it is the copy
        del value._genie_private
        return value
    with eager_kernels():
        return func(value, *args[1:], **kwargs)


def _as_is(value, kwargs) -> bool:
    """Whether ``_to_copy(value, **kwargs)`` would only copy ``value`` (a dense CPU tensor starting
    its own storage) into an identical tensor."""
    for k, v in kwargs.items():
        if k == "device":
            if torch.device(v).type != "cpu":
                return False
        elif k == "dtype":
            if v is not None and v != value.dtype:
                return False
        elif k == "layout":
            if v not in (None, torch.strided):
                return False
        elif k == "memory_format":
            if v not in (None, torch.preserve_format):
                return False
        elif k in ("pin_memory", "non_blocking"):
            if v:
                return False
        else:
            return False
    return value.storage_offset() == 0 and _dense(value) and \
        value.untyped_storage().nbytes() == value.numel() * value.element_size()


def _copy_(func, args, kwargs):
    dst, src = args[0], args[1]
    lazy = dispatch.LazyTensor
    if dst is src or (isinstance(dst, lazy) and isinstance(src, lazy) and dst._storage is not None
                      and dst._storage is src._storage and dst._spec is src._spec):
        return dst  # eager returns at once for a copy onto the very same data: no overlap check, no work
    if not isinstance(dst, lazy):
        # device -> host copy into an existing tensor
        value = value_of(src)
        with eager_kernels():
            dst.copy_(value, *args[2:], **kwargs)
        return dst
    if src.__class__ is torch.Tensor and src.device.type == "cpu" and dst._storage is None:
        return _adopt(func, dst, src)
    return FALLTHROUGH


def _adopt(func, dst, src):
    """An upload that covers ``dst`` whole (``x.to(device)``: a fresh tensor, a host source of its
    dtype and layout) becomes a materialized node holding a copy of the source made by the executor,
    where the value will live: one copy, as eager makes, instead of a snapshot and then a copy on
    the device. A remote executor makes it in shared memory, which the server maps as it is."""
    spec = dst._spec
    if src.dtype != spec.dtype or src.shape != spec.shape or src.stride() != spec.stride or spec.offset \
            or src.is_conj() or src.is_neg() or spec.conj or spec.neg or not _dense(src) \
            or src.numel() * src.element_size() != spec.storage_nbytes or src.requires_grad:
        return FALLTHROUGH
    from ..execution.scheduler import get_executor
    value = get_executor(spec.index).adopt(src)
    if value is None:
        return FALLTHROUGH
    dst._node = Node(func, (), _EMPTY, spec, value=value)
    return dst


def _is_pinned(func, args, kwargs):
    return False


_CPU_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _host_contract(func, args, kwargs):
    """Composite kernels whose contract takes an argument on the host and reads it there (the
    ``lengths`` of pack_padded_sequence, which eager CUDA requires on the CPU). Their device-generic
    kernel runs as it is: its reads of the host tensor happen now, and the ops it issues on the
    device tensors are captured like any others."""
    return func.redispatch(_CPU_KEYSET, *args, **kwargs)


def _set_to_tensor(func, args, kwargs):
    """``t.set_(source)``: ``t`` becomes an alias of all of ``source`` (its storage and geometry),
    as ``t.data = source`` does. Eager's own checks run first, on meta stand-ins."""
    t, source = args[0], get_arg(args, kwargs, 1, func)
    if not isinstance(source, dispatch.LazyTensor):
        raise dispatch._device_error(func, source.device)
    with eager_kernels():  # (dtype mismatch: "Could not set tensor of type double to a tensor of type float")
        torch.empty(0, dtype=t.dtype, device="meta").set_(torch.empty(0, dtype=source.dtype, device="meta"))
    aliasing._share_storage(t, source, source._spec)  # (geometry only: t keeps its key set, bits included)
    aliasing.alias_all(t, source, bits=(t._spec.conj, t._spec.neg))
    return t


def _set_to_empty(func, args, kwargs):
    """``t.set_()``: ``t`` gets an empty storage of its own; views of its old storage keep that one."""
    t = args[0]
    if isinstance(t, dispatch.LazyTensor):
        aliasing.detach_storage(t)
    return FALLTHROUGH


def _unsupported(func, args, kwargs):
    raise NotImplementedError(f"{op_name(func)} is not supported on {DEVICE_TYPE}: "
                              "tensors there have no host-visible storage")


_QUANTIZED_DTYPES = frozenset({torch.quint8, torch.qint8, torch.qint32, torch.quint4x2, torch.quint2x4})


def _quantized(func, args, kwargs):
    raise NotImplementedError(f"{op_name(func)}: quantized tensors are not supported on {DEVICE_TYPE} "
                              "(quantize on the host, or keep the model in floating point on the device)")


def _quantizing_ops():
    for name in ("quantize_per_tensor", "quantize_per_channel", "quantize_per_tensor_dynamic",
                 "_make_per_tensor_quantized_tensor", "_make_per_channel_quantized_tensor",
                 "_empty_affine_quantized", "_empty_per_channel_affine_quantized", "empty_quantized"):
        packet = getattr(aten, name, None)
        for overload in (packet.overloads() if packet is not None else ()):
            yield getattr(packet, overload)


_SPECIAL = {
    aten._to_copy.default: _to_copy,
    aten.copy_.default: _copy_,
    aten.is_pinned.default: _is_pinned,
    aten.set_.source_Tensor: _set_to_tensor,
    aten.set_.default: _set_to_empty,
    aten.set_.source_Storage: _unsupported,
    aten.set_.source_Storage_storage_offset: _unsupported,
    aten._pack_padded_sequence.default: _host_contract,
}
for _func in _quantizing_ops():
    _SPECIAL[_func] = _quantized
# composites that choose kernels by device type (reached here when autograd is skipped)
for _func in device_choice.OPS:
    _SPECIAL[_func] = device_choice.run
del _func


def install() -> None:
    """Give each special op its handler (the hot paths then step aside for it)."""
    for func, handler in _SPECIAL.items():
        oc = classify(func)
        oc.special, oc.plain, oc.hot = handler, False, False
