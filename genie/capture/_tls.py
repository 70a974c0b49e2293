"""A clean dispatcher state for running real (or meta) kernels from inside a capture handler.

Inside ``__torch_dispatch__`` the dispatcher's thread-local state excludes every key above
Python, the Conjugate and Negative keys among them; a kernel run there sees conjugate views
as raw data and computes wrong values. Real kernels must run with the state a plain eager
call has, minus Python dispatch (no subclass or mode re-entry) and autocast (the captured
graph already holds autocast's casts).
"""

from __future__ import annotations

import contextlib

import torch

_K = torch._C.DispatchKey
_INCLUDE = torch._C._dispatch_tls_local_include_set()
_EXCLUDE = torch._C._dispatch_tls_local_exclude_set()
for _key in (_K.Python, _K.PythonTLSSnapshot, _K.PreDispatch, _K.AutocastCPU, _K.AutocastCUDA):
    _EXCLUDE = _EXCLUDE | torch._C.DispatchKeySet(_key)


@contextlib.contextmanager
def eager_kernels():
    """Run real kernels as eager would, without re-entering genie, without autograd."""
    with torch._C._ForceDispatchKeyGuard(_INCLUDE, _EXCLUDE), torch.no_grad():
        yield
