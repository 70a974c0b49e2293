"""Memory: graph and metadata bytes next to tensor bytes, and resident bytes per captured node."""

from __future__ import annotations

import ast
import gc
import os
import subprocess
import sys
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


def _rss_per_live(make, count: int = 100_000) -> float:
    """Resident bytes per object for ``count`` objects from ``make`` held alive in a list (a
    first small batch, made and dropped, takes one-time costs out)."""
    keep = [make() for _ in range(100)]
    del keep
    gc.collect()
    before = rss_bytes()
    keep = [make() for _ in range(count)]
    after = rss_bytes()
    assert len(keep) == count
    return (after - before) / count


class BytesPerLiveTensor:
    timeout = 300

    def track_bytes_per_live_tensor_node(self):
        """Resident memory per captured node whose LazyTensor is still alive (100,000 held in a list)."""
        y = torch.zeros(8, 8, device=REMOTE)
        return _rss_per_live(lambda: y + 1)

    track_bytes_per_live_tensor_node.unit = "bytes"


class BytesPerBareWrapper:
    timeout = 300

    def track_bytes_per_bare_wrapper(self):
        """The floor beside ``BytesPerLiveTensor``: resident memory per live 8x8 wrapper subclass
        with no node and no slots (torch's TensorImpl, its storage object and the Python object),
        held as that benchmark holds its LazyTensors. The wrapper is profile_capture's dispatcher
        floor."""
        from .profile_capture import Bare, _wrapper
        return _rss_per_live(lambda: _wrapper(Bare, (8, 8), (8, 1), 256))

    track_bytes_per_bare_wrapper.unit = "bytes"


def random_loop(iterations: int = 200_000):
    """(resident bytes added per iteration, live graph nodes after) for a loop that makes random
    tensors on the device and drops them unread. The chain runs its pending links every
    ``rng.FLUSH_LINKS`` links, as one plan whose program is compiled at its second sighting
    (about 20 MB of compiler peak for 1,024 nodes, which the allocator keeps): the warm-up
    covers that one-off, so the figure is the loop's steady state."""
    from genie import get_graph
    from genie.capture.rng import FLUSH_LINKS
    for _ in range(4 * FLUSH_LINKS):
        torch.randn(8, 8, device=REMOTE)
    gc.collect()
    before = rss_bytes()
    for _ in range(iterations):
        torch.randn(8, 8, device=REMOTE)
    gc.collect()
    after = rss_bytes()
    return (after - before) / iterations, len(get_graph())


class RandomLoop:
    timeout = 600

    def setup_cache(self):
        return random_loop()

    def track_random_loop_bytes_per_iteration(self, r):
        return r[0]

    track_random_loop_bytes_per_iteration.unit = "bytes"

    def track_random_loop_graph_nodes(self, r):
        return r[1]

    track_random_loop_graph_nodes.unit = "nodes"


def in_fresh_process(benchmark: str, timeout: float = 600) -> float | tuple[float, ...]:
    """``Class.track_method`` of this module (a number), or a function of it (a tuple of numbers),
    measured in a new interpreter. An RSS delta reads
    low in a process that has freed memory before (the new objects reuse those pages: a bare
    wrapper measured after the capture benchmarks read 49 bytes), so the summary, which runs
    everything in one process, measures resident bytes this way, as asv's own runs do."""
    if "." in benchmark:
        cls, method = benchmark.split(".")
        code = f"from asv_benches.bench_memory import {cls}; print(repr({cls}().{method}()))"
    else:  # a function of this module returning a tuple of numbers
        code = f"from asv_benches.bench_memory import {benchmark}; print(repr({benchmark}()))"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where asv_benches imports from
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True,
                         cwd=root)
    result = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    return tuple(float(x) for x in result) if isinstance(result, tuple) else float(result)
