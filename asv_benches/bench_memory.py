"""Memory: graph and metadata bytes next to tensor bytes, and resident bytes per captured node."""

from __future__ import annotations

import gc
import tracemalloc

import torch

from .common import REMOTE, rss_bytes
from .models import ResNet18


def _python_bytes(make):
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keep = make()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return after - before, keep


class MemoryOverhead:
    params = ["tensor_1M", "resnet18_params"]
    param_names = ["case"]
    timeout = 300

    def track_mem_overhead_percent(self, case):
        """Python-side bytes genie adds (nodes, specs, wrappers) over the tensor bytes held."""
        if case == "tensor_1M":
            host = torch.randn(1_000_000)
            overhead, keep = _python_bytes(lambda: host.to(REMOTE))
            tensor_bytes = host.numel() * host.element_size()
        else:
            model = ResNet18()
            tensor_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            overhead, keep = _python_bytes(lambda: model.to(REMOTE))
        # the snapshot of host data the device holds is the tensor itself, not overhead
        held = sum(t.numel() * t.element_size() for t in _host_snapshots(keep))
        return 100.0 * max(0, overhead - held) / tensor_bytes

    track_mem_overhead_percent.unit = "%"


def _host_snapshots(keep):
    from genie.capture.lazy_tensor import LazyTensor
    tensors = [keep] if isinstance(keep, torch.Tensor) else [p for p in keep.parameters()] + list(keep.buffers())
    out = []
    for t in tensors:
        if isinstance(t, LazyTensor):
            for a in t.genie_node.args:
                if isinstance(a, torch.Tensor) and not isinstance(a, LazyTensor):
                    out.append(a)
    return out


class BytesPerNode:
    timeout = 300

    def track_bytes_per_node(self):
        """Resident memory per node of a 100,000-op chain (the process RSS, not sys.getsizeof)."""
        y = torch.zeros(8, 8, device=REMOTE)
        y = y + 1
        gc.collect()
        before = rss_bytes()
        for _ in range(100_000):
            y = y + 1
        after = rss_bytes()
        return (after - before) / 100_000

    track_bytes_per_node.unit = "bytes"
