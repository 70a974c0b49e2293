"""Views and in-place ops behave exactly as on a real device."""

import pytest
import torch

import genie

from conftest import DEVICE, host


def both(make):
    e = make()
    return e, e.to(DEVICE)


def assert_same(lazy, eager):
    assert lazy.shape == eager.shape and lazy.stride() == eager.stride() and lazy.dtype == eager.dtype
    torch.testing.assert_close(host(lazy), eager, rtol=0, atol=0)


def test_mutation_through_view_seen_by_base_and_other_views():
    a, la = both(lambda: torch.arange(12.0).reshape(3, 4))
    row, lrow = a[1], la[1]
    col, lcol = a[:, 2], la[:, 2]
    row.add_(100)
    lrow.add_(100)
    assert_same(la, a)
    assert_same(lcol, col)
    col.mul_(-1)
    lcol.mul_(-1)
    assert_same(la, a)
    assert_same(lrow, row)
    a.fill_(3)
    la.fill_(3)
    assert_same(lrow, row)
    assert_same(lcol, col)


def test_view_of_view_and_setitem():
    a, la = both(lambda: torch.zeros(4, 6))
    v, lv = a[1:3, ::2], la[1:3, ::2]
    vv, lvv = v.t()[1:], lv.t()[1:]
    vv.fill_(5)
    lvv.fill_(5)
    a[0] = 7
    la[0] = 7
    a[:, -1] = torch.arange(4.0)
    la[:, -1] = torch.arange(4.0).to(DEVICE)
    assert_same(la, a)
    assert_same(lv, v)
    assert_same(lvv, vv)


def test_reads_before_a_mutation_keep_old_values():
    a, la = both(lambda: torch.ones(3))
    before, lbefore = a * 2, la * 2
    a.add_(1)
    la.add_(1)
    assert_same(lbefore, before)
    assert_same(la, a)


def test_view_and_reshape_alias():
    a, la = both(lambda: torch.arange(6.0))
    v, lv = a.view(2, 3), la.view(2, 3)
    v[1, 1] = -1
    lv[1, 1] = -1
    assert_same(la, a)
    r, lr = a.reshape(3, 2), la.reshape(3, 2)
    r.mul_(2)
    lr.mul_(2)
    assert_same(lv, v)


def test_dtype_view_alias():
    a, la = both(lambda: torch.arange(4, dtype=torch.int32))
    f, lf = a.view(torch.float32), la.view(torch.float32)
    f.zero_()
    lf.zero_()
    assert_same(la, a)
    a[1] = 3
    la[1] = 3
    assert_same(lf, f)


def test_split_unbind_chunk_views():
    a, la = both(lambda: torch.arange(12.0).reshape(4, 3))
    parts, lparts = a.split(2), la.split(2)
    parts[1].add_(10)
    lparts[1].add_(10)
    assert_same(la, a)
    rows, lrows = a.unbind(0), la.unbind(0)
    rows[0].neg_()
    lrows[0].neg_()
    assert_same(la, a)
    assert_same(lparts[0], parts[0])


@pytest.mark.parametrize("op", [
    lambda t: t.squeeze_(1), lambda t: t.unsqueeze_(0), lambda t: t.t_(), lambda t: t.transpose_(0, 2),
    lambda t: t.resize_(2, 3), lambda t: t.resize_(5), lambda t: t.as_strided_((2, 2), (1, 2)),
    lambda t: t.swapdims_(0, 1),
], ids=["squeeze_", "unsqueeze_", "t_", "transpose_", "resize_", "resize_shrink", "as_strided_", "swapdims_"])
def test_shape_changing_inplace_ops(op):
    a, la = both(lambda: torch.arange(6.0).reshape(2, 1, 3))
    try:
        ra = op(a)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            op(la)
        return
    rla = op(la)
    assert rla is la
    assert ra is a
    assert_same(la, a)


def test_t_on_matrix_then_mutate():
    a, la = both(lambda: torch.arange(6.0).reshape(2, 3))
    view, lview = a[0], la[0]
    a.t_()
    la.t_()
    a[1].fill_(9)
    la[1].fill_(9)
    assert_same(la, a)
    assert_same(lview, view)


