"""Per-op capture cost, as a ratio to the same op in eager (track_*), and in microseconds."""

from __future__ import annotations

import torch
from torch import nn

from .common import REMOTE, interleaved_ratio


def _programs():
    """name -> (make(device) -> callable performing one op on that device)."""
    def add(d):
        y = torch.zeros(8, 8, device=d)
        return lambda: y + 1

    def relu_mm(d):
        y, w = torch.randn(8, 8).to(d), torch.randn(8, 8).to(d)
        return lambda: torch.relu(y @ w)

    def view(d):
        y = torch.zeros(8, 8, device=d)
        return lambda: y.t()

    def inplace(d):
        y = torch.zeros(8, 8, device=d)
        return lambda: y.mul_(1.0)

    def reduction(d):
        y = torch.randn(8, 8).to(d)
        return lambda: y.sum(0)

    def conv2d(d):
        x, w = torch.randn(1, 3, 8, 8).to(d), torch.randn(4, 3, 3, 3).to(d)
        return lambda: nn.functional.conv2d(x, w, padding=1)

    def factory(d):
        return lambda: torch.zeros(8, 8, device=d)

    def transformer_block(d):
        torch.manual_seed(0)
        block = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval().to(d)
        x = torch.randn(2, 4, 16).to(d)

        def run():
            with torch.no_grad():
                return block(x)
        return run

    return {f.__name__: f for f in (add, relu_mm, view, inplace, reduction, conv2d, factory, transformer_block)}


PROGRAMS = _programs()


class CaptureOverhead:
    params = list(PROGRAMS)
    param_names = ["op"]
    timeout = 300

    def setup_cache(self):
        results = {}
        for name, make in PROGRAMS.items():
            number = 100 if name == "transformer_block" else 2000
            ratio, eager, lazy = interleaved_ratio(make("cpu"), make(REMOTE), number=number)
            results[name] = (ratio, eager, lazy)
        return results

    def track_capture_overhead_ratio(self, results, op):
        return results[op][0]

    track_capture_overhead_ratio.unit = "x eager"

    def track_capture_overhead_us(self, results, op):
        return results[op][2]

    track_capture_overhead_us.unit = "us"

    def track_eager_us(self, results, op):
        return results[op][1]

    track_eager_us.unit = "us"
