"""Compiled replay: which plans share a program, that replays are exact, and what the cache shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import genie
from genie.execution import plan as plans
from genie.execution import scheduler
from genie.execution.replay import Program, ProgramCache

from conftest import DEVICE, host


@pytest.fixture
def programs(monkeypatch):
    """A fresh program cache that compiles at the second sighting (the default)."""
    if not hasattr(scheduler.get_executor(), "programs"):
        pytest.skip("inspects the in-process executor's program cache; this run executes on a genie server")
    cache = ProgramCache(limit=64, after=2)
    monkeypatch.setattr(scheduler.get_executor(), "programs", cache)
    return cache


def _fingerprint(t) -> tuple:
    return scheduler.Plan(t.genie_node).key


def test_repeated_structure_compiles_once_and_replays_exactly(programs):
    w = torch.randn(16, 16)
    lw = w.to(DEVICE)
    host(lw)
    for step in range(5):
        x = torch.randn(4, 16)
        expected = torch.relu(x @ w + step).sum(0)
        got = host(torch.relu(x.to(DEVICE) @ lw + step).sum(0))
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # run 1 interpreted, run 2 compiled (checked), runs 3-5 replayed unchecked (w.to(device) and
    # x.to(device) hold their copies from the call on: no plan runs for them)
    assert programs.compiles == 1 and programs.hits == 3 and programs.misses == 2
    (prog,) = programs._programs.values()
    assert prog.runs == 4 and len(prog.verified) == 1
    assert prog.code.startswith("def run(I, N, G, C):")  # inspectable Python, one line per node


def test_sizes_and_numbers_are_inputs_not_structure():
    # a KV cache growing by one position a step, a new batch size, a new scalar: one fingerprint
    def step(cache_len, batch, scale):
        k = torch.zeros(batch, cache_len, 8, device=DEVICE)
        new = torch.ones(batch, 1, 8, device=DEVICE)
        return torch.cat([k, new], 1).mul(scale).view(batch, -1)
    keys = {_fingerprint(step(n, b, s)) for n, b, s in [(3, 2, 2.0), (4, 2, 0.5), (9, 5, 3.0)]}
    assert len(keys) == 1


def test_kernel_choices_are_structure():
    x = torch.ones(4, 4, device=DEVICE)
    base = _fingerprint(x.sum(0))
    assert _fingerprint(x.sum(0, keepdim=True)) != base  # a bool flag
    assert _fingerprint(x.to(torch.float64).sum(0)) != base  # another op and dtype
    assert _fingerprint(x.sum(0, dtype=torch.float64)) != _fingerprint(x.sum(0, dtype=torch.float16))
    assert _fingerprint(x.sum(1)) == base  # only a number differs


def test_what_is_kept_is_structure():
    x = torch.ones(4, device=DEVICE)
    host(x)
    a = x + 1
    b = a * 2
    kept_a = _fingerprint(b)
    del a
    c = (x + 1) * 2
    assert _fingerprint(c) != kept_a


def test_replayed_programs_keep_only_what_is_referenced(programs):
    x = torch.ones(4, device=DEVICE)
    host(x)
    for _ in range(3):
        a = x + 1
        b = a * 2
        out = (b + 3).sum()
        assert host(out).item() == 28
        assert a.genie_node.value is not None  # held by a tensor: kept
        assert b.genie_node.value is not None
        mid = (x * 5 + 1) * 2  # the x * 5 and + 1 intermediates are dropped
        host(mid)
    assert programs.compiles >= 1


def test_layouts_are_checked_until_verified(programs):
    # a transposed input: outputs keep the layout the meta kernel promised on every run
    for _ in range(4):
        x = torch.randn(6, 5).t()
        y = host(x.to(DEVICE).exp())
        assert y.stride() == x.exp().stride()
        torch.testing.assert_close(y, x.exp())


def test_random_ops_replay_in_rng_order(programs):
    torch.manual_seed(7)
    lazy = []
    for _ in range(4):
        a = torch.randn(5, device=DEVICE)
        b = F.dropout(torch.ones(8, device=DEVICE), 0.5)
        lazy.append((host(a), host(b)))
    torch.manual_seed(7)
    for la, lb in lazy:
        torch.testing.assert_close(la, torch.randn(5), rtol=0, atol=0)
        torch.testing.assert_close(lb, F.dropout(torch.ones(8), 0.5), rtol=0, atol=0)
    assert programs.hits >= 1


def test_writes_through_views_replay_exactly(programs):
    for i in range(4):
        base = torch.zeros(4, 4)
        lb = base.to(DEVICE)
        base[1:3].add_(float(i))
        lb[1:3].add_(float(i))
        base.t()[0].mul_(3)
        lb.t()[0].mul_(3)
        torch.testing.assert_close(host(lb), base, rtol=0, atol=0)
    assert programs.hits >= 1


def test_a_training_loop_replays_every_step_exactly(programs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.LayerNorm(16), torch.nn.Linear(16, 2))
    import copy
    lazy = copy.deepcopy(model).to(DEVICE)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (model, lazy)]
    for _step in range(8):
        x = torch.randn(4, 8)
        losses = []
        for m, opt, xx in ((model, opts[0], x), (lazy, opts[1], x.to(DEVICE))):
            opt.zero_grad()
            loss = m(xx).square().mean()
            loss.backward()
            opt.step()
            losses.append(loss)
        torch.testing.assert_close(host(losses[1]), losses[0], rtol=1e-6, atol=1e-6)
    for p, q in zip(model.parameters(), lazy.parameters()):
        torch.testing.assert_close(host(q), p.detach(), rtol=1e-6, atol=1e-6)
    # reading the loss runs the previous step's update and this step's forward: from step 3 on,
    # one structure (step 2's update creates AdamW's state), seen at 3, compiled at 4, replayed after
    assert programs.hits >= 4


@pytest.mark.in_process
def test_cache_is_bounded_and_counts_evictions(monkeypatch):
    import linecache
    before = {k for k in linecache.cache if k.startswith("<genie-replay")}
    cache = ProgramCache(limit=2, after=1)
    monkeypatch.setattr(scheduler.get_executor(), "programs", cache)
    x = torch.ones(3, device=DEVICE)
    host(x)
    for f in (torch.exp, torch.sin, torch.cos, torch.tanh):
        host(f(x))
    s = cache.stats()
    assert s["programs"] == 2 and s["evictions"] == 3 and s["compiles"] == 5  # the first read of x too
    # tracebacks of live programs show their source; evicted programs took theirs out of linecache
    kept = {p._filename + v for p in cache._programs.values() for v in ("fast", "checked")}
    assert {k for k in linecache.cache if k.startswith("<genie-replay")} - before == kept


@pytest.mark.in_process
def test_cache_is_bounded_by_its_programs_nodes(monkeypatch):
    """Programs keep about 1 KB per node: past the node budget the least recently used go."""
    cache = ProgramCache(after=1, node_limit=12)
    monkeypatch.setattr(scheduler.get_executor(), "programs", cache)
    x = torch.ones(3, device=DEVICE)
    host(x)  # a plan of 1 node (the factory)
    y = x
    for _ in range(5):
        y = y * 2
    host(y)  # and one of 5
    assert cache.stats()["nodes"] == 6
    z = x
    for _ in range(9):
        z = z + 1
    host(z)  # 9 more: over budget, the older programs go
    s = cache.stats()
    assert s["programs"] == 1 and s["nodes"] == 9 and s["evictions"] >= 1
    w = x
    for _ in range(20):
        w = w - 1
    host(w)  # larger than the budget alone: compiled and kept, everything older goes
    s = cache.stats()
    assert s["programs"] == 1 and s["nodes"] == 20


def test_replay_stats_are_visible():
    genie.reset_replay_stats()
    x = torch.ones(3, device=DEVICE)
    for _ in range(3):
        host(x + 1)
    s = genie.replay_stats()
    assert s["enabled"] is True
    assert {"hits", "misses", "compiles", "compile_s", "programs", "evictions"} <= set(s)
    assert s["hits"] + s["misses"] >= 3


@pytest.mark.in_process
def test_replay_can_be_switched_off(monkeypatch):
    ex = scheduler.get_executor()
    monkeypatch.setattr(ex, "replays", False)
    plan = scheduler.Plan(torch.ones(2, device=DEVICE).genie_node, ex.replays)
    assert plan.key is None
    assert genie.replay_stats() == {"enabled": False}


def test_large_plans_are_interpreted(monkeypatch):
    monkeypatch.setattr(plans, "MAX_COMPILED_NODES", 10)
    y = torch.zeros(2, device=DEVICE)
    for _ in range(20):
        y = y + 1
    assert scheduler.Plan(y.genie_node).key is None
    assert host(y).tolist() == [20.0, 20.0]


def test_fingerprint_is_a_short_digest_equal_across_processes():
    code = ("import torch, genie; from genie.execution import scheduler, replay;"
            "x = torch.ones(3, device='remote_accelerator'); y = (x + 1).relu().sum(0);"
            "print(replay.Program(scheduler.Plan(y.genie_node).key).fingerprint)")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
            for _ in range(2)}
    assert len(outs) == 1
    (digest,) = outs
    assert len(bytes.fromhex(digest)) == 16
    x = torch.ones(3, device=DEVICE)
    here = Program(scheduler.Plan(((x + 1).relu().sum(0)).genie_node).key).fingerprint
    assert here == digest


class _TinyDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(50, 32)
        self.ln = torch.nn.LayerNorm(32)
        self.qkv = torch.nn.Linear(32, 96)
        self.fc = torch.nn.Linear(32, 64)
        self.out = torch.nn.Linear(64, 32)

    def forward(self, ids):
        x = self.emb(ids)
        q, k, v = self.qkv(self.ln(x)).split(32, -1)
        q, k, v = (t.view(2, 6, 4, 8).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 6, 32)
        x = x + att
        h = self.out(F.gelu(self.fc(x)) * torch.sigmoid(x.mean(-1, keepdim=True)).pow(2))
        return torch.cat([x, h], -1).softmax(-1) - F.silu(h).exp().neg().tanh().sum()


class _TinyCNN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        y = torch.where(y > 0.1, y, (y + 1).rsqrt().clone()) / 2
        flat = y.flatten(2)
        return torch.bmm(flat, flat.transpose(1, 2)).permute(0, 2, 1)[0].unsqueeze(0)


@pytest.mark.in_process
def test_bindings_equal_their_overloads_on_real_programs(monkeypatch):
    """Every Python binding replay uses is checked against the boxed overload on the arguments real
    programs give it (forward, backward and eval of a decoder block and a conv-bn net)."""
    from genie.execution import replay
    called = set()

    def checked(op, bound):
        def call(*args, **kwargs):
            # the reference runs on copies: native_batch_norm updates running stats in training mode
            ref_args, ref_kwargs = (args, kwargs) if op is not torch.ops.aten.native_batch_norm.default else \
                torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, (args, kwargs))
            got = bound(*args, **kwargs)
            expected = op._op(*ref_args, **ref_kwargs)
            if isinstance(expected, (tuple, list)):
                # a list return comes back as a tuple (the program makes it one), several returns
                # as a named tuple: the items are what must agree
                assert isinstance(got, tuple) and len(got) == len(expected)
            else:
                assert type(got) is type(expected)
            for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, (tuple, list)) else (expected,)):
                assert (g.dtype, g.shape, g.stride(), g.storage_offset()) == \
                    (e.dtype, e.shape, e.stride(), e.storage_offset()), op
                torch.testing.assert_close(g, e, rtol=0, atol=0, equal_nan=True)
            called.add(op)
            return got
        return call

    monkeypatch.setattr(replay, "BINDINGS", {op: checked(op, b) for op, b in replay.BINDINGS.items()})
    monkeypatch.setattr(scheduler.get_executor(), "programs", ProgramCache(after=1))
    torch.manual_seed(0)
    import copy
    # (an encoder layer in eval without grad takes torch's fused fast path: one kernel)
    encoder = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    for model, x in ((_TinyDecoder(), torch.randint(0, 50, (2, 6))), (_TinyCNN(), torch.randn(2, 3, 5, 5)),
                     (encoder, torch.randn(2, 6, 32))):
        lazy = copy.deepcopy(model).to(DEVICE)
        for train in (True, False):
            model.train(train)
            lazy.train(train)
            with torch.set_grad_enabled(train):  # without grad, linear and layer_norm are one node each
                expected = model(x)
                got = lazy(x.to(DEVICE))
            torch.testing.assert_close(host(got), expected.detach(), rtol=1e-5, atol=1e-5)
            if train:
                expected.sum().backward()
                got.sum().backward()
                for p, q in zip(model.parameters(), lazy.parameters()):
                    torch.testing.assert_close(host(q.grad), p.grad, rtol=1e-5, atol=1e-5)
    missing = {str(op) for op in replay.BINDINGS} - {str(op) for op in called}
    assert not missing, f"bindings no program here exercised: {sorted(missing)}"


def test_in_place_writes_reuse_buffers_only_where_nothing_else_sees_them(programs):
    ex = scheduler.get_executor()
    before = ex.steals
    for _step in range(4):
        w = torch.full((3,), 2.0, device=DEVICE)
        host(w)
        held = w.genie_node  # the old value stays observable: it must not be written
        w.mul_(3.0)
        assert host(w).tolist() == [6.0] * 3
        assert held.value.tolist() == [2.0] * 3
        del held
        v = torch.full((3,), 2.0, device=DEVICE)
        host(v)
        v.mul_(3.0).add_(1.0)  # nothing holds the old values: written in place
        assert host(v).tolist() == [7.0] * 3
        base = torch.full((4,), 1.0, device=DEVICE)
        host(base)
        view = base[1:]  # a view shares the buffer: writing base must leave the view's old value
        old = view.genie_node
        host(view)
        base.mul_(5.0)
        assert old.value.tolist() == [1.0] * 3 and host(view).tolist() == [5.0] * 3
    assert ex.steals > before


def test_an_optimizer_loop_with_buffer_reuse_equals_eager(programs):
    torch.manual_seed(1)
    import copy
    model = torch.nn.Linear(5, 3)
    lazy = copy.deepcopy(model).to(DEVICE)
    opts = [torch.optim.AdamW(model.parameters(), lr=0.1), torch.optim.AdamW(lazy.parameters(), lr=0.1)]
    for _step in range(6):
        x = torch.randn(4, 5)
        for m, opt, xx in ((model, opts[0], x), (lazy, opts[1], x.to(DEVICE))):
            opt.zero_grad()
            m(xx).pow(2).mean().backward()
            opt.step()
        for p, q in zip(model.parameters(), lazy.parameters()):
            torch.testing.assert_close(host(q), p.detach(), rtol=0, atol=0)
        state_e, state_l = opts[0].state[model.weight], opts[1].state[lazy.weight]
        torch.testing.assert_close(host(state_l["exp_avg_sq"]), state_e["exp_avg_sq"], rtol=0, atol=0)


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.AdamW(ps, lr=0.1),
    lambda ps: torch.optim.Adam(ps, lr=0.1, amsgrad=True),
    lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
], ids=["adamw", "adam-amsgrad", "sgd-nesterov"])
def test_optimizers_take_the_foreach_path_and_equal_eagers_single_tensor_steps(programs, make_opt):
    # as on CUDA, an optimizer on the device defaults to its multi-tensor path: a handful of
    # _foreach_ ops per step whose changing float lists (step sizes) do not grow the capture cache,
    # whose written lists reuse their buffers, and whose values are eager's single-tensor ones
    import copy

    from genie.capture import dispatch, stats
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    lazy = copy.deepcopy(model).to(DEVICE)
    opts = [make_opt(model.parameters()), make_opt(lazy.parameters())]
    ex = scheduler.get_executor()
    sizes = []
    for step in range(6):
        x = torch.randn(4, 5)
        stats.reset_capture_stats()
        for m, opt, xx in ((model, opts[0], x), (lazy, opts[1], x.to(DEVICE))):
            opt.zero_grad()
            m(xx).pow(2).mean().backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            opt.step()
        captured = stats.capture_stats()["captured"]
        assert any(name.startswith("aten::_foreach_") for name in captured), captured
        for p, q in zip(model.parameters(), lazy.parameters()):
            torch.testing.assert_close(host(q), p.detach(), rtol=1e-6, atol=1e-6)
        sizes.append(len(dispatch._cache))
        if step == 2:  # from here on each step replays one compiled program
            before = ex.steals
    assert sizes[-1] == sizes[-2] == sizes[-3], f"the capture cache grows every step: {sizes}"
    assert ex.steals - before >= 3 * 4, "the foreach writes copied the parameters instead of updating them"
