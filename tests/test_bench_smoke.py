"""pytest-benchmark smoke: per-op capture cost next to eager (figures, not asserts; each body's
value is checked against eager's).

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
    torch.testing.assert_close(out.cpu(), torch.ones(8, 8), rtol=0, atol=0)


def test_relu_mm_8x8(benchmark, device):
    gen = torch.Generator().manual_seed(0)
    hy, hw = torch.randn(8, 8, generator=gen), torch.randn(8, 8, generator=gen)
    y, w = hy.to(device), hw.to(device)
    out = benchmark(lambda: torch.relu(y @ w))
    torch.testing.assert_close(out.cpu(), torch.relu(hy @ hw), rtol=0, atol=0)
