"""The HTML reports render in a real browser, and what they show matches the JSON behind them."""

import json
import os
import re
import shutil
import subprocess

import pytest

from conformance.report import summarize, write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def chromium():
    """The browser the HTML is checked in. Missing, the test skips on a development machine and fails in
    CI (where .ci/run installs it): a CI run must not pass with the browser checks left out."""
    if CHROMIUM is None:
        why = "chromium is not installed (Debian package 'chromium')"
        if os.environ.get("CI"):
            pytest.fail(f"{why}, and CI is set: the browser tests must run in CI")
        pytest.skip(why)
    return CHROMIUM


def _payload():
    rows = []
    for i, (op, outcome) in enumerate([("add.default", "pass"), ("mul.default", "pass"), ("addbmm.default", "xfail"),
                                       ("jiterator_unary.default", "skip"), ("sin.default", "fail")]):
        rows.append({"op": op, "variant": "function", "dtype": "float32", "device": "cpu", "outcome": outcome,
                     "reason": "known" if outcome == "xfail" else "", "samples": 3, "failed_samples": 0,
                     "compared": 0 if outcome == "skip" else 3, "rejected": 0, "skipped": 3 if outcome == "skip" else 0,
                     "duration": 0.1, "aten": [f"aten::op{i}.default", "aten::shared.default"],
                     "nodeid": f"conformance/test_opinfo.py::test_op[{op}-function-float32-cpu]"})
    return {"torch": "2.13.0", "python": "3.11", "commit": "abc123", "device": "cpu", "started": 0,
            "duration_s": 1.0, "collected": len(rows), "unrecorded": [], "results": rows}


def _write(tmp_path, payload):
    with open(tmp_path / "results.json", "w") as f:
        json.dump(payload, f)


def test_summary_counts():
    s = summarize(_payload())
    assert s["totals"] == {"pass": 2, "xfail": 1, "skip": 1, "fail": 1}
    assert s["aten_exercised"] == 6
    assert s["aten_passed"] == 2  # op0, op1; 'shared' also appears in non-passing cells
    assert s["by_dtype"]["float32"]["pass"] == 2


def _dump_dom(path):
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={os.path.dirname(path)}/chrome-profile", "--dump-dom", f"file://{path}"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_conformance_report_renders(tmp_path, chromium):
    payload = _payload()
    payload["results"].append(dict(payload["results"][0], dtype="float64", variant="method", outcome="fail",
                                   reason="values differ"))
    payload["models"] = [{"family": "cnn", "model": "SmallCNN", "check": "forward", "outcome": "pass", "reason": ""},
                         {"family": "rnn", "model": "LSTM", "check": "train_step", "outcome": "fail",
                          "reason": "grad differs"}]
    path = tmp_path / "index.html"
    write_html(payload, str(path))
    dom = _dump_dom(str(path))
    # the matrix: one row per OpInfo, one column per dtype, coloured by the cell's worst variant
    matrix = dom[dom.index('id="matrix"'):]
    rows = re.findall(r'<tr class="op (pass|fail|xfail|skip)">', matrix)
    ops = {r["op"] for r in payload["results"]}
    assert len(rows) == len(ops)
    assert rows[0] == "fail"  # failures first
    assert re.search(r'<td class="fail"><span class="v fail"', matrix)
    s = summarize(payload)
    for key in ("pass", "xfail", "fail", "skip"):
        m = re.search(rf'id="total-{key}">(\d+)<', dom)
        assert m and int(m.group(1)) == s["totals"].get(key, 0)
    failures = dom[dom.index('id="failures"'):dom.index('id="xfails"')]
    assert failures.count('<tr class="fail">') == 3  # sin, add/float64/method, the LSTM model check
    assert "grad differs" in failures and "values differ" in failures
    assert 'id="models"' in dom and "SmallCNN" in dom


def test_summary_lines_name_every_failure():
    from conformance.report import summary_lines
    lines = summary_lines(_payload(), "reports/conformance/index.html")
    assert lines[0].split() == ["dtype", "cells", "pass", "xfail", "fail", "skip"]
    assert any(line.startswith("FAIL sin.default") for line in lines)
    assert lines[-1] == "report: reports/conformance/index.html"


def test_report_cli_check(tmp_path):
    with open(tmp_path / "results.json", "w") as f:
        json.dump(_payload(), f)
    from conformance.report import main
    assert main([str(tmp_path)]) == 0
    assert main([str(tmp_path), "--check"]) == 1  # one unexpected failure
    assert (tmp_path / "index.html").exists()


def test_reports_index_renders(tmp_path, chromium):
    from asv_benches.summary import write_index
    rows = [("capture add", 1.05, "x eager", "<= 1.0x"), ("bytes per captured node", 191.0, "bytes", "<= 500")]
    (tmp_path / "conformance").mkdir()
    with open(tmp_path / "conformance" / "results.json", "w") as f:
        json.dump(_payload(), f)
    path = write_index(str(tmp_path), rows)
    dom = _dump_dom(path)
    assert dom.count("<tr>") == len(rows) + 1
    assert "2 of 5 cells pass" in dom
    assert re.search(r'id="commit">\w+<', dom)


