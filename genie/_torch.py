"""Private torch APIs genie relies on, in one place, each with why it is needed and what breaks
if torch changes it. Leaf module: imports nothing of genie.

Each name below is torch's, looked up once at import: a torch that lacks one fails here with an
ImportError that names the API and the torch version, not deep inside a capture. (``_backend``
still registers the device through torch's backend-registration internals itself; types such as
``torch._C.DispatchKeySet`` and ``torch._C.Generator`` are used where they are needed.)
"""

from __future__ import annotations

import contextlib

import torch

_K = torch._C.DispatchKey
# torch._C._dispatch_tls_local_{include,exclude}_set and _ForceDispatchKeyGuard: inside
# ``__torch_dispatch__`` the dispatcher's thread-local state excludes every key above Python, the
# Conjugate and Negative keys among them; a kernel run there sees conjugate views as raw data and
# computes wrong values. Real kernels run with the key sets a plain eager call has (read once at
# import), minus Python dispatch (no subclass or mode re-entry) and autocast (the captured graph
# already holds autocast's casts). If torch renames these, importing genie fails here, naming them.
try:
    _INCLUDE = torch._C._dispatch_tls_local_include_set()
    _EXCLUDE = torch._C._dispatch_tls_local_exclude_set()
    _force_keys = torch._C._ForceDispatchKeyGuard
except AttributeError as e:  # pragma: no cover - a torch without them
    raise ImportError(f"genie needs torch's dispatcher key-set guards, which torch {torch.__version__} lacks: {e}") from e
for _key in (_K.Python, _K.PythonTLSSnapshot, _K.PreDispatch, _K.AutocastCPU, _K.AutocastCUDA):
    _EXCLUDE = _EXCLUDE | torch._C.DispatchKeySet(_key)


def _require(owner, name: str):
    try:
        return getattr(owner, name)
    except AttributeError:  # pragma: no cover - a torch without it
        raise ImportError(f"genie needs {owner.__name__}.{name}, which torch {torch.__version__} lacks") from None


# The conjugate / negative view bits of a wrapper (a LazyTensor made for ``x.conj()`` must report
# them as eager's view does). If they go, capture of complex views breaks.
set_conj = _require(torch._C, "_set_conj")
set_neg = _require(torch._C, "_set_neg")
# Whether a dispatch key has a kernel for an op: which composites decompose, which ops autocast
# covers, which have a backend kernel on the execution device. If it goes, op classification breaks.
has_kernel = _require(torch._C, "_dispatch_has_kernel_for_dispatch_key")
# Every registered schema: factories get PrivateUse1 kernels, policies are found by walking them.
all_schemas = _require(torch._C, "_jit_get_all_schemas")
# The autograd node being executed: a backward op is captured in its forward module's context,
# and the fast path steps aside inside a custom Function's backward.
current_autograd_node = _require(torch._C, "_current_autograd_node")
# The autograd engine's per-thread "multithreading" switch: with several devices, backward runs in
# the caller's thread (a device thread per PrivateUse1 device would serialize on genie's lock).
set_multithreading_enabled = _require(torch._C, "_set_multithreading_enabled")
is_multithreading_enabled = _require(torch._C, "_is_multithreading_enabled")
# What the fast path must not skip: dispatch modes, function modes, autocast, a jit trace.
dispatch_mode_depth = _require(torch._C, "_len_torch_dispatch_stack")
function_mode_enabled = _require(torch._C, "_is_torch_function_mode_enabled")
any_autocast_enabled = _require(torch._C, "_is_any_autocast_enabled")
jit_tracing_state = _require(torch._C, "_get_tracing_state")
# Dispatcher guards: re-dispatch below a key (autograd, autocast) from a kernel registered there.
ExcludeDispatchKeyGuard = _require(torch._C, "_ExcludeDispatchKeyGuard")
AutoDispatchBelowAutograd = _require(torch._C, "_AutoDispatchBelowAutograd")
# How many tensors use a storage: an in-place write may take a buffer nobody else can see
# (execution/local.py's _stealable). If it goes, every write copies (slower, never wrong).
storage_use_count = _require(torch._C, "_storage_Use_Count")


@contextlib.contextmanager
def eager_kernels():
    """Run real kernels as eager would, without re-entering genie, without autograd."""
    with _force_keys(_INCLUDE, _EXCLUDE), torch.no_grad():
        yield
