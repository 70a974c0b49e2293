"""The capture path: every aten call on a LazyTensor lands in ``capture``.

Hot path (an op seen before with the same input metadata): one walk over the arguments builds
both the cache key and the node's arguments, one dict lookup finds the output specs, one Node
and one wrapper are made. Everything else (inference, views, mutation, data-dependent ops) is
off that path.

Views, storages and writes through aliases live in ``aliasing``.
"""

from __future__ import annotations

import threading

import torch

from .. import _torch
from .._torch import eager_kernels
from ..execution.scheduler import beyond_device_0, device_count, materialize
from ..graph.node import _EMPTY, Node, TensorSpec, getitem, index_of, keep_structure, on_index, op_name, spec_of
from ..graph.node import scope as node_scope
from ..ops.errors import op_error
from ..ops.schema import _classes, classify, get_arg
from . import hooks, written_memory
from .aliasing import DEVICES, _mutate, _refresh, _storage_of, _wrap_out, new_lazy
from .meta import DataDependent, Inferred, NoMetaKernel, infer
from .rng import DeviceGenerator, chain_for, link_random

_Generator = torch._C.Generator

aten = torch.ops.aten
DEVICE_TYPE = "remote_accelerator"
DEVICE = None  # torch.device("remote_accelerator", 0), set once the backend is registered

LazyTensor = None  # bound by lazy_tensor.py (import cycle: the class dispatches into this module)
_hooks = hooks.semantics  # what semantics plugged in (capture/hooks.py)
_autograd_node = _torch.current_autograd_node
_STRIDED = torch.strided

# ops whose eager CUDA kernels accept CPU tensors beside device tensors
_CPU_TENSOR_OK = {aten.copy_.default, aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                  aten._index_put_impl_.default, aten._to_copy.default}
# copies onto the device take their source from any device (host, or the CUDA execution device)
_ANY_SOURCE = {aten.copy_.default, aten._to_copy.default}

_cache: dict = {}
_CACHE_LIMIT = 1 << 16
_cache_lock = threading.Lock()
class _Verdict:
    """A cached answer other than output specs. Its ``error`` is not None, so the hot paths,
    which only take cache entries with ``error is None``, step aside for it."""
    __slots__ = ("name",)
    error = outs = mutated = "not specs"

    def __init__(self, name: str):
        self.name = name


_FALLBACK = _Verdict("fallback")  # no metadata inference: run eagerly
_DATA_DEPENDENT = _Verdict("data-dependent")  # run this signature eagerly, like nonzero
_DEFAULT_DTYPE = _Verdict("default-dtype")  # outputs follow torch.get_default_dtype(): keyed on it too
FALLTHROUGH = object()  # a special-op handler's answer: "capture this call as usual" (special_ops.py)


def is_remote_device(d) -> bool:
    return d.type == DEVICE_TYPE


def device_at(index: int) -> torch.device:
    """``remote_accelerator:index`` (one object per index: wrappers are made with it)."""
    if index < len(DEVICES):
        return DEVICES[index]
    with _cache_lock:
        while len(DEVICES) <= index:
            # the device's random chain starts before any of its ops is captured (links point back in ids)
            chain_for(len(DEVICES))
            DEVICES.append(torch.device(DEVICE_TYPE, len(DEVICES)))
    return DEVICES[index]


class _Current(threading.local):
    index = 0  # the current device (torch.remote_accelerator.current_device), per thread as CUDA's is


_current = _Current()


def current_index() -> int:
    return _current.index


def set_current_index(index: int) -> None:
    _current.index = index


def check_index(index: int) -> int:
    """``index``, if a device has it (as eager checks a CUDA ordinal)."""
    n = device_count()
    if not 0 <= index < n:
        raise RuntimeError(f"{DEVICE_TYPE}: device index {index} is out of range ({n} device{'s' * (n != 1)}; "
                           "each genie server is one device: see genie.remote)")
    return index