def test_report_check_counts_failures_outside_the_matrix(tmp_path):
    payload = _payload()
    payload["results"] = [r for r in payload["results"] if r["outcome"] != "fail"]
    payload["collected"] = len(payload["results"])
    payload["other_failures"] = ["conformance/test_programs.py::test_random_programs_match_eager"]
    with open(tmp_path / "results.json", "w") as f:
        json.dump(payload, f)
    from conformance.report import main
    assert main([str(tmp_path), "--check"]) == 1
    payload["other_failures"] = []
    with open(tmp_path / "results.json", "w") as f:
        json.dump(payload, f)
    assert main([str(tmp_path), "--check"]) == 0


def _passing_payload():
    payload = _payload()
    payload["results"] = [r for r in payload["results"] if r["outcome"] != "fail"]
    payload["collected"] = len(payload["results"])
    return payload


def _failing_model():
    return {"family": "rnn", "model": "LSTM", "check": "train_step", "outcome": "fail", "reason": "grad differs",
            "nodeid": "conformance/test_models.py::test_model[LSTM-train_step]"}


def test_check_passes_a_complete_run(tmp_path):
    from conformance.report import main
    _write(tmp_path, _passing_payload())
    assert main([str(tmp_path), "--check"]) == 0


def test_check_fails_when_a_collected_test_has_no_row(tmp_path):
    """A cell that errored where no row was made, or never ran: collected and recorded differ."""
    from conformance.report import main, problems
    payload = _passing_payload()
    payload["collected"] += 1
    payload["unrecorded"] = ["conformance/test_opinfo.py::test_op[tan.default-function-float32-cpu]"]
    _write(tmp_path, payload)
    assert main([str(tmp_path), "--check"]) == 1
    assert any("tan.default" in p and "recorded" in p for p in problems(payload))


def test_check_fails_when_nothing_was_recorded(tmp_path):
    from conformance.report import main
    payload = dict(_payload(), results=[], collected=0)
    _write(tmp_path, payload)
    assert main([str(tmp_path), "--check"]) == 1


def test_check_fails_without_a_collected_count(tmp_path):
    """A results.json that cannot show every collected test was recorded (an older harness wrote it)."""
    from conformance.report import main
    payload = _passing_payload()
    del payload["collected"]
    _write(tmp_path, payload)
    assert main([str(tmp_path), "--check"]) == 1


def test_check_fails_on_a_failing_model_check_or_other_test(tmp_path):
    from conformance.report import main
    payload = _passing_payload()
    payload["models"] = [_failing_model()]
    payload["collected"] += 1
    _write(tmp_path, payload)
    assert main([str(tmp_path), "--check"]) == 1
    payload["models"][0]["outcome"] = "pass"
    payload["other"] = [{"nodeid": "conformance/test_programs.py::test_random_programs_match_eager",
                         "outcome": "fail", "reason": "tensor 3 differs"}]
    payload["collected"] += 1
    _write(tmp_path, payload)
    assert main([str(tmp_path), "--check"]) == 1


def test_html_names_model_failures_outside_the_matrix(tmp_path):
    """The line on tests outside the matrix says 'no failures' only when no model check failed either."""
    payload = _passing_payload()
    payload["models"] = [_failing_model()]
    write_html(payload, str(tmp_path / "index.html"))
    line = re.search(r'<p id="elsewhere">(.*?)</p>', (tmp_path / "index.html").read_text(), re.S).group(1)
    assert "LSTM" in line and "no failures" not in line
    payload["models"][0]["outcome"] = "pass"
    write_html(payload, str(tmp_path / "index.html"))
    line = re.search(r'<p id="elsewhere">(.*?)</p>', (tmp_path / "index.html").read_text(), re.S).group(1)
    assert "no failures" in line


def test_xfail_rows_keep_their_failure_text(tmp_path):
    payload = _payload()
    payload["results"][2]["failure"] = "sample 4: AssertionError: Tensor-likes are not close!"
    write_html(payload, str(tmp_path / "index.html"))
    text = (tmp_path / "index.html").read_text()
    xfails = text[text.index("id='xfails'"):]
    assert "sample 4: AssertionError: Tensor-likes are not close!" in xfails


def test_suites_tell_compared_from_rejected_only_cells():
    from conformance.report import suites, summary_lines
    payload = _passing_payload()
    payload["results"][1].update(compared=0, rejected=3)  # mul: eager rejects every sample; the device alike
    by_suite = suites(payload)["test_opinfo.py::test_op"]
    assert (by_suite["cells"], by_suite["compared"], by_suite["rejected"], by_suite["skip"], by_suite["xfail"]) == \
        (4, 1, 1, 1, 1)
    assert by_suite["samples_compared"] == 6 and by_suite["samples_rejected"] == 3
    assert "collected 4, recorded 4" in summary_lines(payload)
