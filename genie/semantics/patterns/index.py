"""The view of a captured graph that recognizers work on: nodes indexed by op, their users, and
the few structural questions every recognizer asks (is this operand a weight, is this node a
linear layer, what is this value before its reshapes).

Ops are compared by normalized name (``aten::addmm``), so every overload of an op matches.
"""

from __future__ import annotations

from collections import defaultdict

from ...graph.graph import Graph
from ...graph.node import Node, TensorSpec, iter_inputs

# ops that only re-describe memory (or copy it unchanged): looked through when asking "what value is this"
VIEW_OPS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::transpose", "aten::t", "aten::permute",
    "aten::expand", "aten::clone", "aten::contiguous", "aten::unsqueeze", "aten::squeeze", "aten::alias",
    "aten::detach", "aten::_to_copy", "aten::as_strided", "aten::slice", "aten::select", "aten::flatten",
    "aten::unflatten", "aten::_reshape_alias", "aten::repeat_interleave", "aten::lift_fresh",
    "aten::lift_fresh_copy", "aten::type_as", "aten::movedim", "aten::view_as",
})
# multi-output view ops (their outputs are getitem nodes)
SPLIT_OPS = frozenset({"aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind",
                       "aten::unsafe_split", "aten::unsafe_chunk"})
# the matrix products, with the positions of their two operands
MATMUL_OPERANDS = {
    "aten::mm": (0, 1), "aten::bmm": (0, 1), "aten::matmul": (0, 1), "aten::addmm": (1, 2),
    "aten::baddbmm": (1, 2), "aten::linear": (0, 1), "aten::_grouped_mm": (0, 1), "aten::einsum": None,
}
CONV_OPS = frozenset({"aten::convolution", "aten::_convolution", "aten::conv1d", "aten::conv2d", "aten::conv3d",
                      "aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::conv_transpose2d",
                      "aten::_slow_conv2d_forward", "aten::thnn_conv2d"})
BATCH_NORM_OPS = frozenset({"aten::native_batch_norm", "aten::_native_batch_norm_legit",
                            "aten::_native_batch_norm_legit_no_training", "aten::batch_norm",
                            "aten::cudnn_batch_norm", "aten::_batch_norm_impl_index",
                            "aten::_native_batch_norm_legit_functional"})
ACTIVATION_OPS = frozenset({
    "aten::relu", "aten::relu_", "aten::gelu", "aten::gelu_", "aten::silu", "aten::silu_", "aten::tanh",
    "aten::tanh_", "aten::sigmoid", "aten::sigmoid_", "aten::hardtanh", "aten::hardtanh_", "aten::leaky_relu",
    "aten::leaky_relu_", "aten::elu", "aten::elu_", "aten::hardswish", "aten::hardswish_", "aten::mish",
    "aten::mish_", "aten::hardsigmoid", "aten::softplus", "aten::relu6", "aten::celu", "aten::selu",
    "aten::glu", "aten::prelu", "aten::_prelu_kernel", "aten::erf", "aten::clamp_min", "aten::clamp",
})
# elementwise arithmetic that hand-written activations and gates are made of
ARITHMETIC_OPS = frozenset({
    "aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::sub", "aten::div", "aten::div_", "aten::pow",
    "aten::neg", "aten::exp", "aten::rsqrt", "aten::sqrt", "aten::reciprocal", "aten::square",
})
DROPOUT_OPS = frozenset({"aten::native_dropout", "aten::dropout", "aten::feature_dropout", "aten::bernoulli_",
                         "aten::bernoulli", "aten::empty_like"})


