"""What an op's schema says about aliasing and mutation, computed once per OpOverload.

The capture path asks three questions of every op: which arguments it writes, which outputs
alias an input (views) or are an input (in-place/out= returns), and whether it needs values
(random, data-dependent). The answers come from the schema and aten tags, never from op names.
"""

from __future__ import annotations

import re

import torch

from .. import _torch, config

Tag = torch.Tag


class OpClass:
    __slots__ = ("func", "mutated", "returns", "has_view", "random", "dynamic", "inplace_view", "scalar_out",
                 "writes", "composite", "plain", "special",
                 "simple_inplace", "list_inplace", "single_view", "view_list", "fresh_tuple", "grad_mode", "hot", "captured", "eager", "fallback",
                 "floats")

    def __init__(self, func):
        self.func = func
        # how calls were handled: captured lazily, run at once for their data, fallen back
        self.captured = self.eager = self.fallback = 0
        schema = func._schema
        tags = func.tags
        arg_by_set: dict[str, int] = {}
        self.mutated = []  # (position or name, is_list) for each written argument, in schema order
        for i, arg in enumerate(schema.arguments):
            ai = arg.alias_info
            where = arg.name if arg.kwarg_only else i
            if ai is not None:
                for s in ai.before_set:
                    arg_by_set.setdefault(s, len(self.mutated) if ai.is_write else -1 - i)
                if ai.is_write:
                    self.mutated.append((where, isinstance(arg.type, torch.ListType)))
        self.writes = bool(self.mutated)
        # returns: ("fresh",) | ("alias", mutated_index) | ("view", input_position)
        self.returns = []
        self.scalar_out = False
        texts = _return_texts(schema)
        for k, ret in enumerate(schema.returns):
            ai = ret.alias_info
            sets = _alias_sets(ret, texts[k] if k < len(texts) else "")
            if not sets:
                self.returns.append(("fresh",))
                if not _is_tensorish(ret.type):
                    self.scalar_out = True
            else:
                idx = None
                for s in sets:
                    if s in arg_by_set:
                        idx = arg_by_set[s]
                if idx is None:
                    self.returns.append(("fresh",))
                elif idx >= 0:
                    self.returns.append(("alias", idx))
                else:
                    self.returns.append(("view", -1 - idx))
        if schema.name in _UNANNOTATED_VIEWS:
            self.returns = [("view", 0)]
        self.has_view = any(r[0] == "view" for r in self.returns)
        self.random = Tag.nondeterministic_seeded in tags and schema.name not in NEVER_DRAWS
        self.dynamic = Tag.dynamic_output_shape in tags or Tag.data_dependent_output in tags or self.scalar_out
        self.inplace_view = Tag.inplace_view in tags
        # CompositeImplicitAutograd ops reach a subclass only when autograd is skipped
        # (inference tensors); decompose them as autograd would have.
        self.composite = _torch.has_kernel(func.name(), "CompositeImplicitAutograd") \
            and not execution_has_kernel(func) and not _whole_without_grad(func)
        self.special = None  # a handler of dispatch's special-op table, set by dispatch
        # kernels whose outputs depend on the grad mode they run under (see GRAD_MODE_KERNELS)
        self.grad_mode = schema.name in GRAD_MODE_KERNELS
        # the capture fast path: one fresh output, nothing written, no RNG, no data dependence
        self.plain = not (self.composite or self.dynamic or self.writes or self.has_view or self.random
                          or self.grad_mode) \
            and len(self.returns) == 1 and not self.scalar_out
        # x.t(), x.view(...): one output, a view of the first argument
        self.single_view = self.returns == [("view", 0)] and not (
            self.composite or self.dynamic or self.writes or self.random) and not self.scalar_out \
            and _is_single_tensor(schema.returns[0].type)
        # x.split(2), x.unbind(): a list of views of the first argument
        self.view_list = self.returns == [("view", 0)] and not (
            self.composite or self.dynamic or self.writes or self.random or self.scalar_out or self.grad_mode) \
            and len(schema.returns) == 1 and isinstance(schema.returns[0].type, torch.ListType)
        # native_batch_norm, max_pool2d_with_indices: several fresh tensor outputs, nothing else
        self.fresh_tuple = len(self.returns) > 1 and all(r == ("fresh",) for r in self.returns) and not (
            self.composite or self.dynamic or self.writes or self.random or self.scalar_out or self.grad_mode) \
            and all(_is_single_tensor(r.type) for r in schema.returns)
        # x.add_(y): writes its first argument only and returns it
        self.simple_inplace = self.mutated == [(0, False)] and self.returns == [("alias", 0)] and not (
            self.composite or self.dynamic or self.random or self.inplace_view)
        # _foreach_mul_(xs, 0.9): writes the tensors of its first argument, a list, and returns nothing
        # (an optimizer step's state updates; execution.local gives them a path of their own)
        self.list_inplace = self.mutated == [(0, True)] and not self.returns and not (
            self.composite or self.dynamic or self.random or self.inplace_view or self.grad_mode)
        # taken by dispatch.torch_dispatch's hot path (special ops have handlers of their own)
        self.hot = self.plain or self.single_view or self.view_list or self.fresh_tuple or (self.simple_inplace and not self.grad_mode)
        # whether the signature holds the value of a Python float argument, or only its class
        # (dispatch.float_key). A pointwise op's outputs broadcast its tensors, and a scalar promotes
        # by its kind, never by its value: AdamW's ``denom / bias_correction2_sqrt`` and
        # ``addcdiv_(value=-step_size)`` change their float every step, and keyed by value each step
        # missed the cache (metadata inference, ~0.4 ms a call, and a cache that grows without bound).
        self.floats = not _pointwise(func) or schema.name in FLOAT_CHECKING_POINTWISE


