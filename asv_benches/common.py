"""Timing helpers: every figure is a median over many repeats, eager and lazy in one process."""

from __future__ import annotations

import gc
import statistics
import time

import torch

import genie  # noqa: F401  (registers the device)

REMOTE = "remote_accelerator"


def median_us(fn, number: int = 2000, repeat: int = 9, gc_on: bool = False) -> float:
    """Median per-call microseconds of ``fn`` over ``repeat`` rounds of ``number`` calls, with the
    cyclic GC off (as timeit times) unless ``gc_on``: a program's own collections then count."""
    fn()
    times = []
    gc_was = gc.isenabled()
    if not gc_on:
        gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times.append((time.perf_counter() - t0) / number * 1e6)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(times)


def interleaved_ratio(eager_fn, lazy_fn, number: int = 2000, repeat: int = 9,
                      gc_on: bool = False) -> tuple[float, float, float]:
    """(ratio, eager_us, lazy_us): the rounds alternate so machine drift hits both alike."""
    eager, lazy = [], []
    for _ in range(repeat):
        eager.append(median_us(eager_fn, number, 1, gc_on))
        lazy.append(median_us(lazy_fn, number, 1, gc_on))
    e, la = statistics.median(eager), statistics.median(lazy)
    return la / e, e, la


def no_grad_inputs(*tensors):
    return [t.detach() for t in tensors]


def materialize(out):
    for t in (out if isinstance(out, (list, tuple)) else (out,)):
        genie.materialize(t)
    return out


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource
    return pages * resource.getpagesize()


torch.set_grad_enabled(True)
