"""The conformance report: reports/conformance/index.html from results.json.

``python -m conformance.report DIR [--check]`` rebuilds the HTML from DIR/results.json;
``--check`` is the job's verdict: it exits non-zero if any cell, model check or other test failed
outside the manifest, if the run recorded nothing, or if any collected test has no row (a cell
cannot pass by being left out).
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
# a suite's cells by what they proved: values compared with eager's, or only rejections matched
SUITE_COLUMNS = ("cells", "compared", "rejected", "skip", "xfail", "fail")


def suite_of(row: dict) -> str:
    """The test function a row comes from, e.g. ``test_models.py::test_module_db``."""
    return row.get("nodeid", "").split("[")[0].removeprefix("conformance/") or "unknown"


def all_rows(payload: dict) -> list:
    return payload["results"] + payload.get("models", []) + payload.get("other", [])


def suites(payload: dict) -> dict:
    """Per suite: its cells (rows), those that compared values with eager, those that passed by
    rejecting only what eager rejects, and the skipped, expected-failing and failing ones; and the
    samples compared, rejected and skipped inside them, where the suite counts samples."""
    out: dict = defaultdict(Counter)
    for r in all_rows(payload):
        c = out[suite_of(r)]
        c["cells"] += 1
        o = r["outcome"]
        if o == "pass":
            c["rejected" if r.get("rejected") and not r.get("compared") and not r.get("tensors_compared")
              else "compared"] += 1
        else:
            c[o] += 1
        for k in ("compared", "rejected", "skipped"):
            if k in r:
                c[f"samples_{k}"] += r[k]
    return {k: dict(v) for k, v in sorted(out.items())}


def _failed_elsewhere(payload: dict) -> list[str]:
    """Failures outside the OpInfo matrix: model checks and other tests, by name."""
    models = [f"{m['family']}: {m['model']} [{m['check']}]" for m in payload.get("models", []) if m["outcome"] == "fail"]
    return models + list(payload.get("other_failures", []))


def problems(payload: dict) -> list[str]:
    """Why this run's verdict is a failure; empty when it passes."""
    out = []
    recorded = {r.get("nodeid") for r in all_rows(payload)}
    if "collected" not in payload:
        out.append("results.json has no collected count: it cannot show that every collected test was recorded")
    elif payload["collected"] != len(recorded) or payload.get("unrecorded"):
        out.append(f"{payload['collected']} tests collected, {len(recorded)} recorded; without a row: "
                   f"{', '.join(payload.get('unrecorded', [])[:20]) or 'none named'}")
    if not recorded:
        out.append("no cell was recorded")
    fails = Counter(suite_of(r) for r in all_rows(payload) if r["outcome"] == "fail")
    for suite, n in sorted(fails.items()):
        out.append(f"{suite}: {n} failed outside the manifest")
    failed_rows = {r.get("nodeid") for r in all_rows(payload) if r["outcome"] == "fail"}
    listed_only = [n for n in payload.get("other_failures", []) if n not in failed_rows]
    if listed_only:  # a failure named in the list and in no row
        out.append(f"other tests failed outside the manifest: {', '.join(listed_only)}")
    return out


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
        # calls the device ran at once as data-dependent (the census's other half: none fall back)
        "ran_eagerly": sum(r.get("ran_eagerly", 0) for r in rows),
        "cells_ran_eagerly": sum(1 for r in rows if r.get("ran_eagerly")),
        "pass_rate": (totals["pass"] / max(1, len(rows) - totals["skip"])),
        "other_failures": list(payload.get("other_failures", [])),
        "failed_elsewhere": _failed_elsewhere(payload),
        "suites": suites(payload),
        "collected": payload.get("collected"),
        "recorded": len({r.get("nodeid") for r in all_rows(payload)}),
    }


def _counts_table(title: str, data: dict) -> str:
    head = "".join(f"<th>{o}</th>" for o in OUTCOMES)
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>" + "".join(f"<td>{v.get(o, 0)}</td>" for o in OUTCOMES) + "</tr>"
        for k, v in data.items())
    return f"<h2>{title}</h2><table class='summary' id='by-{title.split()[-1].lower()}'><tr><th>{title.split()[-1]}</th>{head}</tr>{body}</table>"


# a matrix cell's colour: its worst outcome
_SEVERITY = {"fail": 3, "xfail": 2, "pass": 1, "skip": 0}
VARIANT_MARK = {"function": "fn", "method": "method", "inplace": "inplace", "out": "out"}


def _worst(outcomes) -> str:
    return max(outcomes, key=lambda o: _SEVERITY.get(o, 0)) if outcomes else "none"


