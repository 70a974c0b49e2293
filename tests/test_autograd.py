"""Training on remote_accelerator gives eager's gradients and parameters."""

import copy

import pytest
import torch
from torch import nn

import genie

from conftest import DEVICE, host


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = nn.functional.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class TinyTransformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 2)

    def forward(self, x):
        return self.head(self.layer(x).mean(1))


CASES = {
    "mlp": (lambda: nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Dropout(0.25), nn.Linear(16, 3)),
            lambda: torch.randn(6, 8)),
    "cnn": (SmallCNN, lambda: torch.randn(2, 3, 8, 8)),
    "transformer": (TinyTransformer, lambda: torch.randn(2, 5, 16)),
}


@pytest.mark.parametrize("optim", ["sgd", "adam"])
@pytest.mark.parametrize("case", list(CASES))
def test_training_steps_match_eager(case, optim):
    make_model, make_input = CASES[case]
    torch.manual_seed(0)
    eager = make_model()
    lazy = copy.deepcopy(eager).to(DEVICE)
    make_opt = (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)) if optim == "sgd" else \
        (lambda ps: torch.optim.Adam(ps, lr=1e-3))
    opt_e, opt_l = make_opt(eager.parameters()), make_opt(lazy.parameters())
    for step in range(3):
        x = make_input()
        target = torch.randint(0, 3 if case != "transformer" else 2, (x.shape[0],))
        torch.manual_seed(100 + step)
        loss_e = nn.functional.cross_entropy(eager(x), target)
        opt_e.zero_grad()
        loss_e.backward()
        opt_e.step()
        torch.manual_seed(100 + step)
        loss_l = nn.functional.cross_entropy(lazy(x.to(DEVICE)), target.to(DEVICE))
        opt_l.zero_grad()
        loss_l.backward()
        opt_l.step()
        torch.testing.assert_close(host(loss_l.detach()), loss_e.detach(), rtol=1e-5, atol=1e-5)
    for (name, pe), pl in zip(eager.named_parameters(), lazy.parameters()):
        assert type(pl) is genie.LazyTensor
        torch.testing.assert_close(host(pl.grad), pe.grad, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(host(pl.detach()), pe.detach(), rtol=1e-5, atol=1e-5, msg=name)
    for be, bl in zip(eager.buffers(), lazy.buffers()):
        torch.testing.assert_close(host(bl), be, rtol=1e-5, atol=1e-5)


def test_grad_of_leaf_created_on_device():
    x = torch.linspace(-1, 1, 5, device=DEVICE, requires_grad=True)
    y = (x.sin() * x).sum()
    (g,) = torch.autograd.grad(y, x)
    xe = torch.linspace(-1, 1, 5, requires_grad=True)
    (ge,) = torch.autograd.grad((xe.sin() * xe).sum(), xe)
    torch.testing.assert_close(host(g), ge, rtol=0, atol=0)


def test_backward_through_views_and_inplace():
    xe = torch.randn(4, 3, requires_grad=True)
    xl = xe.detach().to(DEVICE).requires_grad_()
    outs = []
    for x in (xe, xl):
        h = x * 2
        h[1:].mul_(3)
        h.t()[0].add_(1)
        outs.append(h.exp().sum())
    outs[0].backward()
    outs[1].backward()
    torch.testing.assert_close(host(xl.grad), xe.grad, rtol=1e-6, atol=1e-6)


def test_no_grad_and_inference_mode():
    w = torch.randn(3, 3, device=DEVICE, requires_grad=True)
    with torch.no_grad():
        y = w * 2
    assert not y.requires_grad
    with torch.inference_mode():
        z = torch.ones(2, device=DEVICE) + 1
    assert torch.equal(host(z), torch.full((2,), 2.0))
    assert genie.capture_stats()["total_captured"] > 0


def test_backward_runs_in_the_calling_thread_and_its_views_stay_exact():
    # loss.backward() on the device runs its nodes in the calling thread (autograd's multithreading
    # disabled for that call only), and views autograd makes in backward (t, view, detach, ...) are
    # fresh wrappers: gradients, in-place updates of them and a second backward equal eager's
    import threading
    torch.manual_seed(3)
    eager = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    lazy = copy.deepcopy(eager).to(DEVICE)
    x = torch.randn(4, 6)
    threads = []
    for m, xx in ((eager, x), (lazy, x.to(DEVICE))):
        h = m(xx)
        if m is lazy:
            h.register_hook(lambda g: threads.append(threading.get_ident()))
        h.square().sum().backward()
        m(xx).sum().backward()  # accumulates into the grads
        for p in m.parameters():
            p.grad.mul_(0.5)
    assert threads == [threading.get_ident()]
    assert torch._C._is_multithreading_enabled()
    for p, q in zip(eager.parameters(), lazy.parameters()):
        got = host(q.grad)
        assert type(got) is torch.Tensor
        torch.testing.assert_close(got, p.grad, rtol=1e-6, atol=1e-6)
    assert lazy[0].weight.grad.untyped_storage().nbytes() == eager[0].weight.grad.untyped_storage().nbytes()