def index_of_device(device) -> int:
    """The index of a ``remote_accelerator`` device argument (the current device when it names none),
    checked against the device count."""
    index = torch.device(device).index
    if index is None:
        return current_index()
    if index:
        check_index(index)
        device_at(index)
        beyond_device_0()
    return index


# --------------------------------------------------------------------------------------------
# argument walk: cache key and node arguments in one pass


def _device_error(func, other, mine=None) -> RuntimeError:
    return RuntimeError(
        f"{op_name(func)}: Expected all tensors to be on the same device, but found at least two devices, "
        f"{mine or DEVICE} and {other}!")


def _placement(func, args, kwargs):
    """(device index of the op's outputs, error or None). Outputs go where a ``remote_accelerator``
    device argument says (``.to("remote_accelerator:1")``, ``zeros_like(x, device=...)``), and the
    tensors then may be anywhere; else where the LazyTensor arguments are, which must agree (a
    copy's source may come from any device). The error names the first operand's device first, as
    eager's does."""
    indices, device = _devices_of(args, kwargs)
    if device is not None:
        return index_of_device(device), None
    if func in _ANY_SOURCE:  # copy_(dst, src): the destination's device; the source may be anywhere
        return (indices[0] if indices else 0), None
    index = indices[0] if indices else 0
    for i in indices:
        if i != index:  # (op_error puts the op's name in front)
            return index, RuntimeError("Expected all tensors to be on the same device, but found at least two "
                                       f"devices, {device_at(index)} and {device_at(i)}!")
    return index, None


def _devices_of(args, kwargs):
    """The device indices of the LazyTensor arguments, in argument order, and the last
    ``remote_accelerator`` device argument (or None)."""
    indices = []
    device = None
    stack = [tuple(kwargs.values()), tuple(args)]  # popped: args first, in order
    while stack:
        for a in stack.pop():
            if isinstance(a, LazyTensor):
                indices.append(a._spec.index)
            elif isinstance(a, (list, tuple)):
                stack.append(tuple(a))
            elif isinstance(a, torch.device) and a.type == DEVICE_TYPE:
                device = a
    return indices, device


def _first_device(args, kwargs) -> torch.device:
    """The device of the first LazyTensor argument (what eager's device errors name first)."""
    indices = _devices_of(args, kwargs)[0]
    return DEVICES[indices[0]] if indices else DEVICE


class _ForeignTensor(RuntimeError):
    """A plain tensor of another device among an op's arguments (re-raised by ``capture`` with the
    LazyTensor arguments' device)."""

    def __init__(self, func, device):
        super().__init__(func, device)
        self.func, self.device = func, device


def _constant(a, func):
    """A plain tensor argument. Eager semantics read it at call time, so snapshot it."""
    if a.layout != torch.strided:
        raise NotImplementedError(f"{op_name(func)}: {a.layout} tensors are not supported on {DEVICE_TYPE} "
                                  "(strided tensors only)")
    if func in _ANY_SOURCE or (a.device.type == "cpu" and (a.dim() == 0 or func in _CPU_TENSOR_OK)):
        return a.detach().clone()
    raise _ForeignTensor(func, a.device)


class _NeedsValues(Exception):
    """Raised by the walk: an argument's value is needed to run this call (a sparse tensor)."""


_FLOAT_NEG, _FLOAT_ZERO, _FLOAT_POS = "float<0", "float=0", "float>0"


def float_key(v: float):
    """A float argument of a pointwise op in its signature (``OpClass.floats`` False): by sign
    when it is small, else by value. Kernels check a float against the dtype it is converted to
    (overflow of half, int8, uint8 for negatives) and some against zero or its sign (``celu``'s
    alpha, ``softshrink``'s lambda); within [-127, 127] none of those verdicts depends on more than
    the sign, so one cache entry (outputs or error) holds for the whole class."""
    if -127.0 <= v <= 127.0:  # (false for nan)
        return _FLOAT_NEG if v < 0 else (_FLOAT_POS if v > 0 else _FLOAT_ZERO)
    return v


