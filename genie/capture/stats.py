"""Per-op counters of how each call was handled: captured lazily, run eagerly because the op
needs values (data-dependent), or fallen back because no metadata could be inferred. The counts
live on each op's OpClass (no hashing on the capture path) and are summed by name here."""

from __future__ import annotations

from collections import Counter

from ..graph.node import op_name
from ..ops.schema import _classes


def _by_name(attr: str) -> dict:
    out: Counter = Counter()
    for oc in list(_classes.values()):
        n = getattr(oc, attr)
        if n:
            out[op_name(oc.func)] += n
    return dict(out)


def capture_stats() -> dict:
    cap, eag, fb = _by_name("captured"), _by_name("eager"), _by_name("fallback")
    return {
        "captured": Counter(cap),
        "data_dependent": Counter(eag),
        "fallback": Counter(fb),
        "total_captured": sum(cap.values()),
        "total_data_dependent": sum(eag.values()),
        "total_fallback": sum(fb.values()),
    }


def total_fallbacks() -> int:
    return sum(oc.fallback for oc in list(_classes.values()))


def total_eager() -> int:
    """Calls run at once on real values because their output depends on data (nonzero, item, ...)."""
    return sum(oc.eager for oc in list(_classes.values()))


def reset_capture_stats() -> None:
    for oc in list(_classes.values()):
        oc.captured = oc.eager = oc.fallback = 0
