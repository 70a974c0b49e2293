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


def test_switching_the_execution_device_forgets_the_decisions_made_for_the_last_one():
    from genie.capture import device_choice, dispatch, factories
    from genie.ops import schema
    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 8)

    def program(device):
        x = q.to(device)
        att = torch.nn.functional.scaled_dot_product_attention(x, x, x, is_causal=True)
        return att.relu() + torch.zeros(1, device=device)

    expected = program("cpu")
    torch.testing.assert_close(host(program(DEVICE)), expected, rtol=0, atol=0)
    assert device_choice._traces and dispatch._cache and factories._seen
    relu = schema.classify(torch.ops.aten.relu.default)
    captured = relu.captured
    genie.set_execution_device("cpu")
    # every decision made by the previous device's kernels and policies is gone
    assert not device_choice._traces and not dispatch._cache and not factories._seen
    # the op classes are decided again, their counters and special handlers kept
    assert schema.classify(torch.ops.aten.relu.default) is relu and relu.captured == captured
    assert schema.classify(torch.ops.aten._to_copy.default).special is not None
    torch.testing.assert_close(host(program(DEVICE)), expected, rtol=0, atol=0)


def test_the_config_module_is_a_leaf():
    import ast
    import pathlib
    source = pathlib.Path(genie.config.__file__).read_text()
    imported = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "os", "torch"}, imported