def _walk(seq, key, func, floats=True):
    """Node arguments of ``seq``, appending their signature to ``key``; ``floats``: whether a float's
    value is part of the signature (``OpClass.floats``), else only its kind."""
    out = []
    for a in seq:
        c = a.__class__
        if c is LazyTensor or (c is not int and c is not float and isinstance(a, LazyTensor)):
            s = a._storage
            if s is not None and a._seen != s.version:
                _refresh(a)
            if a._spec.layout is not _STRIDED:
                raise _NeedsValues
            key.append(a._spec)
            out.append(a._node)
        elif c is int or c is bool:
            key.append(c)
            key.append(a)
            out.append(a)
        elif c is float:
            key.append(c)
            key.append(a if floats else float_key(a))
            out.append(a)
        elif c is list or c is tuple:
            sub = []
            out.append(tuple(_walk(a, sub, func, floats)))
            key.append(tuple(sub))
        elif isinstance(a, torch.Tensor):
            const = _constant(a, func)
            key.append(("tensor", spec_of(const)))
            out.append(const)
        elif c is _Generator or c is DeviceGenerator:
            key.append(_Generator)  # which generator does not change the metadata (nor hold it in the cache)
            out.append(a)
        else:
            if c is torch.device and a.type == DEVICE_TYPE:
                a = device_at(index_of_device(a))  # "remote_accelerator" means the current device
            key.append(c)
            key.append(a)
            out.append(a)
    return out


# --------------------------------------------------------------------------------------------
# the handler


# argument types the hot path keys as (type, value), exactly as _walk does
_ATOMS = frozenset({int, float, bool, type(None), str, torch.dtype, torch.layout, torch.memory_format})


def torch_dispatch(cls, func, types, args=(), kwargs=None):
    """``LazyTensor.__torch_dispatch__``: the hot path inline, everything else in ``capture``.

    Hot path: an op with one fresh output (``OpClass.plain``), several (``fresh_tuple``: layer and
    batch norm), one view of its first argument (``OpClass.single_view``) or an in-place write of
    its first argument (``simple_inplace``) on tensors nothing aliases; arguments that are current
    LazyTensors, atoms or int lists; keyword arguments that are atoms; and a signature already in
    the cache. The key is the one ``_capture_general`` builds for the same call."""
    if types is not None and len(types) > 1:
        # another tensor subclass takes part (a torch.nested jagged tensor whose values live
        # here): it goes first, and calls back here with its inner LazyTensors
        return NotImplemented
    if _autograd_node() is not None:
        # an op autograd runs in backward: captured in the context of the forward module it came
        # from, by the same paths as any other op, its views without a shared storage object
        backward_context = _hooks.backward_context
        if backward_context is None:
            return _dispatch(func, args, kwargs, False)
        saved = node_scope.ctx
        node_scope.ctx = backward_context()
        try:
            return _dispatch(func, args, kwargs, False)
        finally:
            node_scope.ctx = saved
    return _dispatch(func, args, kwargs)


