"""pytest-benchmark smoke: per-op capture cost next to eager (figures, not asserts).

Run with ``--benchmark-enable`` (the bench session does) to get timings and JSON under reports/;
in the test session each body runs once as a correctness check.
"""

import pytest
import torch

from conftest import DEVICE

pytestmark = pytest.mark.benchmark


@pytest.fixture(params=["eager", "lazy"])
def device(request):
    return "cpu" if request.param == "eager" else DEVICE


def test_add_8x8(benchmark, device):
    y = torch.zeros(8, 8, device=device)
    out = benchmark(lambda: y + 1)
    assert out.shape == (8, 8)


def test_relu_mm_8x8(benchmark, device):
    y = torch.randn(8, 8, device=device)
    w = torch.randn(8, 8, device=device)
    out = benchmark(lambda: torch.relu(y @ w))
    assert out.shape == (8, 8)
