"""Capture plus execution of a whole forward, next to the eager forward."""

from __future__ import annotations

import copy
import statistics
import time

import torch

from .common import REMOTE, materialize
from .models import MODELS


def _forward_times(name: str, repeat: int = 7):
    make_model, make_input = MODELS[name]
    torch.manual_seed(0)
    eager = make_model().eval()
    lazy = copy.deepcopy(eager).to(REMOTE)
    x = make_input()
    xl = x.to(REMOTE)
    materialize([xl] + list(lazy.parameters()) + list(lazy.buffers()))
    te, tl = [], []
    with torch.no_grad():
        eager(x)
        lazy(xl).cpu()
        for _ in range(repeat):
            t0 = time.perf_counter()
            eager(x)
            te.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = lazy(xl)
            materialize(out)
            tl.append(time.perf_counter() - t0)
    return statistics.median(te), statistics.median(tl)


class Materialize:
    params = list(MODELS)
    param_names = ["model"]
    timeout = 600

    def setup_cache(self):
        return {name: _forward_times(name) for name in MODELS}

    def track_materialize_overhead_ratio(self, times, model):
        e, la = times[model]
        return la / e

    track_materialize_overhead_ratio.unit = "x eager"

    def track_eager_forward_ms(self, times, model):
        return times[model][0] * 1e3

    track_eager_forward_ms.unit = "ms"

    def track_lazy_forward_ms(self, times, model):
        return times[model][1] * 1e3

    track_lazy_forward_ms.unit = "ms"


class ForwardTime:
    """asv's own timing of the two forwards (time_*), beside the ratio above."""
    params = (list(MODELS), ["eager", "lazy"])
    param_names = ["model", "device"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, model, device):
        make_model, make_input = MODELS[model]
        torch.manual_seed(0)
        self.model = make_model().eval()
        self.x = make_input()
        if device == "lazy":
            self.model.to(REMOTE)
            self.x = self.x.to(REMOTE)
            materialize([self.x] + list(self.model.parameters()) + list(self.model.buffers()))
        with torch.no_grad():  # warm-up: first-call costs (signature cache, allocator) are not per-forward
            out = self.model(self.x)
            if device == "lazy":
                materialize(out)

    def time_forward(self, model, device):
        with torch.no_grad():
            out = self.model(self.x)
            if device == "lazy":
                materialize(out)
