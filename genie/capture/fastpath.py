"""The operator fast path: ``a + b``, ``a * 2``, ``a @ b`` on LazyTensors without the dispatcher.

An operator call normally travels the C++ dispatcher (autograd, ADInplaceOrView, the Python
key) before it reaches ``__torch_dispatch__``; that trip costs about twice the eager op. When
nothing on that trip has work to do (no input needs grad, no mode, autocast or jit trace is active), the
dunder methods here build the very node the dispatcher path would build, from the same
signature cache, and skip the trip. Anything else, including a signature not yet in the cache,
takes the ordinary route, which also fills the cache.
"""

from __future__ import annotations

import torch

from .. import _torch
from ..graph.node import _EMPTY, Node, TensorSpec
from ..ops.schema import classify
from . import dispatch, hooks

aten = torch.ops.aten
_grad_enabled = torch.is_grad_enabled
_dispatch_modes = _torch.dispatch_mode_depth
_function_modes = _torch.function_mode_enabled
_autocast = _torch.any_autocast_enabled
_autograd_node = _torch.current_autograd_node
_hooks = hooks.semantics
_jit_tracing = _torch.jit_tracing_state
_SCALARS = (int, float, bool)


def _fast(oc, a, b):
    """The LazyTensor for ``oc.func(a, b)`` if the fast path applies, else None."""
    if _dispatch_modes() or _function_modes() or _autocast() or _jit_tracing() is not None:
        return None  # (torch.jit.trace records ops at the dispatcher: skipping it drops them)
    if _grad_enabled():
        if a.requires_grad:
            return None
    elif _hooks.backward_context is not None and _autograd_node() is not None:
        return None  # a custom Function's Python backward: captured in its forward module's context
    s = a._storage
    if s is not None and a._seen != s.version:
        return None
    cb = b.__class__
    if cb is dispatch.LazyTensor:
        if b.requires_grad and _grad_enabled():
            return None
        sb = b._storage
        if sb is not None and b._seen != sb.version:
            return None
        key = (oc, a._spec, b._spec)
        nargs = (a._node, b._node)
    elif cb in _SCALARS:
        key = (oc, a._spec, cb, b if cb is not float or oc.floats else dispatch.float_key(b))  # (as dispatch keys it)
        nargs = (a._node, b)
    else:
        return None
    inf = dispatch._cache.get(key)
    if inf is None or inf.error is not None:
        return None
    spec = inf.outs[0]
    if spec.__class__ is not TensorSpec:
        return None
    oc.captured += 1
    return dispatch.new_lazy(spec, Node(oc.func, nargs, _EMPTY, spec))


def _binary(name: str, func):
    slow = getattr(torch.Tensor, name)
    oc = classify(func)

    def method(self, other):
        out = _fast(oc, self, other)
        return slow(self, other) if out is None else out

    method.__name__ = name
    method.__doc__ = f"``{name}`` with genie's operator fast path (see genie.capture.fastpath)."
    return method


_MM = None


def _matmul(self, other):
    if other.__class__ is dispatch.LazyTensor and len(self._spec.shape) == 2 and len(other._spec.shape) == 2:
        out = _fast(_MM, self, other)
        if out is not None:
            return out
    return torch.Tensor.__matmul__(self, other)


def install(cls) -> None:
    """Give ``cls`` (LazyTensor) the fast operator methods."""
    global _MM
    _MM = classify(aten.mm.default)
    for name, func in (("__add__", aten.add.Tensor), ("__radd__", aten.add.Tensor),
                       ("__mul__", aten.mul.Tensor), ("__rmul__", aten.mul.Tensor),
                       ("__sub__", aten.sub.Tensor), ("__truediv__", aten.div.Tensor)):
        setattr(cls, name, _binary(name, func))
    cls.__matmul__ = _matmul
