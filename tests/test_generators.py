"""Device generators: ``torch.Generator(device="remote_accelerator")`` streams equal a CPU
generator's with the same seed, for every random op that takes ``generator=``, independent of
the device's default generator and exact in any interleaving with it and any read order."""

import copy
import io
import itertools

import pytest
import torch

from conftest import DEVICE, host

# (name, maker(device, generator)): every random op that takes generator=
OPS = [
    ("randn", lambda d, g: torch.randn(3, 2, generator=g, device=d)),
    ("rand", lambda d, g: torch.rand(4, generator=g, device=d)),
    ("randint", lambda d, g: torch.randint(0, 100, (5,), generator=g, device=d)),
    ("randperm", lambda d, g: torch.randperm(7, generator=g, device=d)),
    ("normal_tensor", lambda d, g: torch.normal(torch.zeros(3, device=d), torch.ones(3, device=d), generator=g)),
    ("normal_", lambda d, g: torch.empty(4, device=d).normal_(1.0, 2.0, generator=g)),
    ("uniform_", lambda d, g: torch.empty(4, device=d).uniform_(-1, 1, generator=g)),
    ("bernoulli", lambda d, g: torch.bernoulli(torch.full((6,), 0.4, device=d), generator=g)),
    ("bernoulli_p", lambda d, g: torch.empty(6, device=d).bernoulli_(0.3, generator=g)),
    ("multinomial", lambda d, g: torch.multinomial(torch.tensor([0.2, 0.5, 0.3], device=d), 5, True, generator=g)),
    ("exponential_", lambda d, g: torch.empty(4, device=d).exponential_(1.5, generator=g)),
    ("random_", lambda d, g: torch.empty(4, device=d).random_(0, 10, generator=g)),
    ("cauchy_", lambda d, g: torch.empty(3, device=d).cauchy_(generator=g)),
    ("log_normal_", lambda d, g: torch.empty(3, device=d).log_normal_(generator=g)),
    ("geometric_", lambda d, g: torch.empty(3, device=d).geometric_(0.3, generator=g)),
    ("init_normal_", lambda d, g: torch.nn.init.normal_(torch.empty(3, 3, device=d), generator=g)),
    ("init_kaiming", lambda d, g: torch.nn.init.kaiming_uniform_(torch.empty(3, 3, device=d), generator=g)),
]


def _gen(device, seed):
    return torch.Generator(device=device).manual_seed(seed)


@pytest.mark.parametrize("name,make", OPS, ids=[n for n, _ in OPS])
def test_each_op_draws_a_cpu_generators_stream(name, make):
    expected = [make("cpu", g) for g in [_gen("cpu", 5)] for _ in range(2)]
    g = _gen(DEVICE, 5)
    got = [make(DEVICE, g) for _ in range(2)]
    for e, lazy in zip(expected, got):
        torch.testing.assert_close(host(lazy), e, rtol=0, atol=0)


@pytest.mark.parametrize("order", list(itertools.islice(itertools.permutations(range(6)), 0, 720, 151)))
def test_interleaved_with_the_default_chain_in_any_read_order(order):
    def program(d):
        torch.manual_seed(3)
        g, h = _gen(d, 11), _gen(d, 12)
        return [torch.randn(3, generator=g, device=d), torch.rand(2, device=d),
                torch.randint(0, 9, (4,), generator=h, device=d), torch.randn(3, generator=g, device=d),
                torch.nn.functional.dropout(torch.ones(6, device=d), 0.5), torch.rand(2, generator=h, device=d)]

    expected = program("cpu")
    got = program(DEVICE)
    for i in order:
        torch.testing.assert_close(host(got[i]), expected[i], rtol=0, atol=0)


