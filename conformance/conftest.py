"""Options, the hypothesis profile, and the per-cell result collection behind the report.

Every collected test becomes exactly one row of results.json, whatever phase decides it: an
error in setup or teardown is a failing row, a worker crash is a failing row, a failed sample
(a subtest) fails its cell even where pytest's own bookkeeping loses it across xdist. The rows
are written beside the ids pytest collected, so ``python -m conformance.report --check`` can
prove that nothing collected went unrecorded. Rows by kind: OpInfo cells (``genie_cell``), model
checks (``genie_model``: the zoo, module_db, and any suite that labels its tests so), and every
other test (random programs) by node id.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time

# Compile every plan structure at first sight: the suites' repeated runs are then compiled replays
# (checked, then verified); the tests session covers the default (interpret first, compile on repeat).
os.environ.setdefault("GENIE_REPLAY_AFTER", "1")

# torch's testing utilities load PyTorch's own hypothesis profile when CI is set; ours after.
from hypothesis import HealthCheck, settings
from torch.testing._internal import common_utils  # noqa: F401

settings.register_profile("genie-ci", derandomize=True, deadline=None, max_examples=500, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("genie-dev", deadline=None, max_examples=200, suppress_health_check=list(HealthCheck))
settings.load_profile("genie-ci" if os.environ.get("CI") else "genie-dev")

import pytest  # noqa: E402
import torch  # noqa: E402

import genie  # noqa: E402, F401

RESULTS = "results.json"
# what stops a run rather than fails a sample
INTERRUPTS = (KeyboardInterrupt, SystemExit, pytest.exit.Exception)
# the row of a test whose item carries one of these markers (or user property) is that kind's
LABELS = ("genie_cell", "genie_model")


def pytest_addoption(parser):
    parser.addoption("--genie-device", default="cpu", choices=["cpu", "cuda"],
                     help="eager reference device and genie execution device")
    parser.addoption("--genie-report", default=None, help="folder for results.json (and index.html)")
    parser.addoption("--genie-server", action="store_true",
                     help="execute on a genie server (a subprocess per test process) instead of in-process")


def pytest_configure(config):
    # the OpInfo cells check every sample as a subtest: without pytest's `subtests` fixture (pytest 9)
    # every cell would error in setup
    if int(pytest.__version__.split(".")[0]) < 9:
        raise pytest.UsageError(f"the conformance suites need pytest>=9 (its subtests fixture); this is "
                                f"pytest {pytest.__version__}")
    config.addinivalue_line("markers", "genie_cell(op, variant, dtype, device): the OpInfo cell a test checks")
    config.addinivalue_line("markers", "genie_model(family, model, check, dtype): the model check a test is")
    config._genie_ledger = Ledger()
    config._genie_started = time.time()
    device = config.getoption("--genie-device")
    if device == "cuda" and torch.cuda.is_available():
        genie.set_execution_device("cuda")


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


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


# -- one cell's samples --------------------------------------------------------------------------


class Samples:
    """One cell's samples, checked one by one: how many were compared with eager, rejected as eager
    rejects them, or skipped (and why), and which failed. ``finish()`` gives the cell's verdict: a
    failure if any sample failed (or, for a manifest cell, if the failures are not the ones its
    entry expects), a skip with its reason if nothing was checked, else a pass."""

    def __init__(self, subtests, record_property, name: str, expected=None):
        self.subtests = subtests
        self.record_property = record_property
        self.name = name
        self.expected = expected  # conformance.manifest.Expected, or None
        self.total = 0
        self.compared = 0
        self.rejected = 0
        self.skips: collections.Counter = collections.Counter()
        self.failures: dict[int, str] = {}

    def check(self, index: int, description: str, check) -> None:
        """Runs ``check()``: it returns "compared" (values matched eager's) or "rejected" (eager raised
        and the device raised the same), raises pytest.skip to skip the sample, or fails. A failure of
        a cell without a manifest entry is reported as a subtest, which names the sample."""
        self.total += 1
        if self.expected is not None:  # a known failure: tallied, matched against the entry in finish()
            try:
                self._run(index, check)
            except INTERRUPTS:
                raise
            except BaseException:  # noqa: BLE001 - recorded in self.failures
                pass
            return
        with self.subtests.test(msg=f"sample {index}", sample=description):
            self._run(index, check)

    def _run(self, index: int, check) -> None:
        try:
            kind = check()
            if kind not in ("compared", "rejected"):
                raise AssertionError(f"the check returned {kind!r}, not 'compared' or 'rejected'")
        except pytest.skip.Exception as e:
            self.skips[str(e.msg)] += 1
            return
        except INTERRUPTS:
            raise
        except BaseException as e:  # pytest.fail's exception too: a sample's failure, whatever raised it
            self.failures[index] = f"{type(e).__name__}: {first_line(e)}"
            raise
        if kind == "compared":
            self.compared += 1
        else:
            self.rejected += 1

    def finish(self, **detail) -> None:
        failures = [f"sample {i}: {text}" for i, text in sorted(self.failures.items())]
        self.record_property("genie_detail", dict(
            samples=self.total, compared=self.compared, rejected=self.rejected, skipped=sum(self.skips.values()),
            skip_reasons=dict(self.skips), failed_samples=len(failures), failures=failures[:20], **detail))
        if self.expected is not None:
            problems = self.expected.mismatches(self.failures, self.total)
            if not problems:
                pytest.xfail(self.expected.reason)
            pytest.fail(f"not the manifest's expected failure: {'; '.join(problems)} "
                        f"(the entry: {self.expected.reason})", pytrace=False)
        if failures:
            pytest.fail(f"{len(failures)} of {self.total} samples failed; {failures[0]}", pytrace=False)
        if self.compared + self.rejected == 0:
            if not self.total:
                pytest.skip("no samples")
            pytest.skip(f"nothing compared: all {self.total} samples skipped ("
                        + "; ".join(f"{n}x {why}" for why, n in self.skips.items()) + ")")


@pytest.fixture
def samples(subtests, record_property):
    """A factory of Samples for this test: ``samples(name, expected)``."""
    return lambda name, expected=None: Samples(subtests, record_property, name, expected)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:240] if text else ""


# -- the rows ------------------------------------------------------------------------------------


class Ledger:
    """On the controller (xdist forwards its workers' reports): the ids collected, and one row per test,
    made when its teardown report arrives (every phase seen by then) or when its worker crashed."""

    def __init__(self):
        self.collected: list[str] | None = None
        self.collection_errors: list[dict] = []
        self.cells: list[dict] = []
        self.models: list[dict] = []
        self.others: list[dict] = []
        self.pending: dict[str, dict] = {}
        self.recorded: set[str] = set()

    def collection_finished(self, ids) -> None:
        if self.collected is None:  # xdist: every worker collects the same ids (it checks that)
            self.collected = list(ids)

    def collection_error(self, report) -> None:
        self.collection_errors.append({"nodeid": report.nodeid, "outcome": "fail",
                                       "reason": f"collection error: {_last_line(report)}"})

    def add(self, report) -> None:
        state = self.pending.setdefault(report.nodeid, {"phases": {}, "failed_samples": []})
        if type(report).__name__ == "SubtestReport":
            if report.failed:
                state["failed_samples"].append(_last_line(report))
            return
        state["phases"][report.when] = report
        state["props"] = dict(report.user_properties)
        if report.when == "teardown" or report.when not in ("setup", "call"):  # "???": xdist's crashed item
            self.finish(report.nodeid)

    def finish(self, nodeid: str) -> None:
        state = self.pending.pop(nodeid)
        props = state.get("props", {})
        row = dict(_verdict(state["phases"], state["failed_samples"], props), nodeid=nodeid,
                   duration=round(sum(r.duration for r in state["phases"].values() if r is not None), 3))
        detail = props.get("genie_detail", {})
        row.update({k: v for k, v in detail.items() if k not in ("failures", "first_failure")})
        failures = detail.get("failures") or ([detail["first_failure"]] if detail.get("first_failure") else [])
        if failures:
            row["failure"] = "; ".join(failures)[:1000]
        self.recorded.add(nodeid)
        if "genie_cell" in props:
            self.cells.append(dict(props["genie_cell"], **row))
        elif "genie_model" in props:
            self.models.append(dict(props["genie_model"], **row))
        else:
            self.others.append(row)

    def close(self) -> None:
        """Tests that started and never reached teardown (an interrupted run): failures, not gaps."""
        for nodeid in list(self.pending):
            state = self.pending[nodeid]
            state["phases"].setdefault("teardown", None)
            self.finish(nodeid)

    def unrecorded(self) -> list[str]:
        return [i for i in (self.collected or []) if i not in self.recorded]


def _verdict(phases: dict, failed_samples: list, props: dict) -> dict:
    """One outcome from setup, call and teardown: an error in any phase fails the test."""
    setup, call, teardown = phases.get("setup"), phases.get("call"), phases.get("teardown")
    odd = [r for when, r in phases.items() if when not in ("setup", "call", "teardown") and r is not None]
    detail = props.get("genie_detail", {})
    if odd:
        return {"outcome": "fail", "reason": _last_line(odd[0])}
    if setup is None or "teardown" not in phases or phases["teardown"] is None:
        return {"outcome": "fail", "reason": "the test did not finish (no teardown report): the run was interrupted"}
    if setup.failed:
        verdict = {"outcome": "fail", "reason": f"error in setup: {_last_line(setup)}"}
    elif setup.skipped:
        verdict = {"outcome": "skip", "reason": _skip_reason(setup)}
    elif call is None:
        verdict = {"outcome": "fail", "reason": "no call report"}
    elif call.failed:
        verdict = {"outcome": "fail", "reason": detail.get("first_failure") or _last_line(call)}
    elif failed_samples:  # a sample failed, and the test passed: the verdict keeps the sample's failure
        verdict = {"outcome": "fail", "reason": f"{len(failed_samples)} failed subtests; {failed_samples[0]}"}
    elif hasattr(call, "wasxfail"):
        # the failure itself stays on the row beside the reason it was expected for (a Samples cell puts
        # its failing samples there instead)
        verdict = ({"outcome": "xfail", "reason": call.wasxfail, "failure": _last_line(call)} if call.skipped else
                   {"outcome": "fail", "reason": f"XPASS: passes though expected to fail ({call.wasxfail})"})
    elif call.skipped:
        verdict = {"outcome": "skip", "reason": _skip_reason(call)}
    else:
        verdict = {"outcome": "pass", "reason": ""}
    if teardown.failed:
        verdict = {"outcome": "fail", "reason": f"error in teardown: {_last_line(teardown)}"}
    return verdict


def _skip_reason(report) -> str:
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


def _last_line(report) -> str:
    """What failed, in a line: the exception's own message where pytest kept it (its crash entry),
    else the last line of the failure's text."""
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return (lines[0] if crash is not None else lines[-1])[:600]


def pytest_collection_modifyitems(config, items):
    """A test labelled by a ``genie_cell`` / ``genie_model`` marker carries the label as a user property:
    its row is that kind's even if it never runs (skipped, or erroring in setup)."""
    for item in items:
        for label in LABELS:
            marker = item.get_closest_marker(label)
            if marker is not None:
                item.user_properties.append((label, dict(marker.kwargs)))


def pytest_collection_finish(session):
    if not _is_worker(session.config):  # without xdist; with it, the workers collect (the hook below)
        session.config._genie_ledger.collection_finished(item.nodeid for item in session.items)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _config._genie_ledger.collection_finished(ids)


def pytest_collectreport(report):
    if report.failed and _config is not None and not _is_worker(_config):
        _config._genie_ledger.collection_error(report)


def pytest_runtest_logreport(report):
    """Runs on the controller (xdist forwards worker reports)."""
    if not _is_worker(_config):
        _config._genie_ledger.add(report)


@pytest.hookimpl(tryfirst=True)
def pytest_report_teststatus(report, config):
    """Passing subtests (one per OpInfo sample) print nothing: the progress line stays readable."""
    if type(report).__name__ == "SubtestReport" and report.passed:
        return "subtests passed", "", ""
    return None


_config = None


def pytest_sessionstart(session):
    """A run writes its own results.json or none: the previous run's is removed before anything runs."""
    global _config
    _config = session.config
    out = session.config.getoption("--genie-report")
    if out and not _is_worker(session.config):
        for name in (RESULTS, "index.html"):
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))