def _dispatch(func, args, kwargs, share_storage=True):
    """``share_storage``: whether a view made here shares its base's storage object (``_view_of``).
    Views autograd makes in backward feed backward formulas, which never pass them to an out=
    composite (the one reader of storage identity, ``is_alias_of``), and the grads they end in
    are fresh results (AccumulateGrad detaches them); a fresh wrapper costs a third of a shared
    one, and a backward is mostly views (t, view, detach, transpose)."""
    oc = _classes.get(id(func))
    if oc is not None and oc.hot:
        key = [oc]
        nargs = []
        lazies = 0
        stores = None  # with a write: each LazyTensor argument's storage, once one has any
        for a in args:
            c = a.__class__
            if c is LazyTensor:
                s = a._storage
                if s is not None:
                    if a._seen != s.version:
                        break
                    if oc.writes and stores is None:
                        stores = [None] * lazies
                if stores is not None:
                    stores.append(s)
                key.append(a._spec)
                nargs.append(a._node)
                lazies += 1
            elif c in _ATOMS:
                key.append(c)
                key.append(a if c is not float or oc.floats else float_key(a))  # (as _walk keys it)
                nargs.append(a)
            elif c is list or c is tuple:  # int lists: dims, sizes (same key as _walk builds)
                sub = []
                for x in a:
                    if x.__class__ is not int:
                        break
                    sub.append(int)
                    sub.append(x)
                else:
                    key.append(tuple(sub))
                    nargs.append(tuple(a))
                    continue
                break
            else:
                break
        else:
            nkw = _EMPTY
            if kwargs:
                nkw = {}
                for k, v in kwargs.items():
                    c = v.__class__
                    if c not in _ATOMS:
                        return capture(func, args, kwargs)
                    key.append(k)
                    key.append(c)
                    key.append(v if c is not float or oc.floats else float_key(v))
                    nkw[k] = v
            if oc.writes:  # the alias signature, as _alias_signature makes it
                if stores is None:
                    key.append((None,) * lazies)
                else:
                    groups: dict = {}
                    key.append(tuple(None if g is None else groups.setdefault(id(g), len(groups)) for g in stores))
            inf = _cache.get(tuple(key))
            if inf is not None and inf.error is None:
                if oc.writes:
                    t = args[0]
                    spec = inf.mutated[0]
                    if t.__class__ is LazyTensor and spec is t._spec:
                        s = t._storage
                        if s is None:
                            oc.captured += 1
                            t._node = Node(func, tuple(nargs), nkw, spec)  # nothing aliases t: a new value
                            return t
                        if spec is s.root_spec and stores.count(s) == 1:
                            # t is its storage's whole root and no other argument reads that storage
                            # (_build and _mutate do the same, and note no reads of written memory)
                            oc.captured += 1
                            s.root = t._node = Node(func, tuple(nargs), nkw, spec)
                            s.version += 1
                            t._seen = s.version
                            return t
                elif oc.fresh_tuple:  # native_layer_norm, native_batch_norm: as _capture_general builds them
                    oc.captured += 1
                    specs = inf.outs
                    node = Node(func, tuple(nargs), nkw, specs)
                    return tuple(None if s is None else new_lazy(s, Node(getitem, (node, i), _EMPTY, s))
                                 for i, s in enumerate(specs))
                elif oc.view_list:  # split, unbind: getitems of one node, views of the first argument
                    specs = inf.outs[0]
                    if specs.__class__ is tuple:
                        oc.captured += 1
                        node = Node(func, tuple(nargs), nkw, specs)
                        storage = _storage_of(args[0])
                        src = args[0] if share_storage else None
                        return [_wrap_out(s, Node(getitem, (node, i), _EMPTY, s), storage, src)
                                for i, s in enumerate(specs)]
                else:
                    spec = inf.outs[0]
                    if spec.__class__ is TensorSpec:
                        oc.captured += 1
                        node = Node(func, tuple(nargs), nkw, spec)
                        if oc.single_view:
                            return _wrap_out(spec, node, _storage_of(args[0]), args[0] if share_storage else None)
                        return new_lazy(spec, node)
    return capture(func, args, kwargs or _EMPTY)


def capture(func, args, kwargs):
    if _hooks.first_use is not None:
        _hooks.first_use()
    oc = _classes.get(id(func))
    if oc is None:
        oc = classify(func)
    if oc.special is not None:
        result = oc.special(func, args, kwargs)
        if result is not FALLTHROUGH:
            return result
    if oc.composite:
        out = func.decompose(*args, **kwargs)
        if out is not NotImplemented:
            return out
    if oc.dynamic:
        return run_eagerly(func, oc, args, kwargs)
    key = [oc]
    try:
        nargs = tuple(_walk(args, key, func, oc.floats))
        return _capture_general(func, oc, args, kwargs, key, nargs)
    except _NeedsValues:
        return run_eagerly(func, oc, args, kwargs)
    except _ForeignTensor as e:
        raise _device_error(e.func, e.device, _first_device(args, kwargs)) from None


