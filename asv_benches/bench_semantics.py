"""What semantic capture costs: the module hooks' overhead on capturing a transformer forward
(ratio of capture with the hooks to capture without them, same process, interleaved rounds),
and pattern recognition time on graphs of 10,000 and 100,000 nodes (per node: flat means linear).

``python -m asv_benches.bench_semantics`` prints the figures."""

from __future__ import annotations

import gc
import random
import statistics
import time

import torch

import genie
from genie.capture import dispatch
from genie.semantics import context

from .common import REMOTE
from .zoo import SEQ, VOCAB, DecoderLM


def _decoder():
    torch.manual_seed(0)
    model = DecoderLM().eval().to(REMOTE)
    ids = torch.randint(0, VOCAB, (2, SEQ)).to(REMOTE)
    return model, ids


def annotation_overhead(repeat: int = 150, number: int = 2) -> tuple[float, float, float]:
    """(ratio, capture us with module context, without): a decoder LM's no_grad forward, captured
    only (nothing runs), so the context's cost is not diluted by execution. The two states
    alternate in a seeded random order, switched outside the timed region, with the collector
    run between rounds and off inside them."""
    model, ids = _decoder()

    def capture():
        with torch.no_grad():
            for _ in range(number):
                model(ids)

    def with_context(on: bool):
        if on:
            context.track(model)
            dispatch.backward_context = context.backward_context
        else:
            context.untrack(model)
            dispatch.backward_context = None

    capture()
    times = {True: [], False: []}
    order = random.Random(0)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            states = [True, False]
            order.shuffle(states)
            for on in states:
                with_context(on)
                gc.collect()
                t0 = time.perf_counter()
                capture()
                times[on].append(time.perf_counter() - t0)
    finally:
        with_context(True)
        if gc_was:
            gc.enable()
    # each round's two timings are neighbours in time: the median of their ratios cancels drift
    ratio = statistics.median(on / off for on, off in zip(times[True], times[False]))
    return ratio, statistics.median(times[True]) / number * 1e6, statistics.median(times[False]) / number * 1e6


def recognition_graph(nodes: int):
    """A captured graph of about ``nodes`` nodes: decoder forwards captured back to back. Genie
    runs long pending graphs on its own to bound memory; the structure is kept so that all of
    it stays recognizable."""
    model, ids = _decoder()
    outs = []
    with torch.no_grad(), genie.keep_structure():
        outs.append(model(ids))
        first = len(genie.graph_of(*outs))
        outs.append(model(ids))
        per_forward = len(genie.graph_of(*outs)) - first  # the weights are shared by all
        while first + (len(outs) - 1) * per_forward < nodes:
            outs.append(model(ids))
    return genie.graph_of(*outs), outs


def recognition_time(nodes: int, repeat: int = 3) -> tuple[float, int, dict]:
    """(seconds for genie.analyze, graph size, pattern counts)."""
    g, outs = recognition_graph(nodes)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        analysis = genie.analyze(g)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), len(g), analysis.counts()


class AnnotationOverhead:
    timeout = 300

    def setup_cache(self):
        return annotation_overhead()

    def track_capture_ratio_with_module_context(self, r):
        return r[0]

    track_capture_ratio_with_module_context.unit = "x without"

    def track_capture_us_per_forward(self, r):
        return r[1]

    track_capture_us_per_forward.unit = "us"


class Recognition:
    params = [10_000, 100_000]
    param_names = ["nodes"]
    timeout = 600

    def setup_cache(self):
        return {n: recognition_time(n) for n in self.params}

    def track_recognition_seconds(self, results, nodes):
        return results[nodes][0]

    track_recognition_seconds.unit = "s"

    def track_recognition_us_per_node(self, results, nodes):
        seconds, size, _ = results[nodes]
        return seconds / size * 1e6

    track_recognition_us_per_node.unit = "us"


if __name__ == "__main__":
    torch.set_num_threads(1)
    ratio, on, off = annotation_overhead()
    print(f"capture of a decoder LM forward: {on:.0f} us with module context, {off:.0f} us without: {ratio:.3f}x")
    for n in (10_000, 100_000):
        seconds, size, counts = recognition_time(n)
        print(f"recognition on {size} nodes: {seconds:.3f} s ({seconds / size * 1e6:.2f} us/node) {counts}")
