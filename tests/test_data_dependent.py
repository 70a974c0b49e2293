"""Ops whose output shape or value depends on data: flush what they need, run, keep capturing."""

import torch

import genie

from conftest import DEVICE, host


def test_nonzero_unique_masked_select():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    lx = x.to(DEVICE)
    for f in (lambda t: torch.nonzero(t > 0), lambda t: torch.unique(t.round()), lambda t: t.masked_select(t > 0.5),
              lambda t: t[t < 0], lambda t: torch.unique(t.round(), return_counts=True)[1],
              lambda t: torch.argwhere(t > 1)):
        got, exp = f(lx), f(x)
        assert type(got) is genie.LazyTensor
        assert torch.equal(host(got), exp)
        # capture continues on the result
        assert torch.equal(host(got * 2 + 1), exp * 2 + 1)


def test_item_in_control_flow():
    x = torch.arange(10.0)
    lx = x.to(DEVICE)
    steps = 0
    while lx.sum().item() > 5:
        lx = lx * 0.5
        x = x * 0.5
        steps += 1
    assert steps > 0
    assert torch.equal(host(lx), x)


def test_data_dependent_counted():
    genie.reset_capture_stats()
    lx = torch.arange(4.0, device=DEVICE)
    torch.nonzero(lx)
    lx.sum().item()
    stats = genie.capture_stats()
    assert stats["data_dependent"]["aten::nonzero"] == 1
    assert stats["data_dependent"]["aten::_local_scalar_dense"] == 1
    assert stats["captured"]["aten::sum"] == 1


def test_equal_and_allclose():
    a = torch.ones(3, device=DEVICE)
    assert torch.equal(a, a * 1)
    assert not torch.equal(a, a * 2)
    assert torch.allclose(a, a + 1e-9)


def test_sparse_outputs_are_values_on_the_device():
    x = torch.randn(3, 4)
    x[1] = 0
    lx = x.to(DEVICE)
    s = lx.to_sparse()  # the structure of a sparse tensor is its data: computed at once
    assert type(s) is genie.LazyTensor and s.layout == torch.sparse_coo and s.device.type == DEVICE
    back = s.cpu()
    assert type(back) is torch.Tensor and back.layout == torch.sparse_coo
    assert torch.equal(back.to_dense(), x)
    dense = s.to_dense() * 2  # back to strided: capture continues
    assert dense.layout == torch.strided
    assert torch.equal(host(dense), x * 2)
    assert "layout=torch.sparse_coo" in repr(s) and "remote_accelerator" in repr(s)
