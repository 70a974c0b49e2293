"""What the captured graph means (genie/semantics): module context, phases, residency, patterns.

The model zoo's checks live in the conformance suite (``semantics`` column: every zoo model's
patterns, phases, residency and values against eager); these are the hand-written cases it
does not cover: every surface form of a pattern, the negatives, the phase sources, the plugin
API (docs/patterns.md runs as written) and the hooks' own behaviour.
"""

import math
import pathlib
import re

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import genie
from genie.semantics import context

from conftest import DEVICE, host


def _up(t):
    return t.to(DEVICE)


def _kinds(*tensors, kinds=None):
    return [m.kind for m in genie.patterns.recognize(genie.graph_of(*tensors), kinds=kinds)]


def _close(lazy, expected):
    torch.testing.assert_close(host(lazy), expected, rtol=1e-5, atol=1e-5)


# -- module context ---------------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
        self.act = nn.GELU()

    def forward(self, x):
        return self.layers[1](self.act(self.layers[0](x)))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(Block(), Block())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.encoder(x) * 2)


def test_module_paths_and_classes_on_every_forward_node():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 6)
    expected = net(x)
    lnet, lx = net.to(DEVICE), _up(x)
    y = lnet(lx)
    outside = lx.sin()  # no module is running
    by_path = {n.module_path: n.module_class for n in genie.graph_of(y).nodes if n.module_path is not None}
    assert by_path["encoder.1.layers.0"] == "Linear"  # a grandchild called through a ModuleList
    assert by_path["encoder.0.act"] == "GELU"
    assert by_path[""] == "Net" and by_path["head"] == "Linear"
    assert y.genie_node.module_path == "head"
    assert outside.genie_node.module_path is None and outside.genie_node.phase == "forward"
    assert outside.genie_node.phase_source == "default"
    _close(y, expected)


def test_backward_ops_are_captured_in_their_forward_module():
    torch.manual_seed(0)
    net = Net().to(DEVICE)
    loss = net(_up(torch.randn(4, 6))).square().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters()]
    g = genie.graph_of(*grads)
    backward = [n for n in g.nodes if n.phase == "backward"]
    assert backward and all(n.phase_source == "call" for n in backward)
    paths = {n.module_path for n in backward}
    assert {"head", "encoder.0.layers.0", "encoder.1.act"} <= paths
    forward_paths = {n.module_path for n in g.nodes if n.phase == "forward"}
    assert paths - {None} <= forward_paths
    assert all(t.genie_node.residency == "gradient" for t in grads)


def test_optimizer_phase_and_residency_of_every_value():
    torch.manual_seed(0)
    net = Net().to(DEVICE)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    loss = net(_up(torch.randn(4, 6))).square().mean()
    loss.backward()
    opt.step()
    state = [t for s in opt.state.values() for t in s.values() if t.dim()]
    g = genie.graph_of(*net.parameters(), *state)
    phases = {n.phase for n in g.nodes}
    assert {"forward", "backward", "optimizer"} <= phases
    opt_nodes = [n for n in g.nodes if n.phase == "optimizer"]
    assert all(n.module_class == "AdamW" and n.phase_source == "call" for n in opt_nodes)
    assert all(p.genie_node.residency == "weight" for p in net.parameters())
    assert all(t.genie_node.residency == "optimizer_state" for t in state)
    assert {n.residency for n in g.nodes} >= {"weight", "activation", "gradient", "optimizer_state"}


def test_annotations_dict_and_fx_meta_carry_the_semantics():
    net = Net().to(DEVICE)
    y = net(_up(torch.randn(2, 6)))
    ann = y.genie_node.annotations
    assert ann["module"] == "head" and ann["module_class"] == "Linear"
    assert (ann["phase"], ann["phase_source"], ann["residency"]) == ("forward", "default", "activation")
    gm = genie.graph_of(y).to_fx()
    metas = [n.meta for n in gm.graph.nodes if n.op == "call_function"]
    assert metas[-1]["nn_module_path"] == "head"
    assert metas[-1]["genie_annotations"]["module_class"] == "Linear"


def test_suspended_hooks_record_no_module():
    net = Net().to(DEVICE)
    with context.suspended():
        assert not context.installed()
        inside = net(_up(torch.randn(2, 6)))
    assert context.installed()
    assert inside.genie_node.module_path is None
    assert net(_up(torch.randn(2, 6))).genie_node.module_path == "head"


