"""Where materialization time goes: ``python -m asv_benches.profile_execution``.

For a chain of 8x8 adds (per node) and for each small model of the zoo (per forward): eager, the
lazy capture, and the three parts of a replayed materialization (collecting the plan, its
fingerprint and inputs, running the compiled program), medians of rounds in one process.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

import genie
from genie.execution import scheduler

from .common import REMOTE
from .zoo import ZOO


def _parts(capture, rounds: int = 9):
    """Medians (s) of capture, collect, fingerprint, run for ``capture() -> LazyTensor`` outputs."""
    ex = scheduler.get_executor()
    for _ in range(3):
        genie.materialize(capture())
    parts: dict[str, list] = {"capture": [], "collect": [], "fingerprint": [], "run": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = capture()
        t1 = time.perf_counter()
        scheduler._collect(out.genie_node)
        t2 = time.perf_counter()
        plan = scheduler.Plan(out.genie_node, True)
        t3 = time.perf_counter()
        ex.execute(plan)
        plan.finish()
        t4 = time.perf_counter()
        parts["capture"].append(t1 - t0)
        parts["collect"].append(t2 - t1)
        parts["fingerprint"].append((t3 - t2) - (t2 - t1))
        parts["run"].append(t4 - t3)
    return {k: statistics.median(v) for k, v in parts.items()}


def _eager(fn, rounds: int = 9) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> None:
    torch.set_num_threads(1)
    n = 1000
    e0, l0 = torch.zeros(8, 8), torch.zeros(8, 8, device=REMOTE)
    l0.cpu()

    def chain(z):
        for _ in range(n):
            z = z + 1
        return z

    eager = _eager(lambda: chain(e0)) / n
    p = {k: v / n for k, v in _parts(lambda: chain(l0)).items()}
    print(f"chain of {n} 8x8 adds, per node (us): eager {eager * 1e6:.2f}")
    for k, v in p.items():
        print(f"  {k:12s} {v * 1e6:7.2f}  ({v / eager:.2f}x eager)")
    print(f"  materialize {sum(v for k, v in p.items() if k != 'capture') / eager:.2f}x eager")
    for name, (make_model, make_input) in ZOO.items():
        torch.manual_seed(0)
        model = make_model().eval()
        lazy = copy.deepcopy(model).to(REMOTE)
        x = make_input()
        lx = x.to(REMOTE)
        with torch.no_grad():
            e = _eager(lambda: model(x))
            p = _parts(lambda: lazy(lx))
        total = sum(p.values())
        print(f"{name}: eager {e * 1e3:.2f} ms, lazy {total * 1e3:.2f} ms ({total / e:.2f}x): "
              + ", ".join(f"{k} {v / e:.2f}x" for k, v in p.items()))
    print("replay:", genie.replay_stats())


if __name__ == "__main__":
    main()
