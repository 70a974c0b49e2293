"""The built-in recognizers. Each is anchored on one op (softmax, a convolution, a layer's
matrix product, an add, a cat) and checks the structure around it, so its cost is linear in the
graph; module context names the match, structure decides it: a third-party attention class,
``nn.MultiheadAttention`` and a hand-written block all reduce to the same aten ops.

What each rejects on purpose (the negatives in tests/test_patterns.py): a softmax between two
products with weights (a classifier head, not attention: attention multiplies activations by
activations), a convolution followed by an add of an unrelated tensor (neither a block's
activation nor a skip connection), an add of two values where neither depends on the other.
"""

from __future__ import annotations

from ...graph.node import Node
from .index import (
    ACTIVATION_OPS,
    ARITHMETIC_OPS,
    BATCH_NORM_OPS,
    CONV_OPS,
    DROPOUT_OPS,
    MATMUL_OPERANDS,
    SPLIT_OPS,
    VIEW_OPS,
    PatternGraph,
    _tensor_args,
    output_index,
)
from .match import make_match
from .registry import register

SOFTMAX_OPS = ("aten::_softmax", "aten::softmax", "aten::_safe_softmax", "aten::special_softmax")
FUSED_ATTENTION_OPS = (
    "aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention", "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_fused_attention_overrideable", "aten::_efficient_attention_forward",
    "aten::_flash_attention_forward", "aten::_native_multi_head_attention",
)
# whole transformer layers PyTorch runs as one kernel (nn.TransformerEncoderLayer's inference fast
# path): self-attention, MLP and both skip connections inside one op
FUSED_LAYER_OPS = ("aten::_transformer_encoder_layer_fwd",)
# what may sit between the scores product and the softmax: scale, mask, bias, soft-capping, casts
SCORE_OPS = frozenset({"aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::add", "aten::add_",
                       "aten::sub", "aten::masked_fill", "aten::masked_fill_", "aten::where", "aten::tanh"})
RECURRENT_OPS = ("aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu", "aten::lstm_cell",
                 "aten::gru_cell", "aten::rnn_tanh_cell", "aten::rnn_relu_cell", "aten::_thnn_fused_lstm_cell",
                 "aten::_thnn_fused_gru_cell", "aten::mkldnn_rnn_layer", "aten::_cudnn_rnn")
RECURRENT_MODULES = frozenset({"LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"})
CACHE_WRITE_OPS = ("aten::index_copy_", "aten::index_copy", "aten::index_put_", "aten::index_put",
                   "aten::slice_scatter", "aten::copy_", "aten::scatter_", "aten::scatter")


# --------------------------------------------------------------------------------------------
# attention


@register("attention")
def attention(pg: PatternGraph):
    """softmax(Q @ K^T [scale] [mask] [bias]) [dropout] @ V in any head layout, and the fused
    scaled_dot_product_attention kernels."""
    for sm in pg.ops(SOFTMAX_OPS):
        trail: list = []
        qk = _scores_product(pg, sm.args[0], trail, 0)
        if qk is None:
            continue
        q, k = pg.matmul_operands(qk)
        if pg.is_weight(q) or pg.is_weight(k):
            continue  # a product with a weight: a layer, not attention scores
        pv = _weighted_sum(pg, sm, trail)
        if pv is None:
            continue
        p, v = pg.matmul_operands(pv)
        if pg.is_weight(v):
            continue
        shape = qk.spec.shape
        yield make_match("attention", [qk, sm, pv, *trail], sm, q=pg.source(q), k=pg.source(k), v=pg.source(v),
                         query_length=shape[-2], key_length=shape[-1], fused=False, output=pv)
    for node in pg.ops(FUSED_ATTENTION_OPS):
        args = [a for a in node.args[:3]]
        if len(args) < 3 or not all(isinstance(a, Node) for a in args):
            continue
        q, k, v = args
        outs = [u for u in pg.users(node) if u.op == "genie::getitem"]
        yield make_match("attention", [node, *outs], node, q=pg.source(q), k=pg.source(k), v=pg.source(v),
                         query_length=q.spec.shape[-2], key_length=k.spec.shape[-2], fused=True,
                         output=outs[0] if outs else node)
    for node in pg.ops(FUSED_LAYER_OPS):
        src = pg.source(node.args[0])
        length = node.args[0].spec.shape[-2]
        yield make_match("attention", [node], node, q=src, k=src, v=src, query_length=length, key_length=length,
                         fused=True, output=node)


