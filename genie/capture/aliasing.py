"""LazyTensor wrappers and their aliasing: views that share a storage object, storage roots, and
how a write through one alias reaches the others.

Aliasing model. Tensors that share memory share a ``LazyStorage``. Its ``root`` is the node whose
value has the storage's layout (``root_spec``). A write through any alias makes a new root (the
written tensor itself when it covers the storage, else the written copy of the whole storage,
seen flat: see ``_mutate``) and bumps the storage version; other aliases notice the version on
their next use and re-derive their value from the root (``_refresh``). A tensor that nobody
aliases has no LazyStorage at all. A storage's root and the views re-derived from it hold the
memory as stored: lazy conjugate and negative bits are cleared over it and set on each view.
"""

from __future__ import annotations

import torch
from torch.utils._mode_utils import no_dispatch

from .. import _torch
from ..graph.node import _EMPTY, NESTED, Node, TensorSpec, intern_spec

aten = torch.ops.aten
LazyTensor = None  # bound by lazy_tensor.py (import cycle: the class dispatches into dispatch.py)
DEVICES: list = []  # torch.device("remote_accelerator", i) at position i (see dispatch.device_at)


class LazyStorage:
    __slots__ = ("root", "root_spec", "version")

    def __init__(self, root: Node, root_spec: TensorSpec):
        self.root = root
        self.root_spec = root_spec
        self.version = 0


_make_wrapper = torch.Tensor._make_wrapper_subclass
_STRIDED = torch.strided


def new_lazy(spec: TensorSpec, node: Node, storage=None, version=0):
    # positional arguments: (cls, size, strides, storage_offset, memory_format, dtype, layout, device,
    # pin_memory, requires_grad, dispatch_sizes_strides_policy, dispatch_device, dispatch_layout,
    # _extra_dispatch_keys, storage_size); keyword parsing costs measurably on this path
    if spec.layout is _STRIDED:
        t = _make_wrapper(LazyTensor, spec.shape, spec.stride, spec.offset, None, spec.dtype, _STRIDED,
                          DEVICES[spec.index], False, False, None, False, False, None, spec.storage_nbytes)
    else:  # sparse, or nested (NESTED: a strided tensor of the padded shape stands for it)
        layout = _STRIDED if spec.layout is NESTED else spec.layout
        t = _make_wrapper(LazyTensor, spec.shape, None, None, None, spec.dtype, layout, DEVICES[spec.index],
                          False, False, None, False, False, None, None)
    t._node = node
    t._spec = spec
    t._storage = storage
    t._seen = version
    if spec.conj or spec.neg:
        _set_bits(t, spec)
    return t


def _set_bits(t, spec: TensorSpec) -> None:
    if spec.conj:
        _torch.set_conj(t, True)
    if spec.neg:
        _torch.set_neg(t, True)


_set_storage = torch.ops.aten.set_.source_Storage_storage_offset
# set_'s CPU kernel only re-points a TensorImpl at a storage and sets sizes and strides; it is
# the one way to make two wrapper subclasses share a storage object.
_CPU_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _share_storage(t, src, spec: TensorSpec) -> None:
    """Make wrapper ``t`` use ``src``'s storage object, as a view does on a real device: composite
    kernels compare storages (``is_alias_of``) to decide whether an out= view needs copying back."""
    with no_dispatch():
        _set_storage.redispatch(_CPU_KEYS, t, src.untyped_storage(), spec.offset, spec.shape, spec.stride)


_make_subclass = torch.Tensor._make_subclass
_exclude = _torch.ExcludeDispatchKeyGuard
# _DisableTorchDispatch and _AutoDispatchBelowADInplaceOrView together, for this device's tensors,
# in one guard (a view's wrapper is made under it: one guard object instead of two per view)
_DK = torch._C.DispatchKey
_BELOW_VIEW_TRACKING = torch._C.DispatchKeySet(_DK.Python)
for _k in (_DK.PreDispatch, _DK.PythonTLSSnapshot, _DK.ADInplaceOrView, _DK.AutogradPrivateUse1):
    _BELOW_VIEW_TRACKING = _BELOW_VIEW_TRACKING | torch._C.DispatchKeySet(_k)


# Guards below view tracking, made once and entered per view (entering a made guard costs a quarter
# of making one). A guard object holds one exclusion at a time, so each entry takes one from the
# pool (list pop and append are atomic): another thread, or a finalizer the GC runs inside the
# guard, gets a guard of its own.
_view_guards = [_exclude(_BELOW_VIEW_TRACKING)]


