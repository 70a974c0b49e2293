"""Where materialization time goes: ``python -m asv_benches.profile_execution``.

For a chain of 8x8 adds (per node) and for each small model of the zoo (per forward): eager, the
lazy capture, and the three parts of a replayed materialization (collecting the plan, its
fingerprint and inputs, running the compiled program), medians of rounds in one process. Then
each zoo model's training step, phase by phase (capture of zero_grad, forward, backward and the
optimizer step; building and running the plan when the loss is read) beside eager's phases.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch

import genie
from genie.execution import scheduler

from .bench_replay import _pair
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


def _train_parts(name: str, rounds: int = 15) -> tuple[float, dict, dict]:
    """One training step of zoo model ``name`` (AdamW, as bench_replay.train_ratio), phase by
    phase: eager's and genie's medians (s), and eager's whole step. Genie's phases before the
    loss is read are capture only; reading it runs the plan, split here into building the plan
    (collect and fingerprint) and running it. That plan holds the previous step's backward and
    optimizer step too: nothing read them before."""
    model, lazy, x, lx = _pair(name)
    model.train()
    lazy.train()
    ex = scheduler.get_executor()
    phases = ("zero_grad", "forward", "backward", "step", "read: plan", "read: run")
    times = {"eager": {k: [] for k in phases}, "genie": {k: [] for k in phases}}
    opts = {"eager": torch.optim.AdamW(model.parameters(), lr=1e-3),
            "genie": torch.optim.AdamW(lazy.parameters(), lr=1e-3)}
    for r in range(rounds + 3):
        for who, m, inp in (("eager", model, x), ("genie", lazy, lx)):
            opt = opts[who]
            t = [time.perf_counter()]
            opt.zero_grad()
            t.append(time.perf_counter())
            loss = m(inp).float().square().mean()
            t.append(time.perf_counter())
            loss.backward()
            t.append(time.perf_counter())
            opt.step()
            t.append(time.perf_counter())
            if who == "genie":
                plan = scheduler.Plan(loss.genie_node, True)
                t.append(time.perf_counter())
                ex.execute(plan)
                plan.finish()
            else:
                t.append(time.perf_counter())
            loss.item()
            t.append(time.perf_counter())
            if r >= 3:
                for k, a, b in zip(phases, t, t[1:]):
                    times[who][k].append(b - a)
    med = {who: {k: statistics.median(v) for k, v in d.items()} for who, d in times.items()}
    return sum(med["eager"].values()), med["eager"], med["genie"]


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
    for name in ZOO:
        e_total, e, g = _train_parts(name)
        total = sum(g.values())
        print(f"{name} training step: eager {e_total * 1e3:.2f} ms, lazy {total * 1e3:.2f} ms "
              f"({total / e_total:.2f}x); each phase as a share of eager's whole step, eager | lazy:")
        print("  " + ", ".join(f"{k} {e[k] / e_total:.2f} | {g[k] / e_total:.2f}" for k in g))
    print("replay:", genie.replay_stats())


if __name__ == "__main__":
    main()