@pytest.mark.parametrize("made", ["on the device", "uploaded"])
def test_resize_grow_keeps_prefix(made):
    """Also for a tensor copied onto the device, whose memory a server received over the wire."""
    la = torch.arange(4.0, device=DEVICE) if made == "on the device" else torch.arange(4.0).to(DEVICE)
    la.resize_(2, 4)
    assert la.shape == (2, 4)
    assert torch.equal(host(la).flatten()[:4], torch.arange(4.0))


def test_out_variants():
    x = torch.randn(3, 4)
    lx = x.to(DEVICE)
    out, lout = torch.empty(3, 4), torch.empty(3, 4, device=DEVICE)
    r = torch.add(lx, 2, out=lout)
    torch.add(x, 2, out=out)
    assert r is lout
    assert_same(lout, out)
    grow, lgrow = torch.empty(0), torch.empty(0, device=DEVICE)
    torch.mul(x, x, out=grow)
    torch.mul(lx, lx, out=lgrow)
    assert_same(lgrow, grow)
    vals, idx = torch.empty(3), torch.empty(3, dtype=torch.long)
    lvals, lidx = torch.empty(3, device=DEVICE), torch.empty(3, dtype=torch.long, device=DEVICE)
    rv = torch.max(lx, 1, out=(lvals, lidx))
    torch.max(x, 1, out=(vals, idx))
    assert rv[0] is lvals and rv[1] is lidx
    assert_same(lvals, vals)
    assert_same(lidx, idx)


def test_inplace_returns_self_and_keeps_dtype():
    a, la = both(lambda: torch.ones(3, dtype=torch.int64))
    assert la.add_(2) is la
    a.add_(2)
    assert_same(la, a)
    with pytest.raises(RuntimeError, match="aten::add_"):
        la.add_(0.5 * torch.ones(3, device=DEVICE))


def test_index_put_and_scatter():
    a, la = both(lambda: torch.zeros(5))
    idx = torch.tensor([0, 3])
    a[idx] = 2.0
    la[idx.to(DEVICE)] = 2.0
    a.index_put_((torch.tensor([1]),), torch.tensor(4.0), accumulate=True)
    la.index_put_((torch.tensor([1]).to(DEVICE),), torch.tensor(4.0).to(DEVICE), accumulate=True)
    a.scatter_(0, torch.tensor([4]), torch.tensor([9.0]))
    la.scatter_(0, torch.tensor([4]).to(DEVICE), torch.tensor([9.0]).to(DEVICE))
    assert_same(la, a)


def test_detach_shares_storage():
    a, la = both(lambda: torch.ones(3))
    d, ld = a.detach(), la.detach()
    d.mul_(5)
    ld.mul_(5)
    assert_same(la, a)


def test_foreach_inplace():
    xs = [torch.randn(3), torch.randn(2, 2)]
    lxs = [x.to(DEVICE) for x in xs]
    torch._foreach_add_(xs, 1.5)
    torch._foreach_add_(lxs, 1.5)
    torch._foreach_mul_(xs, xs)
    torch._foreach_mul_(lxs, lxs)
    for lx, x in zip(lxs, xs):
        assert_same(lx, x)
    assert genie.capture_stats()["total_fallback"] == 0 or "aten::_foreach_add_" not in genie.capture_stats()["fallback"]


# layouts a written list meets (made on each device): the copy a write goes to is laid out exactly
# as each source was
LIST_LAYOUTS = {
    "contiguous": lambda d: torch.arange(6.0, device=d).reshape(2, 3),
    "transposed": lambda d: torch.arange(6.0, device=d).reshape(2, 3).t(),
    "permuted 3-d": lambda d: torch.arange(24.0, device=d).reshape(2, 3, 4).permute(2, 0, 1),
    "size-1 dims": lambda d: torch.arange(6.0, device=d).reshape(1, 6, 1),
    "size-1 dim, odd stride": lambda d: torch.arange(6.0, device=d).reshape(6, 1).as_strided((6, 1), (1, 5)),
    "offset slice": lambda d: torch.arange(10.0, device=d)[3:7],
    "strided slice": lambda d: torch.arange(10.0, device=d)[::3],
    "empty": lambda d: torch.zeros(0, 3, device=d),
    "scalar": lambda d: torch.tensor(2.5, device=d),
}


