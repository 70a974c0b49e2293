"""``torch.autocast("remote_accelerator")``: mixed precision with the execution device's policy.

Which ops run in the lower precision, which in float32 and which at the widest input dtype is
each device's own policy (CPU's lists when executing on CPU, CUDA's on CUDA), registered in C++
as kernels at that device's autocast key. Genie registers a kernel at ``AutocastPrivateUse1``
for every op either policy covers; under autocast on the device it traces the op once per
signature on fake tensors of the execution device under that device's autocast (the trace holds
eager's casts and the op on the cast inputs: device_choice's machinery) and replays the trace on
the LazyTensors below the autocast key. Ops neither policy covers never reach genie here (the
key falls through for them, as on CPU and CUDA), and an op the execution device's policy does not
cover runs as it came. Values and dtypes are eager autocast's on the execution device.
"""

from __future__ import annotations

import threading

import torch
from torch._subclasses.fake_tensor import UnsupportedOperatorException

from .. import _torch, config
from . import device_choice

_EXCLUDE = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastPrivateUse1)
_POLICY_KEYS = ("AutocastCPU", "AutocastCUDA")
DEVICE_TYPE = "remote_accelerator"
# the dtypes torch.autocast accepts for the device (torch asks the device module): those CPU's
# and CUDA's autocast both take
SUPPORTED_DTYPES = [torch.bfloat16, torch.float16]
_libs: list = []  # the fallthrough's library, alive as long as the process


def _ops_with_a_policy():
    return device_choice.aten_ops_with_kernels(keys_any=_POLICY_KEYS)


def _autocast(func, args, kwargs):
    with _torch.ExcludeDispatchKeyGuard(_EXCLUDE):
        key = "AutocastCUDA" if config.execution_device().type == "cuda" else "AutocastCPU"
        if not _torch.has_kernel(func.name(), key):
            return func(*args, **kwargs)
        dtype = torch.get_autocast_dtype(DEVICE_TYPE)
        call = device_choice.Call(func, args, kwargs, autocast_dtype=dtype)
        if not any(isinstance(a, device_choice.LazyTensor) for a in call.flat):
            raise NotImplementedError(f"{func}: autocast on {DEVICE_TYPE} applies to LazyTensors; this call has "
                                      "none (a tracer's tensors of the device)")
        try:
            trace = call.trace()
        except UnsupportedOperatorException:  # without the policy the dtypes would be wrong: say so
            raise NotImplementedError(f"{func}: autocast on {DEVICE_TYPE} cannot trace the execution device's "
                                      "autocast policy for this op (no fake kernel)") from None
        if trace.lowered and torch.is_autocast_cache_enabled():
            cached = _with_cached_casts(call, trace.lowered, dtype)
            if cached is not None:
                call = cached
                trace = call.trace()
        return call.replay(trace)


# Eager autocast casts a float32 leaf that requires grad (a parameter) to the lower dtype once per
# autocast region and reuses the cast (``cached_cast``): a layer called twice in a region shares
# one cast, so the two uses' gradients are summed in the lower dtype before the cast's backward.
# The same cache here: a parameter's cast, made once, replaces it in the calls whose policy casts
# it down (their trace then sees the lower dtype and casts nothing), until torch clears its own
# cache at the end of the outermost region.
class _CastCache(threading.local):
    """Per thread, as torch's cache and autocast state are (a trace's own autocast region, on its
    thread, clears only that thread's)."""

    def __init__(self):
        self.casts: dict = {}  # id(tensor) -> (the tensor, its cast)


_cache = _CastCache()


def _cacheable(t, dtype) -> bool:
    return t.__class__ is device_choice.LazyTensor and t.dtype == torch.float32 and t.requires_grad \
        and t.is_leaf and not t._is_view() and dtype != torch.float32


def _with_cached_casts(call, lowered, dtype):
    flat = list(call.flat)
    hit = False
    for i in lowered:
        t = flat[i]
        if not _cacheable(t, dtype):
            continue
        casts = _cache.casts
        entry = casts.get(id(t))
        if entry is None or entry[0] is not t or entry[1].dtype != dtype:
            entry = casts[id(t)] = (t, t.to(dtype))
        flat[i] = entry[1]
        hit = True
    return call.with_leaves(flat) if hit else None


def _clear_cast_cache() -> None:
    _cache.casts.clear()
    _torch_clear_autocast_cache()


_torch_clear_autocast_cache = torch.clear_autocast_cache


def register(lib) -> None:
    # torch registers no fallthrough at AutocastPrivateUse1 (it does for CPU's and CUDA's keys):
    # ops no policy covers pass through autocast untouched, as there
    everything = torch.library.Library("_", "IMPL")
    everything.fallback(torch.library.fallthrough_kernel, "AutocastPrivateUse1")
    _libs.append(everything)
    # torch.autocast's exit clears torch's cast cache through this name: genie's goes with it
    torch.clear_autocast_cache = _clear_cast_cache
    for func in _ops_with_a_policy():
        def kernel(*args, _func=func, **kwargs):
            return _autocast(_func, args, kwargs)
        lib.impl(device_choice._impl_name(func), kernel, "AutocastPrivateUse1")
