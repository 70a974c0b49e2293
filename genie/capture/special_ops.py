"""Ops the capture path does not take as they come: copies leaving or entering the device, storage
ops a device without host-visible storage cannot honour, composites with a host-side contract,
quantized tensors, and the composites that choose kernels by device type. Each has a handler in
the op's ``OpClass.special``; a handler returns ``dispatch.FALLTHROUGH`` to have the call captured
as usual."""

from __future__ import annotations

import torch

from ..graph.node import op_name
from . import device_choice, dispatch
from ._tls import eager_kernels
from .dispatch import DEVICE_TYPE, FALLTHROUGH, value_of
from .schema import classify

aten = torch.ops.aten


def _to_copy(func, args, kwargs):
    device = kwargs.get("device")
    if device is None or torch.device(device).type == DEVICE_TYPE:
        return FALLTHROUGH
    # leaving the device: .cpu(), .to("cpu"), .to("cuda")
    src = args[0]
    value = value_of(src)
    with eager_kernels():
        return func(value, *args[1:], **kwargs)


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
    return FALLTHROUGH


def _is_pinned(func, args, kwargs):
    return False


_CPU_KEYSET = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _host_contract(func, args, kwargs):
    """Composite kernels whose contract takes an argument on the host and reads it there (the
    ``lengths`` of pack_padded_sequence, which eager CUDA requires on the CPU). Their device-generic
    kernel runs as it is: its reads of the host tensor happen now, and the ops it issues on the
    device tensors are captured like any others."""
    return func.redispatch(_CPU_KEYSET, *args, **kwargs)


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
