"""Real-program speed with compiled replay: ratios to eager measured in the same process.

Every figure is a median over interleaved rounds (eager, lazy, eager, lazy, ...) after warm-up
runs, so that the lazy rounds are the second and later runs of their structure: replays of a
compiled program. ``python -m asv_benches.profile_execution`` shows where the time goes."""

from __future__ import annotations

import copy
import statistics
import time

import torch

import genie

from .common import REMOTE
from .zoo import ZOO, DecoderLM, greedy_decode

CHAIN = 1000


def _rounds(eager, lazy, repeat: int, warmup: int = 3, prepare=None) -> tuple[float, float, float]:
    """(ratio, eager_s, lazy_s): medians of alternating rounds after warm-up rounds of each;
    ``prepare`` runs untimed before each lazy round."""
    for _ in range(warmup):
        eager()
        if prepare is not None:
            prepare()
        lazy()
    te, tl = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        eager()
        te.append(time.perf_counter() - t0)
        if prepare is not None:
            prepare()
        t0 = time.perf_counter()
        lazy()
        tl.append(time.perf_counter() - t0)
    e, la = statistics.median(te), statistics.median(tl)
    return la / e, e, la


def _one_thread(fn):
    def wrapped(*a, **k):
        n = torch.get_num_threads()
        torch.set_num_threads(1)  # the setting: one thread, so kernel time is not shared out
        try:
            return fn(*a, **k)
        finally:
            torch.set_num_threads(n)
    return wrapped


@_one_thread
def chain_materialize(repeat: int = 15):
    """Materializing a chain of CHAIN 8x8 adds, per node, against the same adds in eager."""
    e0 = torch.zeros(8, 8)
    l0 = torch.zeros(8, 8, device=REMOTE)
    l0.cpu()

    def eager():
        z = e0
        for _ in range(CHAIN):
            z = z + 1
        return z

    state = {}

    def lazy():
        genie.materialize(state.pop("z"))

    def capture():
        z = l0
        for _ in range(CHAIN):
            z = z + 1
        state["z"] = z

    # capture is not timed here (bench_capture times it): each lazy round materializes a fresh chain
    ratio, e, la = _rounds(eager, lazy, repeat, prepare=capture)
    return ratio, e / CHAIN, la / CHAIN


def _pair(name):
    make_model, make_input = ZOO[name]
    torch.manual_seed(0)
    model = make_model()
    lazy = copy.deepcopy(model).to(REMOTE)
    x = make_input()
    return model, lazy, x, x.to(REMOTE)


@_one_thread
def forward_ratio(name: str, repeat: int = 15):
    model, lazy, x, lx = _pair(name)
    model.eval()
    lazy.eval()

    def eager():
        with torch.no_grad():
            model(x)

    def run_lazy():
        with torch.no_grad():
            lazy(lx).cpu()

    return _rounds(eager, run_lazy, repeat)


def _train_loss(out):
    return out.float().square().mean()


@_one_thread
def train_ratio(name: str, repeat: int = 9):
    """One training step: forward, backward, AdamW step, read the loss."""
    model, lazy, x, lx = _pair(name)
    model.train()
    lazy.train()
    opt_e = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_l = torch.optim.AdamW(lazy.parameters(), lr=1e-3)

    def step(m, opt, inp):
        opt.zero_grad()
        loss = _train_loss(m(inp))
        loss.backward()
        opt.step()
        return loss.item()

    return _rounds(lambda: step(model, opt_e, x), lambda: step(lazy, opt_l, lx), repeat)


@_one_thread
def decode_ratio(repeat: int = 5, new_tokens: int = 32):
    """A 32-token greedy decode with a KV cache, each token read as it is produced."""
    torch.manual_seed(0)
    model = DecoderLM().eval()
    lazy = copy.deepcopy(model).to(REMOTE)
    prompt = ZOO["decoder_lm"][1]()[:1]
    lprompt = prompt.to(REMOTE)

    def run(m, p):
        with torch.no_grad():
            return greedy_decode(m, p, new_tokens)

    assert run(model, prompt) == run(lazy, lprompt), "lazy decode differs from eager"
    return _rounds(lambda: run(model, prompt), lambda: run(lazy, lprompt), repeat, warmup=1)


class ChainMaterialize:
    timeout = 300

    def setup_cache(self):
        return chain_materialize()

    def track_materialize_per_node_ratio(self, r):
        return r[0]

    track_materialize_per_node_ratio.unit = "x eager"

    def track_materialize_us_per_node(self, r):
        return r[2] * 1e6

    track_materialize_us_per_node.unit = "us"

    def track_eager_us_per_op(self, r):
        return r[1] * 1e6

    track_eager_us_per_op.unit = "us"


class _ZooRatio:
    """One ratio per zoo model, all measured in one setup_cache. Each subclass defines its own
    setup_cache: asv keys the cache on the function's source line, so an inherited one is shared."""
    params = list(ZOO)
    param_names = ["model"]
    timeout = 600


class ZooForward(_ZooRatio):
    """no_grad forward, capture plus materialize, second and later runs, against eager."""

    def setup_cache(self):
        return {name: forward_ratio(name) for name in ZOO}

    def track_forward_ratio(self, r, model):
        return r[model][0]

    track_forward_ratio.unit = "x eager"

    def track_eager_forward_ms(self, r, model):
        return r[model][1] * 1e3

    track_eager_forward_ms.unit = "ms"


class ZooTrainStep(_ZooRatio):
    """Forward, backward, AdamW step, read the loss: second and later steps, against eager."""

    def setup_cache(self):
        return {name: train_ratio(name) for name in ZOO}

    def track_train_step_ratio(self, r, model):
        return r[model][0]

    track_train_step_ratio.unit = "x eager"

    def track_eager_train_step_ms(self, r, model):
        return r[model][1] * 1e3

    track_eager_train_step_ms.unit = "ms"


class GreedyDecode:
    timeout = 600

    def setup_cache(self):
        return decode_ratio()

    def track_decode_32_tokens_ratio(self, r):
        return r[0]

    track_decode_32_tokens_ratio.unit = "x eager"

    def track_eager_decode_ms(self, r):
        return r[1] * 1e3

    track_eager_decode_ms.unit = "ms"
