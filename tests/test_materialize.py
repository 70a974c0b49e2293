"""Values leave the device only when read, through every trigger a user has."""

import numpy as np
import pytest
import torch

import genie
from conftest import DEVICE, host


@pytest.fixture
def pair():
    x = torch.randn(3, 4)
    return x, x.to(DEVICE)


def test_cpu_and_to_cpu(pair):
    x, lx = pair
    for out in (lx.cpu(), lx.to("cpu"), lx.to(device="cpu", dtype=torch.float64)):
        assert type(out) is torch.Tensor
    assert torch.equal((lx * 2).cpu(), x * 2)
    assert torch.equal(lx.to("cpu", torch.float64), x.double())


def test_item_tolist_numpy_array(pair):
    x, lx = pair
    assert lx.sum().item() == x.sum().item()
    assert type(lx.sum().item()) is float
    assert lx.tolist() == x.tolist()
    assert np.array_equal(lx.numpy(), x.numpy())
    assert np.array_equal(np.asarray(lx), x.numpy())
    assert np.asarray(lx * 2).dtype == np.float32


def test_bool_int_float(pair):
    x, lx = pair
    assert bool(lx[0, 0] > 0) == bool(x[0, 0] > 0)
    # bool uses the value, not numel
    assert bool(torch.zeros(1, device=DEVICE)) is False
    assert bool(torch.ones(1, device=DEVICE)) is True
    with pytest.raises(RuntimeError):
        bool(lx)
    assert int(lx[1, 1] * 100) == int(x[1, 1] * 100)
    assert float(lx[2, 3]) == float(x[2, 3])


def test_print_repr_str(pair):
    x, lx = pair
    r = repr(lx)
    assert r.startswith("tensor(") and "device='remote_accelerator:0'" in r
    assert r == repr(x)[:-1] + ", device='remote_accelerator:0')"
    assert str(lx) == r
    g = torch.ones(2, device=DEVICE, requires_grad=True) * 2
    assert "grad_fn=<MulBackward0>" in repr(g)


def test_nothing_runs_until_read():
    genie.reset_capture_stats()
    x = torch.randn(50, 50, device=DEVICE)
    y = (x @ x).relu().sum(0)
    assert y.genie_node.value is None  # captured, not computed
    assert x.genie_node.value is None
    assert [n.op for n in genie.graph_of(y)][-4:] == ["aten::randn", "aten::mm", "aten::relu", "aten::sum"]
    host(y)
    assert y.genie_node.value is not None


def test_only_dependencies_run():
    a = torch.randn(4, device=DEVICE)
    b = a + 1
    c = a * 2  # unrelated to b
    host(b)
    assert c.genie_node.value is None
    assert b.genie_node.value is not None


def test_materialized_values_are_reused():
    a = torch.randn(4, device=DEVICE)
    b = (a + 1) * 3
    host(b)
    node = b.genie_node
    assert node.value is not None and node.args == ()  # collapsed: the graph behind it is freed
    c = b - 1
    assert torch.equal(host(c), host(b) - 1)
    assert node.value is not None


def test_intermediate_held_by_tensor_is_kept():
    a = torch.randn(8, device=DEVICE)
    h = a.exp()
    out = (h * 2).sum()
    host(out)
    assert h.genie_node.value is not None  # a live tensor needs it: kept
    gone = (a.exp() * 3).sum()  # the intermediates here are referenced by nobody
    inter_id = gone.genie_node.args[0].id
    host(gone)
    assert inter_id not in {n.id for n in genie.get_graph()}  # freed, value and all