# Tagged nondeterministic_seeded, yet their kernels never draw: the CPU flash-attention kernel
# refuses any dropout (eager raises for dropout_p > 0), so every call it runs leaves the generator
# as it was. Classed random, each attention call was linked into the RNG chain and run through the
# executor's generator swap; classed plain, it is one kernel call in a compiled program, as eager's.
NEVER_DRAWS = frozenset({"aten::_scaled_dot_product_flash_attention_for_cpu"})


def _pointwise(func) -> bool:
    """Pointwise, or a foreach op over a pointwise op (``_foreach_addcdiv_.ScalarList`` applies
    ``addcdiv`` to each tensor of its lists; foreach ops carry no pointwise tag of their own)."""
    if Tag.pointwise in func.tags:
        return True
    name = func._schema.name
    if not name.startswith("aten::_foreach_"):
        return False
    base = name[len("aten::_foreach_"):].rstrip("_")
    packet = getattr(torch.ops.aten, base, None)
    if packet is None or "aten::" + base in FLOAT_CHECKING_POINTWISE:
        return False
    overloads = packet.overloads()
    # the per-tensor overload: a ScalarList gives each tensor one Scalar, a List pairs tensors
    for per_tensor in (_PER_TENSOR.get(func._overloadname, func._overloadname), "default"):
        if per_tensor in overloads:
            return Tag.pointwise in getattr(packet, per_tensor).tags
    return False


_PER_TENSOR = {"ScalarList": "Scalar", "List": "Tensor"}


# Pointwise ops whose kernels compare two float arguments (min against max, lower against upper):
# their verdicts depend on more than each float's class, so their floats stay in the key by value.
FLOAT_CHECKING_POINTWISE = frozenset({"aten::hardtanh", "aten::hardtanh_", "aten::rrelu_with_noise",
                                      "aten::rrelu_with_noise_", "aten::clamp", "aten::clamp_",
                                      "aten::hardtanh_backward", "aten::rrelu_with_noise_backward"})

# Kernels that look at GradMode: mkldnn's RNN layer allocates the workspace its backward needs
# only when grad is enabled. Captured with the grad mode of the call (part of the signature) and
# executed under it; execution otherwise runs with grad off.
GRAD_MODE_KERNELS = frozenset({"aten::mkldnn_rnn_layer"})


# Composites captured as one node when no gradient is needed (capture/device_choice.py says why).
WHOLE_WITHOUT_GRAD = (torch.ops.aten.linear.default, torch.ops.aten.layer_norm.default)


def _whole_without_grad(func) -> bool:
    return func in WHOLE_WITHOUT_GRAD


def execution_has_kernel(func) -> bool:
    """Does the execution device have a backend kernel of its own for this op?"""
    key = "CUDA" if config.execution_device().type == "cuda" else "CPU"
    return _torch.has_kernel(func.name(), key)


# Ops that return a view of their first argument without saying so in their schema.
_UNANNOTATED_VIEWS = frozenset({"aten::_unsafe_view"})


def _alias_sets(ret, text: str) -> set:
    """Alias sets of a return. For ``Tensor(a)[]`` the binding keeps the set on the element
    type, which Python cannot reach, so it is read off the schema text."""
    ai = ret.alias_info
    if ai is not None and ai.before_set:
        return set(ai.before_set)
    m = re.match(r"Tensor\((\w+)!?\)", text.strip())
    return {m.group(1)} if m else set()


def _return_texts(schema) -> list[str]:
    text = str(schema).split(") -> ", 1)[1].strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += 1 if ch in "([" else (-1 if ch in ")]" else 0)
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts]


def _is_single_tensor(t) -> bool:
    return isinstance(t, torch.TensorType)


def _is_tensorish(t) -> bool:
    if isinstance(t, torch.TensorType):
        return True
    if isinstance(t, torch.OptionalType):
        return _is_tensorish(t.getElementType())
    if isinstance(t, torch.ListType):
        return _is_tensorish(t.getElementType())
    return False


# Keyed by id(func): OpOverload hashes in Python (about 0.15 us a lookup, several per captured
# op); the OpClass holds its func, so the id is never reused. OpClass objects hash by identity
# and stand for their op in the capture cache keys for the same reason.
_classes: dict = {}


def reclassify() -> None:
    """Decide again what depends on the execution device (``composite``: whether it has a kernel of
    its own, and the paths that follow from it), keeping each op's counters and special handler."""
    for oc in list(_classes.values()):
        counts, special = (oc.captured, oc.eager, oc.fallback), oc.special
        oc.__init__(oc.func)
        oc.captured, oc.eager, oc.fallback = counts
        if special is not None:
            oc.special, oc.plain, oc.hot = special, False, False


def classify(func) -> OpClass:
    c = _classes.get(id(func))
    if c is None:
        c = _classes[id(func)] = OpClass(func)
    return c


def get_arg(args, kwargs, where, func):
    """The argument at schema position ``where`` (int) or kwarg-only name (str)."""
    if isinstance(where, str):
        return kwargs.get(where)
    if where < len(args):
        return args[where]
    name = func._schema.arguments[where].name
    return kwargs.get(name)