def test_models_built_on_the_device_are_tracked():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 6, device=DEVICE), nn.ReLU(), nn.Sequential(nn.Linear(6, 2, device=DEVICE)))
    y = net(_up(torch.randn(3, 6)))
    paths = {n.module_path for n in genie.graph_of(y).nodes}
    assert {"0", "1", "2.0"} <= paths
    assert all(context.tracked(m) for m in net.modules())
    genie.analyze(genie.graph_of(y))  # marks the current weights of the modules in the graph
    assert all(p.genie_node.residency == "weight" for p in net.parameters())


def test_deepcopy_keeps_tracking_and_moving_off_the_device_ends_it():
    import copy
    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 6)
    expected = net(x)
    lnet = net.to(DEVICE)
    twin = copy.deepcopy(lnet)
    assert twin.forward.module is twin  # the copy's forward runs the copy
    y = twin(_up(x))
    assert y.genie_node.module_path == "head"
    _close(y, expected)
    back = twin.cpu()
    assert not any(context.tracked(m) for m in back.modules())
    assert "forward" not in back.__dict__
    assert torch.allclose(back(x), expected, atol=1e-6)


class StaticAct(nn.Module):
    @staticmethod
    def forward(x):  # written as some model zoos write activations
        return x * torch.sigmoid(x)


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = 1.0
        self.lin = nn.Linear(4, 4)

    def forward(self, x, attention_mask=None, *, position_ids=None):
        return self.lin(x) * self.scale


def test_the_context_forward_is_transparent():
    import copy
    import inspect
    import io
    torch.manual_seed(0)
    m, x = Scaled(), torch.randn(2, 4)
    expected = m(x)
    lm = m.to(DEVICE)
    # the signature callers inspect (transformers decides which inputs to build from it)
    assert list(inspect.signature(lm.forward).parameters) == ["x", "attention_mask", "position_ids"]
    # a shallow copy runs itself, not the module it was copied from
    c = copy.copy(lm)
    c.scale = 5.0
    _close(c(_up(x)), expected * 5.0)
    assert c.forward.module is c and context.tracked(c)
    # a staticmethod forward binds as Python binds it
    act = StaticAct().to(DEVICE)
    context.track(act)
    _close(act(_up(x)), x * torch.sigmoid(x))
    # pickled and loaded: still the module's own forward (and its user's instance forward, if any)
    lm.forward_calls = 0
    own = Scaled.forward.__get__(lm)

    def counting(*a, **k):
        lm.forward_calls += 1
        return own(*a, **k)

    context.untrack(lm)
    lm.forward = counting
    context.track(lm)
    lm(_up(x))
    assert lm.forward_calls == 1
    buf = io.BytesIO()
    torch.save(Scaled().to(DEVICE), buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert loaded.forward.module is loaded and loaded(_up(x)).genie_node.module_path == ""


def test_optimizer_phase_ends_with_a_failed_step_and_spares_closures():
    torch.manual_seed(0)
    net = Net().to(DEVICE)
    x = _up(torch.randn(3, 6))
    lbfgs = torch.optim.LBFGS(net.parameters(), max_iter=1)
    seen = []

    def closure():
        lbfgs.zero_grad()
        loss = net(x).square().mean()
        seen.append(loss.genie_node.phase)
        loss.backward()
        return loss

    lbfgs.step(closure)
    assert seen and set(seen) == {"forward"}

    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("no step today")

    bad = Failing(net.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="no step today"):
        bad.step()
    assert net(x).genie_node.phase == "forward"
    with pytest.raises(RuntimeError, match="no step today"):
        bad.step()  # the stale frame of the last failure goes first
    assert len(context._frames.stack) == 1
    torch.optim.SGD(net.parameters(), lr=0.1).step()  # the next step that completes unwinds it
    assert context._frames.stack == [] and genie.graph.node.scope.ctx is None


def test_pattern_registration_leaves_the_random_stream_alone():
    torch.manual_seed(0)
    first = host(torch.rand(4, device=DEVICE))

    torch.manual_seed(0)

    @genie.patterns.register("dropped", example_inputs=(torch.randn(4),))
    def dropped(x):
        return F.dropout(x, 0.5, training=True).relu()

    try:
        assert torch.equal(host(torch.rand(4, device=DEVICE)), first)
    finally:
        genie.patterns.unregister("dropped")


def test_a_plugin_attention_kind_does_not_break_analysis():
    @genie.patterns.register("attention", example_inputs=(torch.randn(2, 3), torch.randn(3, 3)))
    def scores(q, k):
        return torch.softmax(q @ k, -1)

    try:
        q = _up(torch.randn(2, 3))
        analysis = genie.analyze(genie.graph_of(torch.softmax(q @ _up(torch.randn(3, 3)), -1)))
        assert [m.kind for m in analysis.matches] == ["attention"]
    finally:
        genie.patterns.unregister("attention")
        from genie.semantics.patterns import builtin
        genie.patterns.register("attention")(builtin.attention)  # the built-in one, back in its place
        from genie.semantics.patterns import registry
        order = [e.kind for e in registry._registry]
        registry._registry.insert(0, registry._registry.pop(order.index("attention")))


def test_module_hooks_do_not_change_values_or_module_results():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 6)
    expected = net(x)
    _close(net.to(DEVICE)(_up(x)), expected)
    assert torch.equal(net.cpu()(x), expected)  # eager modules in the same process: untouched


