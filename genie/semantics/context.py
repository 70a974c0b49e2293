"""Where each captured op comes from: the nn.Module that issued it and the program's phase.

Every ``Node`` records ``graph.node.scope.ctx`` when it is made: a ``Context`` naming the module
(qualified name from the outermost module called, e.g. ``encoder.layers.1.self_attn``, and its
class), the phase (forward, backward, optimizer; prefill or decode in a generative model's
forward) and where the phase came from. Contexts are shared: one per (module call site, phase),
so a node pays one pointer for all of it.

How the context is kept current:
- Modules: every module of a tree moved onto the device (``model.to("remote_accelerator")``), or
  built there (a parameter or buffer made on the device registers its module, and a module
  registered under a tracked one is tracked), gets an instance-level ``forward`` that sets the
  context around the class's forward. Not global module hooks: any global hook moves every module
  call of the process, eager ones included, off ``Module.__call__``'s fast path (about 3 us per
  call here, 5-20% of a small transformer's capture); an instance ``forward`` is a method
  lookup ``Module.__call__`` does anyway, and modules that never touch the device pay nothing.
  ``untrack`` (and a move off the device) removes it; ``deepcopy`` rebinds it to the copy.
  Residency marks (weights) are made when a tree moves onto the device, around optimizer steps,
  and for the modules of a graph when it is analyzed: not per call, which is the hot path.
  ``GENIE_SEMANTICS=0`` turns it all off; ``suspended()`` for a block.
- Backward: autograd runs backward ops with no module on the stack. The forwards record which
  context was current for each range of autograd sequence numbers (every autograd node gets the
  next number when its forward op runs); a backward op asks the engine for the node it is
  executing (``_torch.current_autograd_node``) and takes the module of the range its sequence
  number falls in, with phase backward. This is how torch.fx's tracer links the two passes too
  (``seq_nr`` node meta).
- Optimizer: ``torch.optim``'s global step pre/post hooks (one call per step).
- Generation: an explicit ``with genie.phase("decode")`` wins; else, at the outermost call of a
  model that generates (transformers' ``GenerationMixin``), a KV cache that already holds
  positions means decode and an empty one prefill (source ``call``); the graph heuristic
  (query length 1) is left to ``semantics.analyze`` and says so (source ``heuristic``).
"""

from __future__ import annotations

import bisect
import contextlib
import inspect
import os
import threading
import weakref

import torch
from torch.nn.modules import module as _nn_module
from torch.optim import optimizer as _optimizer

from .. import _torch
from ..capture import hooks
from ..graph.node import scope

PHASES = ("forward", "backward", "optimizer", "prefill", "decode")


class Context:
    """One module call site in one phase; shared by all the nodes captured there."""

    __slots__ = ("module", "module_class", "phase", "phase_source", "_module_ref", "_children", "_backward")

    def __init__(self, module, module_class, phase, phase_source, module_ref=None):
        self.module = module  # qualified name; "" for the outermost module; None outside modules
        self.module_class = module_class
        self.phase = phase
        self.phase_source = phase_source
        self._module_ref = module_ref  # weakref to the module, to name the modules it calls
        self._children: dict = {}  # id(module called from here) -> (weakref, Context)
        self._backward = None

    def child(self, mod: torch.nn.Module) -> Context:
        """The context of ``mod`` called from this one (cached per caller and module)."""
        hit = self._children.get(id(mod))
        if hit is not None and hit[0]() is mod:
            return hit[1]
        key, children = id(mod), self._children

        def forget(r):  # the module is gone: its entry (and the contexts below it) go too
            hit = children.get(key)
            if hit is not None and hit[0] is r:
                del children[key]

        ref = weakref.ref(mod, forget)
        ctx = Context(self._path_of(mod), type(mod).__name__, self.phase, self.phase_source, ref)
        children[key] = (ref, ctx)
        return ctx

    def _path_of(self, mod) -> str:
        """``mod``'s qualified name: its path below the calling module (a direct child, or a
        grandchild through a container such as ``self.layers[0](x)``); a module called from
        outside its caller's tree is named by its class."""
        if self.module is None:
            return ""  # the outermost module: paths are relative to it, as named_modules() gives them
        owner = self._module_ref() if self._module_ref is not None else None
        rel = None
        if owner is not None:
            for name, m in owner.named_modules(remove_duplicate=False):
                if m is mod and name:
                    rel = name
                    break
        rel = rel or type(mod).__name__
        return f"{self.module}.{rel}" if self.module else rel

    def backward(self) -> Context:
        """The same module, in the backward pass."""
        if self._backward is None:
            self._backward = Context(self.module, self.module_class, "backward", "call")
        return self._backward

    def __repr__(self) -> str:
        return f"Context({self.module!r}, {self.module_class}, {self.phase}/{self.phase_source})"


