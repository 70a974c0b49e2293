"""Several devices: each genie server is one ``remote_accelerator:N``, as each GPU is one ``cuda:N``.

What a user relies on, as with CUDA devices: ``device_count()`` counts them, tensors report the
device they were made on, an op over two devices is refused with eager's message, ``.to()`` and
``copy_`` move data between devices (here: between servers), each device has its own generator,
and the current device is what a bare ``"remote_accelerator"`` means.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import genie

from conftest import DEVICE, host

D0, D1 = f"{DEVICE}:0", f"{DEVICE}:1"


@pytest.fixture(scope="module")
def servers():
    with genie.start_server() as s0, genie.start_server() as s1:
        yield s0, s1


@pytest.fixture
def two(servers):
    with genie.remote(list(servers)) as executors:
        yield executors
    torch.remote_accelerator.set_device(0)


def _resident(index: int) -> int:
    gc.collect()
    return genie.server_stats(index)["resident_bytes"]


# -------------------------------------------------------------------------------------------
# one device (local execution, or one server)


def test_one_device_refuses_a_second_index():
    assert torch.remote_accelerator.device_count() == 1
    with pytest.raises(RuntimeError, match=r"aten::randn: remote_accelerator: device index 1 is out of range"):
        torch.randn(2, device=D1)
    with pytest.raises(RuntimeError, match="device index 1 is out of range"):
        torch.ones(2).to(D1)
    with pytest.raises(RuntimeError, match="device index 1 is out of range"):
        torch.remote_accelerator.set_device(1)
    assert torch.ones(2, device=DEVICE).device == torch.device(D0)


def test_the_same_server_twice_is_refused(servers):
    with pytest.raises(ValueError, match="named twice"):
        with genie.remote([servers[0], servers[0]]):
            pass


# -------------------------------------------------------------------------------------------
# two servers, two devices


def test_two_servers_are_two_devices(two):
    assert torch.remote_accelerator.device_count() == 2
    a = torch.ones(3, device=D0)
    b = torch.ones(3, device=D1)
    assert a.device == torch.device(D0) and b.device == torch.device(D1)
    assert (b * 2).device == torch.device(D1) and b.view(3, 1).device == torch.device(D1)
    assert torch.equal(host(b * 2 + 1), torch.full((3,), 3.0))


def test_an_op_over_two_devices_is_refused_as_eager_refuses_it(two):
    a = torch.ones(3, device=D0)
    b = torch.ones(3, device=D1)
    msg = ("Expected all tensors to be on the same device, but found at least two devices, "
           "remote_accelerator:0 and remote_accelerator:1!")
    for op in (lambda: a + b, lambda: torch.mm(a.view(1, 3), b.view(3, 1)), lambda: a.add_(b),
               lambda: torch.cat([a, b]), lambda: torch.where(a > 0, a, b)):
        with pytest.raises(RuntimeError, match=msg):
            op()
    assert torch.equal(host(a), torch.ones(3))  # nothing was written


def test_copies_between_devices_move_the_data_between_servers(two):
    torch.manual_seed(0)
    x = torch.randn(64, 64)
    a = x.to(D0) * 2
    b = a.to(D1)
    assert b.device == torch.device(D1)
    before = _resident(1)
    c = (b + 1).sin()
    genie.materialize(c)
    assert _resident(1) > before  # computed and kept on server 1
    assert torch.equal(host(c), (x * 2 + 1).sin())
    # back and forth in one program: each device's part runs on its own server
    d = ((c.to(D0) * 3).to(D1) - c).to(D0).sum()
    assert d.device == torch.device(D0)
    assert torch.equal(host(d), ((x * 2 + 1).sin() * 3 - (x * 2 + 1).sin()).sum())
    # copy_ into a view of a tensor on the other device
    e = torch.zeros(4, 64, device=D1)
    e[1:3].copy_(a[:2])
    assert torch.equal(host(e), torch.cat([torch.zeros(1, 64), x[:2] * 2, torch.zeros(1, 64)]))


def test_a_model_trains_on_the_second_device_and_stays_there(two):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))

    eager, lazy = build(), build().to(D1)
    assert all(p.device == torch.device(D1) for p in lazy.parameters())
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    opt_l = torch.optim.AdamW(lazy.parameters(), lr=1e-2)
    base0 = _resident(0)
    torch.manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(8, 16), torch.randn(8, 4)
        for model, opt, dev in ((eager, opt_e, "cpu"), (lazy, opt_l, D1)):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x.to(dev)), y.to(dev))
            loss.backward()
            opt.step()
            if dev == "cpu":
                want = loss.item()
            else:
                assert loss.item() == want
    for pe, pl in zip(eager.parameters(), lazy.parameters()):
        assert torch.equal(host(pl), pe.detach())
    assert _resident(1) >= sum(p.numel() * 4 * 3 for p in eager.parameters())  # weights + AdamW state
    assert _resident(0) == base0  # device 0's server was not involved


def test_each_device_has_its_own_generator(two):
    torch.manual_seed(0)
    a = torch.randn(5, device=D0)
    b = torch.randn(5, device=D1)
    b2 = torch.rand(5, device=D1)
    torch.manual_seed(0)
    want, want2 = torch.randn(5), torch.rand(5)
    # read in any order: both devices start from the seed, as CUDA devices do
    assert torch.equal(host(b2), want2) and torch.equal(host(a), want) and torch.equal(host(b), want)
    # seeding device 1 alone leaves device 0's stream where it was
    torch.manual_seed(0)
    torch.randn(5)
    second = torch.randn(5)
    torch.manual_seed(0)
    torch.randn(5, device=D0)
    torch.remote_accelerator.set_device(1)
    torch.remote_accelerator.manual_seed(7)
    assert torch.ones(1, device=DEVICE).device == torch.device(D1)  # the current device
    torch.remote_accelerator.set_device(0)
    assert torch.equal(host(torch.randn(5, device=D0)), second)
    torch.manual_seed(7)
    assert torch.equal(host(torch.randn(5, device=D1)), torch.randn(5))
    # states are per device
    state = torch.remote_accelerator.get_rng_state(D1)
    first = host(torch.randn(3, device=D1))
    torch.remote_accelerator.set_rng_state(state, D1)
    assert torch.equal(host(torch.randn(3, device=D1)), first)


def test_unmodified_program_sees_two_devices_from_genie_servers(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import torch, genie
        assert torch.remote_accelerator.device_count() == 2
        w = torch.ones(3, device="remote_accelerator:1", requires_grad=True)
        (w * 2).sum().backward()  # before anything ran: the autograd engine sees device 1 first here
        a = torch.arange(6.0, device="remote_accelerator:0")
        b = (a * 2).to("remote_accelerator:1") + 1
        assert w.grad.cpu().tolist() == [2.0, 2.0, 2.0]
        print(b.device, b.cpu().tolist(), genie.server_stats(1)["address"] != genie.server_stats(0)["address"])
    """))
    token = "test-token-" + os.urandom(8).hex()
    env = dict(os.environ, GENIE_SERVER_TOKEN=token)
    procs = [subprocess.Popen([sys.executable, "-m", "genie.server", "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env={k: v for k, v in env.items() if k != "GENIE_SERVERS"},
                              text=True) for _ in range(2)]
    try:
        addresses = [p.stdout.readline().split()[3] for p in procs]
        out = subprocess.run([sys.executable, str(script)], env=dict(env, GENIE_SERVERS=",".join(addresses)),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "remote_accelerator:1 [1.0, 3.0, 5.0, 7.0, 9.0, 11.0] True"
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()


def test_a_saved_tensor_loads_back_onto_its_device(two, tmp_path):
    x = torch.arange(4.0, device=D1) * 2
    torch.save({"x": x, "p": nn.Parameter(torch.ones(2, device=D1))}, tmp_path / "t.pt")
    back = torch.load(tmp_path / "t.pt")
    assert back["x"].device == torch.device(D1) and isinstance(back["p"], nn.Parameter)
    assert torch.equal(host(back["x"]), torch.arange(4.0) * 2)


def test_gradients_flow_back_across_a_copy_between_devices(two):
    torch.manual_seed(0)
    x = torch.randn(3, 4)
    a = x.to(D0).requires_grad_()
    w = torch.randn(4, 2, device=D1, requires_grad=True)
    loss = (a.to(D1) @ w).square().sum()
    loss.backward()
    xe, we = x.clone().requires_grad_(), host(w.detach()).requires_grad_()
    (xe @ we).square().sum().backward()
    assert a.grad.device == torch.device(D0) and w.grad.device == torch.device(D1)
    assert torch.allclose(host(a.grad), xe.grad) and torch.allclose(host(w.grad), we.grad)


def test_attention_kernels_choose_and_create_on_the_second_device(two):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    lazy = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    lazy.load_state_dict(layer.state_dict())
    lazy = lazy.to(D1)
    for train in (False, True):
        layer.train(train)
        lazy.train(train)
        with torch.set_grad_enabled(train):
            out = lazy(x.to(D1))
            assert out.device == torch.device(D1)
            assert torch.allclose(host(out.detach()), layer(x).detach(), atol=1e-6)


def test_ops_that_name_a_device_put_their_output_there(two):
    x0 = torch.arange(4.0, device=D0)
    for out in (torch.zeros_like(x0, device=D1), torch.full_like(x0, 2.0, device=D1), x0.new_ones(2, device=D1),
                torch.empty_like(x0, device=D1)):
        assert out.device == torch.device(D1)
    assert torch.equal(host(torch.full_like(x0, 2.0, device=D1)), torch.full((4,), 2.0))


def test_device_errors_name_the_devices_as_eager_does(two):
    x0, x1 = torch.ones(3, device=D0), torch.ones(3, device=D1)
    with pytest.raises(RuntimeError, match="found at least two devices, remote_accelerator:1 and remote_accelerator:0!"):
        x1 + x0
    with pytest.raises(RuntimeError, match="found at least two devices, remote_accelerator:1 and cpu!"):
        x1 + torch.ones(3)
    with pytest.raises(RuntimeError, match="aten::masked_select: Expected all tensors to be on the same device"):
        torch.masked_select(x0, x1 > 0)  # run eagerly (data-dependent), refused all the same


def test_a_device_generator_state_is_read_on_its_own_server(two):
    torch.manual_seed(3)
    before = _resident(0)
    state = torch.remote_accelerator.get_rng_state(D1)
    torch.manual_seed(3)
    assert torch.equal(state, torch.get_rng_state())  # the state manual_seed(3) leaves
    assert _resident(0) == before


def test_a_tensor_saved_from_a_device_that_is_missing_says_so(servers, two, tmp_path):
    torch.save(torch.ones(2, device=D1), tmp_path / "t.pt")
    with genie.remote(servers[0]):  # one device now
        with pytest.raises(RuntimeError, match="saved from remote_accelerator:1 cannot be loaded with 1 device"):
            torch.load(tmp_path / "t.pt")
