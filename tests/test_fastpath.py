"""The operator fast path builds exactly what the dispatcher path builds, and steps aside
whenever the dispatcher has work to do (autograd, modes, autocast)."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import genie

from conftest import DEVICE, host


def test_same_node_as_dispatcher_path():
    hy, hw = torch.randn(4, 4), torch.randn(4, 4)
    y, w = hy.to(DEVICE), hw.to(DEVICE)
    programs = (lambda y, w: y + 1, lambda y, w: 1 + y, lambda y, w: y * 2.0, lambda y, w: 3 * y,
                lambda y, w: y - w, lambda y, w: y / w, lambda y, w: y @ w, lambda y, w: y + True)
    for make in programs:
        first, second = make(y, w), make(y, w)  # the first fills the signature cache, the second is fast
        a, b = first.genie_node, second.genie_node
        assert a.target is b.target and a.spec is b.spec
        assert [type(x) for x in a.args] == [type(x) for x in b.args]
        expected = make(hy, hw)  # eager's value, dtype and strides
        for got in (host(first), host(second)):
            assert got.dtype == expected.dtype and got.stride() == expected.stride()
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_autograd_takes_the_dispatcher_path():
    w = torch.randn(3, requires_grad=True, device=DEVICE)
    _ = w * 2
    out = w * 2  # cached signature, but grad is needed
    assert out.grad_fn is not None
    out.sum().backward()
    assert torch.equal(host(w.grad), torch.full((3,), 2.0))
    with torch.no_grad():
        assert (w * 2).grad_fn is None


def test_modes_see_every_op():
    y = torch.ones(2, device=DEVICE)
    _ = y + 1
    seen = []

    class Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func)
            return func(*args, **(kwargs or {}))

    with Log():
        y + 1
    assert torch.ops.aten.add.Tensor in seen


def test_autocast_takes_the_dispatcher_path(monkeypatch):
    from genie.capture import fastpath
    a = torch.randn(4, 4, device=DEVICE)
    _ = a @ a
    monkeypatch.setattr(fastpath, "_autocast", lambda: True)
    before = genie.capture_stats()["captured"]["aten::mm"]
    calls = []
    monkeypatch.setattr(fastpath, "_fast", lambda *args: calls.append(args) or None)
    out = a @ a
    assert calls and genie.capture_stats()["captured"]["aten::mm"] == before + 1
    assert torch.equal(host(out), host(a) @ host(a))


def test_stale_alias_takes_the_dispatcher_path():
    base = torch.zeros(4, device=DEVICE)
    view = base[:2]
    _ = view + 1
    base.add_(5)
    assert torch.equal(host(view + 1), torch.full((2,), 6.0))
