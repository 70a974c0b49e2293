"""The conformance verdict end to end: small synthetic suites run by pytest (in a subprocess, with
and without xdist) through conformance/conftest.py's hooks, then ``conformance.report --check``.

Each fault must reach the verdict: a failing sample, an error in setup or teardown, a rejection
with the wrong exception type, a model check that compared nothing, a known failure beside a new
one, a stale results.json. An empty cell is a skip with its reason. Every collected test has a row.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conformance.manifest import Expected
from conformance.report import main as report_main
from conformance.report import problems

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]

# Cells as the OpInfo suite makes them: labelled by the genie_cell marker, samples checked through
# the `samples` fixture, and, where it is the OpInfo check itself that matters, test_opinfo's
# check_sample on a stand-in op.
CELLS = '''
import types

import pytest
import torch

from conformance.manifest import Expected
from conformance.test_opinfo import REMOTE, check_sample


def cell(op):
    return pytest.mark.genie_cell(op=op, variant="function", dtype="float32", device="cpu")


class StandIn:
    """An op for check_sample: eager's behaviour on the CPU, another on the device."""

    def __init__(self, name, eager, lazy):
        self.name, self.eager, self.lazy = name, eager, lazy

    def __call__(self, t):
        return (self.lazy if t.device.type == REMOTE else self.eager)(t)


def raises(kind):
    def call(t):
        raise kind("rejected")
    return call


def sample():
    return types.SimpleNamespace(input=torch.arange(4.0), args=(), kwargs={})


def run_op(op, samples, n=1):
    run = samples(op.name)
    for i in range(n):
        run.check(i, "T(4,)", lambda: check_sample(op, "function", sample(), "cpu", set()))
    run.finish()


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("passing.default"))])
def test_passing(c, samples):
    run_op(StandIn("passing", torch.sin, torch.sin), samples, n=3)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("one_failing_sample.default"))])
def test_one_failing_sample(c, samples):
    run = samples("one_failing_sample")
    ok = StandIn("ok", torch.sin, torch.sin)
    off = StandIn("off", torch.sin, lambda t: torch.sin(t) + 1)  # the device's values differ
    for i, op in enumerate((ok, off, ok)):
        run.check(i, "T(4,)", lambda: check_sample(op, "function", sample(), "cpu", set()))
    run.finish()


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("subtest_only.default"))])
def test_failing_subtest_in_a_passing_test(c, subtests):
    """A failed subtest, the test itself passing: pytest fails it only in its own terminal bookkeeping,
    which a worker's count does not reach across xdist."""
    with subtests.test(msg="sample 0"):
        assert False, "values differ"


@pytest.fixture
def broken_setup():
    raise RuntimeError("the fixture broke")


@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("the teardown broke")


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("setup_error.default"))])
def test_setup_error(c, broken_setup, samples):
    run_op(StandIn("setup_error", torch.sin, torch.sin), samples)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("teardown_error.default"))])
def test_teardown_error(c, broken_teardown, samples):
    run_op(StandIn("teardown_error", torch.sin, torch.sin), samples)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("wrong_exception.default"))])
def test_wrong_exception_type(c, samples):
    run_op(StandIn("wrong_exception", raises(ValueError), raises(KeyError)), samples)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("accepts_what_eager_rejects.default"))])
def test_device_accepts_what_eager_rejects(c, samples):
    run_op(StandIn("accepts_what_eager_rejects", raises(ValueError), torch.sin), samples)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("same_exception.default"))])
def test_same_exception_type(c, samples):
    run_op(StandIn("same_exception", raises(ValueError), raises(ValueError)), samples, n=2)


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("no_samples.default"))])
def test_no_samples(c, samples):
    samples("no_samples").finish()


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("all_skipped.default"))])
def test_all_samples_skipped(c, samples):
    run = samples("all_skipped")
    for i in range(2):
        run.check(i, "T(4,)", lambda: pytest.skip("out= variant: the function returns non-tensors"))
    run.finish()


KNOWN = Expected("a known failure of sample 1", samples=(1,), match="^AssertionError: .*values differ")


def known_failure_run(samples, failing):
    run = samples("known", KNOWN)
    for i in range(3):
        def check(i=i):
            assert i not in failing, "values differ"
            return "compared"
        run.check(i, "T(4,)", check)
    run.finish()


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("known_failure.default"))])
def test_known_failure(c, samples):
    known_failure_run(samples, failing={1})


@pytest.mark.parametrize("c", [pytest.param(0, marks=cell("known_failure_and_a_new_one.default"))])
def test_known_failure_and_a_new_one(c, samples):
    known_failure_run(samples, failing={1, 2})
'''

# model checks as the zoo makes them: labelled by the genie_model marker, compared by assert_same
MODELS = '''
import pytest
import torch

from conformance.test_models import assert_same


def model(name):
    return pytest.mark.genie_model(family="synthetic", model=name, check="forward", dtype="float32")