def test_list_writes_keep_every_layout_and_value_on_replay():
    """An optimizer-style step (foreach writes over a list, with the list read before and after)
    equals eager for every layout, on its first, compiled and replayed runs, with or without a
    view of each element alive (which keeps the write from reusing the element's buffer)."""
    def step(xs, ys):
        torch._foreach_mul_(xs, 0.5)
        torch._foreach_add_(xs, ys, alpha=2.0)
        torch._foreach_lerp_(xs, ys, 0.25)
        return [x.sum() for x in xs]

    for keep_view in (False, True):
        for _ in range(3):
            xs, lxs = ([make(d) for make in LIST_LAYOUTS.values()] for d in ("cpu", DEVICE))
            ys, lys = ([torch.ones_like(x) / 3 for x in a] for a in (xs, lxs))
            views, lviews = ([x[None] for x in a] if keep_view else [] for a in (xs, lxs))
            for lazy, eager in zip(step(lxs, lys), step(xs, ys)):
                assert_same(lazy, eager)
            for lazy, eager in zip(lxs + lviews, xs + views):
                assert_same(lazy, eager)


def test_partial_overlap_between_input_and_written_tensor_is_rejected_like_eager():
    for dev in ("cpu", DEVICE):
        x = torch.arange(4.0).to(dev)
        with pytest.raises(RuntimeError, match="refer to a single memory location"):
            x.add_(x.narrow(0, 0, 1))
        y = torch.arange(4.0).to(dev)
        z = torch.arange(4.0).to(dev)
        z.narrow(0, 0, 1)  # same spec as above, no aliasing with y: must be accepted
        y.add_(z.narrow(0, 0, 1))
        assert y.cpu().tolist() == [0.0, 1.0, 2.0, 3.0] or dev == DEVICE and host(y).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_internal_overlap_write_is_rejected_like_eager():
    for dev in ("cpu", DEVICE):
        e = torch.zeros(4).to(dev).expand(2, 4)
        with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
            e.mul_(2)
        e.fill_(1.0)  # eager allows fill_ on an expanded tensor
        e[...] = e  # a copy onto the very same data is a no-op
    assert torch.equal(host(e), torch.ones(2, 4))


def test_matrix_rank_out_is_written():
    # PyTorch's composite out= kernel rebinds out for tensor subclasses; genie replaces it
    a = torch.randn(5, 5)
    out = torch.empty((), dtype=torch.int64, device=DEVICE)
    r = torch.linalg.matrix_rank(a.to(DEVICE), out=out)
    assert r is out
    assert host(out).item() == torch.linalg.matrix_rank(a).item()


def test_kernel_layout_differing_from_meta_keeps_values():
    # the CPU kernel lays this broadcast out as (1, 1, 3), the meta kernel as (9, 3, 1): the
    # executor re-lays the value out as reported, element by element (found by the program search)
    res = {}
    for dev in ("cpu", DEVICE):
        x = torch.arange(3.0).reshape(3, 1).to(dev)
        p1 = x.relu()
        x.t_()
        x.unsqueeze_(0)
        res[dev] = (x + p1).cpu()
    assert torch.equal(res[DEVICE], res["cpu"])


def test_repeated_writes_to_a_viewed_tensor_keep_its_views_current():
    # the second and later rounds take the capture hot path (a write to the whole root of a storage
    # that no other argument reads); a write whose argument aliases the target does not
    torch.manual_seed(0)
    x, d = torch.randn(4, 4), torch.rand(4, 4) + 1
    lx, ld = x.to(DEVICE), d.to(DEVICE)
    vt, lvt = x.t(), lx.t()
    for step in range(3):
        x.mul_(0.5).addcdiv_(x, d, value=-0.1 * step)
        lx.mul_(0.5).addcdiv_(lx, ld, value=-0.1 * step)
        x[0].add_(x[1])  # a write to a view, reading its own storage
        lx[0].add_(lx[1])
        assert torch.equal(host(lvt), vt) and torch.equal(host(lx), x)
        assert lx._version == x._version