def _capture_general(func, oc, args, kwargs, key, nargs):
    if kwargs:
        nkw = {}
        for k, v in kwargs.items():
            key.append(k)
            nkw[k] = _walk((v,), key, func, oc.floats)[0]
    else:
        nkw = _EMPTY
    if oc.writes:
        # whether arguments share memory decides eager's overlap errors: part of the signature
        key.append(_alias_signature(args, kwargs))
    if oc.grad_mode:
        key.append(torch.is_grad_enabled())
    key = tuple(key)
    inf, default_dtype = _lookup(key, func, oc, args, kwargs)
    if inf is _FALLBACK:
        return run_eagerly(func, oc, args, kwargs, fallback=True)
    if inf is _DATA_DEPENDENT:
        raise _NeedsValues
    if inf.error is not None:
        raise op_error(func, inf.error)
    oc.captured += 1
    if default_dtype is not None:
        # the kernel reads the default dtype when it runs: it runs under the one captured here
        return _build(func, oc, inf, args, kwargs, nargs, nkw, default_dtype=default_dtype)
    if oc.plain:
        outs = inf.outs
        if len(outs) == 1 and outs[0].__class__ is TensorSpec:
            return new_lazy(outs[0], Node(func, nargs, nkw, outs[0]))
    elif oc.fresh_tuple:
        specs = inf.outs
        node = Node(func, nargs, nkw, specs)
        return tuple(None if s is None else new_lazy(s, Node(getitem, (node, i), _EMPTY, s))
                     for i, s in enumerate(specs))
    elif oc.simple_inplace:
        t = args[0]
        spec = inf.mutated[0]
        if t.__class__ is LazyTensor and t._storage is None and spec is t._spec:
            t._node = Node(func, nargs, nkw, spec)  # nothing aliases t: it just gets a new value
            return t
    return _build(func, oc, inf, args, kwargs, nargs, nkw)


def _alias_signature(args, kwargs) -> tuple:
    groups: dict = {}
    sig = []
    stack = [tuple(args), tuple(kwargs.values())]
    while stack:
        for a in stack.pop():
            if isinstance(a, LazyTensor):
                g = a._storage
                sig.append(None if g is None else groups.setdefault(id(g), len(groups)))
            elif isinstance(a, (list, tuple)):
                stack.append(tuple(a))
    return tuple(sig)


def _lookup(key, func, oc, args, kwargs):
    """The cached answer for ``key`` (inferred on a miss), and the default dtype it is keyed on
    when its outputs follow the default dtype (else None)."""
    inf = _cache.get(key)
    if inf is None:
        inf = _infer(key, func, oc, args, kwargs)
    if inf is not _DEFAULT_DTYPE:
        return inf, None
    default_dtype = torch.get_default_dtype()
    dkey = key + (default_dtype,)
    inf = _cache.get(dkey)
    if inf is None:
        inf = _infer(dkey, func, oc, args, kwargs, by_default_dtype=False)
    return inf, default_dtype


def _infer(key, func, oc, args, kwargs, by_default_dtype=True):
    index, error = _placement(func, args, kwargs)
    try:
        inf = Inferred(None, None, error) if error is not None else \
            infer(func, oc, args, kwargs, LazyTensor, is_remote_device)
    except NoMetaKernel:
        inf = _FALLBACK
    except DataDependent:
        inf = _DATA_DEPENDENT
    if index and inf.__class__ is Inferred and inf.error is None:  # inference speaks of device 0
        inf = Inferred(tuple(on_index(s, index) for s in inf.outs),
                       None if inf.mutated is None else tuple(on_index(s, index) for s in inf.mutated))
    with _cache_lock:
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        if by_default_dtype and _follows_default_dtype(inf, args, kwargs):
            # an int tensor divided, a factory without dtype: the signature includes the default dtype
            _cache[key] = _DEFAULT_DTYPE
            _cache[key + (torch.get_default_dtype(),)] = inf
            return _DEFAULT_DTYPE  # what the cache now answers for key (see _lookup)
        _cache[key] = inf
    return inf


