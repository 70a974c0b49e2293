"""The device exists, factories land on it lazily, and tensors move on and off it."""

import pytest
import torch

import genie

from conftest import DEVICE, host


def test_device_handle():
    assert genie.RemoteAcceleratorDevice.get_device(0) == torch.device("remote_accelerator:0")
    with pytest.raises(RuntimeError, match="out of range"):
        genie.RemoteAcceleratorDevice.get_device(1)
    assert torch.remote_accelerator.is_available()
    assert torch.remote_accelerator.device_count() == 1
    assert torch.accelerator.current_accelerator().type == DEVICE


def test_lazy_tensor_metadata():
    x = torch.randn(4, 6, device=DEVICE, dtype=torch.float64)
    assert type(x) is genie.LazyTensor
    assert x.shape == (4, 6) and x.dtype == torch.float64 and x.stride() == (6, 1)
    assert x.device == torch.device("remote_accelerator:0")
    assert not x.requires_grad
    y = x.t()
    assert y.stride() == (1, 6) and y.shape == (6, 4)
    z = torch.randn(3, requires_grad=True, device=DEVICE)
    assert z.requires_grad and z.is_leaf


FACTORIES = [
    ("randn", lambda **k: torch.randn(3, 4, **k)),
    ("rand", lambda **k: torch.rand(5, **k)),
    ("randint", lambda **k: torch.randint(0, 10, (6,), **k)),
    ("randint_low", lambda **k: torch.randint(3, (2, 2), **k)),
    ("randperm", lambda **k: torch.randperm(7, **k)),
    ("normal", lambda **k: torch.normal(0.0, 2.0, (4,), **k)),
    ("zeros", lambda **k: torch.zeros(2, 3, **k)),
    ("ones", lambda **k: torch.ones(2, 3, dtype=torch.int64, **k)),
    ("full", lambda **k: torch.full((2, 2), 3.5, **k)),
    ("arange", lambda **k: torch.arange(10, **k)),
    ("arange_float", lambda **k: torch.arange(0.0, 1.0, 0.125, **k)),
    ("linspace", lambda **k: torch.linspace(-1, 1, 7, **k)),
    ("logspace", lambda **k: torch.logspace(0, 2, 5, **k)),
    ("eye", lambda **k: torch.eye(3, 4, **k)),
    ("tensor", lambda **k: torch.tensor([[1.5, 2.0], [3.0, 4.0]], **k)),
    ("tensor_int", lambda **k: torch.tensor([1, 2, 3], **k)),
    ("scalar_tensor", lambda **k: torch.scalar_tensor(2.5, **k)),
    ("tril_indices", lambda **k: torch.tril_indices(3, 3, **k)),
]


@pytest.mark.parametrize("name,make", FACTORIES, ids=[f[0] for f in FACTORIES])
def test_factories_match_eager(name, make):
    torch.manual_seed(7)
    expected = make()
    for _ in range(2):  # the second call is a repeat (factories.py's cache of calls seen before)
        torch.manual_seed(7)
        lazy = make(device=DEVICE)
        assert type(lazy) is genie.LazyTensor
        assert lazy.shape == expected.shape and lazy.dtype == expected.dtype and lazy.stride() == expected.stride()
        torch.testing.assert_close(host(lazy), expected, rtol=0, atol=0)


# calls whose arguments are equal as Python values but not as factory arguments (True == 1 == 1.0,
# 0.0 == -0.0), and the default dtype changing between two equal calls
REPEATS = [
    lambda **k: [torch.full((2,), v, **k) for v in (True, 1, 1.0, 0.0, -0.0, 1, True)],
    lambda **k: [torch.arange(n, **k) for n in (3, 3.0, 3)],
    lambda **k: [torch.zeros(2, **k), torch.zeros((2,), dtype=torch.int32, **k), torch.zeros(2, **k)],
]


@pytest.mark.parametrize("make", REPEATS)
def test_repeated_factory_calls_keep_their_own_types_and_values(make):
    for default in (torch.float32, torch.float64, torch.float32):
        saved = torch.get_default_dtype()
        torch.set_default_dtype(default)
        try:
            expected, lazy = make(), make(device=DEVICE)
        finally:
            torch.set_default_dtype(saved)
        for e, la in zip(expected, lazy):
            assert la.dtype == e.dtype
            got = host(la)
            torch.testing.assert_close(got, e, rtol=0, atol=0)
            assert torch.equal(torch.signbit(got.double()), torch.signbit(e.double()))


def test_empty_and_empty_strided_metadata():
    e = torch.empty(2, 3, device=DEVICE)
    assert e.shape == (2, 3) and e.stride() == (3, 1)
    s = torch.empty_strided((2, 3), (1, 2), device=DEVICE)
    assert s.stride() == (1, 2)
    assert host(s).stride() == (1, 2)


@pytest.mark.parametrize("fn", ["zeros_like", "ones_like", "rand_like", "randn_like", "empty_like", "full_like"])
def test_like_factories(fn):
    base = torch.randn(3, 2)
    f = getattr(torch, fn)
    extra = (4.0,) if fn == "full_like" else ()
    torch.manual_seed(1)
    expected = f(base, *extra)
    # from a host tensor with device=, and from a LazyTensor
    torch.manual_seed(1)
    lazy_from_host = f(base, *extra, device=DEVICE)
    torch.manual_seed(1)
    lazy_from_lazy = f(base.to(DEVICE), *extra)
    for lazy in (lazy_from_host, lazy_from_lazy):
        assert type(lazy) is genie.LazyTensor and lazy.shape == expected.shape
        if fn != "empty_like":
            torch.testing.assert_close(host(lazy), expected, rtol=0, atol=0)


