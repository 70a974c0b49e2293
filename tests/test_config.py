"""Execution device selection: CPU by default, CUDA when asked and present."""

import subprocess
import sys

import pytest
import torch

import genie
from conftest import DEVICE, host

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")


def test_default_is_cpu():
    assert genie.execution_device() == torch.device("cpu")


def test_env_var_selects_device():
    code = "import genie, torch; print(genie.execution_device())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "GENIE_EXECUTION_DEVICE": "cpu"})
    assert out.stdout.strip() == "cpu", out.stderr


def test_set_execution_device_roundtrip():
    genie.set_execution_device("cpu")
    x = torch.arange(3.0, device=DEVICE) + 1
    assert torch.equal(host(x), torch.arange(3.0) + 1)


@needs_cuda
@pytest.mark.cuda
def test_cuda_execution_matches_cpu():
    genie.set_execution_device("cuda")
    try:
        torch.manual_seed(0)
        x = torch.randn(64, 64)
        lx = x.to(DEVICE)
        got = host(torch.relu(lx @ lx.T).sum(0))
        assert got.device.type == "cpu"
        torch.testing.assert_close(got, torch.relu(x @ x.T).sum(0), rtol=1e-4, atol=1e-4)
        # factory device kwargs are coerced to the execution device
        z = torch.zeros(3, device=DEVICE) + 1
        assert torch.equal(host(z), torch.ones(3))
        assert z.genie_node.value.device.type == "cuda"
    finally:
        genie.set_execution_device("cpu")
