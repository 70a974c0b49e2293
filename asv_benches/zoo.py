"""Small models of the conformance zoo's families, in plain torch (asv's environments carry torch
only): a decoder LM with a KV cache, an encoder, a vision transformer, a CNN with batch norm.
Sizes are those a new user tries first: 2 layers, hidden 64, sequence 12, seeded weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HIDDEN, HEADS, LAYERS, SEQ, VOCAB = 64, 4, 2, 12, 128


class DecoderBlock(nn.Module):
    def __init__(self, d: int = HIDDEN, heads: int = HEADS):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x, cache=None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, -1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            if cache[0] is not None:
                k = torch.cat([cache[0], k], 2)
                v = torch.cat([cache[1], v], 2)
            cache[0], cache[1] = k, v
        # causal over the whole sequence; one new query attends to every cached position
        att = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class DecoderLM(nn.Module):
    """GPT-2's shape: token and position embeddings, pre-norm blocks, a head tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, HIDDEN)
        self.pos = nn.Embedding(64, HIDDEN)
        self.blocks = nn.ModuleList(DecoderBlock() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, VOCAB, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, ids, caches=None, start: int = 0):
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.head(self.ln(x))


def greedy_decode(model: DecoderLM, prompt, new_tokens: int = 32) -> list:
    """Greedy decoding with a KV cache, reading each token as a generation loop does (stop checks)."""
    caches = [[None, None] for _ in model.blocks]
    logits = model(prompt, caches)
    tokens = []
    start = prompt.shape[1]
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt.tolist()[0][0])
        logits = model(nxt, caches, start)
        start += 1
    return tokens


def encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(HIDDEN, HEADS, 4 * HIDDEN, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False)


class ViT(nn.Module):
    """Patch embedding (a strided conv), a class token, an encoder, a linear head."""

    def __init__(self, image: int = 32, patch: int = 8, classes: int = 10):
        super().__init__()
        self.patch = nn.Conv2d(3, HIDDEN, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, HIDDEN) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, HIDDEN) * 0.02)
        self.encoder = encoder()
        self.ln = nn.LayerNorm(HIDDEN)
        self.head = nn.Linear(HIDDEN, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.ln(self.encoder(x)[:, 0]))


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for cout in (16, 32, 32):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.body(x), 1).flatten(1))


def _ids():
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))


def _image():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# name -> (make model, make input); inputs are single tensors
ZOO = {
    "decoder_lm": (DecoderLM, _ids),
    "encoder": (encoder, lambda: torch.randn(2, SEQ, HIDDEN, generator=torch.Generator().manual_seed(1))),
    "vit": (ViT, _image),
    "cnn": (SmallCNN, _image),
}