# foreach writes whose lists hold views of one buffer: each reads views the call writes (eager's
# loop over the list sees earlier elements' writes); before, every element but the last lost its write
_FOREACH_ON_VIEWS = {
    "copy_": lambda b: torch._foreach_copy_([b[0], b[1]], [b[1], b[2]]),
    "add_ columns, one twice": lambda b: torch._foreach_add_([b[:, 0], b[:, 1], b[:, 0]], [b[:, 1], b[:, 2], b[:, 3]]),
    "addcdiv_ ScalarList": lambda b: torch._foreach_addcdiv_([b[0], b[1]], [b[1], b[2]], [b[3] + 1, b[3] + 2],
                                                             [0.5, 0.25]),
    "lerp_ TensorList": lambda b: torch._foreach_lerp_([b[0], b[1]], [b[1], b[0]], 0.3),
    "mul_ over split": lambda b: torch._foreach_mul_(list(b.split(2, 1)), 3.0),
    # distinct tensors, each read at the other's position: the later one reads the earlier one's write
    "add_ swapped": lambda b: torch._foreach_add_([b[0], b[1]], [b[1], b[0]]),
    "copy_ swapped": lambda b: torch._foreach_copy_([b[0], b[1]], [b[1], b[0]]),
    "mul_ each by itself": lambda b: torch._foreach_mul_([b[0], b[1]], [b[0], b[1]]),
}


@pytest.mark.parametrize("case", list(_FOREACH_ON_VIEWS))
def test_foreach_over_views_reading_each_other(case):
    b = torch.arange(24.0).reshape(4, 6) / 5
    lb = b.to(DEVICE)
    _FOREACH_ON_VIEWS[case](b)
    _FOREACH_ON_VIEWS[case](lb)
    assert_same(lb, b)


def test_foreach_over_distinct_tensors_reading_each_other():
    """No memory shared between the written tensors: the second still reads the first one's write."""
    a, la = both(lambda: torch.ones(2))
    b, lb = both(lambda: torch.full((2,), 10.0))
    torch._foreach_add_([a, b], [b, a])
    torch._foreach_add_([la, lb], [lb, la])
    assert_same(la, a)
    assert_same(lb, b)


def test_foreach_write_over_views_from_before_and_after_a_resize():
    """A view made before ``resize_`` grew the storage and one made after, written in one call:
    the copy both write into holds the grown storage."""
    def prog(x):
        v = x[:2]
        x.resize_(8)
        x[4:].zero_()
        torch._foreach_add_([v, x[4:6]], 1.0)
        return v

    x, lx = both(lambda: torch.arange(6.0))
    assert_same(prog(lx), prog(x))
    assert_same(lx, x)


@pytest.mark.parametrize("views", ["rows", "overlapping", "one_row_twice", "one_tensor_twice"])
def test_foreach_writes_into_one_storage_all_land(views):
    """A foreach op over several views of one buffer (rows of a tensor, parameters packed in one
    flat buffer), or over one tensor listed twice, writes every element as eager's loop does, and
    its reads of those views see the elements written before them."""
    make = {
        "rows": lambda b: [b[0], b[1], b[3]],
        "overlapping": lambda b: [b[0:2], b[1:3], b[::2]],
        "one_row_twice": lambda b: [b[1], b[1]],
        "one_tensor_twice": lambda b: [b, b],
    }[views]

    def step(b):
        xs = make(b)
        torch._foreach_mul_(xs, 2.0)
        torch._foreach_addcmul_(xs, xs, list(reversed(xs)), 0.5)
        torch._foreach_add_(xs, 1.0)
        return xs

    for i in range(3):  # the third run replays the compiled program
        b = torch.arange(12.0).reshape(4, 3) / (7 + i)
        lb = b.to(DEVICE)
        for lazy, eager in zip(step(lb), step(b)):
            assert_same(lazy, eager)
        assert_same(lb, b)


# writes through lazy conjugate and negative views, and reads of such views after a write through
# another alias: the views' memory holds unflipped values, so a storage's root and a view re-made
# from it carry no bits (before, 12 of these stored or read the flipped values)
def _complex_ones(b):
    return torch.ones(4, dtype=torch.complex64, device=b.device)


