"""What real model code meets beyond single ops: shared parameters, kernels chosen by device type,
host-side arguments, meta kernels stricter than the kernel, in-place writes reading their own
memory. Every value is checked against eager on the host."""

import copy
import io

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import genie

from conftest import DEVICE, host


def _same(a, b):
    assert type(host(a)) is torch.Tensor
    assert torch.equal(host(a), b), (host(a) - b).abs().max()


# -- 1. shared parameters ------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.full((6,), 0.5))
        self.inner = nn.Module()
        self.inner.register_buffer("scale", self.scale)

    def forward(self, ids):
        return self.head(torch.tanh(self.mix(self.embed(ids)) * self.inner.scale))


def _assert_tied(m):
    assert m.head.weight is m.embed.weight
    assert isinstance(m.head.weight, nn.Parameter)
    assert m.inner.scale is m.scale
    assert len(list(m.parameters())) == 3


def test_to_keeps_shared_parameters_and_buffers():
    m = Tied().to(DEVICE)
    _assert_tied(m)
    assert m.head.weight.device.type == DEVICE


@pytest.mark.parametrize("convert", ["double", "half", "float"])
def test_apply_conversions_on_the_device_keep_sharing(convert):
    m = Tied().to(DEVICE)
    getattr(m, convert)()
    _assert_tied(m)
    assert m.head.weight.dtype == getattr(torch, convert)


def test_swap_path_moves_and_keeps_sharing():
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m = Tied().to(DEVICE)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    _assert_tied(m)


def test_deepcopy_save_load_and_load_state_dict_keep_sharing():
    m = Tied().to(DEVICE)
    _assert_tied(copy.deepcopy(m))
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    _assert_tied(loaded)
    ref = Tied()
    m.load_state_dict(ref.state_dict())
    _assert_tied(m)
    _same(m.embed.weight, ref.embed.weight)


def test_host_conversions_are_left_as_eager_makes_them():
    m = Tied().double()  # CPU to CPU: PyTorch's own behaviour, buffers untied by _apply
    assert m.head.weight is m.embed.weight
    assert m.inner.scale is not m.scale


def test_tied_model_trains_like_eager():
    torch.manual_seed(0)
    eager = Tied()
    lazy = copy.deepcopy(eager).to(DEVICE)
    ids = torch.tensor([[1, 2, 3], [4, 5, 10]])
    opts = [torch.optim.AdamW(m.parameters(), lr=0.05) for m in (eager, lazy)]
    for _ in range(4):
        for m, opt, x in ((eager, opts[0], ids), (lazy, opts[1], ids.to(DEVICE))):
            opt.zero_grad()
            F.cross_entropy(m(x).flatten(0, 1), x.flatten()).backward()
            opt.step()
        _same(lazy.embed.weight.grad, eager.embed.weight.grad)
        for (_, p), (_, q) in zip(eager.named_parameters(), lazy.named_parameters()):
            _same(q, p)


@pytest.mark.parametrize("foreach", [True, False])
def test_parameters_packed_in_one_flat_buffer_train_like_eager(foreach):
    """Parameters that are views of one flat buffer (as flat-parameter and contiguous-gradient
    schemes make them): the optimizer writes each through its view, and every write lands in the
    buffer, with the foreach kernels (one call over all of them) and without."""
    def train(device):
        flat = (torch.arange(20.0) / 10).to(device)
        params = [nn.Parameter(flat[0:8].view(2, 4)), nn.Parameter(flat[8:20].view(3, 4))]
        opt = torch.optim.AdamW(params, lr=0.1, foreach=foreach)
        for _ in range(3):
            opt.zero_grad()
            (params[0].sum() * 2 + (params[1] ** 2).sum()).backward()
            opt.step()
        return params, flat

    (p_e, flat_e), (p_l, flat_l) = train("cpu"), train(DEVICE)
    for q, p in zip(p_l, p_e):
        _same(q.detach(), p.detach())
    _same(flat_l, flat_e)


# -- 2. kernels chosen by device type --------------------------------------------------------------


def test_sdpa_runs_the_execution_devices_fused_kernel():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 12, 8, requires_grad=True) for _ in range(3))
    lq, lk, lv = (t.detach().to(DEVICE).requires_grad_() for t in (q, k, v))
    e = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    a = F.scaled_dot_product_attention(lq, lk, lv, is_causal=True)
    assert "aten::_scaled_dot_product_flash_attention_for_cpu" in [n.op for n in genie.graph_of(a)]
    _same(a.detach(), e.detach())  # bit-identical: the same kernel ran
    g = torch.randn_like(e)
    e.backward(g)
    a.backward(g.to(DEVICE))
    for x, y in ((lq, q), (lk, k), (lv, v)):
        _same(x.grad, y.grad)


