"""The demos run from a fresh clone (smoke tests: their own checks decide the exit status)."""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("GENIE_TEST_SERVER", None)
    return subprocess.run([sys.executable, os.path.join(ROOT, "example", script), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=ROOT)


def test_resnet18_demo_prints_modules_patterns_and_matches_eager():
    out = _run("resnet18_demo.py", "--image", "32")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "layers.0.conv1" in out.stdout and "Conv2d" in out.stdout
    assert "conv_block        17" in out.stdout and "residual           8" in out.stdout
    assert out.stdout.rstrip().endswith("OK")


def test_perf_compare_prints_a_table_and_plots(tmp_path):
    plot = importlib.util.find_spec("matplotlib") is not None
    png = tmp_path / "perf.png"
    out = _run("perf_compare.py", "--runs", "1", *(["--plot", str(png)] if plot else []))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for model in ("decoder_lm", "encoder", "vit", "cnn"):
        assert model in out.stdout
    if plot:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        pytest.skip("matplotlib is not installed (the 'plot' extra): the table was checked, not the chart")
