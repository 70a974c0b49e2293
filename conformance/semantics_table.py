"""Per zoo model, what genie's semantic capture finds: ``python -m conformance.semantics_table``.

For each model of conformance/models.py: the patterns of one eval forward, the phases seen in
that forward, a training step (forward, backward, AdamW) and, for generators, a 3-token greedy
generate; and the largest lazy-vs-eager difference of the forward's outputs. The semantics check
of the conformance suite asserts these; this prints them as one table (for notes and reviews).
"""

from __future__ import annotations

import collections
import copy
import importlib.util
import sys

import torch

import genie
from conformance.models import MODELS
from conformance.test_models import REMOTE, SEED, _loss, _to_eager, _to_remote, tensors_of


def _max_error(actual, expected) -> float:
    a, e = dict(tensors_of(actual)), dict(tensors_of(expected))
    worst = 0.0
    for name, et in e.items():
        at = a[name].detach().cpu()
        if et.is_floating_point():
            worst = max(worst, (at.double() - et.detach().double()).abs().max().item() if et.numel() else 0.0)
        elif not torch.equal(at, et.detach()):
            worst = float("inf")
    return worst


def row(case):
    torch.manual_seed(SEED)
    model, inputs = case.build()
    if "lengths" in inputs:
        inputs["lengths"]._genie_host = True
    lazy = copy.deepcopy(model).to(REMOTE)
    e_in, l_in = _to_eager(inputs, "cpu"), _to_remote(inputs)
    model.eval()
    lazy.eval()
    with torch.no_grad():
        expected = model(**e_in)
        with genie.keep_structure():
            actual = lazy(**l_in)
            analysis = genie.analyze(genie.graph_of(*[t for _, t in tensors_of(actual)
                                                      if isinstance(t, genie.LazyTensor)]))
    phases = collections.Counter(n.phase for n in analysis.graph.nodes)
    error = _max_error(actual, expected)
    if case.generates:
        kwargs = {k: v for k, v in l_in.items() if k != "labels"}
        with genie.keep_structure():
            tokens = lazy.generate(**kwargs, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0)
            phases.update(n.phase for n in genie.analyze(genie.graph_of(tokens)).graph.nodes)
    lazy.train()
    opt = torch.optim.AdamW(lazy.parameters(), lr=1e-2)
    with genie.keep_structure():
        loss = _loss(lazy(**l_in))
        loss.backward()
        opt.step()
        phases.update(n.phase for n in genie.graph_of(loss, *lazy.parameters()).nodes)
    return case.name, analysis.counts(), sorted(phases), error


def main() -> int:
    torch.set_num_threads(1)
    print(f"{'model':34} {'patterns (one eval forward)':62} {'phases seen':40} max |lazy-eager|")
    for case in MODELS:
        if case.needs and importlib.util.find_spec(case.needs) is None:
            print(f"{case.name:34} skipped: {case.needs} is not installed")
            continue
        name, counts, phases, error = row(case)
        pats = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        print(f"{name:34} {pats:62} {', '.join(phases):40} {error:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
