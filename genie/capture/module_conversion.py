"""``module.to("remote_accelerator")`` (and every ``Module._apply`` conversion) keeps shared
parameters and buffers shared.

Eager moves a parameter between dense devices with ``param.data = moved``: the Parameter object
stays, so a weight tied between two modules (an LM head and its embedding) stays one Parameter.
PyTorch allows that shallow copy only between its own dense backends (CPU, CUDA, ...), never
for PrivateUse1, so ``_apply`` makes a new Parameter per module, one per *occurrence*, and a tied
weight becomes two leaves whose gradients are never summed. The swap path
(``torch.__future__.set_swap_module_params_on_conversion``) cannot apply either: it needs the
two Python objects to have one layout, and LazyTensor has slots a CPU Parameter lacks.

``Module._apply`` is wrapped once, at import. When a conversion produces or consumes LazyTensors
(``.to(device)``, ``.double()`` on the device, ``.cpu()`` back), the wrapper (1) converts each
distinct tensor once (so a tied embedding is uploaded once), (2) takes the Parameter path for it,
and (3) after the conversion, points every occurrence of a formerly shared tensor (parameter,
buffer, or a parameter's gradient) at one result. Conversions that touch no LazyTensor run
exactly as PyTorch wrote them.
"""

from __future__ import annotations

import threading

import torch

from . import hooks

_original_apply = torch.nn.Module._apply
_state = threading.local()


def _slots(module):
    """(module, table, name, tensor) for every parameter and buffer below ``module``."""
    for m in module.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None:
                    yield m, table, name, t


def _apply(self, fn, recurse=True):
    if getattr(_state, "active", False) or not recurse:
        return _original_apply(self, fn, recurse)
    from . import dispatch

    memo: dict = {}  # id(original) -> (original, converted); the original is held so ids stay unique
    touched_device = []

    def convert(t):
        hit = memo.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        out = fn(t)
        # conversions onto, on, or off the device are shared; host-to-host ones stay as eager makes them
        if isinstance(out, dispatch.LazyTensor) or isinstance(t, dispatch.LazyTensor):
            memo[id(t)] = (t, out)
            touched_device.append(True)
        return out

    before = list(_slots(self))
    _state.active = True
    swap = torch.__future__.get_swap_module_params_on_conversion()
    try:
        if swap and _touches_device(before, convert):
            torch.__future__.set_swap_module_params_on_conversion(False)
        try:
            _original_apply(self, convert, recurse)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(swap)
    finally:
        _state.active = False
    if touched_device:
        _retie(before)
        if hooks.semantics.first_use is not None:
            hooks.semantics.first_use()
        if hooks.semantics.module_moved is not None:
            hooks.semantics.module_moved(self)
    return self


def _touches_device(slots, convert) -> bool:
    from . import dispatch
    for _, _, _, t in slots:
        with torch.no_grad():
            return isinstance(t, dispatch.LazyTensor) or isinstance(convert(t), dispatch.LazyTensor)
    return False


def _retie(before) -> None:
    """Every occurrence of one original tensor ends as the first occurrence's result."""
    first: dict = {}
    for _, table, name, original in before:
        current = table.get(name)
        kept = first.setdefault(id(original), current)
        if kept is not current:
            table[name] = kept


_original_setstate = torch.nn.Module.__setstate__


def _setstate(self, state):
    """``Module.__setstate__`` (unpickling, ``copy.copy``, ``deepcopy``), then the module's state
    gets a chance to be made its own (semantics rebinds a module-context forward copied from the
    module the state came from)."""
    _original_setstate(self, state)
    if hooks.semantics.module_restored is not None:
        hooks.semantics.module_restored(self)


def install() -> None:
    if torch.nn.Module._apply is not _apply:
        torch.nn.Module._apply = _apply
    if torch.nn.Module.__setstate__ is not _setstate:
        torch.nn.Module.__setstate__ = _setstate
