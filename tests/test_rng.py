"""Random ops: eager's values under the same seed, whatever order and time they are read in."""

import itertools

import pytest
import torch

import genie

from conftest import DEVICE, host

MAKERS = [
    lambda d: torch.randn(3, 2, device=d),
    lambda d: torch.rand(4, device=d),
    lambda d: torch.randint(0, 100, (5,), device=d),
    lambda d: torch.empty(6, device=d).uniform_(-2, 2),
    lambda d: torch.empty(6, device=d).normal_(),
    lambda d: torch.empty(4, device=d).bernoulli_(0.3),
    lambda d: torch.nn.functional.dropout(torch.ones(8, device=d), 0.5),
    lambda d: torch.randperm(6, device=d),
    lambda d: torch.multinomial(torch.tensor([0.1, 0.5, 0.4], device=d), 4, replacement=True),
]


def eager_values(seed):
    torch.manual_seed(seed)
    return [m("cpu") for m in MAKERS]


@pytest.mark.parametrize("order", list(itertools.islice(itertools.permutations(range(len(MAKERS))), 0, 720, 97)))
def test_values_independent_of_read_order(order):
    expected = eager_values(11)
    torch.manual_seed(11)
    lazy = [m(DEVICE) for m in MAKERS]
    torch.randn(100)  # host RNG use in between does not touch the device generator
    for i in order:
        torch.testing.assert_close(host(lazy[i]), expected[i], rtol=0, atol=0)


def test_one_value_however_often_read():
    torch.manual_seed(0)
    x = torch.randn(5, device=DEVICE)
    first = host(x)
    torch.manual_seed(0)
    assert torch.equal(first, torch.randn(5))  # eager's draw under the same seed
    torch.manual_seed(1)  # re-seeding later changes nothing already captured
    torch.randn(5, device=DEVICE)
    assert torch.equal(host(x), first)
    assert torch.equal(host(x + 0), first)


def test_reseed_between_capture_and_read():
    torch.manual_seed(3)
    a = torch.rand(4, device=DEVICE)
    torch.manual_seed(3)
    b = torch.rand(4, device=DEVICE)
    torch.manual_seed(3)
    expected = torch.rand(4)
    assert torch.equal(host(b), expected) and torch.equal(host(a), expected)


def test_random_op_on_lazy_input():
    torch.manual_seed(2)
    p = torch.rand(10)
    expected = torch.bernoulli(p)
    torch.manual_seed(2)
    lp = torch.rand(10, device=DEVICE)
    got = torch.bernoulli(lp)
    assert torch.equal(host(got), expected)


def test_fork_rng_and_get_state():
    torch.manual_seed(9)
    with torch.random.fork_rng(device_type=DEVICE):
        torch.randn(3, device=DEVICE)
    a = host(torch.randn(3, device=DEVICE))
    torch.manual_seed(9)
    b = torch.randn(3)
    assert torch.equal(a, b)


def test_unread_random_values_do_not_pile_up_and_keep_eagers_sequence(monkeypatch):
    from genie.capture import rng
    monkeypatch.setattr(rng, "FLUSH_LINKS", 64)
    torch.manual_seed(3)
    for _ in range(1000):
        torch.randn(4, 4, device=DEVICE)  # made and dropped unread
    pending = [n for n in genie.get_graph() if n.op == "aten::randn" and n.value is None]
    assert len(pending) < 64  # the chain ran its pending links as it went
    got = host(torch.rand(5, device=DEVICE))
    torch.manual_seed(3)
    for _ in range(1000):
        torch.randn(4, 4)
    torch.testing.assert_close(got, torch.rand(5), rtol=0, atol=0)


def test_a_random_value_kept_alive_reads_the_same_after_later_links_ran(monkeypatch):
    from genie.capture import rng
    monkeypatch.setattr(rng, "FLUSH_LINKS", 8)
    torch.manual_seed(5)
    first = torch.randn(3, device=DEVICE)
    for _ in range(50):
        torch.randn(2, device=DEVICE)
    torch.manual_seed(5)
    torch.testing.assert_close(host(first), torch.randn(3), rtol=0, atol=0)


def test_attention_without_dropout_stays_out_of_the_chain_and_keeps_eagers_sequence():
    # the CPU flash-attention kernel carries the random tag but refuses dropout, so it never draws:
    # it is captured as a plain op (no RNG link) and the draws around it keep eager's sequence
    def program(d):
        q = torch.randn(1, 2, 5, 8, device=d)
        att = torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
        return att, torch.nn.functional.dropout(att, 0.5) + torch.rand(1, 2, 5, 8, device=d)

    torch.manual_seed(5)
    expected = program("cpu")
    torch.manual_seed(5)
    got = program(DEVICE)
    attention = [n for n in genie.get_graph().nodes
                 if n.op == "aten::_scaled_dot_product_flash_attention_for_cpu" and n.value is None]
    assert attention and all(n.rng is None for n in attention)
    for g, e in zip(got, expected):
        torch.testing.assert_close(host(g), e, rtol=0, atol=0)
