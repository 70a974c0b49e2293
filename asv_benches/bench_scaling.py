"""Graph scaling: capture and materialize chains of 1e3..1e6 ops; cost per op must stay flat."""

from __future__ import annotations

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


class ChainScaling:
    params = [1_000, 10_000, 100_000, 1_000_000]
    param_names = ["ops"]
    timeout = 900

    def setup_cache(self):
        _chain(200)  # one-time costs (signature cache, first materialization) are not per-op costs
        return {n: _chain(n) for n in self.params}

    def track_capture_us_per_op(self, results, ops):
        return results[ops][0]

    track_capture_us_per_op.unit = "us"

    def track_materialize_us_per_op(self, results, ops):
        return results[ops][1]

    track_materialize_us_per_op.unit = "us"