_THROUGH_FLAGGED_VIEWS = {
    "add_ through conj": lambda b: (b.conj().add_(1), b),
    "mul_ through a row of conj": lambda b: (b.conj()[0].mul_(2), b),
    "imag of conj (negative bit)": lambda b: (b.conj().imag.add_(1), b),
    "row of imag of conj": lambda b: (b.conj().imag[0].mul_(3), b),
    "real of conj": lambda b: (b.conj().real.add_(10), b),
    "conj of conj": lambda b: (lambda c: (c.conj().add_(1), c, b))(b.conj()),
    "t of conj": lambda b: (b.conj().t()[1].add_(5), b),
    "copy_ into conj row": lambda b: (b.conj()[0].copy_(_complex_ones(b) * 1j), b),
    "fill_ conj slice": lambda b: (b.conj()[:, 1:3].fill_(1 + 1j), b),
    "index_put_ through conj": lambda b: (b.conj().index_put_((torch.tensor([0, 1], device=b.device),),
                                                              _complex_ones(b) * 2j), b),
    "_neg_view row": lambda b: (torch._neg_view(b)[0].add_(1), b),
    "conj views read after base write": lambda b: (lambda c, ci: (b.mul_(1j), c, ci, c[0]))(b.conj(), b.conj().imag),
    "conj read after foreach over rows": lambda b: (lambda c: (torch._foreach_mul_([b[0], b[1]], [2.0, 3.0]), c, b))(
        b.conj()),
    "writes through base, conj and imag": lambda b: (lambda c: (c.add_(1), c[0].mul_(2), b.add_(1j), c.imag.add_(1),
                                                                b, c))(b.conj()),
}


@pytest.mark.parametrize("case", list(_THROUGH_FLAGGED_VIEWS))
def test_writes_and_reads_through_conjugate_and_negative_views(case):
    def make(device):
        return (torch.arange(8.0, device=device).reshape(2, 4) - 3).to(torch.complex64) * (1 + 2j)

    eager = [t for t in _THROUGH_FLAGGED_VIEWS[case](make("cpu")) if isinstance(t, torch.Tensor)]
    lazy = [t for t in _THROUGH_FLAGGED_VIEWS[case](make(DEVICE)) if isinstance(t, torch.Tensor)]
    for le, e in zip(lazy, eager, strict=True):
        assert le.is_conj() == e.is_conj() and le.is_neg() == e.is_neg()
        assert_same(le, e)


# ``t.data = other`` and ``t.set_(other)`` make ``t`` an alias of all of ``other``; ``t.set_()``
# gives ``t`` a storage of its own. Before, the first two kept ``t``'s old value (with the new
# metadata), and ``set_()`` failed when a view of the old storage was read.
def _data_setter(d):
    x, y = torch.arange(3.0, device=d), torch.arange(3.0, device=d) * 10
    x.data = y
    y.add_(1)
    seen_by_x = x * 1
    x.add_(1)
    return [seen_by_x, x, y]


def _data_setter_new_shape(d):
    x = torch.arange(3.0, device=d)
    x.data = torch.arange(8.0, device=d).view(2, 4).t()
    return [x, x.data * 2]


def _data_setter_old_view(d):
    x = torch.arange(3.0, device=d)
    v = x[1:]
    x.data = torch.zeros(3, device=d)
    v.fill_(5)
    return [x, v]


def _parameter_data(d):
    p = torch.nn.Parameter(torch.ones(2, 3, device=d))
    p.data = torch.full((3, 2), 3.0, device=d)
    p.data.mul_(2)
    return [p.detach()]


def _set_to_tensor(d):
    a = torch.arange(6.0, device=d).view(2, 3).t()
    b = torch.zeros(1, device=d)
    b.set_(a)
    b[0].fill_(9)
    a.mul_(2)
    return [a, b]


def _set_to_a_view(d):
    a = torch.arange(4.0, device=d)
    c = torch.zeros(2, device=d)
    c.set_(a[1:3])
    c.add_(10)
    return [a, c]


def _set_to_empty(d):
    x = torch.arange(6.0, device=d)
    v = x.view(2, 3)
    x.set_()
    x.resize_(3)
    x.fill_(5)
    return [x, v]