def _scores_product(pg: PatternGraph, node, trail: list, depth: int):
    """The Q @ K^T product feeding a softmax, up through views and score modifiers."""
    if not isinstance(node, Node) or depth > 12:
        return None
    own: list = []
    node = pg.source(node, own)
    if node.op in MATMUL_OPERANDS and node.op != "aten::einsum" and pg.matmul_operands(node) is not None:
        trail.extend(own)
        return node
    if node.op not in SCORE_OPS:
        return None
    for a in _tensor_args(node):
        if pg.is_constant(a):
            continue
        sub: list = []
        found = _scores_product(pg, a, sub, depth + 1)
        if found is not None:
            trail.extend(own)
            trail.append(node)
            trail.extend(sub)
            return found
    return None


def _weighted_sum(pg: PatternGraph, sm: Node, trail: list):
    """The P @ V product consuming the softmax output, down through views, casts and dropout."""
    frontier = [sm]
    for _ in range(6):
        nxt = []
        for n in frontier:
            for u in pg.sinks(n, trail):
                ops = pg.matmul_operands(u)
                if ops is not None and pg.source(ops[0]) is n:
                    return u
                if u.op in DROPOUT_OPS or u.op in ("aten::mul", "aten::div", "aten::mul_", "aten::div_") or \
                        u.op in ("aten::_to_copy", "aten::type_as"):
                    trail.append(u)
                    if u.op in ("aten::native_dropout",):
                        nxt.extend(g for g in pg.users(u) if output_index(g) == 0)
                        trail.extend(nxt)
                    else:
                        nxt.append(u)
        frontier = nxt
        if not frontier:
            return None
    return None


# --------------------------------------------------------------------------------------------
# convolution blocks


@register("conv_block")
def conv_block(pg: PatternGraph):
    """convolution, optional batch norm, activation; with or without a residual add (before the
    activation, as in ResNet, or after it)."""
    for conv in pg.ops(CONV_OPS):
        nodes = [conv]
        cur, bn, act, skip = conv, None, None, None
        nxt = _only_consumer(pg, cur, nodes)
        if nxt is not None and nxt.op in BATCH_NORM_OPS:
            bn = nxt
            nodes.append(bn)
            out0 = [u for u in pg.users(bn) if output_index(u) == 0]
            if not out0:
                continue
            nodes.append(out0[0])
            cur = out0[0]
            nxt = _only_consumer(pg, cur, nodes)
        if nxt is not None and nxt.op in ("aten::add", "aten::add_"):
            skip = _skip_operand(pg, nxt, cur, conv)
            if skip is None:
                continue  # an add of something unrelated: not part of a block
            nodes.append(nxt)
            cur = nxt
            nxt = _only_consumer(pg, cur, nodes)
        if nxt is None or nxt.op not in ACTIVATION_OPS:
            continue
        act = nxt
        nodes.append(act)
        if skip is None:
            after = _only_consumer(pg, act, [])
            if after is not None and after.op in ("aten::add", "aten::add_"):
                skip = _skip_operand(pg, after, act, conv)
                if skip is not None:
                    nodes.append(after)
        yield make_match("conv_block", nodes, conv, batch_norm=bn is not None, activation=act.op,
                         residual=skip is not None, skip=skip)


def _only_consumer(pg: PatternGraph, node: Node, trail: list):
    sinks = pg.sinks(node, trail)
    return sinks[0] if len(sinks) == 1 else None


def _skip_operand(pg: PatternGraph, add: Node, branch: Node, conv: Node):
    """The other operand of ``add`` if it is a skip connection around the block starting at
    ``conv``: it depends on what the block's input depends on (the block input itself, or a
    shortcut branch such as a strided 1x1 convolution of it)."""
    other = [a for a in add.args[:2] if isinstance(a, Node) and pg.source(a) is not pg.source(branch)]
    if len(other) != 1 or pg.is_constant(other[0]) or pg.is_weight(other[0]):
        return None
    other = other[0]
    block_input = conv.args[0]
    if not isinstance(block_input, Node):
        return None
    if other is not block_input and pg.is_ancestor(block_input, other, limit=512):
        return None  # the other operand is computed from this conv's input: this conv is the shortcut
    # walk a few steps up from the skip value: one of them must feed the block too
    stack, seen = [other], 0
    while stack and seen < 24:
        n = stack.pop()
        seen += 1
        if n is block_input or pg.is_ancestor(n, block_input, limit=512):
            return other
        stack.extend(d for d in _tensor_args(n) if not pg.is_weight(d))
    return None


# --------------------------------------------------------------------------------------------
# MLPs


