"""reports/index.html: one screen of headline ratios (measured now, in one process) and links to
the coverage, conformance and asv reports. ``python -m asv_benches.summary REPORTS_DIR``."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
import time


def headline(quick: bool = False) -> list[tuple[str, float, str, str]]:
    """(name, value, unit, target) rows; ratios are to eager measured in the same run."""
    from .bench_capture import PROGRAMS
    from .bench_materialize import _forward_times
    from .bench_memory import MemoryOverhead, in_fresh_process
    from .common import REMOTE, interleaved_ratio

    rows = []
    for name in ("add", "relu_mm", "view", "inplace", "reduction", "conv2d", "factory", "transformer_block"):
        number = 50 if name == "transformer_block" else (300 if quick else 2000)
        ratio, eager, lazy = interleaved_ratio(PROGRAMS[name]("cpu"), PROGRAMS[name](REMOTE), number=number,
                                               repeat=3 if quick else 9)
        target = "<= 1.0x" if name in ("add", "relu_mm") else "<= 2.0x"
        rows.append((f"capture {name} (eager {eager:.2f} us, lazy {lazy:.2f} us; cyclic GC off, as timeit times)",
                     ratio, "x eager", target))
    # the same with the cyclic GC on: the collections a capturing program triggers count too
    ratio, eager, lazy = interleaved_ratio(PROGRAMS["transformer_block"]("cpu"), PROGRAMS["transformer_block"](REMOTE),
                                           number=50, repeat=3 if quick else 9, gc_on=True)
    rows.append((f"capture transformer_block with the cyclic GC on (eager {eager:.2f} us, lazy {lazy:.2f} us)",
                 ratio, "x eager", "<= 2.0x"))
    from .profile_capture import measure
    # the dispatcher floor (a bare wrapper subclass that only returns a wrapper) beside genie, in the
    # same interleaved rounds: what any Python device pays per op before doing any work
    for name, e, floor, g in measure(rounds=3 if quick else 7, number=300 if quick else 2000):
        if floor is not None:
            label = (f"dispatcher floor for {name}, beside genie's {g / e:.2f}x in the same rounds "
                     f"(eager {e:.2f} us, floor {floor:.2f} us, genie {g:.2f} us)")
            rows.append((label, floor / e, "x eager", "-"))
    if not quick:
        from .bench_scaling import capture_flatness
        small, large, small_off, large_off = capture_flatness()
        label = (f"capture per op at 1e6 live nodes over 1e3 (chain of adds: {small:.2f} us, {large:.2f} us; "
                 f"cyclic GC off: {small_off:.2f} us, {large_off:.2f} us, {large_off / small_off:.2f}x)")
        rows.append((label, large / small, "x", "<= 1.2x"))
    rows.append(("bytes per captured node (100k chain, RSS)", in_fresh_process("BytesPerNode.track_bytes_per_node"),
                 "bytes", "<= 500"))
    rows.append(("bytes per live captured node with its LazyTensor (RSS)",
                 in_fresh_process("BytesPerLiveTensor.track_bytes_per_live_tensor_node"), "bytes", "<= 500"))
    rows.append(("floor: bytes per live bare wrapper subclass, no node (RSS)",
                 in_fresh_process("BytesPerBareWrapper.track_bytes_per_bare_wrapper"), "bytes", "-"))
    per_iteration, nodes = in_fresh_process("random_loop")
    label = f"random tensors made and dropped unread: resident bytes per iteration (200k; {nodes:.0f} graph nodes left)"
    rows.append((label, per_iteration, "bytes", "flat (~0)"))
    from .bench_replay import (
        ZOO,
        chain_materialize,
        decode_ratio,
        forward_ratio,
        train_ratio,
    )
    r = chain_materialize(5 if quick else 15)
    rows.append((f"materialize a chain of 8x8 adds, per node, replayed (eager {r[1] * 1e6:.2f} us)", r[0], "x eager",
                 "<= 1.2x"))
    for model in ZOO:
        ratio, e, _ = forward_ratio(model, 5 if quick else 15)
        rows.append((f"zoo {model} no_grad forward, capture + materialize, replayed (eager {e * 1e3:.2f} ms)", ratio,
                     "x eager", "<= 1.5x"))
    for model in ZOO:
        ratio, e, _ = train_ratio(model, 3 if quick else 9)
        rows.append((f"zoo {model} training step: forward, backward, AdamW, read the loss (eager {e * 1e3:.2f} ms)",
                     ratio, "x eager", "<= 1.5x"))
    ratio, e, _ = decode_ratio(2 if quick else 5)
    rows.append((f"32-token greedy decode with a KV cache, each token read (eager {e * 1e3:.1f} ms)", ratio, "x eager",
                 "<= 1.5x"))
    rows.append(("memory overhead, 1M-element tensor", MemoryOverhead().track_mem_overhead_percent("tensor_1M"),
                 "%", "< 1%"))
    if not quick:
        for model in ("mlp", "resnet18", "transformer"):
            e, la = _forward_times(model, repeat=5)
            rows.append((f"forward {model}, capture + execute (eager {e * 1e3:.1f} ms)", la / e, "x eager", "<= 1.10x"))
    del REMOTE
    return rows


def write_index(reports: str, rows) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except Exception:
        commit = "unknown"
    conf = os.path.join(reports, "conformance", "results.json")
    conf_line = "not run yet (<code>nox -s conformance</code>)"
    if os.path.exists(conf):
        from conformance.report import summarize
        with open(conf) as f:
            s = summarize(json.load(f))
        with open(conf) as f:
            run_commit = json.load(f).get("commit", "unknown")
        conf_line = (f"{s['totals'].get('pass', 0)} of {s['cells']} cells pass, {s['totals'].get('xfail', 0)} known "
                     f"failures, {s['totals'].get('fail', 0)} unexpected; aten census {s['aten_passed']}/"
                     f"{s['aten_exercised']} (results.json of commit {html.escape(run_commit)}"
                     f"{'' if run_commit == commit else ', not this one'})")
    links = [("coverage/index.html", "Coverage (nox -s tests)"),
             ("conformance/index.html", "Conformance matrix (nox -s conformance)"),
             ("conformance-cuda/index.html",
              "Conformance matrix executed on CUDA (nox -s \"conformance(device='cuda', executor='local')\")"),
             ("conformance-remote/index.html",
              "Conformance matrix executed on a genie server (nox -s \"conformance(device='cpu', executor='remote')\")"),
             ("perf/index.html", "asv history (nox -s perf_report)")]
    link_html = "".join(
        f"<li><a href='{href}'>{label}</a>{'' if os.path.exists(os.path.join(reports, href)) else ' (not built)'}</li>"
        for href, label in links)
    row_html = "".join(
        f"<tr><td>{html.escape(n)}</td><td class='value'>{v:.3g}</td><td>{u}</td><td>{t}</td></tr>"
        for n, v, u, t in rows)
    doc = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Genie reports</title>
<style>body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; }} th {{ background: #f3f3f3; }}</style></head><body>
<h1>Genie reports</h1>
<p>commit <b id="commit">{html.escape(commit)}</b> &middot; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>
<ul>{link_html}</ul>
<p>Conformance: {conf_line}</p>
<h2>Headline figures (ratios to eager, same process)</h2>
<table id="headline"><tr><th>figure</th><th>value</th><th>unit</th><th>target</th></tr>{row_html}</table>
</body></html>"""
    path = os.path.join(reports, "index.html")
    os.makedirs(reports, exist_ok=True)
    with open(path, "w") as f:
        f.write(doc)
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    reports = argv[0] if argv else "reports"
    quick = "--quick" in argv
    rows = headline(quick=quick)
    for n, v, u, t in rows:
        print(f"{n:70s} {v:10.3f} {u:8s} target {t}")
    print(write_index(reports, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
