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
        """Bytes genie adds (nodes, specs, wrappers, graph) over the tensor bytes it holds.

        tracemalloc sees Python allocations only, so torch's tensor storage (the data itself:
        the host snapshot the device will upload) is not in ``overhead``."""
        # each case runs once untraced first: one-time costs (signature cache, imports) are not per-tensor
        if case == "tensor_1M":
            host = torch.randn(1_000_000)
            warm = host.to(REMOTE)
            overhead, keep = _python_bytes(lambda: host.to(REMOTE))
            tensor_bytes = host.numel() * host.element_size()
        else:
            warm = ResNet18().to(REMOTE)
            model = ResNet18()
            tensor_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
            overhead, keep = _python_bytes(lambda: model.to(REMOTE))
        del warm
        del keep
        return 100.0 * overhead / tensor_bytes

    track_mem_overhead_percent.unit = "%"


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