# -- phases -----------------------------------------------------------------------------------


class Decoder(nn.Module):
    """One hand-written attention layer with a KV cache carried between calls."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.heads, self.d = heads, d
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, cache):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split(self.d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        k = torch.cat([cache[0], k], dim=2)
        v = torch.cat([cache[1], v], dim=2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, self.d)), (k, v)


def _empty_cache(b=1, heads=2, dh=4):
    return (torch.zeros(b, heads, 0, dh), torch.zeros(b, heads, 0, dh))


def test_explicit_phase_wins_and_is_checked():
    torch.manual_seed(0)
    dec = Decoder().to(DEVICE)
    cache = tuple(_up(c) for c in _empty_cache())
    with genie.phase("prefill"):
        y, cache = dec(_up(torch.randn(1, 5, 8)), cache)
    with genie.phase("decode"):
        y2, cache = dec(_up(torch.randn(1, 1, 8)), cache)
    assert {(n.phase, n.phase_source) for n in genie.graph_of(y).nodes if n.module_path} == {("prefill", "explicit")}
    step = [n for n in genie.graph_of(y2).nodes if n.id > y.genie_node.id and n.module_path is not None]
    assert {(n.phase, n.phase_source) for n in step} == {("decode", "explicit")}
    with pytest.raises(ValueError, match="unknown phase 'sampling'"):
        with genie.phase("sampling"):
            pass


def test_kv_cache_updates_across_steps_and_decode_heuristic():
    torch.manual_seed(0)
    dec = Decoder()
    x0, x1, x2 = torch.randn(1, 5, 8), torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    e_cache = _empty_cache()
    e0, e_cache = dec(x0, e_cache)
    e1, e_cache = dec(x1, e_cache)
    e2, e_cache = dec(x2, e_cache)
    ldec = dec.to(DEVICE)
    cache = tuple(_up(c) for c in _empty_cache())
    y0, cache = ldec(_up(x0), cache)
    y1, cache = ldec(_up(x1), cache)
    # prefill and a decode step in one graph: each step's cat grows the cache the previous one made
    analysis = genie.analyze(genie.graph_of(y1, *cache))
    updates = analysis.by_kind()["kv_cache_update"]
    assert len(updates) == 4  # the prefill's two (onto empty caches) and the decode step's two
    assert [m.details["role"] for m in updates[2:]] == ["k", "v"]  # the step whose attention is in the graph
    assert all(c.genie_node.residency == "kv_cache" for c in cache)
    _close(y0, e0)
    _close(y1, e1)
    genie.materialize(*cache)
    # a graph of one decode step, nobody saying so: query length 1 against a longer cache
    y2, cache = ldec(_up(x2), cache)
    analysis = genie.analyze(genie.graph_of(y2))
    step = [n for n in analysis.graph.nodes if n.module_path is not None]
    assert {(n.phase, n.phase_source) for n in step} == {("decode", "heuristic")}
    assert analysis.by_kind()["attention"][0].details["query_length"] == 1
    _close(y2, e2)


# -- patterns: every surface form, and what only looks alike ----------------------------------


def _attention_layouts(q, k, v, layout):
    if layout == "bhld":  # heads before positions, scale by div, mask by masked_fill
        s = (q @ k.transpose(-2, -1)) / 2.0
        s = s.masked_fill(torch.ones_like(s, dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(-1) @ v
    if layout == "blhd":  # positions before heads: transposes around the products, mask added first
        qt, kt, vt = (z.transpose(1, 2) for z in (q, k, v))
        s = torch.matmul(qt, kt.transpose(-1, -2)) + torch.zeros(q.shape[1], q.shape[1]).to(q.device)
        return (F.softmax(s * 0.5, dim=-1) @ vt).transpose(1, 2)
    if layout == "flat":  # batch and heads folded, bmm
        b = q.shape[0] * q.shape[1]
        qf, kf, vf = (z.reshape(b, q.shape[2], q.shape[3]) for z in (q, k, v))
        return torch.bmm(F.dropout(torch.softmax(torch.bmm(qf, kf.transpose(1, 2)), -1), 0.0), vf)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@pytest.mark.parametrize("layout", ["bhld", "blhd", "flat", "sdpa"])
def test_attention_in_every_head_layout(layout):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4) for _ in range(3))
    expected = _attention_layouts(q, k, v, layout)
    out = _attention_layouts(_up(q), _up(k), _up(v), layout)
    matches = genie.patterns.recognize(genie.graph_of(out), kinds=["attention"])
    assert len(matches) == 1
    m = matches[0]
    assert m.details["fused"] == (layout == "sdpa")
    assert m.details["query_length"] == m.details["key_length"] == (3 if layout == "blhd" else 5)
    _close(out, expected)


@pytest.mark.parametrize("training", [False, True])
def test_multihead_attention_module(training):
    torch.manual_seed(0)
    mha, x = nn.MultiheadAttention(8, 2, batch_first=True, dropout=0.0), torch.randn(2, 5, 8)
    mha.train(training)
    with torch.set_grad_enabled(training):
        expected = mha(x, x, x, need_weights=False)[0]
        out = mha.to(DEVICE)(*(3 * [_up(x)]), need_weights=False)[0]
    matches = genie.patterns.recognize(genie.graph_of(out), kinds=["attention"])
    assert len(matches) == 1 and matches[0].module == ""
    _close(out, expected)


def test_softmax_between_weight_products_is_not_attention():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 8), nn.Softmax(-1), nn.Linear(8, 4)).to(DEVICE)
    out = head(_up(torch.randn(3, 8)))
    assert _kinds(out) == []


class ConvBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.c = nn.Conv2d(4, 4, 1)

    def forward(self, x, unrelated):
        x = F.relu(self.bn(self.a(x)))  # conv, batch norm, activation
        x = F.silu(self.b(x) + x)  # residual before the activation
        return self.c(x) + unrelated  # a conv followed by an add of something unrelated


def test_conv_blocks_and_an_unrelated_add():
    torch.manual_seed(0)
    m, x, u = ConvBlocks().eval(), torch.randn(2, 3, 6, 6), torch.randn(2, 4, 6, 6)
    expected = m(x, u)
    out = m.to(DEVICE)(_up(x), _up(u))
    found = genie.patterns.recognize(genie.graph_of(out))
    blocks = [mm for mm in found if mm.kind == "conv_block"]
    assert [(b.details["batch_norm"], b.details["residual"], b.details["activation"]) for b in blocks] == [
        (True, False, "aten::relu"), (False, True, "aten::silu")]
    assert [b.anchor.module_path for b in blocks] == ["a", "b"]
    residuals = [mm for mm in found if mm.kind == "residual"]
    assert len(residuals) == 1 and residuals[0].anchor.module_path == ""
    assert found[-1].anchor.id < out.genie_node.id  # the last add matched nothing
    _close(out, expected)


class HandMLP(nn.Module):
    """An MLP written with parameters and operators, no nn.Linear."""

    def __init__(self, gated):
        super().__init__()
        self.gated = gated
        self.w1, self.b1 = nn.Parameter(torch.randn(16, 8)), nn.Parameter(torch.randn(16))
        self.w3 = nn.Parameter(torch.randn(16, 8))
        self.w2 = nn.Parameter(torch.randn(8, 16))

    def forward(self, x):
        h = x @ self.w1.T + self.b1
        h = F.silu(h) * (x @ self.w3.T) if self.gated else 0.5 * h * (1 + torch.tanh(h * 0.79788456))
        return h @ self.w2.T


@pytest.mark.parametrize("form", ["nn.Linear", "operators", "gated"])
def test_mlp_from_every_surface_form(form):
    torch.manual_seed(0)
    if form == "nn.Linear":
        m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.0), nn.Linear(16, 8))
    else:
        m = HandMLP(gated=form == "gated")
    x = torch.randn(2, 3, 8)
    expected = m(x)
    out = m.to(DEVICE)(_up(x))
    matches = genie.patterns.recognize(genie.graph_of(out), kinds=["mlp"])
    assert len(matches) == 1 and matches[0].details["gated"] == (form == "gated")
    _close(out, expected)


def test_two_layers_without_activation_and_independent_adds_match_nothing():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)).to(DEVICE)
    a, b = _up(torch.randn(3, 8)), _up(torch.randn(3, 8))
    out = m(a) + b  # b does not depend on a: not a skip connection
    assert _kinds(out) == []


def test_recognition_is_left_to_right_and_covers_a_long_graph():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    x = _up(torch.randn(2, 4, 8))
    layer = layer.to(DEVICE)
    for _ in range(20):
        x = layer(x)  # training mode: the layer's ops, not the fused inference kernel
    analysis = genie.analyze(genie.graph_of(x))
    assert analysis.counts() == {"attention": 20, "mlp": 20, "residual": 40}
    anchors = [m.anchor.id for m in analysis.matches]
    assert anchors == sorted(anchors)
    assert all(("mlp", m.anchor.id) in m.nodes[0].notes["patterns"] for m in analysis.by_kind()["mlp"])


# -- the plugin API ---------------------------------------------------------------------------


def test_docs_patterns_worked_example_runs_as_written():
    doc = pathlib.Path(__file__).resolve().parents[1] / "docs" / "patterns.md"
    code = "\n".join(re.findall(r"```python\n(.*?)```", doc.read_text(), re.S))
    exec(compile(code, str(doc), "exec"), {"__name__": "docs_patterns"})
    assert "swiglu" not in genie.patterns.kinds()  # the example unregisters what it added


def test_register_rejects_bad_patterns():
    with pytest.raises(ValueError, match="variants"):
        genie.patterns.register("x", example_inputs=(torch.randn(2),), variants="sometimes")(lambda a: a.sin())
    with pytest.raises(ValueError, match="returns one of its inputs"):
        genie.patterns.register("x", example_inputs=(torch.randn(2),))(lambda a: a)
    with pytest.raises(TypeError, match="one tensor"):
        genie.patterns.register("x", example_inputs=(torch.randn(2),))(lambda a: (a.sin(), a.cos()))
    assert "x" not in genie.patterns.kinds()


def test_float_constants_in_a_pattern_must_agree():
    @genie.patterns.register("half_gelu", example_inputs=(torch.randn(4),))
    def half_gelu(x):
        return F.gelu(x) * 0.5

    try:
        a = _up(torch.randn(4))
        assert _kinds(F.gelu(a) * 0.5, kinds=["half_gelu"]) == ["half_gelu"]
        assert _kinds(F.gelu(a) * 0.25, kinds=["half_gelu"]) == []
    finally:
        genie.patterns.unregister("half_gelu")


def test_genie_semantics_0_turns_context_off():
    import subprocess
    import sys
    code = ("import torch, genie; m = torch.nn.Linear(2, 2).to('remote_accelerator'); "
            "y = m(torch.ones(1, 2).to('remote_accelerator')); "
            "print(y.genie_node.module_path, 'forward' in m.__dict__, y.cpu().shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "GENIE_SEMANTICS": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "False", "torch.Size([1,", "2])"]


def test_python_backward_ops_take_the_forward_module():
    class Twice(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2.0

        @staticmethod
        def backward(ctx, g):
            return g * 2.0 + torch.zeros(g.shape, device=g.device)  # a dunder and a factory

    class UsesTwice(nn.Module):
        def forward(self, x):
            return Twice.apply(x)

    m = UsesTwice().to(DEVICE)
    context.track(m)
    for _ in range(3):  # the operator fast path's cache is warm from the second round on
        x = _up(torch.randn(3)).requires_grad_()
        m(x).sum().backward()
        g = genie.graph_of(x.grad)
        ops = {n.op: (n.phase, n.module_path) for n in g.nodes if n.op in ("aten::mul", "aten::zeros")}
        assert ops == {"aten::mul": ("backward", ""), "aten::zeros": ("backward", "")}, ops
        assert torch.equal(host(x.grad), torch.full((3,), 2.0))
