"""Pattern recognition on captured graphs, with a plugin API.

``recognize(graph)`` runs every registered recognizer and returns the matches, each with
``.kind``, ``.nodes`` (the graph nodes it covers), ``.anchor`` and the module path(s) involved.
Built in (builtin.py): ``attention``, ``conv_block``, ``mlp``, ``residual``, ``kv_cache_update``,
``recurrent``. A new kind takes a few lines (docs/patterns.md):

    @genie.patterns.register("swiglu", example_inputs=(torch.randn(4, 8), torch.randn(16, 8), torch.randn(16, 8)))
    def swiglu(x, w_gate, w_up):
        return F.silu(F.linear(x, w_gate)) * F.linear(x, w_up)

A function registered with ``example_inputs`` is a *pattern*: genie captures it as it captures
any program and matches the captured ops, anchored on the pattern's output op (traced.py).
Without ``example_inputs`` the function is a *recognizer*: it gets a ``PatternGraph`` and yields
``Match`` objects (how the built-in kinds are written).
"""

from __future__ import annotations

from . import builtin  # noqa: E402,F401,I001  (registers the built-in kinds)
from .index import PatternGraph
from .match import Match, make_match
from .registry import kinds, recognize, register, unregister

__all__ = ["Match", "PatternGraph", "kinds", "make_match", "recognize", "register", "unregister"]