@register("mlp")
def mlp(pg: PatternGraph):
    """linear, activation, linear; gated variants (act(x W1) * (x W3)) W2, a fused gate-up product
    split in two, and hand-written activations (GPT-2's tanh GELU) included."""
    for out in pg.ops(tuple(MATMUL_OPERANDS)):
        x = pg.linear_input(out)
        if x is None:
            continue
        region, firsts = _activation_region(pg, x)
        if region is None or not firsts or len(firsts) > 2:
            continue
        inputs = {id(pg.source(pg.linear_input(f))) for f in firsts}
        if len(inputs) != 1:
            continue
        # two products of one input, or one fused product split in two halves
        gated = len(firsts) == 2 or any(n.op in SPLIT_OPS for n in region)
        if not gated and not any(n.op in ACTIVATION_OPS or n.op in ("aten::tanh", "aten::erf") for n in region):
            continue  # two products with arithmetic between them, but no activation
        yield make_match("mlp", [*firsts, *region, out], out, gated=gated, input=pg.source(pg.linear_input(firsts[0])),
                         activation=sorted({n.op for n in region if n.op in ACTIVATION_OPS}), fused=False)
    yield from _fused_layers(pg, "mlp")


def _fused_layers(pg: PatternGraph, kind: str):
    for node in pg.ops(FUSED_LAYER_OPS):
        if kind == "mlp":
            yield make_match("mlp", [node], node, gated=False, input=None, activation=[], fused=True)
        else:
            for part in ("attention", "mlp"):
                yield make_match("residual", [node], node, skip=None, branch=None, projection=False, fused=True,
                                 around=part)


def _activation_region(pg: PatternGraph, x: Node):
    """Up from ``x``: the elementwise region between two layers, and the layers it starts from."""
    region, firsts, stack, seen = [], [], [x], set()
    while stack:
        n = stack.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        if len(region) > 48:
            return None, None
        if pg.linear_input(n) is not None:
            firsts.append(n)
            continue
        op = n.op
        if op in VIEW_OPS or op in SPLIT_OPS or op == "genie::getitem":
            region.append(n)
            stack.append(next(_tensor_args(n), None))
        elif op in ACTIVATION_OPS or op in ARITHMETIC_OPS or op in DROPOUT_OPS:
            region.append(n)
            for a in _tensor_args(n):
                if pg.is_constant(a) or pg.is_weight(a):
                    continue  # a bias, a scale
                stack.append(a)
        else:
            return None, None
        if stack and stack[-1] is None:
            return None, None
    if not any(n.op not in VIEW_OPS and n.op not in SPLIT_OPS and n.op != "genie::getitem" for n in region):
        return None, None  # two layers in a row, reshaped between: no activation
    firsts.sort(key=lambda n: n.id)
    return region, firsts


# --------------------------------------------------------------------------------------------
# residual connections


_HEAVY = frozenset(MATMUL_OPERANDS) | CONV_OPS | BATCH_NORM_OPS | frozenset(SOFTMAX_OPS) | frozenset(
    FUSED_ATTENTION_OPS) | {"aten::native_layer_norm", "aten::layer_norm", "aten::native_group_norm",
                            "aten::rsqrt", "aten::_fused_rms_norm"}


@register("residual")
def residual(pg: PatternGraph):
    """x + f(x): an add whose one operand depends on the other through at least one layer."""
    for add in pg.ops(("aten::add", "aten::add_")):
        if len(add.args) < 2:
            continue
        a, b = add.args[0], add.args[1]
        if not (isinstance(a, Node) and isinstance(b, Node)) or pg.is_constant(a) or pg.is_constant(b):
            continue
        if a.spec.shape != b.spec.shape or pg.is_weight(a) or pg.is_weight(b):
            continue
        if add.module_class in RECURRENT_MODULES or add.phase == "backward":
            # a recurrent cell adds its input and state projections; backward adds accumulate
            # the gradients of two paths: neither is a skip connection
            continue
        found = None
        for skip, branch in ((a, b), (b, a)):
            for start, shortcut in _shortcut_chain(pg, skip):
                if start.id < branch.id and _through_layer(pg, start, branch) and not any(
                        pg.is_ancestor(n, branch, limit=512) for n in shortcut):
                    found = (start, shortcut, branch)
                    break
            if found:
                break
        if found:
            start, shortcut, branch = found
            yield make_match("residual", [add, *shortcut], add, skip=start, branch=pg.source(branch),
                             projection=any(n.op not in VIEW_OPS for n in shortcut), fused=False)
    yield from _fused_layers(pg, "residual")


