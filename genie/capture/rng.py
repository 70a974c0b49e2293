"""The remote device's random number generator, as a chain through the graph.

The device owns its generator, as a CUDA device does: ``torch.manual_seed`` seeds it (through
the device module), and CPU random calls do not advance it. Each captured random op links to
the previous one (``Node.rng``), so executing it first executes every earlier random op; the
executor swaps the execution device's generator to the state the chain carries. The values
therefore equal eager's under the same seed, whatever order and time tensors are read in.

After a random node executes, ``node.rng`` holds its post-state, which the next link starts from.
"""

from __future__ import annotations

import threading

import torch

from ..graph.node import Node

DEFAULT_SEED = 67280421310721  # torch's own default CPU seed


def _seed_state(seed):
    """Op of a seed node: the generator state that ``manual_seed(seed)`` leaves."""
    raise AssertionError("seed nodes are executed by the executor, not called")


_seed_state.__name__ = "manual_seed"


class RngChain:
    def __init__(self):
        self._lock = threading.Lock()
        self.head = Node(_seed_state, (DEFAULT_SEED,), {}, None)
        self.initial_seed = DEFAULT_SEED

    def link(self, node: Node) -> None:
        """Append a random node to the chain (called at capture)."""
        with self._lock:
            node.rng = self.head
            self.head = node

    def seed(self, seed: int) -> None:
        with self._lock:
            self.initial_seed = int(seed)
            self.head = Node(_seed_state, (int(seed),), {}, None)

    def set_state(self, state: torch.Tensor) -> None:
        with self._lock:
            node = Node(_seed_state, (None,), {}, None)
            node.rng = state.clone()
            node.value = True  # already "executed": the state is given
            self.head = node

    def get_state(self, materialize) -> torch.Tensor:
        with self._lock:
            head = self.head
        materialize(head)
        return head.rng.clone()


chain = RngChain()
