"""Registration of the ``remote_accelerator`` device with PyTorch.

PyTorch's PrivateUse1 slot is renamed, given a device module (``torch.remote_accelerator``,
needed since torch.accelerator treats a renamed backend as the current accelerator and calls
into it from freeze_rng_state and friends), hooks and a device guard. torch's private
backend-registration helper is used here and nowhere else (the other private torch APIs genie
needs are in genie/_torch.py), since it may change between torch releases.

Factory ops (no tensor inputs, a ``device`` argument) get PrivateUse1 kernels so that
``torch.randn(..., device="remote_accelerator")`` is captured as ``aten::randn`` rather than as
the ``empty`` + ``normal_`` its composite kernel would reduce to. Anything else that reaches the
PrivateUse1 key without a LazyTensor fails in the dispatcher, which names the op.
"""

from __future__ import annotations

import os

import torch

from . import _torch
from .capture import autocast, device_choice, dispatch, factories, rng
from .execution import scheduler

NAME = "remote_accelerator"
_registered = False
_libs: list = []




def _index(device) -> int:
    """The index ``device`` (an int, a string, a torch.device or None: the current one) names, in range."""
    if device is None:
        return dispatch.current_index()
    if isinstance(device, int):
        index = device
    else:
        device = torch.device(device)
        if device.type != NAME:
            raise ValueError(f"{NAME}: expected a {NAME} device, got {device}")
        index = dispatch.current_index() if device.index is None else device.index
    return dispatch.check_index(index)


class _DeviceContext:
    """``torch.remote_accelerator.device(i)``: makes device ``i`` current inside the block, as
    ``torch.cuda.device`` does (``torch.utils.checkpoint`` stashes each device's RNG state in one)."""

    def __init__(self, device):
        self.index = None if device is None or (isinstance(device, int) and device < 0) else _index(device)
        self.previous = None

    def __enter__(self):
        self.previous = dispatch.current_index()
        if self.index is not None:
            dispatch.set_current_index(self.index)
        return self

    def __exit__(self, *exc):
        dispatch.set_current_index(self.previous)
        return False


class _DeviceModule:
    """``torch.remote_accelerator``: what torch expects of an accelerator's device module."""

    # torch.utils.checkpoint stashes and restores a device's RNG state only where the device
    # module says it is initialized (``getattr(module, "_initialized", False)``): without it the
    # recomputed forward draws other dropout masks than the first forward did.
    _initialized = True
    device = _DeviceContext

    @staticmethod
    def is_available() -> bool:
        return True

    @staticmethod
    def is_initialized() -> bool:
        return True

    @staticmethod
    def _is_in_bad_fork() -> bool:
        return False

    @staticmethod
    def device_count() -> int:
        # one device per genie server (genie.remote([...]), GENIE_SERVERS=a,b); one when local
        return scheduler.device_count()

    @staticmethod
    def current_device() -> int:
        return dispatch.current_index()

    @staticmethod
    def set_device(device) -> None:
        dispatch.set_current_index(_index(device))

    @staticmethod
    def synchronize(device=None) -> None:
        # nothing is queued: work runs when a value is read, and reading waits for it
        pass

    @staticmethod
    def manual_seed(seed: int) -> None:
        rng.chain_for(dispatch.current_index()).seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        rng.seed_all(seed)

    @staticmethod
    def seed() -> None:
        # a non-deterministic seed for this device only (torch.seed() would reseed the host too)
        rng.chain_for(dispatch.current_index()).seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))

    @staticmethod
    def seed_all() -> None:
        rng.seed_all(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))

    @staticmethod
    def initial_seed() -> int:
        return rng.chain_for(dispatch.current_index()).initial_seed

    @staticmethod
    def get_rng_state(device=None) -> torch.Tensor:
        return rng.chain_for(_index(device)).get_state(scheduler.materialize)

    @staticmethod
    def set_rng_state(state: torch.Tensor, device=None) -> None:
        rng.chain_for(_index(device)).set_state(state)

    @staticmethod
    def get_amp_supported_dtype():
        # autocast on the device runs the execution device's policy (capture/autocast.py)
        return list(autocast.SUPPORTED_DTYPES)

    @staticmethod
    def is_bf16_supported() -> bool:
        return True


_TorchGenerator = torch._C.Generator


class _AnyGenerator(type(_TorchGenerator)):
    """``isinstance(g, torch.Generator)`` holds for every generator, as before genie replaced the name."""

    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, _TorchGenerator)

    def __subclasscheck__(cls, sub) -> bool:
        return issubclass(sub, _TorchGenerator)