def matrix(rows: list) -> tuple[list, dict]:
    """One row per OpInfo, one column per dtype; each cell lists its variants' rows."""
    dtypes = sorted({r["dtype"] for r in rows})
    by_op: dict = defaultdict(lambda: defaultdict(list))
    for r in rows:
        by_op[r["op"]][r["dtype"]].append(r)
    return dtypes, by_op


def _matrix_html(rows: list) -> str:
    dtypes, by_op = matrix(rows)
    head = "".join(f"<th>{html.escape(d)}</th>" for d in dtypes)
    body = []
    # failures first, then expected failures, then the rest by name
    order = sorted(by_op, key=lambda op: (-max(_SEVERITY.get(r["outcome"], 0) for cell in by_op[op].values()
                                                for r in cell), op))
    for op in order:
        cells = []
        for d in dtypes:
            cell = by_op[op].get(d, [])
            if not cell:
                cells.append("<td class='none'></td>")
                continue
            marks = " ".join(
                f"<span class='v {r['outcome']}' title='{html.escape(r.get('reason') or r['outcome'], quote=True)}'>"
                f"{VARIANT_MARK.get(r['variant'], r['variant'])}</span>"
                for r in sorted(cell, key=lambda r: list(VARIANT_MARK).index(r["variant"])
                                if r["variant"] in VARIANT_MARK else 9))
            cells.append(f"<td class='{_worst([r['outcome'] for r in cell])}'>{marks}</td>")
        worst = _worst([r["outcome"] for c in by_op[op].values() for r in c])
        body.append(f"<tr class='op {worst}'><td>{html.escape(op)}</td>{''.join(cells)}</tr>")
    return (f"<table id='matrix'><thead><tr><th>OpInfo</th>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def _problems_html(rows: list, outcome: str, title: str, table_id: str) -> str:
    picked = [r for r in rows if r["outcome"] == outcome]
    if not picked:
        return f"<h2>{title}</h2><p id='{table_id}-none'>none</p>"
    body = "".join(
        f"<tr class='{outcome}'><td>{html.escape(r['op'])}</td><td>{r['variant']}</td><td>{r['dtype']}</td>"
        f"<td>{r['device']}</td><td class='outcome'>{outcome}</td><td>{html.escape(r.get('reason') or '')}</td>"
        f"<td>{html.escape(r.get('failure') or '')}</td></tr>"
        for r in picked)
    return (f"<h2>{title} ({len(picked)})</h2><table id='{table_id}'><tr><th>OpInfo / model</th><th>variant</th>"
            f"<th>dtype</th><th>device</th><th>outcome</th><th>reason</th><th>failing samples</th></tr>{body}</table>")


def _text(value) -> str:
    return html.escape(str(value if value is not None else ""))


# the columns of a model-check row: (header, cell html)
_MODEL_COLUMNS = {
    "family": lambda m: f"<td>{_text(m['family'])}</td>",
    "model": lambda m: f"<td>{_text(m['model'])}</td>",
    "program": lambda m: f"<td>{_text(m['model'])}</td>",
    "check": lambda m: f"<td>{_text(m['check'])}</td>",
    "outcome": lambda m: f"<td class='outcome'>{m['outcome']}</td>",
    "tensors compared": lambda m: f"<td>{_text(m.get('tensors_compared'))}</td>",
    "bit-identical": lambda m: _bits_cell(m),
    "reason": lambda m: f"<td>{_text(m.get('reason'))}</td>",
}


def _checks_html(rows: list, title: str, table_id: str, noun: str, columns: tuple, extra: str = "") -> str:
    """One table of model checks (the zoo and module_db, or the library programs), worst first."""
    if not rows:
        return ""
    body = "".join(
        f"<tr class='{m['outcome']}'>" + "".join(_MODEL_COLUMNS[c](m) for c in columns) + "</tr>"
        for m in sorted(rows, key=lambda m: (-_SEVERITY.get(m["outcome"], 0), m["family"], m["model"], m["check"])))
    counts = Counter(m["outcome"] for m in rows)
    head = "".join(f"<th>{c}</th>" for c in columns)
    return (f"<h2>{title}</h2><p id='{table_id}-counts'>{len(rows)} {noun}: "
            + ", ".join(f"{o} {counts.get(o, 0)}" for o in OUTCOMES) + extra
            + f"</p><table id='{table_id}'><tr>{head}</tr>{body}</table>")


def _models_html(models: list) -> str:
    return _checks_html(models, "Models: real model code, lazy vs eager", "models", "checks",
                        ("family", "model", "check", "outcome", "bit-identical", "reason"))


def _bits_cell(m: dict) -> str:
    if "bit_identical" not in m:
        return "<td></td>"
    if m["bit_identical"]:
        return "<td class='pass'>yes</td>"
    return (f"<td class='xfail'>no: {_text(m.get('first_difference'))} first, max |d| "
            f"{m.get('max_abs_diff', 0):.3g}</td>")


def _library_html(programs: list) -> str:
    """The library-programs axis: one row per program, with its bit identity against eager."""
    identical = sum(1 for m in programs if m.get("bit_identical"))
    return _checks_html(programs, "Library programs: library code on the device, lazy vs eager", "library",
                        "programs", ("program", "outcome", "tensors compared", "bit-identical", "reason"),
                        extra=f"; bit-identical to eager: {identical}")


def _suites_html(by_suite: dict) -> str:
    head = "".join(f"<th>{c}</th>" for c in SUITE_COLUMNS)
    body = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{c.get(k, 0)}</td>" for k in SUITE_COLUMNS)
                   + "</tr>" for name, c in by_suite.items())
    return ("<h2>Suites</h2><p>compared: passing cells that compared values with eager's; rejected: passing cells "
            "whose every checked sample eager rejects, the device rejecting it alike (same exception type).</p>"
            f"<table id='suites'><tr><th>suite</th>{head}</tr>{body}</table>")


