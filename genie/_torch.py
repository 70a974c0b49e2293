"""Private torch APIs genie relies on, in one place, each with why it is needed and what breaks
if torch changes it. Leaf module: imports nothing of genie.

(Only some have moved here yet; ``_backend`` and the capture and execution modules still use
others directly: see docs/architecture.md, "Private torch APIs".)
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


@contextlib.contextmanager
def eager_kernels():
    """Run real kernels as eager would, without re-entering genie, without autograd."""
    with _force_keys(_INCLUDE, _EXCLUDE), torch.no_grad():
        yield
