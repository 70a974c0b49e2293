"""LazyTensor: a tensor on ``remote_accelerator`` whose value is a node of the captured graph.

It is a wrapper subclass (no storage of its own): shape, dtype and strides are exact and known at
capture; the value exists only once something needs it. Reading a value (``.cpu()``, ``.item()``,
``print``, ``bool()``, numpy conversion) runs the part of the graph it depends on.
"""

from __future__ import annotations

import torch
from torch.optim import optimizer as _optimizer
from torch.utils import _foreach_utils

from .. import _torch
from . import aliasing, device_choice, dispatch, fastpath, module_conversion, special_ops, written_memory

_multithreading = _torch.is_multithreading_enabled
_set_multithreading = _torch.set_multithreading_enabled


class LazyTensor(torch.Tensor):
    # _node: the Node whose value this tensor currently is; _spec: its TensorSpec;
    # _storage/_seen: alias group and the group version _node reflects (None: no aliases); not
    # "_version", which is torch's version counter (Tensor._version) and must read as eager's.
    __slots__ = ("_node", "_spec", "_storage", "_seen")

    # Capture happens below autograd, at the aten level; no torch-function layer (it costs
    # about 1 us per op and would wrap results of plain tensors).
    __torch_function__ = torch._C._disabled_torch_function_impl

    __torch_dispatch__ = classmethod(dispatch.torch_dispatch)

    # -- values leave the device only through these --------------------------------------

    def tolist(self):
        # the value answers itself: ``self.cpu().tolist()`` took a trip through the dispatcher and a
        # copy first, about 20 us where eager takes 1, and a generation loop reads every token so
        return dispatch.value_of(self).tolist()

    def numpy(self, *, force: bool = False):
        return self.cpu().numpy(force=force)

    def __repr__(self, *, tensor_contents=None):
        # print the values like eager does for a device tensor
        host = self.detach().cpu()
        text = repr(host)
        suffix = f", device='{self.device}'"
        if self.requires_grad:
            extra = f", grad_fn=<{type(self.grad_fn).__name__}>" if self.grad_fn is not None else ", requires_grad=True"
        else:
            extra = ""
        if text.endswith(")"):
            return text[:-1] + suffix + extra + ")"
        return text + suffix + extra

    def __reduce_ex__(self, proto):
        # pickling / torch.save: save the value, as a CUDA tensor saves its data
        return (_rebuild, (self.detach().cpu(), self.requires_grad, bool(getattr(self, "_is_param", False)),
                           self._spec.index))

    def backward(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
        # The engine runs a device's backward on a thread of its own and waits for it. For this
        # device every backward op is a Python capture; run from the calling thread (autograd's
        # "multithreading disabled" mode, which changes where nodes run, never what they compute)
        # each op costs 10-30% less. torch.autograd.backward/grad on these tensors stay as they are.
        was = _multithreading()
        _set_multithreading(False)
        try:
            return torch.Tensor.backward(self, gradient, retain_graph, create_graph, inputs)
        finally:
            _set_multithreading(was)

    # ``t.data = other``: torch re-points the wrapper at ``other``'s storage and metadata (and
    # refuses what eager refuses); the LazyTensor then takes ``other``'s value and shares its
    # storage, as eager's tensor does. (torch's setter alone changed the metadata and kept the
    # old value.) Reading ``t.data`` is torch's getter: a detached alias.
    data = property(torch._C.TensorBase.data.__get__, lambda self, other: _set_data(self, other),
                    doc=torch._C.TensorBase.data.__doc__)

    @property
    def genie_node(self):
        """The graph node this tensor's value comes from (for inspection)."""
        s = self._storage
        if s is not None and self._seen != s.version:
            dispatch._refresh(self)
        return self._node


def _set_data(t, other) -> None:
    aliasing.set_wrapper_data(t, other)
    if isinstance(other, LazyTensor):
        aliasing.alias_all(t, other)


def _rebuild(host: torch.Tensor, requires_grad: bool, is_param: bool = False, index: int = 0):
    # back on the device it was saved from, as a CUDA tensor is
    n = dispatch.device_count()
    if index >= n:  # (torch.load's map_location reaches storages only, not this rebuild)
        raise RuntimeError(f"genie: a tensor saved from remote_accelerator:{index} cannot be loaded with {n} "
                           f"device{'s' * (n != 1)}: load it inside genie.remote([...]) with enough servers, "
                           "or save the tensor's .cpu() copy")
    t = host.to(dispatch.device_at(index) if index else dispatch.DEVICE)
    if is_param:  # a Parameter on the device is a LazyTensor flagged as one (nn.Parameter's rule)
        return torch.nn.Parameter(t, requires_grad)
    if requires_grad:
        t.requires_grad_(True)
    return t


dispatch.LazyTensor = aliasing.LazyTensor = device_choice.LazyTensor = written_memory.LazyTensor = LazyTensor
# Optimizers and clip_grad_norm_ take their multi-tensor (foreach) path on the device, as they do on
# CUDA: torch offers it to PrivateUse1 devices, for tensors of the types listed here (DTensor lists
# itself the same way). An AdamW step is then eight captured ops in all instead of eight per
# parameter, with eager's values (tests/test_replay.py checks them against eager's single-tensor step).
for _types in (_optimizer._foreach_supported_types, _foreach_utils._foreach_supported_types):
    if LazyTensor not in _types:
        _types.append(LazyTensor)
fastpath.install(LazyTensor)
special_ops.install()
module_conversion.install()
# torch.load's default weights_only unpickler accepts only allow-listed globals
torch.serialization.add_safe_globals([_rebuild])