# what a skip connection may do to its value on the way: reshape it, or project it (a strided 1x1
# convolution and batch norm, a linear layer, pooling); never slice it (an RNN's step t adds the
# input projection of step t, sliced from all steps, to a state computed from step t-1's slice)
_SHORTCUT_OPS = CONV_OPS | BATCH_NORM_OPS | frozenset(MATMUL_OPERANDS) | frozenset({
    "aten::avg_pool2d", "aten::avg_pool1d", "aten::max_pool2d", "aten::max_pool2d_with_indices",
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::_to_copy", "aten::clone", "aten::contiguous",
    "aten::alias", "aten::detach", "genie::getitem"})


def _shortcut_chain(pg: PatternGraph, skip: Node):
    """(value, the shortcut ops from it to ``skip``) for ``skip`` and the values a short
    projection chain above it starts from."""
    chain: list = []
    node = skip
    yield node, ()
    for _ in range(6):
        if node.op not in _SHORTCUT_OPS:
            return
        ins = [a for a in _tensor_args(node) if not pg.is_weight(a) and not pg.is_constant(a)]
        if len(ins) != 1:
            return
        chain.append(node)
        node = ins[0]
        yield node, tuple(chain)


def _through_layer(pg: PatternGraph, skip: Node, branch: Node, limit: int = 4096) -> bool:
    """Does ``branch`` depend on ``skip`` through a layer (a product, convolution, norm, attention)?"""
    stack, seen = [(branch, branch.op in _HEAVY)], set()
    while stack and len(seen) < limit:
        n, heavy = stack.pop()
        for d in _tensor_args(n):
            if d is skip:
                if heavy:
                    return True
                continue
            if d.id > skip.id and (id(d), heavy) not in seen:
                seen.add((id(d), heavy))
                stack.append((d, heavy or d.op in _HEAVY))
    return False


# --------------------------------------------------------------------------------------------
# KV caches


@register("kv_cache_update")
def kv_cache_update(pg: PatternGraph):
    """A cache tensor grown (cat along the sequence) or written in place (index_copy_, a slice
    copy) each step: a cat or write whose cache operand was passed in as a KV cache or made by an
    earlier update; in the first step, a cat onto an empty tensor whose result attention reads as
    its keys or values, or that a later step grows again."""
    kv_sources = {}
    for m in pg.matches.get("attention", ()):
        for role in ("k", "v"):
            if m.details.get(role) is not None:
                kv_sources[id(m.details[role])] = (role, m)
    cats = []
    for cat in pg.ops("aten::cat"):
        parts = cat.args[0] if cat.args and isinstance(cat.args[0], (list, tuple)) else ()
        parts = [p for p in parts if isinstance(p, Node)]
        if len(parts) >= 2:
            cats.append((cat, parts))
    regrown = {id(pg.source(p)) for _, parts in cats for p in parts}  # cats that another cat grows
    grown: set = set()  # caches made by the updates found so far (the next step grows them again)
    for cat, parts in cats:
        cached = [p for p in parts if p.residency == "kv_cache" or pg.source(p).residency == "kv_cache"
                  or id(pg.source(p)) in grown]
        empty = [p for p in parts if p.spec.shape.numel() == 0]
        role = kv_sources.get(id(cat))
        if cached or (empty and (role is not None or id(cat) in regrown)):
            grown.add(id(cat))
            yield make_match("kv_cache_update", [cat], cat, cache=(cached or empty)[0],
                             role=role[0] if role else None, grows=True)
    for w in pg.ops(CACHE_WRITE_OPS):
        target = w.args[0] if w.args else None
        if isinstance(target, Node) and (pg.source(target).residency == "kv_cache" or target.residency == "kv_cache"):
            yield make_match("kv_cache_update", [w], w, cache=pg.source(target), role=None, grows=False)


# --------------------------------------------------------------------------------------------
# recurrent layers


@register("recurrent")
def recurrent(pg: PatternGraph):
    """An LSTM, GRU or RNN layer or cell. Module context first: PyTorch decomposes a recurrent
    layer over packed sequences into per-step cell arithmetic, and the module that issued those
    ops says what they are (one match per layer call, in the forward or backward pass); the
    fused recurrent ops are matched by themselves wherever they appear."""
    groups: dict = {}
    for n in pg.nodes:
        ctx = n.ctx
        if ctx is not None and ctx.module_class in RECURRENT_MODULES:
            groups.setdefault(ctx, []).append(n)
    for ctx, nodes in groups.items():
        yield make_match("recurrent", nodes, nodes[0], cell=ctx.module_class, steps=None)
    grouped = {id(n) for nodes in groups.values() for n in nodes}
    for node in pg.ops(RECURRENT_OPS):
        if id(node) in grouped:
            continue
        outs = [u for u in pg.users(node) if u.op == "genie::getitem"]
        yield make_match("recurrent", [node, *outs], node, cell=node.op.split("::")[1])