_outer: dict = {}  # (phase, source) -> the context of ops outside any module in that phase


def outer(phase: str, source: str) -> Context:
    ctx = _outer.get((phase, source))
    if ctx is None:
        ctx = _outer.setdefault((phase, source), Context(None, None, phase, source))
    return ctx


_DEFAULT = outer("forward", "default")


# --------------------------------------------------------------------------------------------
# module hooks


class _Frames(threading.local):
    def __init__(self):
        self.stack: list = []  # (module, context to restore)


_frames = _Frames()

# Ranges of autograd sequence numbers and the context current in each. Process-wide, because
# the engine may run backward on a thread of its own; sequence numbers count per thread, so a
# range that would go backwards (a second thread running forwards) is not recorded and that
# thread's backward ops get no module.
_seq_starts: list = []
_seq_ctxs: list = []
_SEQ_LIMIT = 1 << 16  # ranges kept (the oldest half goes when full)
_next_seq = torch.autograd._get_sequence_nr


def _record_range(ctx: Context) -> None:
    seq = _next_seq()
    starts = _seq_starts
    if starts:
        last = starts[-1]
        if last == seq:
            _seq_ctxs[-1] = ctx  # no autograd node was made in the previous range
            return
        if last > seq:
            return
    if len(starts) >= _SEQ_LIMIT:
        del starts[:_SEQ_LIMIT // 2]
        del _seq_ctxs[:_SEQ_LIMIT // 2]
    starts.append(seq)
    _seq_ctxs.append(ctx)


class ContextForward:
    """The instance ``forward`` of a tracked module: its own forward (the class's, or one the user
    set on the instance), run in the module's context. An object, not a bound method, so that it
    reports the wrapped forward's signature (transformers reads ``inspect.signature(model.forward)``
    to decide which inputs to build), pickles as "the context forward of this module", and is
    rebound when ``copy.copy``/``deepcopy``/unpickling makes a new module from an old one's state
    (``Module.__setstate__`` is wrapped for that, beside ``Module._apply`` in module_conversion).

    To whatever inspects or compiles a forward (``torch.export``, ``torch.jit.script``, Dynamo,
    ``inspect``) it is the user's forward: its ``__class__`` is the wrapped forward's (a bound
    method's ``types.MethodType``, so ``inspect.ismethod`` holds), and every attribute it lacks
    (``__func__``, ``__self__``, ``__code__``, ``__globals__``, ``__name__``, ...) is the wrapped
    forward's. Those tools then read and compile the user's code; a plain call still runs here,
    in module context. Genie tells its own wrapper apart with ``type(f)``, never ``__class__``."""

    __slots__ = ("module", "__weakref__")

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        mod = self.module
        parent = scope.ctx
        if parent is None or parent.module is None:
            ctx = _outermost(mod, parent, kwargs)
        else:
            hit = parent._children.get(id(mod))
            ctx = hit[1] if hit is not None and hit[0]() is mod else parent.child(mod)
        scope.ctx = ctx
        grad = _grad_enabled()
        if grad:
            _record_range(ctx)
        try:
            own = mod.__dict__.get("_genie_forward")
            if own is not None:
                return own(*args, **kwargs)
            cls = type(mod)
            static = _static_forward.get(cls)
            if static is None:
                static = _static_forward[cls] = isinstance(_class_forward(cls), staticmethod)
            if static:
                return cls.forward(*args, **kwargs)
            return cls.forward(mod, *args, **kwargs)  # looked up per call: a patched class forward counts
        finally:
            scope.ctx = parent
            if grad:
                _record_range(parent if parent is not None else _DEFAULT)

    @property
    def __signature__(self):
        return inspect.signature(_inner_forward(self.module))

    @property
    def __class__(self):
        return type(_inner_forward(self.module))

    @property
    def __doc__(self):
        return _inner_forward(self.module).__doc__

    def __getattr__(self, name):
        if name == "module":  # the slot is not set yet (a copy or an unpickling in progress)
            raise AttributeError(name)
        return getattr(_inner_forward(self.module), name)

    @property
    def __wrapped__(self):
        return _inner_forward(self.module)

    def __reduce__(self):
        return ContextForward, (self.module,)

    def __repr__(self) -> str:
        return f"<genie module-context forward of {type(self.module).__name__}>"


def _inner_forward(mod):
    """The forward the module would run untracked: an instance forward the user set, else the
    class's (looked up on each call, so a patched class forward is honoured; a staticmethod or
    any other descriptor binds as Python binds it)."""
    own = mod.__dict__.get("_genie_forward")
    if own is not None:
        return own
    return _class_forward(type(mod)).__get__(mod, type(mod))


_static_forward: dict = {}  # class -> is its forward a staticmethod (decided once per class)


def _class_forward(cls):
    for klass in cls.__mro__:
        raw = klass.__dict__.get("forward")
        if raw is not None:
            return raw
    raise AttributeError(f"{cls.__name__} has no forward")


def _outermost(mod, parent, kwargs) -> Context:
    outer_ctx = parent if parent is not None else _DEFAULT
    if outer_ctx.phase == "optimizer":
        outer_ctx = _DEFAULT  # a forward inside an optimizer step (LBFGS's closure) is a forward
    if outer_ctx.phase_source == "default" and _generates(mod):
        outer_ctx = _generation_outer(mod, kwargs) or outer_ctx
    if kwargs:
        _mark_kv_cache(kwargs)
    return outer_ctx.child(mod)


_grad_enabled = torch.is_grad_enabled
_tracked = weakref.WeakSet()  # modules given the instance forward by track() (copies are not listed)


def tracked(mod: torch.nn.Module) -> bool:
    """Does ``mod`` run in module context (it has the context forward, bound to itself)?"""
    f = mod.__dict__.get("forward")
    return type(f) is ContextForward and f.module is mod


def track(mod: torch.nn.Module) -> None:
    """Give ``mod`` and every module below it the context-setting instance ``forward``."""
    if not _enabled:
        return
    for m in mod.modules():
        if tracked(m):
            continue
        own = m.__dict__.get("forward")
        if own is not None and type(own) is not ContextForward:  # the user's: called inside ours
            m.__dict__["_genie_forward"] = own
        m.__dict__["forward"] = ContextForward(m)
        _tracked.add(m)


def untrack(mod: torch.nn.Module) -> None:
    """Remove the instance ``forward`` from ``mod`` and the modules below it."""
    for m in mod.modules():
        f = m.__dict__.get("forward")
        if type(f) is ContextForward:
            own = m.__dict__.pop("_genie_forward", None)
            if own is not None:
                m.__dict__["forward"] = own
            else:
                del m.__dict__["forward"]
        _tracked.discard(m)


def rebind(mod) -> None:
    """After ``Module.__setstate__``: a context forward copied from another module's state
    (``copy.copy``, ``Module._replicate_for_data_parallel``) is made this module's own."""
    f = mod.__dict__.get("forward")
    if type(f) is ContextForward and f.module is not mod:
        mod.__dict__["forward"] = ContextForward(mod)


def _holds_device_tensors(mod) -> bool:
    for table in (mod._parameters, mod._buffers):
        for t in table.values():
            if t is not None and getattr(t, "_node", None) is not None:
                return True
    return False


def _on_tensor_registered(mod, name, tensor):
    """A parameter or buffer registered on a module (construction on the device)."""
    if tensor is not None and getattr(tensor, "_node", None) is not None and not tracked(mod):
        track(mod)
        _mark(tensor, "weight")
    return None


def _on_module_registered(mod, name, sub):
    """A submodule registered: below a tracked module, or holding device tensors, it is tracked
    (and so is the module it joins, when the submodule is on the device)."""
    if sub is None:
        return None
    if tracked(mod):
        track(sub)
    elif tracked(sub) or any(_holds_device_tensors(m) for m in sub.modules()):
        track(mod)
    return None


def backward_context() -> Context | None:
    """The context of the backward op being captured now (None outside the autograd engine)."""
    node = _torch.current_autograd_node()
    if node is None:
        return None
    seq = node._sequence_nr()
    i = bisect.bisect_right(_seq_starts, seq) - 1
    if i < 0 or seq >= (1 << 63):  # AccumulateGrad has no forward op; or older than the ranges kept
        return outer("backward", "call")
    return _seq_ctxs[i].backward()


# --------------------------------------------------------------------------------------------
# generation phase and residency marks at the outermost call


_CACHE_ARGS = ("past_key_values", "past_key_value", "layer_past", "kv_cache", "cache")


_generating_classes: dict = {}


def _generates(mod) -> bool:
    """Is this a model that generates (transformers' GenerationMixin)? Per class: ``hasattr`` on
    a module costs an exception when the answer is no."""
    cls = type(mod)
    known = _generating_classes.get(cls)
    if known is None:
        known = _generating_classes[cls] = hasattr(cls, "prepare_inputs_for_generation")
    return known


def module_moved(mod) -> None:
    """A module tree moved onto the device (or off it): its parameters and buffers are weights
    (also the ones a fused kernel reads without calling their module), and it is tracked; moved
    off the device, it is not any more."""
    if any(_holds_device_tensors(m) for m in mod.modules()):
        for m in mod.modules():
            _mark_weights(m)
        track(mod)
    else:
        untrack(mod)


def _generation_outer(mod, kwargs) -> Context | None:
    """prefill or decode, from the call of a model that generates: a KV cache that already holds
    positions means decode; a forward without one is prefill when it runs without autograd
    (generation does), else a training forward."""
    cache = next((kwargs[k] for k in _CACHE_ARGS if kwargs.get(k) is not None), None)
    filled = cache is not None and _cache_length(cache) > 0
    if not filled and (mod.training or torch.is_grad_enabled() or kwargs.get("use_cache") is False):
        return None
    return outer("decode" if filled else "prefill", "call")


def _cache_length(cache) -> int:
    get = getattr(cache, "get_seq_length", None)
    if get is not None:
        try:
            return int(get())
        except Exception:  # a cache class with another contract: no inference from it
            return 0
    for t in _cache_tensors(cache):
        return t.shape[-2] if t.dim() >= 2 else t.numel()
    return 0


def _cache_tensors(obj, depth=0):
    """The tensors held by a KV cache argument: transformers' Cache objects (layers of keys and
    values, encoder-decoder pairs of caches) or nested tuples of tensors."""
    if depth > 4 or obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _cache_tensors(x, depth + 1)
    else:
        for name in ("self_attention_cache", "cross_attention_cache"):
            sub = getattr(obj, name, None)
            if sub is not None:
                yield from _cache_tensors(sub, depth + 1)
        layers = getattr(obj, "layers", None)
        for layer in layers if isinstance(layers, (list, tuple)) else ():
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    yield t


def _mark(t, kind: str) -> None:
    node = getattr(t, "_node", None)  # LazyTensors only
    if node is not None:
        notes = node.notes
        if notes is None:
            node.notes = {"residency": kind}
        elif notes.get("residency") is None:
            notes["residency"] = kind


def _mark_kv_cache(kwargs) -> None:
    for name in _CACHE_ARGS:
        cache = kwargs.get(name)
        if cache is not None:
            for t in _cache_tensors(cache):
                _mark(t, "kv_cache")


def _mark_weights(mod) -> None:
    """The current values of ``mod``'s own parameters and buffers are weights. Done when a tree
    moves onto the device, around each optimizer step, and for the modules of a graph when it is
    analyzed (``mark_graph_weights``), not on every module call: the call is the hot path."""
    for table in (mod._parameters, mod._buffers):
        for t in table.values():
            try:
                notes = t._node.notes
            except AttributeError:  # None, or a tensor that is not on the device
                continue
            if notes is None:
                t._node.notes = {"residency": "weight"}
            elif "residency" not in notes:
                notes["residency"] = "weight"


def mark_graph_weights(nodes) -> None:
    """Mark the current parameters and buffers of every module that issued one of ``nodes``
    (a value written since the last mark, such as batch norm statistics, becomes a weight too)."""
    seen = set()
    for n in nodes:
        ctx = n.ctx
        if ctx is not None and ctx._module_ref is not None and id(ctx) not in seen:
            seen.add(id(ctx))
            mod = ctx._module_ref()
            if mod is not None:
                _mark_weights(mod)


# --------------------------------------------------------------------------------------------
# optimizer hooks


_optimizer_ctx: dict = {}  # optimizer class name -> its step's context (no module; the class named)


def _opt_pre(opt, args, kwargs):
    for group in opt.param_groups:
        for p in group["params"]:
            _mark(p, "weight")  # the value the forward read, before the step replaces it
            if p.grad is not None:
                _mark(p.grad, "gradient")
    stack = _frames.stack
    while stack and isinstance(stack[-1][0], torch.optim.Optimizer):
        scope.ctx = stack.pop()[1]  # steps do not nest: a step that raised left its frame (no post hook)
    before = scope.ctx
    stack.append((opt, before))
    name = type(opt).__name__
    ctx = _optimizer_ctx.get(name)
    if ctx is None:
        ctx = _optimizer_ctx.setdefault(name, Context(None, name, "optimizer", "call"))
    scope.ctx = ctx
    # a closure (LBFGS) recomputes the loss: a forward and a backward, not optimizer work
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0] is the optimizer
    if callable(closure):
        def in_caller_context():
            inside = scope.ctx
            scope.ctx = before
            try:
                return closure()
            finally:
                scope.ctx = inside
        if "closure" in kwargs:
            kwargs = {**kwargs, "closure": in_caller_context}
        else:
            args = (args[0], in_caller_context, *args[2:])
        return args, kwargs
    return None


def _opt_post(opt, args, kwargs):
    stack = _frames.stack
    if stack and stack[-1][0] is opt:
        scope.ctx = stack.pop()[1]
    for group in opt.param_groups:
        for p in group["params"]:
            _mark(p, "weight")
            for t in opt.state.get(p, {}).values():
                if isinstance(t, torch.Tensor):
                    _mark(t, "optimizer_state")


# --------------------------------------------------------------------------------------------
# the explicit API


@contextlib.contextmanager
def phase(name: str):
    """``with genie.phase("decode"):`` -- every op captured in the block (and in the modules it
    calls) has this phase, source ``explicit``; it wins over anything inferred."""
    if name not in PHASES:
        raise ValueError(f"genie.phase: unknown phase {name!r}; one of {', '.join(PHASES)}")
    saved = scope.ctx
    scope.ctx = outer(name, "explicit")
    try:
        yield
    finally:
        scope.ctx = saved


@contextlib.contextmanager
def keep_structure():
    """``with genie.keep_structure():`` -- values computed in the block keep the graph that made
    them, so ``genie.analyze`` sees whole programs even when they read values midway (an MoE
    router, ``.item()`` in a loop). Costs the memory of the values upstream while it lasts."""
    from ..graph.node import keep_structure as flag
    with _lock:
        flag.depth += 1
    try:
        yield
    finally:
        with _lock:
            flag.depth -= 1


# --------------------------------------------------------------------------------------------
# installation


_handles: list = []
_lock = threading.Lock()
_enabled = os.environ.get("GENIE_SEMANTICS", "1") != "0"


def install() -> None:
    """Install the process-wide parts (idempotent): the backward and optimizer links and the
    registration hooks that track modules built on the device. Called on the first capture."""
    hooks.semantics.first_use = None
    if not _enabled or _handles:
        return
    with _lock:
        if _handles:
            return
        _handles.append(_optimizer.register_optimizer_step_pre_hook(_opt_pre))
        _handles.append(_optimizer.register_optimizer_step_post_hook(_opt_post))
        _handles.append(_nn_module.register_module_parameter_registration_hook(_on_tensor_registered))
        _handles.append(_nn_module.register_module_buffer_registration_hook(_on_tensor_registered))
        _handles.append(_nn_module.register_module_module_registration_hook(_on_module_registered))
        hooks.semantics.connect(backward_context=backward_context, module_moved=module_moved,
                                module_restored=rebind)


def uninstall() -> None:
    with _lock:
        for h in _handles:
            h.remove()
        _handles.clear()
        hooks.semantics.disconnect()


def installed() -> bool:
    return bool(_handles)


@contextlib.contextmanager
def suspended():
    """No semantic context for a block: tracked modules run their class's forward directly, no
    backward or optimizer phase is recorded. (Benchmarks time capture with and without it.)"""
    global _enabled
    was_installed, was_enabled = installed(), _enabled
    saved = list(_tracked)
    for m in saved:
        untrack(m)
    uninstall()
    _enabled = False
    try:
        yield
    finally:
        _enabled = was_enabled
        if was_installed:
            install()
        for m in saved:
            track(m)
