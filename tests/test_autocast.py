"""torch.autocast on the device runs the execution device's autocast policy: the same ops in
lower precision, the same in float32, the same promotions; values, dtypes and gradients equal
eager autocast's on the execution device (CPU here), and GradScaler's fp16 loop equals eager's."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from conftest import DEVICE, host

DTYPES = [torch.bfloat16, torch.float16]


def _autocast_type(device):
    return "cpu" if device == "cpu" else DEVICE


def _same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        g = host(g)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True)


def _both(program, *args):
    torch.manual_seed(0)
    expected = program("cpu", *args)
    torch.manual_seed(0)
    got = program(DEVICE, *args)
    _same(got, expected)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_policy_lower_precision_float32_and_promotion(dtype):
    def program(d, dtype):
        a, b = torch.randn(4, 6, device=d), torch.randn(6, 3, device=d)
        img, w = torch.randn(1, 2, 5, 5, device=d), torch.randn(3, 2, 3, 3, device=d)
        target = torch.randint(0, 3, (4,), device=d)
        with torch.autocast(_autocast_type(d), dtype=dtype):
            mm = a @ b  # lower precision
            lin = F.linear(a, b.t())
            conv = F.conv2d(img, w)
            ce = F.cross_entropy(mm, target)  # float32
            mse = F.mse_loss(mm, torch.zeros(4, 3, device=d))
            stacked = torch.stack([mm, a[:, :3]])  # promoted to the widest
            pointwise = (mm + 1).relu()  # not in the policy: as it comes
        return [mm, lin, conv, ce, mse, stacked, pointwise]

    _both(program, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_training_step_nested_and_disabled_regions(dtype):
    def program(d, dtype):
        model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
        model = model.to(d)
        x = torch.randn(5, 8).to(d)  # host draws: the model's initialization drew from the host too
        kind = _autocast_type(d)
        with torch.autocast(kind, dtype=dtype):
            out = model(x)
            with torch.autocast(kind, enabled=False):
                plain = out.float() @ torch.ones(4, 4, device=d)  # float32 inside the disabled region
            with torch.autocast(kind, dtype=dtype):
                inner = model[0](x)
            loss = (out.float().square().mean() + plain.sum() * 1e-3 + inner.float().mean())
        loss.backward()
        return [out, plain, inner, loss] + [p.grad for p in model.parameters()]

    _both(program, dtype)


def test_grad_scaler_scales_unscales_and_skips_steps_as_eager():
    # the library program of the conformance suite: four fp16 steps, one of them overflowing (the
    # step is skipped and the scale backs off); every loss, scale and parameter as eager's
    from conformance.library_programs import PROGRAMS, SEED
    program = PROGRAMS["grad_scaler_fp16"][0]
    torch.manual_seed(SEED)
    expected = program("cpu")
    torch.manual_seed(SEED)
    got = program(DEVICE)
    assert sorted(got) == sorted(expected)
    _same([got[k] for k in sorted(got)], [expected[k] for k in sorted(expected)])


def test_autocast_reports_the_device_as_supported():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not supported, disabling autocast"
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            assert torch.is_autocast_enabled(DEVICE)
            assert torch.get_autocast_dtype(DEVICE) == torch.bfloat16