def test_to_and_from_device():
    x = torch.randn(3, 3)
    lx = x.to(DEVICE)
    assert type(lx) is genie.LazyTensor
    assert lx.to(DEVICE) is lx
    back = lx.to("cpu")
    assert type(back) is torch.Tensor and torch.equal(back, x)
    assert torch.equal(host(lx.to(torch.float64)), x.double())
    # the host copy is a snapshot: changing x later does not change the device tensor
    x.add_(1)
    assert torch.equal(host(lx), back)
    # .cpu() returns a fresh tensor each time: mutating it does not reach the device value
    host(lx).zero_()
    assert torch.equal(host(lx), back)


# values read to the host as Python lists: tolist answers from the value, as eager's does
TOLISTS = {
    "float matrix": lambda d: torch.arange(6.0, device=d).reshape(2, 3) / 3,
    "0-d int": lambda d: torch.tensor(7, device=d),
    "empty": lambda d: torch.zeros(0, 2, device=d),
    "bool": lambda d: torch.arange(4, device=d) > 1,
    "bfloat16": lambda d: torch.arange(3.0, device=d).to(torch.bfloat16) / 3,
    "offset view": lambda d: torch.arange(10, device=d)[3:9:2],
    "transposed": lambda d: torch.arange(6, device=d).reshape(2, 3).t(),
    "conj view": lambda d: (torch.arange(3.0, device=d) * (1 + 2j)).conj(),
    "neg view": lambda d: (torch.arange(3.0, device=d) * (1 + 2j)).conj().imag,
    "requires grad": lambda d: (torch.ones(2, device=d, requires_grad=True) * 3),
    "written after a read": lambda d: (lambda t: (t.tolist(), t.mul_(2))[1])(torch.arange(3, device=d)),
    "argmax of a chain": lambda d: (torch.arange(12.0, device=d).reshape(3, 4).sin() + 1).argmax(-1, keepdim=True),
}


@pytest.mark.parametrize("make", TOLISTS.values(), ids=list(TOLISTS))
def test_tolist_matches_eager(make):
    got, expected = make(DEVICE).tolist(), make("cpu").tolist()
    assert got == expected

    def types(x):
        return [types(v) for v in x] if isinstance(x, list) else type(x)
    assert types(got) == types(expected)


def test_module_to_device():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    ref = m.weight.detach().clone()
    m.to(DEVICE)
    assert isinstance(m.weight, torch.nn.Parameter) and type(m.weight) is genie.LazyTensor
    assert m.weight.device.type == DEVICE and m.weight.requires_grad
    assert torch.equal(host(m.weight.detach()), ref)


def test_copy_into_host_tensor():
    lx = torch.arange(4.0, device=DEVICE) * 2
    dst = torch.empty(4)
    dst.copy_(lx)
    assert torch.equal(dst, torch.arange(4.0) * 2)


def test_rng_state_api():
    torch.manual_seed(5)
    torch.randn(3, device=DEVICE)
    state = torch.remote_accelerator.get_rng_state()
    a = host(torch.randn(4, device=DEVICE))
    torch.remote_accelerator.set_rng_state(state)
    b = host(torch.randn(4, device=DEVICE))
    assert torch.equal(a, b)
    assert torch.remote_accelerator.initial_seed() == 5


def test_pickle_roundtrip(tmp_path):
    lx = torch.arange(6.0, device=DEVICE).reshape(2, 3)
    path = tmp_path / "t.pt"
    torch.save(lx, path)
    for weights_only in (True, False):  # True is torch.load's default
        loaded = torch.load(path, weights_only=weights_only)
        assert type(loaded) is genie.LazyTensor
        assert torch.equal(host(loaded), torch.arange(6.0).reshape(2, 3))
    model = torch.nn.Linear(2, 2).to(DEVICE)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt")
    assert torch.equal(host(state["weight"]), host(model.weight.detach()))


def test_deepcopy_of_module_on_device():
    import copy
    m = torch.nn.Linear(3, 2).to(DEVICE)
    m2 = copy.deepcopy(m)
    assert type(m2.weight) is genie.LazyTensor and m2.weight is not m.weight
    assert torch.equal(host(m2.weight.detach()), host(m.weight.detach()))
    with torch.no_grad():
        m2.weight.zero_()
    assert not torch.equal(host(m2.weight.detach()), host(m.weight.detach()))


def test_device_module_api():
    mod = torch.remote_accelerator
    mod.set_device(0)
    mod.set_device("remote_accelerator:0")
    with pytest.raises(RuntimeError, match="out of range"):
        mod.set_device(1)
    mod.synchronize()
    host_state = torch.get_rng_state()
    mod.seed()
    assert torch.equal(torch.get_rng_state(), host_state)  # the host generator is untouched
    assert mod.initial_seed() >= 0 and mod.current_device() == 0 and mod.is_initialized()
