"""The model zoo: real model code, built offline from small configs with seeded random weights.

One entry per model: its family, a builder returning ``(model, inputs)`` (inputs on the host; the
test moves them), whether it generates, and how a training step gets its loss. torch.nn's own
models are always there; the ``transformers`` classes when that package is installed (the
``models`` extra). Nothing is downloaded: every model is made from its Config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

VOCAB = 96


@dataclasses.dataclass(frozen=True)
class ModelCase:
    family: str
    name: str
    build: Callable  # () -> (module, dict of host inputs); called under a fixed seed
    generates: bool = False
    needs: str | None = None  # an optional package the builder imports
    host_outputs: tuple = ()  # outputs that stay on the host by the op's contract (pad_packed_sequence's lengths)
    # the patterns genie.analyze must find in one eval forward, kind -> count (semantics check)
    patterns: dict = dataclasses.field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.name


def _ids(batch=2, seq=12, generator_seed=1):
    g = torch.Generator().manual_seed(generator_seed)
    return torch.randint(3, VOCAB, (batch, seq), generator=g)


# -- torch.nn models ----------------------------------------------------------------------------


class PackedRNN(nn.Module):
    """An RNN over padded sequences of different lengths, as user code writes it."""

    def __init__(self, cell: type, bidirectional: bool):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = cell(16, 24, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(24 * (2 if bidirectional else 1), 5)

    def forward(self, ids, lengths):
        packed = pack_padded_sequence(self.embed(ids), lengths, batch_first=True, enforce_sorted=False)
        out, hidden = self.rnn(packed)
        padded, out_lengths = pad_packed_sequence(out, batch_first=True)
        return self.head(padded), hidden, out_lengths


class SmallCNN(nn.Module):
    """conv, batch norm, relu, residual, pooling, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class SmallUNet(nn.Module):
    """A two-level UNet: conv blocks down, max pooling, a transposed convolution up, the skip
    connection concatenated, conv blocks again, a 1x1 head."""

    @staticmethod
    def _block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def __init__(self):
        super().__init__()
        self.down = self._block(3, 8)
        self.bottom = self._block(8, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.decode = self._block(16, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        skip = self.down(x)
        x = self.bottom(nn.functional.max_pool2d(skip, 2))
        return self.head(self.decode(torch.cat([skip, self.up(x)], dim=1)))


def _unet():
    g = torch.Generator().manual_seed(1)
    return SmallUNet(), {"x": torch.randn(2, 3, 16, 16, generator=g)}


def _packed(cell, bidirectional):
    def build():
        ids = _ids(3, 7)
        return PackedRNN(cell, bidirectional), {"ids": ids, "lengths": torch.tensor([7, 4, 2])}
    return build


def _nn_transformer():
    model = nn.Transformer(d_model=32, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=64,
                           batch_first=True)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randn(2, 10, 32, generator=g), torch.randn(2, 7, 32, generator=g)
    return model, {"src": src, "tgt": tgt, "tgt_mask": nn.Transformer.generate_square_subsequent_mask(7),
                   "tgt_is_causal": True}


def _cnn():
    g = torch.Generator().manual_seed(1)
    return SmallCNN(), {"x": torch.randn(4, 3, 12, 12, generator=g)}


# -- transformers models ------------------------------------------------------------------------


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    ids = _ids()
    return GPT2LMHeadModel(cfg), {"input_ids": ids, "labels": ids}


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0)
    ids = _ids()
    return LlamaForCausalLM(cfg), {"input_ids": ids, "labels": ids}


def _mixtral():
    from transformers import MixtralConfig, MixtralForCausalLM
    cfg = MixtralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    ids = _ids()
    return MixtralForCausalLM(cfg), {"input_ids": ids, "labels": ids}


def _bert():
    from transformers import BertConfig, BertForMaskedLM
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32, pad_token_id=0)
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return BertForMaskedLM(cfg), {"input_ids": ids, "attention_mask": mask, "labels": ids}


def _t5():
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=2)
    return T5ForConditionalGeneration(cfg), {"input_ids": _ids(), "labels": _ids(2, 6, 2)}


def _whisper():
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    cfg = WhisperConfig(vocab_size=VOCAB, num_mel_bins=8, d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                        max_source_positions=16, max_target_positions=32, decoder_start_token_id=1, pad_token_id=0,
                        bos_token_id=1, eos_token_id=2, begin_suppress_tokens=None, suppress_tokens=None)
    g = torch.Generator().manual_seed(1)
    return WhisperForConditionalGeneration(cfg), {"input_features": torch.randn(2, 8, 32, generator=g),
                                                  "labels": _ids(2, 6, 2)}


def _vit():
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
                    num_attention_heads=2, intermediate_size=64, num_labels=5)
    g = torch.Generator().manual_seed(1)
    return ViTForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 16, 16, generator=g),
                                            "labels": torch.tensor([1, 3])}


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification
    cfg = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                       num_labels=5)
    g = torch.Generator().manual_seed(1)
    return ResNetForImageClassification(cfg), {"pixel_values": torch.randn(2, 3, 32, 32, generator=g),
                                               "labels": torch.tensor([0, 4])}


_ENC_DEC = {"attention": 6, "mlp": 4, "residual": 10, "kv_cache_update": 8}  # 2+2 layers, cross-attention

MODELS: list[ModelCase] = [
    ModelCase("encoder-decoder", "nn.Transformer", _nn_transformer,
              patterns={"attention": 6, "mlp": 4, "residual": 10}),
    ModelCase("rnn", "nn.LSTM-packed-bidirectional", _packed(nn.LSTM, True), host_outputs=("output[2]",),
              patterns={"recurrent": 1}),
    ModelCase("rnn", "nn.GRU-packed", _packed(nn.GRU, False), host_outputs=("output[2]",), patterns={"recurrent": 1}),
    ModelCase("cnn", "SmallCNN-batchnorm-residual", _cnn, patterns={"conv_block": 2, "residual": 1}),
    ModelCase("unet", "SmallUNet", _unet, patterns={"conv_block": 6}),
    ModelCase("decoder-lm", "GPT2LMHeadModel-tied", _gpt2, generates=True, needs="transformers",
              patterns={"attention": 2, "mlp": 2, "residual": 4, "kv_cache_update": 4}),
    ModelCase("rope-decoder", "LlamaForCausalLM-gqa", _llama, generates=True, needs="transformers",
              patterns={"attention": 2, "mlp": 2, "residual": 4, "kv_cache_update": 4}),
    ModelCase("moe", "MixtralForCausalLM", _mixtral, generates=True, needs="transformers",
              patterns={"attention": 2, "mlp": 2, "residual": 4, "kv_cache_update": 4}),
    ModelCase("encoder", "BertForMaskedLM-tied", _bert, needs="transformers",
              patterns={"attention": 2, "mlp": 2, "residual": 4}),
    ModelCase("encoder-decoder", "T5ForConditionalGeneration-tied", _t5, generates=True, needs="transformers",
              patterns=_ENC_DEC),
    ModelCase("speech", "WhisperForConditionalGeneration", _whisper, generates=True, needs="transformers",
              patterns={**_ENC_DEC, "conv_block": 2}),
    ModelCase("vision-transformer", "ViTForImageClassification", _vit, needs="transformers",
              patterns={"attention": 2, "mlp": 2, "residual": 4}),
    ModelCase("cnn", "ResNetForImageClassification", _resnet, needs="transformers",
              patterns={"conv_block": 5, "residual": 2}),
]