def _follows_default_dtype(inf, args, kwargs) -> bool:
    """Could the output dtype come from ``torch.get_default_dtype()``? Only if an output is a
    floating or complex tensor, no input is, and no dtype is given."""
    if inf.__class__ is not Inferred or inf.error is not None or kwargs.get("dtype") is not None:
        return False
    outs = [s for s in _flatten(list(inf.outs) + list(inf.mutated or ())) if s is not None]
    if not any(s.dtype.is_floating_point or s.dtype.is_complex for s in outs):
        return False
    stack = [tuple(args), tuple(kwargs.values())]
    while stack:
        for a in stack.pop():
            if isinstance(a, torch.Tensor):
                if a.dtype.is_floating_point or a.dtype.is_complex:
                    return False
            elif isinstance(a, (list, tuple)):
                stack.append(tuple(a))
    return True


def _flatten(specs):
    flat = []
    for s in specs:
        if isinstance(s, tuple):
            flat.extend(s)
        else:
            flat.append(s)
    return flat


def _build(func, oc, inf, args, kwargs, nargs, nkw, default_dtype=None):
    """The general case: several outputs, views, writes, random ops."""
    targets = []  # (LazyTensor, spec) written by the op, in flattened output order
    places = []  # where each sits: (argument, position in the list or None)
    for (where, is_list), new in zip(oc.mutated, inf.mutated):
        a = get_arg(args, kwargs, where, func)
        items = list(zip(a, new)) if is_list else [(a, new)]
        for k, (t, s) in enumerate(items):
            if t is None:
                continue
            if not isinstance(t, LazyTensor):
                raise _device_error(func, t.device, _first_device(args, kwargs))
            targets.append((t, s))
            places.append((where, k if is_list else None))
    ret_specs = [s for r, s in zip(oc.returns, inf.outs) if r[0] != "alias"]
    flat_specs = [s for _, s in targets] + _flatten(ret_specs)
    single = len(flat_specs) == 1 and not (ret_specs and isinstance(ret_specs[0], tuple))
    node = Node(func, nargs, nkw, flat_specs[0] if single else tuple(flat_specs))
    if targets and not oc.inplace_view:
        for k, v in written_memory.notes(oc, args, kwargs, targets, places).items():
            node.note_runtime(k, v)
    if oc.grad_mode:
        node.note_runtime("grad_enabled", torch.is_grad_enabled())
    if default_dtype is not None:
        node.note_runtime("default_dtype", default_dtype)
    if oc.random:
        link_random(node, index_of(node) or 0, nkw)
    if single:
        out_nodes = [node]
    else:
        out_nodes = [None if s is None else Node(getitem, (node, i), _EMPTY, s) for i, s in enumerate(flat_specs)]
    for (t, s), n in zip(targets, out_nodes):
        _mutate(t, n, s, oc.inplace_view)

    pos = len(targets)
    results = []
    for r, spec in zip(oc.returns, inf.outs):
        kind = r[0]
        if kind == "alias":
            where, _ = oc.mutated[r[1]]
            results.append(get_arg(args, kwargs, where, func))
            continue
        src = None
        if kind == "view":
            src = get_arg(args, kwargs, r[1], func)
            if not isinstance(src, LazyTensor):
                src = None
        storage = _storage_of(src) if src is not None else None
        if isinstance(spec, tuple):
            items = []
            for s in spec:
                items.append(_wrap_out(s, out_nodes[pos], storage, src))
                pos += 1
            results.append(items)
        else:
            results.append(_wrap_out(spec, out_nodes[pos], storage, src))
            pos += 1
    if len(oc.returns) == 0:
        return None
    return results[0] if len(results) == 1 else tuple(results)


# --------------------------------------------------------------------------------------------
# leaving the graph: materialization and eager execution


def value_of(t, local: bool = True) -> torch.Tensor:
    """The real tensor behind a LazyTensor, on the execution device (runs what it needs); with
    ``local`` a value resident on a server is brought to this process."""
    s = t._storage
    if s is not None and t._seen != s.version:
        _refresh(t)
    return materialize(t._node, local)


