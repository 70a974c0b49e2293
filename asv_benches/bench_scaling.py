"""Graph scaling: capture and materialize chains of 1e3..1e6 ops; cost per op must stay flat."""

from __future__ import annotations

import gc
import statistics
import time

import torch

from .common import REMOTE, materialize


def _chain(n: int):
    y = torch.zeros(4, device=REMOTE)
    t0 = time.perf_counter()
    for _ in range(n):
        y = y + 1
    t1 = time.perf_counter()
    materialize(y)
    t2 = time.perf_counter()
    assert y.cpu()[0].item() == n
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


def capture_flatness(small: int = 1_000, large: int = 1_000_000) -> tuple[float, float, float, float]:
    """Per-op capture (us) of a ``small`` and a ``large`` chain, then the same with the cyclic GC
    off (the collector's passes over the live nodes, told apart from genie's own cost): medians of
    as many chains as make 30,000 ops (one of the large), so that the small figure is not one
    noisy millisecond."""
    _chain(200)
    sizes = (small, large)
    on = [statistics.median(_chain(n)[0] for _ in range(max(1, 30_000 // n))) for n in sizes]
    was = gc.isenabled()
    gc.disable()
    try:
        off = [statistics.median(_chain(n)[0] for _ in range(max(1, 30_000 // n))) for n in sizes]
    finally:
        if was:
            gc.enable()
    return on[0], on[1], off[0], off[1]


class ChainScaling:
    params = [1_000, 10_000, 100_000, 1_000_000]
    param_names = ["ops"]
    timeout = 900

    def setup_cache(self):
        _chain(200)  # one-time costs (signature cache, first materialization) are not per-op costs
        results = {n: _chain(n) for n in self.params}
        # the same chains with the cyclic GC off: the floor beside the capture figure, which
        # separates the collector's passes over the live nodes from genie's own per-op cost
        was = gc.isenabled()
        gc.disable()
        try:
            for n in self.params:
                results[n] = results[n] + (_chain(n)[0],)
        finally:
            if was:
                gc.enable()
        return results

    def track_capture_us_per_op(self, results, ops):
        return results[ops][0]

    track_capture_us_per_op.unit = "us"

    def track_capture_us_per_op_gc_off(self, results, ops):
        return results[ops][2]

    track_capture_us_per_op_gc_off.unit = "us"

    def track_materialize_us_per_op(self, results, ops):
        return results[ops][1]

    track_materialize_us_per_op.unit = "us"