def test_sdpa_with_mask_and_gqa_matches_eager():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    mask = torch.rand(2, 1, 6, 6) > 0.3
    mask[..., 0] = True
    e = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    a = F.scaled_dot_product_attention(*(t.to(DEVICE) for t in (q, k, v)), attn_mask=mask.to(DEVICE), enable_gqa=True)
    _same(a, e)


@pytest.mark.parametrize("make", [
    lambda: nn.LSTM(4, 6, num_layers=2, bidirectional=True),
    lambda: nn.LSTM(4, 6, proj_size=3, batch_first=True),
    lambda: nn.GRU(4, 6, num_layers=2),
    lambda: nn.RNN(4, 6, nonlinearity="relu"),
], ids=["lstm-bidirectional", "lstm-proj", "gru", "rnn-relu"])
def test_rnns_match_eager_forward_and_backward(make):
    torch.manual_seed(0)
    eager = make()
    lazy = copy.deepcopy(eager).to(DEVICE)
    x = torch.randn(5, 3, 4)
    e_out, _ = eager(x)
    a_out, _ = lazy(x.to(DEVICE))
    _same(a_out.detach(), e_out.detach())
    e_out.square().sum().backward()
    a_out.square().sum().backward()
    for p, q in zip(eager.parameters(), lazy.parameters()):
        _same(q.grad, p.grad)
    with torch.no_grad():
        _same(lazy(x.to(DEVICE))[0], eager(x)[0])