def _real(a):
    c = a.__class__
    if c is LazyTensor or (isinstance(a, torch.Tensor) and isinstance(a, LazyTensor)):
        return value_of(a)
    if c is list or c is tuple:
        return c(_real(x) for x in a)
    if isinstance(a, torch.device) and a.type == DEVICE_TYPE:
        from .. import config
        return config.execution_device()
    return a


def _clone_exact(v: torch.Tensor) -> torch.Tensor:
    from ..execution.local import clone_exact
    return clone_exact(v, spec_of(v))


def run_eagerly(func, oc, args, kwargs, fallback=False):
    """Run the op now on real values: data-dependent ops (nonzero, item, ...) and ops whose
    output metadata cannot be inferred (``fallback``). The result re-enters the graph as
    materialized nodes."""
    if fallback:
        oc.fallback += 1
    else:
        oc.eager += 1
    index, error = _placement(func, args, kwargs)
    if error is not None:
        raise op_error(func, error)
    rargs = _real(args)
    rkwargs = {k: _real(v) for k, v in kwargs.items()}
    written = []
    for where, is_list in oc.mutated:
        lazy = get_arg(args, kwargs, where, func)
        if lazy is None:
            continue
        items = lazy if is_list else [lazy]
        real = get_arg(rargs, rkwargs, where, func)
        reals = real if is_list else [real]
        clones = []
        for lz, rv in zip(items, reals):
            if isinstance(lz, torch.Tensor) and not isinstance(lz, LazyTensor):
                # an out= tensor on another device, as eager refuses it
                raise _device_error(func, lz.device, _first_device(args, kwargs))
            if isinstance(lz, LazyTensor):
                c = _clone_exact(rv)
                written.append((lz, c))
                clones.append(c)
            else:
                clones.append(rv)
        clones = clones if is_list else clones[0]
        if isinstance(where, str):
            rkwargs[where] = clones
        else:
            rargs = tuple(rargs[:where]) + (clones,) + tuple(rargs[where + 1:])
    try:
        with eager_kernels():
            out = func(*rargs, **rkwargs)
    except Exception as e:
        raise op_error(func, e) from e
    recorded = _recorded_args(args, kwargs) if keep_structure.depth else None
    for lz, c in written:
        _mutate(lz, _eager_node(func, c, recorded, index), on_index(spec_of(c), index), oc.inplace_view)
    if not oc.returns:
        return None
    outs = out if len(oc.returns) > 1 else (out,)
    results = []
    for r, o in zip(oc.returns, outs):
        if r[0] == "alias":
            results.append(get_arg(args, kwargs, oc.mutated[r[1]][0], func))
        elif isinstance(o, torch.Tensor):
            results.append(_materialized(func, o, recorded, index))
        elif isinstance(o, (list, tuple)) and all(isinstance(x, torch.Tensor) for x in o):
            results.append([_materialized(func, x, recorded, index) for x in o])
        else:
            results.append(o)
    return results[0] if len(results) == 1 else tuple(results)


def _materialized(func, value: torch.Tensor, recorded=None, index=0):
    node = _eager_node(func, value, recorded, index)
    return new_lazy(node.spec, node)


def _eager_node(func, value: torch.Tensor, recorded, index=0) -> Node:
    """A node for a value computed eagerly: no inputs (it is an input of what follows), or, while
    the structure is kept for analysis, the inputs it was computed from (never run again: its
    value is kept)."""
    args, kwargs = recorded or ((), _EMPTY)
    return Node(func, args, kwargs, on_index(spec_of(value), index), value=value)


def _recorded_args(args, kwargs):
    def conv(a):
        if isinstance(a, LazyTensor):
            return a._node
        if isinstance(a, (list, tuple)):
            return tuple(conv(x) for x in a)
        return a
    return tuple(conv(a) for a in args), {k: conv(v) for k, v in kwargs.items()}
