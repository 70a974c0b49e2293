"""Options, the hypothesis profile, and the per-cell result collection behind the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

# Compile every plan structure at first sight: the suites' repeated runs are then compiled replays
# (checked, then verified); the tests session covers the default (interpret first, compile on repeat).
os.environ.setdefault("GENIE_REPLAY_AFTER", "1")

# torch's testing utilities load PyTorch's own hypothesis profile when CI is set; ours after.
from torch.testing._internal import common_utils  # noqa: F401
from hypothesis import HealthCheck, settings

settings.register_profile("genie-ci", derandomize=True, deadline=None, max_examples=500, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("genie-dev", deadline=None, max_examples=200, suppress_health_check=list(HealthCheck))
settings.load_profile("genie-ci" if os.environ.get("CI") else "genie-dev")

import pytest  # noqa: E402
import torch  # noqa: E402

import genie  # noqa: E402, F401


def pytest_addoption(parser):
    parser.addoption("--genie-device", default="cpu", choices=["cpu", "cuda"],
                     help="eager reference device and genie execution device")
    parser.addoption("--genie-report", default=None, help="folder for results.json (and index.html)")
    parser.addoption("--genie-server", action="store_true",
                     help="execute on a genie server (a subprocess per test process) instead of in-process")


def pytest_configure(config):
    config._genie_results = []
    config._genie_models = []
    config._genie_other_failures = []
    config._genie_started = time.time()
    device = config.getoption("--genie-device")
    if device == "cuda" and torch.cuda.is_available():
        genie.set_execution_device("cuda")


@pytest.fixture(scope="session", autouse=True)
def _execution_target(pytestconfig):
    """With --genie-server, every materialization crosses the wire to a server of this test process."""
    if not pytestconfig.getoption("--genie-server"):
        yield None
        return
    with genie.start_server(device=pytestconfig.getoption("--genie-device")) as srv, genie.remote(srv):
        yield srv


@pytest.fixture(scope="session")
def device(pytestconfig):
    d = pytestconfig.getoption("--genie-device")
    if d == "cuda" and not torch.cuda.is_available():
        pytest.skip("device 'cuda': CUDA is not available on this machine")
    return d


def pytest_collection_modifyitems(config, items):
    for item in items:
        spec = getattr(item, "callspec", None)
        if spec is not None and "cell" in spec.params:
            from conformance.test_opinfo import cell_name
            op, variant, dtype, device = spec.params["cell"]
            item.user_properties.append(("genie_cell", {"op": cell_name(op), "variant": variant, "dtype": dtype,
                                                        "device": device}))


def pytest_runtest_logreport(report):
    """Runs on the controller (xdist forwards worker reports): one row per cell."""
    if type(report).__name__ == "SubtestReport":
        return
    props = dict(report.user_properties)
    cell = props.get("genie_cell")
    model = props.get("genie_model")
    if model is not None:
        if report.when == "call" or (report.when == "setup" and report.outcome == "skipped"):
            _config._genie_models.append(dict(model, **_outcome(report, props), duration=round(report.duration, 3)))
        elif report.failed:  # a fixture (building the model) failed: the check failed
            _config._genie_models.append(dict(model, outcome="fail", reason=_last_line(report)))
        return
    if cell is None:
        if report.failed:  # e.g. the random-program search: not a matrix cell, still a verdict
            _config._genie_other_failures.append(report.nodeid)
        return
    if report.when == "call" or (report.when == "setup" and report.outcome == "skipped"):
        row = dict(cell, **_outcome(report, props), duration=round(report.duration, 3))
        row.update({k: v for k, v in props.get("genie_detail", {}).items() if k != "first_failure"})
        _results().append(row)


def _last_line(report) -> str:
    return str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else ""


def _outcome(report, props) -> dict:
    if hasattr(report, "wasxfail"):
        return {"outcome": "xfail", "reason": report.wasxfail}
    if report.outcome == "skipped":
        return {"outcome": "skip",
                "reason": report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)}
    if report.outcome == "passed":
        return {"outcome": "pass", "reason": ""}
    return {"outcome": "fail", "reason": props.get("genie_detail", {}).get("first_failure") or _last_line(report)}


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    """Passing subtests (one per OpInfo sample) print nothing: the progress line stays readable."""
    if type(report).__name__ == "SubtestReport" and report.passed:
        return "subtests passed", "", ""
    return None


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput") or not (config._genie_results or config._genie_models):
        return
    from conformance.report import summary_lines
    out = config.getoption("--genie-report")
    payload = {"results": config._genie_results, "models": config._genie_models,
               "other_failures": sorted(set(config._genie_other_failures))}
    terminalreporter.section("genie conformance")
    for line in summary_lines(payload, os.path.join(out, "index.html") if out else None):
        terminalreporter.write_line(line)


_config = None


def pytest_sessionstart(session):
    global _config
    _config = session.config


def _results():
    return _config._genie_results


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if hasattr(config, "workerinput"):  # xdist worker: the controller writes the report
        return
    out = config.getoption("--genie-report")
    if not out or not (config._genie_results or config._genie_other_failures or config._genie_models):
        return
    os.makedirs(out, exist_ok=True)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except Exception:
        commit = "unknown"
    payload = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "commit": commit or "unknown",
        "device": config.getoption("--genie-device"),
        "started": config._genie_started,
        "duration_s": round(time.time() - config._genie_started, 1),
        "results": sorted(config._genie_results, key=lambda r: (r["op"], r["variant"], r["dtype"], r["device"])),
        "models": sorted(config._genie_models, key=lambda m: (m["family"], m["model"], m["check"])),
        "other_failures": sorted(set(config._genie_other_failures)),
    }
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    from conformance.report import write_html
    write_html(payload, os.path.join(out, "index.html"))
