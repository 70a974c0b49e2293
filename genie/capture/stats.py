"""Per-op counters of how each call was handled: captured lazily, run eagerly because the op
needs values (data-dependent), or fallen back because no metadata could be inferred."""

from __future__ import annotations

from collections import Counter

from ..graph.node import op_name

captured: Counter = Counter()
eager: Counter = Counter()
fallback: Counter = Counter()


def capture_stats() -> dict:
    def by_name(c):
        out: Counter = Counter()
        for op, n in c.items():
            out[op_name(op)] += n
        return dict(out)

    cap, eag, fb = by_name(captured), by_name(eager), by_name(fallback)
    return {
        "captured": cap,
        "data_dependent": eag,
        "fallback": fb,
        "total_captured": sum(cap.values()),
        "total_data_dependent": sum(eag.values()),
        "total_fallback": sum(fb.values()),
    }


def total_fallbacks() -> int:
    return sum(fallback.values())


def reset_capture_stats() -> None:
    captured.clear()
    eager.clear()
    fallback.clear()
