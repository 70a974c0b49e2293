"""Nested tensors on the device: the strided ones nn.TransformerEncoder's inference fast path
makes (held as materialized values, ops on them run on those values) and torch.nested jagged
tensors whose values live on the device (torch's NestedTensor subclass over LazyTensors)."""

import warnings

import pytest
import torch
from torch import nn

from conftest import DEVICE, host

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")


def _encoder(norm):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, dropout=0.0)
    return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8) if norm else None, enable_nested_tensor=True).eval()


MASKS = {
    "ragged": [[False] * 5, [False] * 3 + [True] * 2, [False] * 2 + [True] * 3],
    "full": [[False] * 5] * 3,
}


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
@pytest.mark.parametrize("mask", list(MASKS))
@pytest.mark.parametrize("norm", [False, True])
def test_transformer_encoder_fast_path_matches_eager(mode, mask, norm):
    encoder = _encoder(norm)
    torch.manual_seed(1)
    x = torch.randn(3, 5, 8)
    padding = torch.tensor(MASKS[mask])
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    with context():
        expected = encoder(x, src_key_padding_mask=padding)
        got = encoder.to(DEVICE)(x.to(DEVICE), src_key_padding_mask=padding.to(DEVICE))
    torch.testing.assert_close(host(got), expected, rtol=0, atol=0)


def test_encoder_without_the_fast_path_still_matches_eager():
    encoder = _encoder(False)
    torch.manual_seed(1)
    x, padding = torch.randn(3, 5, 8), torch.tensor(MASKS["ragged"])
    expected = encoder(x, src_key_padding_mask=padding)  # grad enabled: the fast path declines
    got = encoder.to(DEVICE)(x.to(DEVICE), src_key_padding_mask=padding.to(DEVICE))
    torch.testing.assert_close(host(got), expected, rtol=1e-6, atol=1e-6)


def _jagged_program(device, build):
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    parts = [torch.randn(2, 4), torch.randn(3, 4), torch.randn(1, 4)]
    lin = lin.to(device)
    nt = build([p.to(device) for p in parts], device)
    out = lin((nt * 2).sin())
    probs = torch.softmax(out, dim=-1)
    padded = torch.nested.to_padded_tensor(probs, 0.0)
    padded.sum().backward()
    return [padded, out.values(), nt.offsets(), lin.weight.grad, lin.bias.grad]


@pytest.mark.parametrize("build", [
    lambda parts, d: torch.nested.nested_tensor(parts, layout=torch.jagged),
    lambda parts, d: torch.nested.as_nested_tensor(parts, layout=torch.jagged),
    lambda parts, d: torch.nested.nested_tensor([p.cpu() for p in parts], layout=torch.jagged, device=d),
], ids=["nested_tensor", "as_nested_tensor", "from_host_with_device"])
def test_jagged_tensors_forward_and_backward_match_eager(build):
    expected = _jagged_program("cpu", build)
    got = _jagged_program(DEVICE, build)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        torch.testing.assert_close(host(g), e, rtol=0, atol=0)