@pytest.mark.parametrize("cell_cls", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_rnn_cells_match_eager(cell_cls):
    torch.manual_seed(0)
    eager = cell_cls(4, 6)
    lazy = copy.deepcopy(eager).to(DEVICE)
    x = torch.randn(3, 4)
    e, a = eager(x), lazy(x.to(DEVICE))
    e = e[0] if isinstance(e, tuple) else e
    a = a[0] if isinstance(a, tuple) else a
    _same(a.detach(), e.detach())


def test_backend_kernel_wins_over_the_decomposition():
    # silu_backward has a CPU kernel and a CompositeImplicitAutograd decomposition: eager CPU runs the kernel
    torch.manual_seed(0)
    x, g = torch.randn(7, 5), torch.randn(7, 5)
    a = torch.ops.aten.silu_backward(g.to(DEVICE), x.to(DEVICE))
    assert [n.op for n in genie.graph_of(a)][-1] == "aten::silu_backward"
    _same(a, torch.ops.aten.silu_backward(g, x))


# -- 3. host-side arguments --------------------------------------------------------------------------


def test_pack_padded_sequence_takes_host_lengths_like_eager_cuda():
    torch.manual_seed(0)
    x, lengths = torch.randn(4, 3, 5), torch.tensor([4, 2, 1])
    eager = nn.LSTM(5, 6, bidirectional=True)
    lazy = copy.deepcopy(eager).to(DEVICE)
    xl = x.to(DEVICE).requires_grad_()
    xe = x.clone().requires_grad_()
    packed = pack_padded_sequence(xl, lengths, enforce_sorted=False)
    assert packed.data.device.type == DEVICE and packed.batch_sizes.device.type == "cpu"
    out, (h, _) = lazy(packed)
    e_out, (e_h, _) = eager(pack_padded_sequence(xe, lengths, enforce_sorted=False))
    padded, out_lengths = pad_packed_sequence(out)
    e_padded, _ = pad_packed_sequence(e_out)
    assert type(out_lengths) is torch.Tensor and out_lengths.tolist() == [4, 2, 1]
    _same(padded.detach(), e_padded.detach())
    (padded.sum() + h.sum()).backward()
    (e_padded.sum() + e_h.sum()).backward()
    _same(xl.grad, xe.grad)


def test_lengths_on_the_device_are_refused_as_eager_cuda_refuses_them():
    with pytest.raises(RuntimeError, match="'lengths' argument should be a 1D CPU int64 tensor"):
        pack_padded_sequence(torch.randn(4, 3, 5, device=DEVICE), torch.tensor([4, 2, 1], device=DEVICE))


def test_other_ops_still_refuse_host_tensors():
    with pytest.raises(RuntimeError, match="same device"):
        torch.add(torch.ones(3, device=DEVICE), torch.ones(3))


# -- 4. capture no stricter than the kernel --------------------------------------------------------


def test_grouped_mm_in_float32_is_computed_as_the_cpu_kernel_does():
    torch.manual_seed(0)
    a, b = torch.randn(12, 8), torch.randn(3, 8, 4)  # CPU's kernel wants 16-byte strides
    offs = torch.tensor([4, 8, 12], dtype=torch.int32)
    e = torch._grouped_mm(a, b, offs)
    _same(torch._grouped_mm(a.to(DEVICE), b.to(DEVICE), offs.to(DEVICE)), e)


def test_multilabel_margin_loss_shape_is_the_kernels():
    x, y = torch.randn(4), torch.tensor([3, 0, -1, 1])
    e = F.multilabel_margin_loss(x, y, reduction="none")
    a = F.multilabel_margin_loss(x.to(DEVICE), y.to(DEVICE), reduction="none")
    assert a.shape == e.shape
    _same(a, e)


def test_histc_of_integers_is_offered_as_on_cuda():
    x = torch.tensor([0, 3, 1, 3, 2, 3], dtype=torch.int32)
    a = torch.histc(x.to(DEVICE), bins=4, min=0, max=3)
    assert a.dtype == torch.int32
    assert host(a).tolist() == [1, 1, 1, 3]


# -- 5. in-place writes reading the written memory -------------------------------------------------


@pytest.mark.parametrize("program", [
    lambda x: x.add_(x[:1].expand_as(x)),
    lambda x: x[1:].add_(x[:1].expand(1, 3)),
    lambda x: torch.add(x, x[:1].expand_as(x), out=x),
    lambda x: x.t().add_(x[0:1].expand(3, 3)),
    lambda x: x.copy_(x.flip(0)),
], ids=["add_-expand", "add_-slice", "add-out", "add_-transposed", "copy_-flip"])
def test_inplace_writes_read_what_eager_reads(program):
    e = torch.arange(9.0).reshape(3, 3)
    a = e.clone().to(DEVICE)
    program(e)
    program(a)
    _same(a, e)


# -- 6. what PyTorch's device-generic tests found ---------------------------------------------------


def test_capture_follows_the_default_dtype():
    x = torch.tensor([1, 2, 3])
    assert (x.to(DEVICE) / 2).dtype == torch.float32
    torch.set_default_dtype(torch.float64)
    try:
        a = x.to(DEVICE) / 2
        assert a.dtype == torch.float64 == (x / 2).dtype
        _same(a, x / 2)
        assert torch.ones(2, device=DEVICE).dtype == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert (x.to(DEVICE) / 2).dtype == torch.float32
    assert torch.ones(2, device=DEVICE).dtype == torch.float32


def test_quantized_tensors_are_refused_at_the_call():
    with pytest.raises(NotImplementedError, match="aten::quantize_per_tensor: quantized tensors are not supported"):
        torch.quantize_per_tensor(torch.randn(3, device=DEVICE), 0.1, 0, torch.quint8)


def test_host_scalar_operand_is_accepted_as_eager_accepts_it():
    x = torch.tensor([1.0, -2.0, 3.0])
    _same(torch.copysign(x.to(DEVICE), torch.tensor(-1.0)), torch.copysign(x, torch.tensor(-1.0)))


@pytest.mark.parametrize("call", [
    lambda d: torch.ones(3, dtype=torch.bool, device=d) - torch.ones(3, dtype=torch.bool, device=d),
    lambda d: torch.add(torch.ones(3, dtype=torch.int64, device=d), torch.ones(3, dtype=torch.int64, device=d),
                        alpha=1.5),
    lambda d: torch.pow(torch.ones(3, dtype=torch.int64, device=d), -2),
    lambda d: torch.maximum(torch.ones(3, dtype=torch.complex64, device=d), torch.ones(3, dtype=torch.complex64,
                                                                                      device=d)),
    lambda d: torch.heaviside(torch.ones(3, device=d), torch.ones(3, dtype=torch.float64, device=d)),
    lambda d: torch.ones(3, device=d).pow_(torch.ones(2, 3, device=d)),
], ids=["bool-sub", "float-alpha-int", "int-negative-pow", "maximum-complex", "heaviside-mixed", "pow_-resize"])
def test_errors_decidable_from_metadata_are_eagers_at_the_call(call):
    with pytest.raises(Exception) as eager:
        call("cpu")
    with pytest.raises(type(eager.value)) as lazy:
        call(DEVICE)  # at the call: nothing is read
    assert str(eager.value) in str(lazy.value)


def test_value_dependent_errors_are_not_raised_at_capture():
    x = torch.ones(3, dtype=torch.int64, device=DEVICE)
    y = torch.div(x, x, rounding_mode="floor")  # zero-filled stand-ins would divide by zero: not an error
    assert host(y).tolist() == [1, 1, 1]


def test_attention_in_a_decode_loop_with_a_growing_cache_traces_once():
    from genie.capture import device_choice
    torch.manual_seed(0)
    q = torch.randn(1, 2, 1, 8)
    for length in range(2, 8):
        k, v = torch.randn(1, 2, length, 8), torch.randn(1, 2, length, 8)
        a = F.scaled_dot_product_attention(q.to(DEVICE), k.to(DEVICE), v.to(DEVICE))
        _same(a, F.scaled_dot_product_attention(q, k, v))
        if length == 3:
            traced = device_choice.trace_count()
    assert device_choice.trace_count() == traced  # lengths 4..7 reused the program traced for 3


def test_moving_back_to_the_host_keeps_sharing():
    m = Tied().to(DEVICE).cpu()
    _assert_tied(m)
    assert type(m.head.weight.data) is torch.Tensor
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        m = Tied().to(DEVICE).cpu()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    _assert_tied(m)


def test_default_dtype_of_the_call_holds_at_execution():
    a = torch.ones(4, dtype=torch.int64, device=DEVICE)
    torch.set_default_dtype(torch.float64)
    try:
        r, z, ar = a / a, torch.ones(3, device=DEVICE), torch.arange(0.5, 3, device=DEVICE)
    finally:
        torch.set_default_dtype(torch.float32)
    assert (host(r).dtype, host(z).dtype, host(ar).dtype) == (torch.float64,) * 3
    assert host(ar).tolist() == [0.5, 1.5, 2.5]


def test_prims_signbit_dtype_is_the_kernels():
    x = torch.tensor([-1.0, 2.0])
    _same(torch.ops.prims.signbit(x.to(DEVICE)), torch.ops.prims.signbit(x))


def test_inplace_variants_of_pointwise_ops_check_at_the_call():
    with pytest.raises(RuntimeError, match="heaviside is not yet implemented for tensors with different dtypes"):
        torch.ones(3, device=DEVICE).heaviside_(torch.ones(3, dtype=torch.int64, device=DEVICE))


def test_out_on_another_device_is_refused_for_data_dependent_ops():
    with pytest.raises(RuntimeError, match="same device"):
        torch.nonzero(torch.ones(3, device=DEVICE), out=torch.empty([], dtype=torch.long))


def test_value_errors_at_execution_keep_eagers_exception_type():
    a = torch.zeros(5, device=DEVICE)
    a[torch.tensor([1, 10], device=DEVICE)] = 0
    with pytest.raises(IndexError, match="aten::index_put_.*index 10 is out of bounds"):
        host(a)


def test_indexed_writes_check_index_shapes_and_values_at_the_call():
    with pytest.raises(RuntimeError, match="Converting complex Scalar to non-complex type is not supported"):
        torch.ones(2, 2, device=DEVICE).index_fill_(1, torch.tensor([0], device=DEVICE), 1 + 1j)
    with pytest.raises(IndexError, match="indexing tensors could not be broadcast together"):
        torch.zeros(5, 5, device=DEVICE)[[0, 1], [0, 1, 2]] = 0


def test_linear_is_one_node_without_grad_and_decomposes_with_it():
    torch.manual_seed(0)
    layer = torch.nn.Linear(6, 5)
    lazy = copy.deepcopy(layer).to(DEVICE)
    x = torch.randn(2, 3, 6)
    with torch.no_grad():
        out = lazy(x.to(DEVICE))
        assert out.genie_node.op == "aten::linear"
        assert torch.equal(host(out), layer(x))
    out = lazy(x.to(DEVICE))  # parameters need grad: autograd records the composite's ops
    assert out.genie_node.op != "aten::linear"
    out.sum().backward()
    layer(x).sum().backward()
    torch.testing.assert_close(host(lazy.weight.grad), layer.weight.grad, rtol=0, atol=0)


@pytest.mark.parametrize("op", [lambda t: t / 1.0, lambda t: t * 2, lambda t: 3 - t, lambda t: t + True],
                         ids=["div", "mul", "rsub", "add_bool"])
def test_a_number_operand_keeps_eagers_strides_for_a_size_one_dimension(op):
    # a (1,16,4,4) tensor strided (16,1,64,16), as a transposed attention output viewed back: with a
    # number operand the CPU kernel keeps the input's strides, where the meta kernel gave dim 0
    # stride 256; group_norm's memory-format heuristic then took another path than eager's
    x = torch.empty_strided((1, 16, 4, 4), (16, 1, 64, 16)).normal_()
    expected = op(x)
    got = op(x.to(DEVICE))
    assert got.stride() == expected.stride() and got.dtype == expected.dtype
    torch.testing.assert_close(host(got), expected, rtol=0, atol=0)
    normed = torch.nn.functional.group_norm(got, 4)
    torch.testing.assert_close(host(normed), torch.nn.functional.group_norm(expected, 4), rtol=0, atol=0)
