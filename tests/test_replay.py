"""Compiled replay: which plans share a program, that replays are exact, and what the cache shows."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import genie
from genie.execution import scheduler
from genie.execution.replay import Program, ProgramCache

from conftest import DEVICE, host


@pytest.fixture
def programs(monkeypatch):
    """A fresh program cache that compiles at the second sighting (the default)."""
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
    # the upload of w and run 1 interpreted, run 2 compiled (checked), runs 3-5 replayed unchecked
    assert programs.compiles == 1 and programs.hits == 3 and programs.misses == 3
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
    for step in range(8):
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


def test_cache_is_bounded_and_counts_evictions(monkeypatch):
    cache = ProgramCache(limit=2, after=1)
    monkeypatch.setattr(scheduler.get_executor(), "programs", cache)
    x = torch.ones(3, device=DEVICE)
    host(x)
    for f in (torch.exp, torch.sin, torch.cos, torch.tanh):
        host(f(x))
    s = cache.stats()
    assert s["programs"] == 2 and s["evictions"] == 3 and s["compiles"] == 5  # the upload of x too


def test_replay_stats_are_visible():
    genie.reset_replay_stats()
    x = torch.ones(3, device=DEVICE)
    for _ in range(3):
        host(x + 1)
    s = genie.replay_stats()
    assert s["enabled"] is True
    assert {"hits", "misses", "compiles", "compile_s", "programs", "evictions"} <= set(s)
    assert s["hits"] + s["misses"] >= 3


def test_replay_can_be_switched_off(monkeypatch):
    ex = scheduler.get_executor()
    monkeypatch.setattr(ex, "replays", False)
    plan = scheduler.Plan(torch.ones(2, device=DEVICE).genie_node, ex.replays)
    assert plan.key is None
    assert genie.replay_stats() == {"enabled": False}


def test_large_plans_are_interpreted(monkeypatch):
    monkeypatch.setattr(scheduler, "MAX_COMPILED_NODES", 10)
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


@pytest.mark.parametrize("overload", list(__import__("genie.execution.replay", fromlist=["BINDINGS"]).BINDINGS),
                         ids=str)
def test_bound_kernels_match_their_overloads(overload):
    from torch.testing._internal.common_methods_invocations import op_db
    from genie.execution.replay import BINDINGS
    name = overload._schema.name.split("::")[1]
    info = next(o for o in op_db if o.name == name and o.variant_test_name in ("", "no_rounding_mode"))
    bound = BINDINGS[overload]
    checked = 0
    for dtype in (torch.float32, torch.int64, torch.bool, torch.complex64, torch.bfloat16):
        for sample in info.sample_inputs("cpu", dtype):
            args = (sample.input, *sample.args)
            if len(args) != 2 or not isinstance(args[0], torch.Tensor):
                continue
            try:
                expected = overload(*args, **sample.kwargs)
            except Exception as e:  # noqa: BLE001 - the binding must refuse it too
                with pytest.raises(type(e)):
                    bound(*args, **sample.kwargs)
                continue
            got = bound(*args, **sample.kwargs)
            assert got.dtype == expected.dtype and got.shape == expected.shape
            torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
            checked += 1
    assert checked > 10