class PatternGraph:
    """A captured graph, indexed for recognition."""

    def __init__(self, graph: Graph):
        from ..context import mark_graph_weights
        self.graph = graph
        self.nodes = graph.nodes
        mark_graph_weights(self.nodes)  # the recognizers tell layers from attention by their weights
        self._users = graph._users
        self.by_op: dict[str, list[Node]] = defaultdict(list)
        for n in self.nodes:
            if n.args or n.value is None:  # a computed node that kept no inputs is only a value now
                self.by_op[n.op].append(n)
        self.matches: dict[str, list] = {}  # matches of the recognizers that ran before, by kind

    def __len__(self) -> int:
        return len(self.nodes)

    def users(self, node: Node) -> list[Node]:
        return self._users.get(id(node), [])

    def ops(self, names) -> list[Node]:
        """Nodes with any of these op names, in capture order."""
        if isinstance(names, str):
            return list(self.by_op.get(names, ()))
        found = [n for name in names for n in self.by_op.get(name, ())]
        found.sort(key=lambda n: n.id)
        return found

    def inputs(self, node: Node) -> list[Node]:
        return [a for a in _tensor_args(node)]

    # -- values through their reshapes

    def source(self, node: Node, trail: list | None = None) -> Node:
        """The value ``node`` re-describes: up through views, copies and casts (and the getitem of
        a split) to the op that computed it. Nodes passed go into ``trail``."""
        seen = 0
        while seen < 64:
            op = node.op
            if op in VIEW_OPS:
                nxt = _first_tensor(node)
            elif op == "genie::getitem" and node.args and isinstance(node.args[0], Node) and \
                    node.args[0].op in SPLIT_OPS:
                if trail is not None:
                    trail.append(node)
                node = node.args[0]
                nxt = _first_tensor(node)
            else:
                return node
            if nxt is None:
                return node
            if trail is not None:
                trail.append(node)
            node = nxt
            seen += 1
        return node

    def sinks(self, node: Node, trail: list | None = None) -> list[Node]:
        """The ops that consume ``node``'s value, down through views, copies and casts; for a value
        outside the backward pass, not the backward ops that read it (what autograd saved)."""
        out, stack, seen = [], [node], set()
        forward = node.phase != "backward"
        while stack:
            n = stack.pop()
            for u in self.users(n):
                if id(u) in seen or (forward and u.phase == "backward"):
                    continue
                seen.add(id(u))
                if u.op in VIEW_OPS and _first_tensor(u) is n or u.op in SPLIT_OPS or (
                        u.op == "genie::getitem" and u.args and u.args[0] is n and n.op in SPLIT_OPS):
                    if trail is not None:
                        trail.append(u)
                    stack.append(u)
                else:
                    out.append(u)
        out.sort(key=lambda x: x.id)
        return out

    def is_weight(self, node: Node) -> bool:
        """A parameter or buffer (marked by the module hooks), or a view of one."""
        trail: list = []
        src = self.source(node, trail)
        return src.residency == "weight" or any(n.residency == "weight" for n in trail)

    def is_constant(self, node) -> bool:
        """A scalar, a host constant, or a value that holds one element (a scale)."""
        if not isinstance(node, Node):
            return True
        spec = node.spec
        return spec.__class__ is TensorSpec and spec.shape.numel() <= 1

    # -- layers

    def matmul_operands(self, node: Node):
        """The two operands of a matrix product (None for other ops)."""
        where = MATMUL_OPERANDS.get(node.op)
        if where is None:
            return None
        args = node.args
        if len(args) <= max(where) or not isinstance(args[where[0]], Node) or not isinstance(args[where[1]], Node):
            return None
        return args[where[0]], args[where[1]]

    def linear_input(self, node: Node) -> Node | None:
        """If ``node`` is a layer's matrix product with a weight (``F.linear``, ``x @ w.T``, an
        ``addmm``, a grouped expert product), the activation it multiplies; else None."""
        ops = self.matmul_operands(node)
        if ops is None:
            return None
        a, b = ops
        if self.is_weight(b) and not self.is_weight(a):
            return a
        if self.is_weight(a) and not self.is_weight(b):
            return b
        return None

    def is_ancestor(self, anc: Node, node: Node, limit: int = 4096) -> bool:
        """Does ``node``'s value depend on ``anc``'s? Ids grow in capture order, so the search
        never leaves the nodes captured after ``anc`` (bounded by ``limit`` visits)."""
        if anc.id >= node.id:
            return anc is node
        stack, seen = [node], set()
        while stack and len(seen) < limit:
            n = stack.pop()
            for d in iter_inputs(n):
                if d is anc:
                    return True
                if d.id > anc.id and id(d) not in seen:
                    seen.add(id(d))
                    stack.append(d)
        return False


def output_index(node: Node):
    """Which output of its parent a ``getitem`` node is (None for other nodes)."""
    if node.op == "genie::getitem" and len(node.args) == 2:
        return node.args[1]
    return None


def _first_tensor(node: Node) -> Node | None:
    for a in node.args:
        if isinstance(a, Node):
            return a
        if isinstance(a, (list, tuple)):
            for x in a:
                if isinstance(x, Node):
                    return x
    return None


def _tensor_args(node: Node):
    for a in node.args:
        if isinstance(a, Node):
            yield a
        elif isinstance(a, (list, tuple)):
            for x in a:
                if isinstance(x, Node):
                    yield x
    for a in node.kwargs.values():
        if isinstance(a, Node):
            yield a