def write_html(payload: dict, path: str) -> None:
    s = summarize(payload)
    rows = payload["results"]
    models = payload.get("models", [])
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(payload.get("started", 0)))
    # every row in the failure tables: cells, model checks, and other tests by node id
    problem_rows = rows + [dict(m, op=f"{m['family']}: {m['model']}", variant=m['check'], dtype=m.get('dtype', ''),
                                device=payload['device']) for m in models] \
        + [dict(r, op=r["nodeid"], variant="", dtype="", device=payload["device"]) for r in payload.get("other", [])]
    totals = s["totals"]
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Genie conformance</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
th {{ background: #f3f3f3; position: sticky; top: 0; }}
.pass {{ background: #d9f2d9; }} .fail {{ background: #f8d0d0; }}
.xfail {{ background: #fbefc4; }} .skip {{ background: #e6e6e6; }} td.none {{ background: #fff; }}
tr.op, tr.op.pass, tr.op.fail, tr.op.xfail, tr.op.skip {{ background: none; }}
span.v {{ padding: 0 3px; border-radius: 3px; font-size: 12px; }}
#filter {{ margin: 0.5em 0; padding: 4px; width: 30em; }}
.headline {{ font-size: 1.2em; }}
</style></head><body>
<h1>Genie conformance: lazy vs eager</h1>
<p class="headline">Cells: <b id="total-cells">{s['cells']}</b> &middot; pass <b id="total-pass">{totals.get('pass', 0)}</b>
&middot; xfail <b id="total-xfail">{totals.get('xfail', 0)}</b> &middot; fail <b id="total-fail">{totals.get('fail', 0)}</b>
&middot; skip <b id="total-skip">{totals.get('skip', 0)}</b> &middot; pass rate {s['pass_rate']:.2%}</p>
<p id="collected">Tests collected: {s['collected'] if s['collected'] is not None else 'not counted'}, recorded:
{s['recorded']}</p>
{_suites_html(s['suites'])}
<p id="elsewhere">Outside the matrix (models, random programs): {html.escape(', '.join(s['failed_elsewhere']))
                                                                  or 'no failures'}</p>
<p>OpInfos: {s['opinfos']} ({s['opinfos_all_pass']} pass every cell); float32 CPU: {s['float32_cpu_opinfos_all_pass']} of
{s['float32_cpu_opinfos']} pass every sample in every variant, <b id="f32-function">{s['float32_cpu_opinfos_function_pass']}</b>
in the function variant. Aten census: <b id="aten-exercised">{s['aten_exercised']}</b> distinct
aten overloads exercised, <b id="aten-passed">{s['aten_passed']}</b> only in passing cells; calls run at once
as data-dependent (none fall back): <b id="ran-eagerly">{s['ran_eagerly']}</b> in {s['cells_ran_eagerly']} cells.</p>
<p>torch {html.escape(payload['torch'])} &middot; python {payload['python']} &middot; commit {html.escape(payload['commit'])}
&middot; device {payload['device']} &middot; started {started} &middot; run time {payload['duration_s']} s</p>
{_problems_html(problem_rows, 'fail', 'Failures', 'failures')}
{_problems_html(problem_rows, 'xfail', 'Expected failures (manifest)', 'xfails')}
{_library_html([m for m in models if m['family'] == 'library'])}
{_models_html([m for m in models if m['family'] != 'library'])}
{_counts_table('Totals per dtype', s['by_dtype'])}
{_counts_table('Totals per variant', s['by_variant'])}
{_counts_table('Totals per device', s['by_device'])}
<h2>Matrix: one row per OpInfo, one column per dtype</h2>
<p>Each cell lists the variants run (fn, method, inplace, out), coloured by outcome; a cell takes the colour of
its worst variant; hover a variant for its reason. Rows with failures come first.</p>
<input id="filter" placeholder="filter rows (op name, or an outcome: fail, xfail, pass, skip)">
{_matrix_html(rows)}
<script>
document.getElementById('filter').addEventListener('input', e => {{
  const q = e.target.value.toLowerCase().trim();
  document.querySelectorAll('#matrix tbody tr').forEach(r => {{
    const text = r.cells[0].textContent.toLowerCase();
    const outcomes = Array.from(r.querySelectorAll('span.v')).map(s => s.className.split(' ')[1]);
    r.style.display = (!q || text.includes(q) || outcomes.includes(q)) ? '' : 'none';
  }});
}});
</script></body></html>
"""
    with open(path, "w") as f:
        f.write(doc)


def summary_lines(payload: dict, report_path: str | None = None) -> list[str]:
    """The short table the job ends with: cells and outcomes by dtype, every failure with its reason."""
    s = summarize(payload)
    lines = []
    if s["cells"]:  # a run of the model axis alone (pytest conformance/test_models.py) has no OpInfo cells
        lines.append(f"{'dtype':<10} {'cells':>6} {'pass':>6} {'xfail':>6} {'fail':>6} {'skip':>6}")
        for d, c in s["by_dtype"].items():
            lines.append(f"{d:<10} {sum(c.values()):>6} {c.get('pass', 0):>6} {c.get('xfail', 0):>6} "
                         f"{c.get('fail', 0):>6} {c.get('skip', 0):>6}")
        t = s["totals"]
        lines.append(f"{'all':<10} {s['cells']:>6} {t.get('pass', 0):>6} {t.get('xfail', 0):>6} "
                     f"{t.get('fail', 0):>6} {t.get('skip', 0):>6}   pass rate {s['pass_rate']:.2%} of runnable cells")
    models = payload.get("models", [])
    if models:
        mc = Counter(m["outcome"] for m in models)
        lines.append(f"models: {len(models)} checks, " + ", ".join(f"{o} {mc.get(o, 0)}" for o in OUTCOMES))
        timed = [m for m in models if "bit_identical" in m]
        if timed:
            apart = [m for m in timed if not m["bit_identical"] and m["outcome"] == "pass"]
            lines.append(f"bit-identical to eager: {len(timed) - len(apart)} of {len(timed)} passing checks that "
                         f"compared tensors" + (": apart " + ", ".join(
                             f"{m['model']}[{m['check']}] at {m.get('first_difference')} ({m.get('max_abs_diff', 0):.2g})"
                             for m in apart[:12]) if apart else ""))
    lines.append(f"{'suite':<40} " + " ".join(f"{c:>8}" for c in SUITE_COLUMNS))
    for name, c in s["suites"].items():
        lines.append(f"{name[:40]:<40} " + " ".join(f"{c.get(k, 0):>8}" for k in SUITE_COLUMNS))
    lines.append(f"collected {s['collected'] if s['collected'] is not None else '(not counted)'}, "
                 f"recorded {s['recorded']}")
    failures = [r for r in payload["results"] if r["outcome"] == "fail"]
    failures += [dict(op=f"{m['family']}: {m['model']}", variant=m["check"], dtype=m.get("dtype", ""),
                      reason=m.get("reason", "")) for m in models if m["outcome"] == "fail"]
    for r in failures:
        lines.append(f"FAIL {r['op']} [{r['variant']}, {r['dtype']}]: {(r.get('reason') or '')[:200]}")
    others = [r for r in payload.get("other", []) if r["outcome"] == "fail"] or \
        [{"nodeid": n, "reason": ""} for n in s["other_failures"]]  # a results.json from before "other" rows
    for r in others:
        lines.append(f"FAIL {r['nodeid']}: {(r.get('reason') or '')[:200]}")
    for p in problems(payload):
        if "failed outside the manifest" not in p:  # those are the FAIL lines above
            lines.append(f"VERDICT {p}")
    if not failures and not others:
        lines.append("no failures outside the manifest")
    if report_path:
        lines.append(f"report: {report_path}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("folder")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 if anything failed, nothing was recorded, or a collected test has no row")
    ns = ap.parse_args(argv)
    path = os.path.join(ns.folder, "results.json")
    if not os.path.exists(path):
        print(f"no results at {path}", file=sys.stderr)
        return 1
    with open(path) as f:
        payload = json.load(f)
    write_html(payload, os.path.join(ns.folder, "index.html"))
    print("\n".join(summary_lines(payload, os.path.join(ns.folder, "index.html"))))
    found = problems(payload)
    if ns.check and found:
        print("\n".join(f"verdict: {p}" for p in found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
