"""Sessions: ``nox -s tests`` (unit tests + coverage), ``nox -s conformance`` (the OpInfo sweep,
lazy vs eager, with its HTML matrix), ``nox -s bench`` / ``perf_report`` (asv), ``reports``.

torch is pinned per machine family: ``GENIE_TORCH_SPEC`` overrides the default, which is the
CPU wheel this machine family carries (an unpinned torch resolves to a multi-GB CUDA build).
On a machine with torch already installed and no network (the GPU machines), run with
``--no-venv`` (or ``GENIE_NOX_REUSE_PYTHON=1``) to use the interpreter that is there.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

TORCH_SPEC = os.environ.get("GENIE_TORCH_SPEC", "torch==2.13.0")
PYTHON = os.environ.get("GENIE_NOX_PYTHON") or None  # the interpreter nox runs under by default
REPORTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reports")


def _install(session: nox.Session, extras: str) -> None:
    if isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv):
        return  # --no-venv: the interpreter that is there already carries torch
    session.install(TORCH_SPEC)
    session.install("-e", f".[{extras}]")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and property tests with coverage (fail under 85%); HTML under reports/coverage/."""
    _install(session, "test,plot")
    os.makedirs(os.path.join(REPORTS, "coverage"), exist_ok=True)
    session.run(
        "pytest", "tests", "-p", "no:cacheprovider",
        "--cov=genie", "--cov-report=term", "--cov-report=html:reports/coverage",
        "--cov-fail-under=85",
        *session.posargs,
        env={"OMP_NUM_THREADS": "1"},
    )
    # again with every plan structure compiled at first sight: each test's programs then run as
    # compiled replays (the run above interprets first sightings and compiles repeats)
    session.run("pytest", "tests", "-p", "no:cacheprovider", "-q", *session.posargs,
                env={"OMP_NUM_THREADS": "1", "GENIE_REPLAY_AFTER": "1"})
    # and once more with a genie server (a subprocess) as the execution target: every program of
    # the suite then crosses the wire format and runs from resident values
    # (GENIE_CHECK_TEMPLATES: every plan's remote template is checked against the local encoder)
    session.run("pytest", "tests", "-p", "no:cacheprovider", "-q", *session.posargs,
                env={"OMP_NUM_THREADS": "1", "GENIE_TEST_SERVER": "1", "GENIE_CHECK_TEMPLATES": "1"})


@nox.session(python=PYTHON)
@nox.parametrize("executor", ["local", "remote"])
@nox.parametrize("device", ["cpu", "cuda"])
def conformance(session: nox.Session, device: str, executor: str) -> None:
    """Every OpInfo, the model zoo and module_db, lazy vs eager within 1e-5; writes
    reports/conformance/{index.html,results.json} and ends with a short table of the outcomes.
    ``executor='remote'``: the same suites executed on a genie server (a subprocess per test
    process), so every check crosses the wire format and runs from resident values; its report
    goes to reports/conformance-remote/ (``-cuda`` in front for the CUDA device)."""
    _install(session, "test,models,diffusers")
    if device == "cuda":
        probe = session.run("python", "-c", "import torch; print(torch.cuda.is_available())",
                            silent=True, external=True)
        if "True" not in (probe or ""):
            session.skip(f"conformance(device='cuda', executor='{executor}'): CUDA is not available on this machine")
    # the CPU matrix is the main job's report; the others go beside it, not over it
    name = "conformance" + ("" if device == "cpu" else f"-{device}") + ("-remote" if executor == "remote" else "")
    out = os.path.join(REPORTS, name)
    os.makedirs(out, exist_ok=True)
    # the check below reads this run's results.json or none: a previous run's must not stand in for a run
    # that wrote nothing (pytest's conftest removes it too, but only once pytest got that far)
    stale = os.path.join(out, "results.json")
    if os.path.exists(stale):
        os.remove(stale)
    workers = os.environ.get("GENIE_CONFORMANCE_WORKERS", "auto")
    session.run(
        # -q: one mark per cell (passing OpInfo samples print nothing); the run ends with genie's own
        # table of outcomes by dtype and every failure with its reason (conformance/conftest.py)
        "pytest", "conformance", "-p", "no:cacheprovider", "-q", "-n", workers, "-rfE", "--disable-warnings",
        f"--genie-device={device}", f"--genie-report={out}", *(["--genie-server"] if executor == "remote" else []),
        *session.posargs,
        # GENIE_REPLAY_AFTER=1: every structure is compiled at first sight, and the suites run each
        # program twice or more, so the checked and the verified compiled code are both proven
        env={"OMP_NUM_THREADS": "1", "GENIE_EXECUTION_DEVICE": device, "GENIE_REPLAY_AFTER": "1"},
        # 1 (some test failed) is for the check to judge: it knows the manifest's expected failures, and it
        # fails the session on any other failure, on a run that recorded nothing, and on a collected test
        # without a row; 2 and up (interrupted, internal or usage error, nothing collected) fail here
        success_codes=[0, 1],
    )
    session.run("python", "-m", "conformance.report", out, "--check")


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (the rules in pyproject.toml) and the import contracts in .importlinter: layers that run
    one way, and no import cycle among the modules of any package (function-level imports count)."""
    if not isinstance(session.virtualenv, nox.virtualenv.PassthroughEnv):
        session.install("ruff>=0.6", "import-linter>=2.1")
    session.run("ruff", "check", "genie", "conformance", "tests", "asv_benches", "example", "noxfile.py")
    # import-linter reads the sources (nothing is imported): genie is found from the checkout
    session.run("lint-imports", env={"PYTHONPATH": os.path.dirname(os.path.abspath(__file__))})


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """asv against the working tree, then ``asv continuous`` against main (non-zero on a slowdown)."""
    _install(session, "bench")
    session.install("-e", ".[test]")
    args = [a for a in session.posargs if a != "--no-continuous"]
    # the in-suite smoke benchmarks, timed this time (the tests session runs them once, untimed)
    session.run("pytest", "tests/test_bench_smoke.py", "-p", "no:cacheprovider", "--benchmark-enable",
                f"--benchmark-json={os.path.join(REPORTS, 'benchmark.json')}", "-q")
    session.run("asv", "machine", "--yes")
    session.run("asv", "run", "--python=same", "--quick", "--show-stderr", "--set-commit-hash",
                _head(session), *args)
    if "--no-continuous" not in session.posargs:
        # builds main and HEAD in asv's own virtualenvs; exits non-zero on a slowdown beyond 1.5x
        session.run("asv", "continuous", "--factor", "1.5", "--quick", "--show-stderr", "main", "HEAD")


@nox.session(python=PYTHON)
def perf_report(session: nox.Session) -> None:
    """Publish the asv history as HTML under reports/perf."""
    _install(session, "bench")
    session.run("asv", "publish")


@nox.session(python=PYTHON)
def reports(session: nox.Session) -> None:
    """reports/index.html: links to coverage, conformance and perf, with the headline ratios."""
    _install(session, "bench")
    session.run("python", "-m", "asv_benches.summary", REPORTS)


def _head(session: nox.Session) -> str:
    git = shutil.which("git")
    return session.run(git, "rev-parse", "HEAD", silent=True, external=True).strip()