def test_seed_state_and_clone_state_as_a_cpu_generators():
    g, c = torch.Generator(device=DEVICE), torch.Generator()
    assert g.device == torch.device(DEVICE, 0) and isinstance(g, torch.Generator)
    assert g.initial_seed() == c.initial_seed()  # torch's default seed
    assert g.manual_seed(21) is g
    c.manual_seed(21)
    assert g.initial_seed() == 21
    torch.randn(5, generator=g, device=DEVICE)  # captured, not read
    torch.randn(5, generator=c)
    state = g.get_state()
    assert type(state) is torch.Tensor and torch.equal(state, c.get_state())
    twin, ctwin = g.clone_state(), c.clone_state()
    after = host(torch.rand(4, generator=g, device=DEVICE))
    torch.testing.assert_close(after, torch.rand(4, generator=c), rtol=0, atol=0)
    torch.testing.assert_close(host(torch.rand(4, generator=twin, device=DEVICE)), torch.rand(4, generator=ctwin),
                               rtol=0, atol=0)
    assert g.set_state(state) is g
    torch.testing.assert_close(host(torch.rand(4, generator=g, device=DEVICE)), after, rtol=0, atol=0)
    seed = g.seed()
    assert isinstance(seed, int) and g.initial_seed() == seed
    torch.testing.assert_close(host(torch.randn(3, generator=g, device=DEVICE)),
                               torch.randn(3, generator=torch.Generator().manual_seed(seed)), rtol=0, atol=0)


def test_state_and_generator_round_trip_through_torch_save():
    g = _gen(DEVICE, 8)
    torch.randn(7, generator=g, device=DEVICE)
    buf = io.BytesIO()
    torch.save({"state": g.get_state(), "generator": g}, buf)
    expected = host(torch.randn(3, generator=g, device=DEVICE))
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    assert saved["generator"].device == g.device and saved["generator"].initial_seed() == 8
    torch.testing.assert_close(host(torch.randn(3, generator=saved["generator"], device=DEVICE)), expected,
                               rtol=0, atol=0)
    other = torch.Generator(device=DEVICE).set_state(saved["state"])
    torch.testing.assert_close(host(torch.randn(3, generator=other, device=DEVICE)), expected, rtol=0, atol=0)
    deep = copy.deepcopy(other)
    assert torch.equal(deep.get_state(), other.get_state())


def test_generators_are_independent_of_the_default_chain():
    torch.manual_seed(4)
    expected = torch.rand(5)
    torch.manual_seed(4)
    g = _gen(DEVICE, 4)
    for _ in range(3):
        torch.randn(10, generator=g, device=DEVICE)
    torch.testing.assert_close(host(torch.rand(5, device=DEVICE)), expected, rtol=0, atol=0)


def test_a_host_generator_is_refused_for_a_device_op_as_cuda_refuses_it():
    with pytest.raises(RuntimeError, match="Expected a 'remote_accelerator' device type for generator but found 'cpu'"):
        torch.randn(3, generator=torch.Generator(), device=DEVICE)
    with pytest.raises(RuntimeError, match="device type for generator"):
        torch.empty(3, device=DEVICE).normal_(generator=torch.Generator())


def test_invalid_seeds_and_states_are_refused_at_the_call():
    g, c = torch.Generator(device=DEVICE), torch.Generator()
    for bad in (1.5, "7"):
        with pytest.raises(RuntimeError) as eager:
            c.manual_seed(bad)
        with pytest.raises(type(eager.value)) as lazy:
            g.manual_seed(bad)
        assert str(lazy.value) == str(eager.value)
    with pytest.raises(RuntimeError):
        g.set_state(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="no Philox offset"):
        g.get_offset()


def test_host_generators_are_untouched():
    c = torch.Generator()
    assert type(c) is torch._C.Generator and isinstance(c, torch.Generator)
    assert issubclass(torch._C.Generator, torch.Generator)
    torch.testing.assert_close(torch.randn(3, generator=c.manual_seed(2)), torch.randn(3, generator=torch._C.Generator().manual_seed(2)))
