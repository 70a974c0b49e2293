"""Random programs, lazy vs eager: chains and DAGs of 5-50 ops with views, in-place ops and
broadcasting, drawn by hypothesis. A failure shrinks to a minimal program; the CI profile is
derandomized (conformance/conftest.py).

A program is a list of instructions over a growing pool of tensors. It runs twice, on CPU and on
remote_accelerator; an instruction eager rejects must be rejected by the lazy device too (and is
then skipped on both). At the end every tensor of the pool is compared: shape, dtype and values
for all, significant strides for views (where strides are aliasing semantics). Strides of
computed outputs are compared op by op by the OpInfo suite; across random programs they meet a
known meta-kernel divergence: for broadcasting inputs whose strides tie (size-1 dims), the CPU
TensorIterator and the meta kernel order the output differently (plain PyTorch shows it with
``torch.empty_strided((1,1,3),(1,1,1), device="meta") + torch.empty_strided((3,1),(1,1), device="meta")``).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conformance.test_opinfo import significant_strides

REMOTE = "remote_accelerator"
SHAPES = [(4,), (3, 4), (2, 3, 4), (1, 4), (3, 1), (2, 1, 4)]

UNARY = {
    "relu": torch.relu, "neg": torch.neg, "sin": torch.sin, "tanh": torch.tanh, "abs": torch.abs,
    "sigmoid": torch.sigmoid, "exp": lambda t: torch.exp(t.clamp(-5, 5)), "square": torch.square,
}
BINARY = {
    "add": torch.add, "mul": torch.mul, "sub": torch.sub, "maximum": torch.maximum,
    "where": lambda a, b: torch.where(a > 0, a, b), "div": lambda a, b: a / (b.abs() + 1),
    "matmul": torch.matmul,
}
REDUCE = {
    "sum": lambda t, k: t.sum(k % t.dim()) if t.dim() else t.sum(),
    "mean": lambda t, k: t.mean(k % t.dim()) if t.dim() else t.mean(),
    "amax": lambda t, k: t.amax(k % t.dim()) if t.dim() else t.amax(),
    "softmax": lambda t, k: t.softmax(k % t.dim()) if t.dim() else t,
    "cumsum": lambda t, k: t.cumsum(k % t.dim()) if t.dim() else t,
}
VIEW = {
    "t": lambda t, k: t.t() if t.dim() == 2 else t.transpose(0, -1),
    "slice": lambda t, k: t[k % max(t.shape[0], 1):] if t.dim() else t,
    "select": lambda t, k: t[k % t.shape[0]] if t.dim() and t.shape[0] else t,
    "unsqueeze": lambda t, k: t.unsqueeze(k % (t.dim() + 1)),
    "flatten_view": lambda t, k: t.view(-1),
    "reshape": lambda t, k: t.reshape(-1, 2) if t.numel() % 2 == 0 else t.reshape(-1),
    "permute": lambda t, k: t.permute(*reversed(range(t.dim()))),
    "narrow": lambda t, k: t.narrow(-1, k % t.shape[-1], 1) if t.dim() and t.shape[-1] else t,
    "diagonal": lambda t, k: t.diagonal(dim1=-2, dim2=-1) if t.dim() >= 2 else t,
    "expand": lambda t, k: t.expand(2, *t.shape),
    "step": lambda t, k: t[..., ::2] if t.dim() else t,
}
INPLACE = {
    "add_": lambda t, o, k: t.add_(o), "mul_": lambda t, o, k: t.mul_(o), "clamp_": lambda t, o, k: t.clamp_(-1, 1),
    "fill_": lambda t, o, k: t.fill_(k), "copy_": lambda t, o, k: t.copy_(o), "relu_": lambda t, o, k: t.relu_(),
    "zero_": lambda t, o, k: t.zero_(), "setitem": lambda t, o, k: t.__setitem__(..., o),
    "t_": lambda t, o, k: t.t_() if t.dim() <= 2 else t.transpose_(0, 1),
    "unsqueeze_": lambda t, o, k: t.unsqueeze_(0), "squeeze_": lambda t, o, k: t.squeeze_(),
}
KINDS = [("unary", k) for k in UNARY] + [("binary", k) for k in BINARY] + [("reduce", k) for k in REDUCE] + \
    [("view", k) for k in VIEW] + [("inplace", k) for k in INPLACE]

instruction = st.tuples(st.sampled_from(KINDS), st.integers(0, 63), st.integers(0, 63), st.integers(0, 7))
program = st.tuples(
    st.lists(st.sampled_from(SHAPES), min_size=1, max_size=3),
    st.lists(instruction, min_size=5, max_size=50),
    st.integers(0, 2**16),
)


def step(pool, instr):
    (kind, name), i, j, k = instr
    a = pool[i % len(pool)]
    b = pool[j % len(pool)]
    if kind == "unary":
        return UNARY[name](a)
    if kind == "binary":
        return BINARY[name](a, b)
    if kind == "reduce":
        return REDUCE[name](a, k)
    if kind == "view":
        return VIEW[name](a, k)
    INPLACE[name](a, b, k - 3)
    return None


def run(shapes, instrs, seed, device):
    gen = torch.Generator().manual_seed(seed)
    pool = [torch.randn(s, generator=gen).to(device) for s in shapes]
    views = [False] * len(pool)
    outcomes = []
    for instr in instrs:
        try:
            out = step(pool, instr)
        except (RuntimeError, IndexError, ValueError, TypeError) as e:
            outcomes.append(type(e).__name__)
            continue
        outcomes.append("ok")
        if out is not None:
            pool.append(out)
            views.append(instr[0][0] == "view")
    return pool, outcomes, views


@given(program)
def test_random_programs_match_eager(prog):
    shapes, instrs, seed = prog
    eager_pool, eager_outcomes, views = run(shapes, instrs, seed, "cpu")
    lazy_pool, lazy_outcomes, _ = run(shapes, instrs, seed, REMOTE)
    assert [o != "ok" for o in lazy_outcomes] == [o != "ok" for o in eager_outcomes], \
        f"accepted/rejected differ: eager {eager_outcomes}, lazy {lazy_outcomes}"
    # zip stops at the shorter pool: the tensors one side made and the other did not would go unchecked
    assert len(lazy_pool) == len(eager_pool), f"lazy made {len(lazy_pool)} tensors, eager {len(eager_pool)}"
    for n, (lz, e) in enumerate(zip(lazy_pool, eager_pool)):
        assert (lz.shape, lz.dtype) == (e.shape, e.dtype), f"tensor {n} metadata"
        if views[n]:
            assert significant_strides(lz) == significant_strides(e), \
                f"view {n} strides: {lz.stride()}, eager {e.stride()}"
        got = lz.cpu()
        assert type(got) is torch.Tensor
        torch.testing.assert_close(got, e, rtol=1e-5, atol=1e-5, equal_nan=True, msg=lambda m: f"tensor {n}: {m}")


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_long_dag_read_in_any_order(order):
    """A fixed larger program, its tensors materialized front-to-back or back-to-front."""
    instrs = [(KINDS[(7 * n) % len(KINDS)], n, 3 * n + 1, n % 8) for n in range(200)]
    eager_pool, _, _ = run(SHAPES[:3], instrs, 1234, "cpu")
    lazy_pool, _, _ = run(SHAPES[:3], instrs, 1234, REMOTE)
    assert len(lazy_pool) == len(eager_pool), f"lazy made {len(lazy_pool)} tensors, eager {len(eager_pool)}"
    pairs = list(zip(lazy_pool, eager_pool))
    for lz, e in (pairs if order == "forward" else pairs[::-1]):
        torch.testing.assert_close(lz.cpu(), e, rtol=1e-5, atol=1e-5, equal_nan=True)
