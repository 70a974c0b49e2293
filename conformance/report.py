"""The conformance report: reports/conformance/index.html from results.json.

``python -m conformance.report DIR [--check]`` rebuilds the HTML from DIR/results.json;
``--check`` exits non-zero if any cell failed outside the manifest (the job's verdict).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
import time
from collections import Counter, defaultdict

OUTCOMES = ("pass", "xfail", "fail", "skip")


def summarize(payload: dict) -> dict:
    rows = payload["results"]
    by_dtype: dict = defaultdict(Counter)
    by_variant: dict = defaultdict(Counter)
    by_device: dict = defaultdict(Counter)
    totals: Counter = Counter()
    ops: dict = defaultdict(set)
    census_seen: set = set()
    census_bad: set = set()
    for r in rows:
        o = r["outcome"]
        totals[o] += 1
        by_dtype[r["dtype"]][o] += 1
        by_variant[r["variant"]][o] += 1
        by_device[r["device"]][o] += 1
        ops[r["op"]].add(o)
        aten = r.get("aten") or []
        census_seen.update(aten)
        if o != "pass":
            census_bad.update(aten)
    opinfo_all_pass = sorted(op for op, outs in ops.items() if outs <= {"pass", "skip"} and "pass" in outs)
    f32 = defaultdict(set)
    f32_fn = defaultdict(set)
    for r in rows:
        if r["dtype"] == "float32" and r["device"] == "cpu":
            f32[r["op"]].add(r["outcome"])
            if r["variant"] == "function":
                f32_fn[r["op"]].add(r["outcome"])
    return {
        "totals": dict(totals),
        "cells": len(rows),
        "by_dtype": {k: dict(v) for k, v in sorted(by_dtype.items())},
        "by_variant": {k: dict(v) for k, v in sorted(by_variant.items())},
        "by_device": {k: dict(v) for k, v in sorted(by_device.items())},
        "opinfos": len(ops),
        "opinfos_all_pass": len(opinfo_all_pass),
        "float32_cpu_opinfos": len(f32),
        "float32_cpu_opinfos_all_pass": sum(1 for outs in f32.values() if outs <= {"pass", "skip"} and "pass" in outs),
        "float32_cpu_opinfos_function_pass": sum(1 for outs in f32_fn.values() if outs == {"pass"}),
        "aten_exercised": len(census_seen),
        "aten_passed": len(census_seen - census_bad),
        "pass_rate": (totals["pass"] / max(1, len(rows) - totals["skip"])),
        "other_failures": list(payload.get("other_failures", [])),
    }


def _counts_table(title: str, data: dict) -> str:
    head = "".join(f"<th>{o}</th>" for o in OUTCOMES)
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{v.get(o, 0)}</td>" for o in OUTCOMES) + "</tr>"
        for k, v in data.items())
    return f"<h2>{title}</h2><table class='summary' id='by-{title.split()[-1].lower()}'><tr><th>{title.split()[-1]}</th>{head}</tr>{body}</table>"


def write_html(payload: dict, path: str) -> None:
    s = summarize(payload)
    rows = payload["results"]
    row_html = []
    for r in rows:
        o = r["outcome"]
        reason = html.escape(r.get("reason") or "")
        row_html.append(
            f"<tr class='{o}'><td>{html.escape(r['op'])}</td><td>{r['variant']}</td><td>{r['dtype']}</td>"
            f"<td>{r['device']}</td><td class='outcome'>{o}</td><td>{r.get('samples', '')}</td>"
            f"<td>{r.get('failed_samples', '')}</td><td>{r.get('duration', '')}</td><td>{reason}</td></tr>")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(payload.get("started", 0)))
    totals = s["totals"]
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Genie conformance</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
th {{ background: #f3f3f3; cursor: pointer; position: sticky; top: 0; }}
tr.pass td.outcome {{ background: #d9f2d9; }} tr.fail td.outcome {{ background: #f8d0d0; }}
tr.xfail td.outcome {{ background: #fbefc4; }} tr.skip td.outcome {{ background: #e6e6e6; }}
#filter {{ margin: 0.5em 0; padding: 4px; width: 30em; }}
.headline {{ font-size: 1.2em; }}
</style></head><body>
<h1>Genie conformance: lazy vs eager</h1>
<p class="headline">Cells: <b id="total-cells">{s['cells']}</b> &middot; pass <b id="total-pass">{totals.get('pass', 0)}</b>
&middot; xfail <b id="total-xfail">{totals.get('xfail', 0)}</b> &middot; fail <b id="total-fail">{totals.get('fail', 0)}</b>
&middot; skip <b id="total-skip">{totals.get('skip', 0)}</b> &middot; pass rate {s['pass_rate']:.2%}</p>
<p>Other tests (random programs): {html.escape(', '.join(s['other_failures'])) or 'all passed'}</p>
<p>OpInfos: {s['opinfos']} ({s['opinfos_all_pass']} pass every cell); float32 CPU: {s['float32_cpu_opinfos_all_pass']} of
{s['float32_cpu_opinfos']} pass every sample in every variant, <b id="f32-function">{s['float32_cpu_opinfos_function_pass']}</b>
in the function variant. Aten census: <b id="aten-exercised">{s['aten_exercised']}</b> distinct
aten overloads exercised, <b id="aten-passed">{s['aten_passed']}</b> only in passing cells.</p>
<p>torch {html.escape(payload['torch'])} &middot; python {payload['python']} &middot; commit {html.escape(payload['commit'])}
&middot; device {payload['device']} &middot; started {started} &middot; run time {payload['duration_s']} s</p>
{_counts_table('Totals per dtype', s['by_dtype'])}
{_counts_table('Totals per variant', s['by_variant'])}
{_counts_table('Totals per device', s['by_device'])}
<h2>Matrix</h2>
<input id="filter" placeholder="filter rows (op, variant, dtype, outcome...)">
<table id="matrix"><thead><tr><th>OpInfo</th><th>variant</th><th>dtype</th><th>device</th><th>outcome</th>
<th>samples</th><th>failed samples</th><th>seconds</th><th>reason</th></tr></thead>
<tbody>{''.join(row_html)}</tbody></table>
<script>
document.querySelectorAll('#matrix th').forEach((th, col) => th.addEventListener('click', () => {{
  const body = document.querySelector('#matrix tbody');
  const rows = Array.from(body.rows);
  const dir = th.dataset.dir === 'asc' ? -1 : 1; th.dataset.dir = dir === 1 ? 'asc' : 'desc';
  rows.sort((a, b) => {{
    const x = a.cells[col].textContent, y = b.cells[col].textContent;
    const nx = parseFloat(x), ny = parseFloat(y);
    return dir * (isNaN(nx) || isNaN(ny) ? x.localeCompare(y) : nx - ny);
  }});
  rows.forEach(r => body.appendChild(r));
}}));
document.getElementById('filter').addEventListener('input', e => {{
  const q = e.target.value.toLowerCase();
  document.querySelectorAll('#matrix tbody tr').forEach(r => {{
    r.style.display = r.textContent.toLowerCase().includes(q) ? '' : 'none';
  }});
}});
</script></body></html>
"""
    with open(path, "w") as f:
        f.write(doc)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--check", action="store_true", help="exit 1 if any cell failed")
    ns = ap.parse_args(argv)
    path = os.path.join(ns.folder, "results.json")
    if not os.path.exists(path):
        print(f"no results at {path}", file=sys.stderr)
        return 1
    with open(path) as f:
        payload = json.load(f)
    write_html(payload, os.path.join(ns.folder, "index.html"))
    s = summarize(payload)
    print(json.dumps({k: v for k, v in s.items()}, indent=1))
    if ns.check and (s["totals"].get("fail", 0) or s["other_failures"]):
        print(f"{s['totals'].get('fail', 0)} cells failed outside the manifest; other failed tests: "
              f"{s['other_failures'] or 'none'}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
