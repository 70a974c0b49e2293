"""The ops and markers of the RNG chain's nodes (capture/rng.py builds the chain; the executors
run it): a seed node's op, and the marker of a generator state that is no longer needed."""

from __future__ import annotations


class _Spent:
    """``node.rng`` of an executed random node whose successor has run: the state is not needed."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "SPENT"


SPENT = _Spent()


def seed_state(seed):
    """Op of a seed node: the generator state that ``manual_seed(seed)`` leaves."""
    raise AssertionError("seed nodes are executed by the executor, not called")


seed_state.__name__ = "manual_seed"
