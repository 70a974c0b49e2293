"""What capture decided for the execution device, forgotten when that device changes.

Capture decides some things once and caches them, by the execution device's kernels and policies:
which composites decompose (``OpClass.composite``: the device has no kernel of its own), output
metadata and the errors kernels raise (checked on the CPU kernel when executing on CPU), the traces
of composites that choose kernels by device type and of autocast policies (a CPU attention trace
must never replay on CUDA), and the factory calls seen. A switch of execution device mid-process
clears them all, so the new device decides afresh.
"""

from __future__ import annotations

from ..ops import schema
from . import device_choice, dispatch, factories


def forget() -> None:
    dispatch._cache.clear()
    factories._seen.clear()
    with device_choice._lock:
        device_choice._traces.clear()
    schema.reclassify()