def _view_of(src, spec: TensorSpec):
    """A wrapper for a view of ``src`` sharing its storage object (see ``_share_storage``).
    ``_make_subclass`` aliases ``src``'s storage and ``as_strided_`` sets the view's geometry: half
    the cost of a fresh wrapper re-pointed with ``set_``, which only dtype views still need."""
    ss = src._spec
    if spec.dtype is not ss.dtype:
        t = new_lazy(spec, None)  # (with the spec's bits, which set_ leaves as they are)
        _share_storage(t, src, spec)
    else:
        pool = _view_guards
        try:
            guard = pool.pop()
        except IndexError:
            guard = _exclude(_BELOW_VIEW_TRACKING)
        try:
            with guard:  # no Python dispatch, no version-counter bump on src
                t = _make_subclass(LazyTensor, src)
                if spec is not src._spec:  # (detach, alias: the same geometry)
                    t.as_strided_(spec.shape, spec.stride, spec.offset)
        finally:
            pool.append(guard)
        # the alias has src's conjugate and negative bits, which src's spec states
        if spec.conj is not ss.conj:
            _torch.set_conj(t, spec.conj)
        if spec.neg is not ss.neg:
            _torch.set_neg(t, spec.neg)
    return t


def _restride(t, spec: TensorSpec) -> None:
    """Give the wrapper ``t`` new metadata in place (squeeze_, resize_, a resized out=)."""
    if spec.storage_nbytes <= t.untyped_storage().nbytes() and spec.dtype is t._spec.dtype:
        with _exclude(_BELOW_VIEW_TRACKING):
            t.as_strided_(spec.shape, spec.stride, spec.offset)
        t._spec = spec
        return
    _own_storage(t, spec)
    t._spec = spec


def _own_storage(t, spec: TensorSpec) -> None:
    """Give the wrapper ``t`` ``spec``'s metadata over a storage object of its own."""
    shell = new_lazy(spec, None)  # only its TensorImpl is used: t takes over its metadata and storage
    with no_dispatch(), torch.no_grad():
        set_wrapper_data(t, shell)


# torch's ``Tensor.data`` setter (``set_data``): re-points a wrapper's TensorImpl at another's
# storage and metadata, without dispatch. LazyTensor's own ``data`` setter calls it, then
# ``alias_all`` (the LazyTensor's value and storage follow the wrapper's).
set_wrapper_data = torch._C.TensorBase.data.__set__


def alias_all(t, src, bits=None) -> None:
    """``t`` (whose wrapper now has ``src``'s storage and geometry) becomes an alias of ``src``:
    ``t.data = src``, ``t.set_(src)``. They share one LazyStorage from here on, so a write through
    either is seen by the other; aliases of ``t``'s old storage keep theirs, as in eager. ``bits``:
    the lazy (conjugate, negative) bits ``t`` keeps (``set_`` re-points memory, not the key set)."""
    s = src._storage
    if s is not None and src._seen != s.version:
        _refresh(src)
    s = _storage_of(src)
    node, spec = src._node, src._spec
    if bits is not None and bits != (spec.conj, spec.neg):
        raw, raw_spec = _bits_off(node, spec)
        spec = _unflagged(raw_spec, *bits)
        node = _bits_on(raw, spec)
    t._node = node
    t._spec = spec
    t._storage = s
    t._seen = src._seen


def detach_storage(t) -> None:
    """``t`` gets a storage of its own (``set_()``): aliases of its old storage keep that one."""
    if t._storage is not None:
        _own_storage(t, t._spec)
        t._storage = None
        t._seen = 0


def _storage_of(t) -> LazyStorage:
    s = t._storage
    if s is None:
        s = t._storage = LazyStorage(t._node, t._spec)
        t._seen = 0
    return s


def _unflagged(spec: TensorSpec, conj: bool = False, neg: bool = False) -> TensorSpec:
    return intern_spec(spec.shape, spec.stride, spec.offset, spec.dtype, spec.storage_nbytes, conj, neg, spec.layout,
                       spec.index)


def _bits_off(node: Node, spec: TensorSpec) -> tuple[Node, TensorSpec]:
    """``node``'s memory as it is stored: its lazy conjugate and negative bits cleared (``_conj``
    and ``_neg_view`` are views that toggle one). A conjugate view's memory holds the unflipped
    values, so a storage's root and a view re-derived from it must not carry the bits."""
    if spec.conj:
        spec = _unflagged(spec, False, spec.neg)
        node = Node(aten._conj.default, (node,), _EMPTY, spec)
    if spec.neg:
        spec = _unflagged(spec)
        node = Node(aten._neg_view.default, (node,), _EMPTY, spec)
    return node, spec


