"""Capture, materialization and eager times side by side for the zoo's small models.

    python example/perf_compare.py [--runs 15] [--plot perf.png]

Per model (asv_benches/zoo.py: a decoder LM, an encoder, a vision transformer, a CNN), the
no_grad forward: eager PyTorch on the CPU; on remote_accelerator, the forward call (capture
only: nothing runs), then reading the output (materialization: the captured plan runs, compiled
and replayed from the second run on). Medians of ``--runs`` runs after two warm-up runs, in one
process, eager and lazy alternating. ``--plot`` writes a bar chart (matplotlib, the ``plot`` extra).
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import statistics
import sys
import time

import torch

import genie  # noqa: F401  (registers the device)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def measure(make_model, make_input, runs: int) -> dict:
    torch.manual_seed(0)
    model = make_model().eval()
    lazy = copy.deepcopy(model).to("remote_accelerator")
    x = make_input()
    lx = x.to("remote_accelerator")
    eager, capture, run = [], [], []
    with torch.no_grad():
        for i in range(runs + 2):
            t0 = time.perf_counter()
            expected = model(x)
            t1 = time.perf_counter()
            out = lazy(lx)
            t2 = time.perf_counter()
            got = out.cpu()
            t3 = time.perf_counter()
            if i >= 2:
                eager.append(t1 - t0)
                capture.append(t2 - t1)
                run.append(t3 - t2)
    e, c, r = (statistics.median(v) * 1e3 for v in (eager, capture, run))
    return {"eager_ms": e, "capture_ms": c, "materialize_ms": r, "ratio": (c + r) / e,
            "max_error": (got - expected).abs().max().item()}


def plot(rows: dict, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install -e '.[plot]'") from None
    names = list(rows)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(names))
    ax.bar([i - 0.2 for i in xs], [rows[n]["eager_ms"] for n in names], 0.4, label="eager")
    ax.bar([i + 0.2 for i in xs], [rows[n]["capture_ms"] for n in names], 0.4, label="capture")
    ax.bar([i + 0.2 for i in xs], [rows[n]["materialize_ms"] for n in names], 0.4,
           bottom=[rows[n]["capture_ms"] for n in names], label="materialize")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("ms per no_grad forward")
    ax.set_title("genie remote_accelerator vs eager (CPU execution)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--plot", metavar="PNG", help="write a bar chart to this file")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from asv_benches.zoo import ZOO

    rows = {name: measure(make_model, make_input, args.runs) for name, (make_model, make_input) in ZOO.items()}
    print(f"{'model':12} {'eager ms':>9} {'capture ms':>11} {'materialize ms':>15} {'lazy/eager':>11} {'max err':>9}")
    for name, r in rows.items():
        print(f"{name:12} {r['eager_ms']:9.3f} {r['capture_ms']:11.3f} {r['materialize_ms']:15.3f} "
              f"{r['ratio']:10.2f}x {r['max_error']:9.2g}")
    if args.plot:
        plot(rows, args.plot)
        print(f"chart: {args.plot}")
    return 0 if all(r["max_error"] <= 1e-5 for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
