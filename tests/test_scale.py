"""Long programs: iterative execution, flat memory, dead subgraphs freed."""

import gc
import tracemalloc

import torch

import genie

from conftest import DEVICE, host


def live_nodes() -> int:
    gc.collect()
    return len(genie.get_graph())


def test_100k_op_chain_materializes():
    y = torch.zeros(8, 8, device=DEVICE)
    for _ in range(100_000):
        y = y + 1
    assert torch.equal(host(y), torch.full((8, 8), 100_000.0))


def test_graph_holds_only_what_live_tensors_need():
    base = live_nodes()
    y = torch.zeros(4, device=DEVICE)
    for _ in range(1000):
        y = y * 1.0 + 1
    assert live_nodes() >= base + 2000
    del y
    assert live_nodes() <= base + 5
    x = torch.ones(4, device=DEVICE)
    for _ in range(1000):
        x = x + 1
    host(x)  # materialized: the chain behind it is released
    assert live_nodes() <= base + 10
    assert torch.equal(host(x), torch.full((4,), 1001.0))


def test_long_chain_of_views_and_inplace():
    a = torch.zeros(100)
    la = a.to(DEVICE)
    for i in range(2000):
        a[i % 100: i % 100 + 1].add_(i)
        la[i % 100: i % 100 + 1].add_(i)
    assert torch.equal(host(la), a)


def test_memory_per_node_is_bounded():
    y = torch.zeros(8, 8, device=DEVICE)
    y = y + 1  # warm the metadata cache
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(20_000):
        y = y + 1
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    per_node = (after - before) / 20_000
    assert per_node < 500, per_node
    host(y)


def test_deep_dag_materialize_in_pieces():
    xs = [torch.full((2,), float(i), device=DEVICE) for i in range(50)]
    acc = xs[0]
    partial = []
    for i, x in enumerate(xs[1:], 1):
        acc = acc + x
        if i % 10 == 0:
            partial.append(acc)
    for k, p in enumerate(partial[::-1]):
        i = (len(partial) - k) * 10
        assert torch.equal(host(p), torch.full((2,), float(i * (i + 1) // 2)))