def _bits_on(node: Node, spec: TensorSpec) -> Node:
    """``node`` (memory laid out as ``spec``, no bits) with ``spec``'s lazy bits set."""
    if spec.neg:
        node = Node(aten._neg_view.default, (node,), _EMPTY, _unflagged(spec, False, True))
    if spec.conj:
        node = Node(aten._conj.default, (node,), _EMPTY, spec)
    return node


def _flat(root: Node, root_spec: TensorSpec, dtype) -> Node:
    """The whole storage behind ``root``'s value as a 1-d tensor of ``dtype``: as many whole
    elements of ``dtype`` as the storage holds (a storage an int8 view grew to 33 bytes holds four
    float64s). Views are re-derived from it with ``as_strided``, which reaches all of the storage."""
    if root_spec.conj or root_spec.neg:
        root, root_spec = _bits_off(root, root_spec)
    nbytes, index = root_spec.storage_nbytes, root_spec.index
    rsize = root_spec.dtype.itemsize
    n = nbytes // rsize
    spec = intern_spec((n,), (1,), 0, root_spec.dtype, nbytes, index=index)
    node = root if (root_spec is spec) else Node(aten.as_strided.default, (root, (n,), (1,), 0), _EMPTY, spec)
    if dtype is not root_spec.dtype:
        dsize = dtype.itemsize
        if dsize > rsize and (n * rsize) % dsize:  # view.dtype needs whole elements of the larger dtype
            n = (n * rsize // dsize) * dsize // rsize
            node = Node(aten.as_strided.default, (node, (n,), (1,), 0), _EMPTY,
                        intern_spec((n,), (1,), 0, root_spec.dtype, nbytes, index=index))
        m = n * rsize // dsize
        node = Node(aten.view.dtype, (node, dtype), _EMPTY, intern_spec((m,), (1,), 0, dtype, nbytes, index=index))
    return node


def _refresh(t) -> None:
    """Re-derive an alias's value from its storage's root after a write through another alias."""
    s = t._storage
    spec = t._spec
    if spec.storage_nbytes < s.root_spec.storage_nbytes:
        # resize_ through another alias grew the memory they share: this alias sees the grown
        # storage too, as eager's views do (and a write through it copies all of it)
        spec = intern_spec(spec.shape, spec.stride, spec.offset, spec.dtype, s.root_spec.storage_nbytes, spec.conj,
                           spec.neg, spec.layout, spec.index)
        _restride(t, spec)
    if spec is s.root_spec:
        t._node = s.root
    else:
        root, root_spec = s.root, s.root_spec
        if root_spec.conj or root_spec.neg:
            root, root_spec = _bits_off(root, root_spec)
        base = root if spec.dtype is root_spec.dtype else _flat(root, root_spec, spec.dtype)
        # the memory as stored, then the view's own bits (see _bits_off)
        stored = _unflagged(spec) if spec.conj or spec.neg else spec
        view = Node(aten.as_strided.default, (base, tuple(spec.shape), spec.stride, spec.offset), _EMPTY, stored)
        t._node = view if stored is spec else _bits_on(view, spec)
    t._seen = s.version


def _mutate(t, node: Node, spec: TensorSpec, inplace_view: bool) -> None:
    """Record that ``node`` is the new value of ``t`` (written by an in-place or out= op)."""
    old = t._spec
    if inplace_view:
        s = _storage_of(t)
        if spec is not old:
            _restride(t, spec)
        t._node = node
        if spec.storage_nbytes > s.root_spec.storage_nbytes:
            # resize_ grew the memory every alias shares: the grown memory, seen flat, is the new
            # root, and the other aliases re-derive from it (see _refresh)
            flat = _flat(node, spec, s.root_spec.dtype)
            s.root, s.root_spec = flat, flat.spec
            s.version += 1
        t._seen = s.version
        return
    if spec is not old:
        _restride(t, spec)
    s = t._storage
    if s is None:
        t._node = node
        return
    if spec.storage_nbytes != old.storage_nbytes:
        # resize_ grew the storage: the written tensor becomes the whole storage
        s.root, s.root_spec = node, spec
    elif old is s.root_spec:
        s.root = node
    else:
        # the written node's value sits in a full copy of the storage (execution.local.clone_exact),
        # so that whole storage, seen flat in the storage's dtype, is the new root
        flat = _flat(node, spec, s.root_spec.dtype)
        s.root, s.root_spec = flat, flat.spec
    s.version += 1
    t._node = node
    t._seen = s.version


def _wrap_out(spec, node, storage, src=None):
    if spec is None:
        return None
    if storage is None:
        return new_lazy(spec, node)
    if src is None:
        return new_lazy(spec, node, storage, storage.version)
    t = _view_of(src, spec)
    t._node = node
    t._spec = spec
    t._storage = storage
    t._seen = storage.version
    return t