def _set_keeps_its_conjugate_bit(d):
    """set_ re-points memory, not the key set: a conjugate view set to a plain tensor stays conjugate."""
    def make():
        return (torch.arange(4.0, device=d) * (1 + 2j)).to(torch.complex64)
    t, u = make().conj(), make()
    src = (make() + 1).conj()
    t.set_(make() + 1)
    u.set_(src)
    u.add_(1j)
    return [t, t[1:], u, src]


_REPOINTED = {f.__name__.lstrip("_"): f for f in (_data_setter, _data_setter_new_shape, _data_setter_old_view,
                                                  _parameter_data, _set_to_tensor, _set_to_a_view, _set_to_empty,
                                                  _set_keeps_its_conjugate_bit)}


@pytest.mark.parametrize("case", list(_REPOINTED))
def test_data_setter_and_set_repoint_a_tensor_as_eager_does(case):
    for _ in range(3):  # the third run replays a compiled program
        eager, lazy = _REPOINTED[case]("cpu"), _REPOINTED[case](DEVICE)
        for le, e in zip(lazy, eager, strict=True):
            assert le.storage_offset() == e.storage_offset()
            assert (le.is_conj(), le.is_neg(), le._version) == (e.is_conj(), e.is_neg(), e._version)
            assert_same(le, e)


def test_set_refuses_what_eager_refuses():
    with pytest.raises(RuntimeError, match="Could not set tensor of type double to a tensor of type float"):
        torch.zeros(3, device=DEVICE).set_(torch.zeros(3, dtype=torch.float64, device=DEVICE))
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
        torch.zeros(3, device=DEVICE, requires_grad=True).set_(torch.zeros(3, device=DEVICE))


# resize_ growing a tensor grows the memory its views share (eager's views see the grown storage):
# before, a write through a view from before the resize, then a read of the base, failed out of bounds
_AFTER_A_GROWING_RESIZE = {
    "write through an older view, read the base": lambda d: (lambda x, v: (x.resize_(10), v.add_(100), [x[:4], v]))(
        *(lambda x: (x, x[1:3]))(torch.arange(4.0, device=d)))[2],
    "fill an older view, zero the new part": lambda d: (lambda x, v: (x.resize_(10), v.fill_(7), x[4:].zero_(),
                                                                       [x, v]))(
        *(lambda x: (x, x[1:3]))(torch.arange(4.0, device=d)))[3],
    "a view with an offset grows its base's storage": lambda d: (lambda b, x: (x.resize_(10), b.add_(1), [b, x[:2]]))(
        *(lambda b: (b, b[2:4]))(torch.arange(8.0, device=d)))[2],
    "grown twice, then written through both": lambda d: (lambda x, v: (x.resize_(10), x.resize_(12), v.mul_(2),
                                                                       x[4:].fill_(1), [x, v]))(
        *(lambda x: (x, x[1:3]))(torch.arange(4.0, device=d)))[4],
    # an int8 view grows a float64 tensor's storage to 33 bytes: four whole float64s and a byte
    "int8 view grows a float64 storage, written past it": lambda d: (lambda x, v: (v.resize_(33), v[32].fill_(7),
                                                                                    [x, v]))(
        *(lambda x: (x, x.view(torch.int8)))(torch.arange(4.0, dtype=torch.float64, device=d)))[2],
    "int8 view grows a float64 storage, base written": lambda d: (lambda x, v: (v.resize_(33), x.add_(1),
                                                                                [x, v[:32]]))(
        *(lambda x: (x, x.view(torch.int8)))(torch.arange(4.0, dtype=torch.float64, device=d)))[2],
}


@pytest.mark.parametrize("case", list(_AFTER_A_GROWING_RESIZE))
def test_views_see_the_storage_a_resize_grew(case):
    for _ in range(3):
        eager, lazy = _AFTER_A_GROWING_RESIZE[case]("cpu"), _AFTER_A_GROWING_RESIZE[case](DEVICE)
        for le, e in zip(lazy, eager, strict=True):
            assert_same(le, e)


def test_version_counter_reads_as_eager():
    """``t._version`` is torch's version counter (genie's own bookkeeping has another name)."""
    for d in ("cpu", DEVICE):
        x = torch.zeros(3, device=d)
        x.add_(1)
        x.add_(1)
        v = x[1:]
        v.mul_(2)
        assert (x._version, v._version) == (3, 3)