@pytest.mark.parametrize("m", [pytest.param(0, marks=model("compares_a_tensor"))])
def test_compares_a_tensor(m):
    out = {"logits": torch.ones(2), "n": 3, "cache": None}
    assert assert_same({k: v.to("remote_accelerator") if torch.is_tensor(v) else v for k, v in out.items()}, out) == 1


@pytest.mark.parametrize("m", [pytest.param(0, marks=model("compares_nothing"))])
def test_compares_nothing(m):
    assert_same({"cache": None}, {"cache": None})


@pytest.mark.parametrize("m", [pytest.param(0, marks=model("unknown_leaf"))])
def test_unknown_leaf(m):
    class Cache:  # a layout the comparison does not know: its tensors would go unseen
        tensor = torch.ones(2)
    assert_same({"logits": torch.ones(2).to("remote_accelerator"), "cache": Cache()},
                {"logits": torch.ones(2), "cache": Cache()})


@pytest.mark.parametrize("m", [pytest.param(0, marks=[model("known_by_marker"), pytest.mark.xfail(
    strict=True, raises=RuntimeError, reason="a known failure")])])
def test_known_by_marker(m):
    raise RuntimeError("what the known failure says")


@pytest.mark.parametrize("m", [pytest.param(0, marks=[model("skipped"),
                                                       pytest.mark.skip(reason="transformers is not installed")])])
def test_skipped_before_it_runs(m):
    pass
'''

# every row outcome the synthetic suites must give
CELL_OUTCOMES = {
    "passing.default": "pass",
    "one_failing_sample.default": "fail",
    "subtest_only.default": "fail",
    "setup_error.default": "fail",
    "teardown_error.default": "fail",
    "wrong_exception.default": "fail",
    "accepts_what_eager_rejects.default": "fail",
    "same_exception.default": "pass",
    "no_samples.default": "skip",
    "all_skipped.default": "skip",
    "known_failure.default": "xfail",
    "known_failure_and_a_new_one.default": "fail",
}
MODEL_OUTCOMES = {"compares_a_tensor": "pass", "compares_nothing": "fail", "unknown_leaf": "fail", "skipped": "skip",
                  "known_by_marker": "xfail"}


class Run:
    def __init__(self, result, folder: Path):
        self.result = result
        self.folder = folder
        path = folder / "results.json"
        self.payload = json.loads(path.read_text()) if path.exists() else None

    def check(self) -> int:
        return report_main([str(self.folder), "--check"])

    def cell(self, op: str) -> dict:
        return next(r for r in self.payload["results"] if r["op"] == op)


@pytest.fixture
def conformance(pytester, monkeypatch):
    """``conformance(files, *args)``: pytest on those test files with conformance/conftest.py's hooks, in a
    subprocess (its imports and environment stay out of this session); the report folder's results."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pytester.makeconftest('pytest_plugins = ["conformance.conftest"]')
    folder = pytester.path / "report"

    def run(files: dict, *args) -> Run:
        if files:
            pytester.makepyfile(**files)
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--genie-report={folder}", *args,
                                               timeout=180)
        return Run(result, folder)
    return run


def _assert_every_fault_is_a_row(run: Run, model_outcomes: dict) -> None:
    outcomes = {r["op"]: r["outcome"] for r in run.payload["results"]}
    assert outcomes == CELL_OUTCOMES, run.result.stdout.str()[-3000:]
    assert {m["model"]: m["outcome"] for m in run.payload["models"]} == model_outcomes
    assert run.payload["collected"] == len(CELL_OUTCOMES) + len(model_outcomes)
    assert run.payload["unrecorded"] == []

    assert "sample 1: AssertionError: first run: output[0]: Tensor-likes are not close" in \
        run.cell("one_failing_sample.default")["failure"]
    assert run.cell("one_failing_sample.default")["failed_samples"] == 1
    assert run.cell("one_failing_sample.default")["compared"] == 2
    assert "the fixture broke" in run.cell("setup_error.default")["reason"]
    assert "error in setup" in run.cell("setup_error.default")["reason"]
    assert "the teardown broke" in run.cell("teardown_error.default")["reason"]
    assert "KeyError" in run.cell("wrong_exception.default")["failure"]
    assert "accepted" in run.cell("accepts_what_eager_rejects.default")["failure"]
    same = run.cell("same_exception.default")
    assert (same["compared"], same["rejected"]) == (0, 2)
    assert run.cell("no_samples.default")["reason"] == "no samples"
    assert "all 2 samples skipped" in run.cell("all_skipped.default")["reason"]
    assert "non-tensors" in run.cell("all_skipped.default")["reason"]
    known = run.cell("known_failure.default")
    assert known["reason"] == "a known failure of sample 1" and "sample 1" in known["failure"]
    assert "unexpected failure, sample 2" in run.cell("known_failure_and_a_new_one.default")["reason"]
    assert run.check() == 1


def test_every_fault_is_a_failing_row_across_xdist(conformance):
    """A worker's reports cross to the controller serialized: a failed sample still fails its cell there."""
    run = conformance({"test_cells": CELLS, "test_models_synthetic": MODELS}, "-n", "1")
    _assert_every_fault_is_a_row(run, MODEL_OUTCOMES)
    models = {m["model"]: m for m in run.payload["models"]}
    assert "no tensor to compare" in models["compares_nothing"]["reason"]
    assert "does not know" in models["unknown_leaf"]["reason"]
    assert models["compares_a_tensor"]["nodeid"].endswith("test_compares_a_tensor[0]")
    assert models["known_by_marker"]["reason"] == "a known failure"
    assert "what the known failure says" in models["known_by_marker"]["failure"]
    assert models["skipped"]["reason"] == "transformers is not installed"


def test_every_fault_is_a_failing_row_in_one_process(conformance):
    run = conformance({"test_cells": CELLS})
    _assert_every_fault_is_a_row(run, {})


ONE_CELL = '''
import pytest