class Generator(_TorchGenerator, metaclass=_AnyGenerator):
    """``torch.Generator`` once genie is imported: torch's own generator for every device but this
    one, a ``rng.DeviceGenerator`` for ``remote_accelerator`` (torch asks PrivateUse1's C++ hooks
    for a new generator, which a Python backend cannot provide)."""

    def __new__(cls, device=None):
        if device is not None and not isinstance(device, int) and torch.device(device).type == NAME:
            return rng.DeviceGenerator(_index(device))
        return _TorchGenerator() if device is None else _TorchGenerator(device)


Generator.__module__, Generator.__qualname__ = "torch", "Generator"  # pickles as torch.Generator


def _factory_schemas():
    """aten overloads that take a device and no tensor: the ops that create tensors from nothing."""
    for schema in _torch.all_schemas():
        if not schema.name.startswith("aten::"):
            continue
        names = {a.name for a in schema.arguments}
        if "device" not in names:
            continue
        if any(_mentions_tensor(a.type) for a in schema.arguments):
            continue
        if any(r.alias_info is not None for r in schema.returns):
            continue
        yield schema


def _mentions_tensor(t) -> bool:
    return "Tensor" in str(t)


def _register_factories(lib) -> None:
    for schema in _factory_schemas():
        name = schema.name[len("aten::"):]
        overload = schema.overload_name
        packet = getattr(torch.ops.aten, name, None)
        if packet is None:
            continue
        op = getattr(packet, overload or "default", None)
        if op is None:
            continue

        def kernel(*args, _op=op, **kwargs):
            return factories.capture_factory(_op, args, kwargs)

        try:
            lib.impl(f"{name}.{overload}" if overload else name, kernel, "PrivateUse1")
        except RuntimeError:
            pass  # an overload with a registration of its own


def _copy_from(src, dst, non_blocking=False):
    """Reached when a copy runs with Python dispatch excluded (``torch.tensor(..., device=)``):
    the same capture as ``dst.copy_(src)`` (either side may be the LazyTensor)."""
    return dispatch.capture(torch.ops.aten.copy_.default, (dst, src), {"non_blocking": non_blocking})


# Composite out= kernels whose tensor-subclass branch rebinds ``out`` instead of writing it (the
# caller's tensor keeps garbage; eager under any TorchDispatchMode shows the same). For tensors on
# this device they are replaced, at the device's autograd key, by "compute, then copy into out".
_REBINDING_OUT_OPS = {
    "linalg_matrix_rank.atol_rtol_tensor_out": "atol_rtol_tensor",
    "linalg_matrix_rank.atol_rtol_float_out": "atol_rtol_float",
    "linalg_matrix_rank.out": "default",
    "linalg_matrix_rank.out_tol_tensor": "tol_tensor",
}


def _register_out_fixes(lib) -> None:
    packet = torch.ops.aten.linalg_matrix_rank
    for name, functional in _REBINDING_OUT_OPS.items():
        func = getattr(packet, functional)

        def kernel(*args, _func=func, **kwargs):
            out = kwargs.pop("out")
            result = _func(*args, **kwargs)
            if out.shape != result.shape:
                out.resize_(result.shape)
            return out.copy_(result)

        lib.impl(name, kernel, "AutogradPrivateUse1")


_PRIVATE_USE1 = torch._C._autograd.DeviceType.PrivateUse1


class _DeviceGuard(torch._C._acc.DeviceGuard):
    """The device guard torch's Python-backend setup asks for. The autograd engine calls
    ``type_`` a few times per backward node (about 400 calls in a small decoder's backward), so
    it returns a constant (torch's default looks the enum up through three attributes)."""

    def type_(self):
        return _PRIVATE_USE1


def register() -> None:
    global _registered
    if _registered:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(rename=NAME, backend_module=_DeviceModule(), device_guard=_DeviceGuard())
    torch.Generator = Generator
    dispatch.DEVICE = dispatch.device_at(0)
    lib = torch.library.Library("aten", "IMPL")
    _register_factories(lib)
    lib.impl("_copy_from", _copy_from, "PrivateUse1")
    _register_out_fixes(lib)
    device_choice.register(lib)
    autocast.register(lib)
    # No backend fallback: for an op that reaches PrivateUse1 without a LazyTensor, torch's own
    # "Could not run 'aten::X' with arguments from the 'remote_accelerator' backend" names it.
    _libs.append(lib)
    _registered = True
