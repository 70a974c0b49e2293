"""PrivateUse1 kernels for factories: ops that make a tensor from nothing on the device
(``torch.randn(..., device="remote_accelerator")`` is captured as ``aten::randn``)."""

from __future__ import annotations

from ..graph.node import Node, TensorSpec, op_name
from . import dispatch
from .dispatch import (_DATA_DEPENDENT, _FALLBACK, DEVICE_TYPE, _build, _lookup, _walk,
                       new_lazy, op_error)
from .schema import _classes, classify
from .special_ops import _QUANTIZED_DTYPES, _quantized


def capture_factory(func, args, kwargs):
    """PrivateUse1 kernel body for factories. Their keyword arguments (dtype, layout, device,
    pin_memory, ...) are hashable constants, so they enter the signature as they are."""
    if dispatch.first_use is not None:
        dispatch.first_use()
    if dispatch.backward_context is not None and dispatch._autograd_node() is not None:
        saved = dispatch.node_scope.ctx
        dispatch.node_scope.ctx = dispatch.backward_context()  # a factory in a backward formula
        try:
            return _capture_factory(func, args, kwargs)
        finally:
            dispatch.node_scope.ctx = saved
    return _capture_factory(func, args, kwargs)


def _capture_factory(func, args, kwargs):
    oc = _classes.get(id(func)) or classify(func)
    if oc.special is _quantized or kwargs.get("dtype") in _QUANTIZED_DTYPES:
        _quantized(func, args, kwargs)
    device = kwargs.get("device")
    if device is not None:  # the index it names (the current device's when it names none), in range
        try:
            device = dispatch.device_at(dispatch.index_of_device(device))
        except RuntimeError as e:
            raise op_error(func, e) from None
        if device is not kwargs["device"]:
            kwargs = {**kwargs, "device": device}
    key = [oc]
    nargs = tuple(_walk(args, key, func))
    key.append(tuple(kwargs.items()))
    key = tuple(key)
    inf, default_dtype = _lookup(key, func, oc, args, kwargs)
    if inf is _FALLBACK or inf is _DATA_DEPENDENT:
        raise NotImplementedError(f"{op_name(func)}: no metadata inference for this factory on {DEVICE_TYPE} "
                                  "(sparse layouts are not supported there)")
    if inf.error is not None:
        raise op_error(func, inf.error)
    oc.captured += 1
    nkw = dict(kwargs)
    if default_dtype is not None:
        nkw["dtype"] = default_dtype  # the dtype the default gave at capture, not at execution
    if oc.plain and len(inf.outs) == 1 and inf.outs[0].__class__ is TensorSpec:
        return new_lazy(inf.outs[0], Node(func, nargs, nkw, inf.outs[0]))
    return _build(func, oc, inf, args, kwargs, nargs, nkw)
