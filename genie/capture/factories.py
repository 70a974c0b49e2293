"""PrivateUse1 kernels for factories: ops that make a tensor from nothing on the device
(``torch.randn(..., device="remote_accelerator")`` is captured as ``aten::randn``)."""

from __future__ import annotations

import torch

from ..graph.node import Node, TensorSpec, op_name
from ..ops.errors import op_error
from ..ops.schema import _classes, classify
from . import dispatch, hooks
from .dispatch import _DATA_DEPENDENT, _FALLBACK, DEVICE_TYPE, _build, _lookup, _walk, new_lazy
from .special_ops import _QUANTIZED_DTYPES, _quantized

_Generator = torch._C.Generator


# Factory calls seen before, by exact arguments: (op, ints and int lists, keyword items, the current
# device index and default dtype where they decide) -> the node's (spec, args, kwargs). A hit skips
# the argument walk, the device check and the metadata lookup (about 3 us of a zeros' 8).
_seen: dict = {}
_SEEN_LIMIT = 4096
_get_default_dtype = torch.get_default_dtype


def _seen_key(func, args, kwargs):
    """The ``_seen`` key of a call whose positional arguments are ints and int lists and whose
    keyword arguments are not numbers (dtype, layout, device, pin_memory, ...); else None. Ints
    only: ``True == 1`` and ``0.0 == -0.0`` as keys, but not as fill values."""
    key = [func]
    for a in args:
        c = a.__class__
        if c is int:
            key.append(a)
        elif c is list or c is tuple:
            for x in a:
                if x.__class__ is not int:
                    return None
            key.append(tuple(a))  # (a tuple never equals an int)
        else:
            return None
    for name, v in kwargs.items():
        c = v.__class__
        if c is int or c is float or c is complex:
            return None
        key.append(name)
        key.append(v)
    device = kwargs.get("device")
    if device is not None and device.index is None:
        key.append(dispatch.current_index())
    if kwargs.get("dtype") is None:
        key.append(_get_default_dtype())
    return tuple(key)


def capture_factory(func, args, kwargs):
    """PrivateUse1 kernel body for factories. Their keyword arguments (dtype, layout, device,
    pin_memory, ...) are hashable constants, so they enter the signature as they are."""
    semantics = hooks.semantics
    if semantics.first_use is not None:
        semantics.first_use()
    if semantics.backward_context is not None and dispatch._autograd_node() is not None:
        saved = dispatch.node_scope.ctx
        dispatch.node_scope.ctx = semantics.backward_context()  # a factory in a backward formula
        try:
            return _capture_factory(func, args, kwargs)
        finally:
            dispatch.node_scope.ctx = saved
    key = _seen_key(func, args, kwargs)
    if key is not None:
        hit = _seen.get(key)
        if hit is not None:
            spec, nargs, nkw, oc = hit
            oc.captured += 1
            return new_lazy(spec, Node(func, nargs, nkw, spec))
    return _capture_factory(func, args, kwargs, key)


def _capture_factory(func, args, kwargs, seen_key=None):
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
    # (a generator enters as its kind: which one does not change the metadata)
    key.append(tuple((k, _Generator if isinstance(v, _Generator) else v) for k, v in kwargs.items()))
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
        if seen_key is not None and (device is None or device.index == 0):
            # (device 0 only: a call naming a later device also checks that it exists, per call)
            if len(_seen) >= _SEEN_LIMIT:
                _seen.clear()
            _seen[seen_key] = (inf.outs[0], nargs, nkw, oc)
        return new_lazy(inf.outs[0], Node(func, nargs, nkw, inf.outs[0]))
    return _build(func, oc, inf, args, kwargs, nargs, nkw)