def _payload(config) -> dict:
    ledger = config._genie_ledger
    ledger.close()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
    except Exception:
        commit = "unknown"
    others = sorted(ledger.others + ledger.collection_errors, key=lambda r: r["nodeid"])
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "commit": commit or "unknown",
        "device": config.getoption("--genie-device"),
        "started": config._genie_started,
        "duration_s": round(time.time() - config._genie_started, 1),
        "collected": len(ledger.collected or []),
        "unrecorded": ledger.unrecorded(),
        "results": sorted(ledger.cells, key=lambda r: (r["op"], r["variant"], r["dtype"], r["device"])),
        "models": sorted(ledger.models, key=lambda m: (m["family"], m["model"], m["check"])),
        "other": others,
        "other_failures": [r["nodeid"] for r in others if r["outcome"] == "fail"],
    }


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _is_worker(config):  # xdist worker: the controller writes the report
        return
    config._genie_payload = payload = _payload(config)
    out = config.getoption("--genie-report")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, RESULTS), "w") as f:
        json.dump(payload, f, indent=1, default=str)
    from conformance.report import write_html
    write_html(payload, os.path.join(out, "index.html"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    payload = getattr(config, "_genie_payload", None)
    if _is_worker(config) or payload is None:
        return
    from conformance.report import summary_lines
    out = config.getoption("--genie-report")
    terminalreporter.section("genie conformance")
    for line in summary_lines(payload, os.path.join(out, "index.html") if out else None):
        terminalreporter.write_line(line)