@pytest.mark.parametrize("c", [pytest.param(0, marks=pytest.mark.genie_cell(op="ok.default", variant="function",
                                                                            dtype="float32", device="cpu"))])
def test_ok(c, samples):
    run = samples("ok")
    run.check(0, "x", lambda: "compared")
    run.finish()
'''


@pytest.mark.parametrize("fault", ["one failing sample", "setup error", "wrong exception type"])
def test_each_fault_alone_fails_the_check(conformance, fault):
    """A run whose only fault is this one: the check fails on it, not on something beside it."""
    source = {"one failing sample": "run.check(1, 'x', lambda: 1 / 0)",
              "setup error": "pytest.fail('setup')",
              "wrong exception type": "run.check(1, 'x', lambda: assert_rejects_like(ValueError('e'), "
                                      "lambda: {}['k']))"}[fault]
    module = ONE_CELL.replace("    run.finish()", f"    {source}\n    run.finish()") if fault != "setup error" else \
        ONE_CELL + "\n\n@pytest.fixture(autouse=True)\ndef broken():\n    " + source + "\n"
    module = "from conformance.test_opinfo import assert_rejects_like\n" + module
    run = conformance({"test_one": module})
    assert [r["outcome"] for r in run.payload["results"]] == ["fail"]
    assert run.check() == 1


def test_without_the_subtests_fixture_every_cell_fails(conformance):
    """pytest before 9 has no subtests fixture (here: its plugin left out): every cell errors in setup,
    and that is a failing row, not a missing one."""
    run = conformance({"test_one": ONE_CELL}, "-p", "no:subtests")
    assert [(r["outcome"], "error in setup" in r["reason"]) for r in run.payload["results"]] == [("fail", True)]
    assert run.check() == 1


def test_a_run_that_records_nothing_does_not_leave_the_last_results(conformance):
    first = conformance({"test_one": ONE_CELL})
    assert first.check() == 0 and first.payload["collected"] == 1
    # the same folder, a run that collects nothing: its own (empty) results are checked, not the last ones
    deselected = conformance({}, "-k", "no_such_test")
    assert deselected.payload["collected"] == 0 and deselected.payload["started"] != first.payload["started"]
    assert deselected.check() == 1
    # and one that cannot import its tests
    broken = conformance({"test_one": "import no_such_module\n"})
    assert broken.payload["results"] == [] and broken.payload["other_failures"]
    assert broken.check() == 1


def test_a_run_without_results_fails_the_check(tmp_path):
    assert report_main([str(tmp_path), "--check"]) == 1


# -- the manifest's expected failures, alone ---------------------------------------------------


def test_an_entry_expects_its_samples_and_message():
    known = Expected("known", samples=(1, 3), match="^AssertionError: .*not close")
    assert known.mismatches({1: "AssertionError: x not close", 3: "AssertionError: y not close"}, checked=5) == []
    # a new failure in another sample of the cell is not the known one
    assert known.mismatches({1: "AssertionError: not close", 2: "AssertionError: not close",
                             3: "AssertionError: not close"}, checked=5) == \
        ["unexpected failure, sample 2: AssertionError: not close"]
    # nor is another failure of a known sample
    assert known.mismatches({1: "KeyError: 'x'", 3: "AssertionError: not close"}, checked=5) == \
        ["unexpected failure, sample 1: KeyError: 'x'"]
    # a known sample that passes now is stale
    assert known.mismatches({1: "AssertionError: not close"}, checked=5) == \
        ["sample 3 passes now: remove it from the entry"]
    assert "passes now: remove its manifest entry" in known.mismatches({}, checked=5)


def test_an_entry_by_message_alone_takes_any_sample():
    known = Expected("known", match="sparse_csr")
    assert known.mismatches({0: "NotImplementedError: sparse_csr", 7: "NotImplementedError: sparse_csr"}, 9) == []
    assert known.mismatches({0: "RuntimeError: other"}, 9) == ["unexpected failure, sample 0: RuntimeError: other"]


def test_problems_name_what_was_not_recorded():
    payload = {"results": [], "models": [], "collected": 2, "unrecorded": ["a::b", "a::c"]}
    found = problems(payload)
    assert any("a::b" in p for p in found) and any("no cell was recorded" in p for p in found)
