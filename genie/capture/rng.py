"""The remote device's random number generator, as a chain through the graph.

The device owns its generator, as a CUDA device does: ``torch.manual_seed`` seeds it (through
the device module), and CPU random calls do not advance it. Each captured random op links to
the previous one (``Node.rng``), so executing it first executes every earlier random op; the
executor swaps the execution device's generator to the state the chain carries. The values
therefore equal eager's under the same seed, whatever order and time tensors are read in.

After a random node executes, ``node.rng`` holds its post-state, which the next link starts from;
once the next link has run, that state is spent (``SPENT``) and freed.

Random values nobody reads still advance the generator, so they must run before any later random
value is read. Rather than keep every dropped one in the graph until then (200,000 unread
``randn`` calls held 200,000 nodes), the chain runs its pending links every ``FLUSH_LINKS``
links: memory and graph stay flat, and the values are the same whenever they are computed.
"""

from __future__ import annotations

import os
import threading

import torch

from .. import config
from ..graph.node import Node

DEFAULT_SEED = 67280421310721  # torch's own default CPU seed
FLUSH_LINKS = int(os.environ.get("GENIE_RNG_FLUSH_LINKS", "1024"))


class _Spent:
    """``node.rng`` of an executed random node whose successor has run: the state is not needed."""
    __slots__ = ()

    def __repr__(self) -> str:
        return "SPENT"


SPENT = _Spent()


def _seed_state(seed):
    """Op of a seed node: the generator state that ``manual_seed(seed)`` leaves."""
    raise AssertionError("seed nodes are executed by the executor, not called")


_seed_state.__name__ = "manual_seed"


class RngChain:
    def __init__(self, index: int = 0):
        self.index = index  # the device whose generator this is (its seed nodes carry no spec)
        self._lock = threading.Lock()
        self.head = Node(_seed_state, (DEFAULT_SEED,), {}, None)
        self.initial_seed = DEFAULT_SEED
        self.pending = 0  # links captured since the chain last ran
        self.materialize = None  # bound by genie/__init__.py (the scheduler's materialize)
        self.state_numel = -1  # the size of the states get_state has handed out

    def link(self, node: Node) -> None:
        """Append a random node to the chain (called at capture)."""
        with self._lock:
            prev = node.rng = self.head
            self.head = node
            self.pending += 1
            flush = self.pending >= FLUSH_LINKS
            if flush:
                self.pending = 0
        if flush and self.materialize is not None:
            self.materialize(prev)

    def seed(self, seed: int) -> None:
        with self._lock:
            self.initial_seed = int(seed)
            self.head = Node(_seed_state, (int(seed),), {}, None)
            self.pending = 0

    def set_state(self, state: torch.Tensor) -> None:
        self._check(state)
        with self._lock:
            node = Node(_seed_state, (None,), {}, None)
            node.rng = state.clone()
            node.value = True  # already "executed": the state is given
            self.head = node

    def get_state(self, materialize) -> torch.Tensor:
        with self._lock:
            head = self.head
        materialize(head, index=self.index)
        state = head.rng
        if state.__class__ is not torch.Tensor:  # resident on a server
            state = state.fetch()
        self.state_numel = state.numel()
        return state.clone()

    def _check(self, state) -> None:
        """Refuse a malformed state at the call, with the generator's own error, as eager does,
        instead of at the next random op. States are the executing generator's (a CPU or a CUDA
        generator, possibly a server's): one the size of a state this chain handed out is its
        kind; anything else is checked by a generator of the local execution device."""
        if state.__class__ is torch.Tensor and state.dtype == torch.uint8 and state.numel() == self.state_numel:
            return
        torch.Generator(device=config.execution_device()).set_state(state)


# One chain per device, as CUDA has one generator per device: random ops on remote_accelerator:1
# never wait for (or travel to) device 0's chain. Made on first use; ``torch.manual_seed`` seeds
# every device, including those whose chain is made later (``seed_all``).
chains: list[RngChain] = [RngChain()]
chain = chains[0]  # device 0's


def chain_for(index: int) -> RngChain:
    if index < len(chains):
        return chains[index]
    with _chains_lock:
        while len(chains) <= index:
            c = RngChain(len(chains))
            c.seed(_all_seed[0])
            c.materialize = chain.materialize
            chains.append(c)
    return chains[index]


def seed_all(seed: int) -> None:
    """Seed every device's chain (``manual_seed_all``), and the ones made later."""
    with _chains_lock:
        _all_seed[0] = int(seed)
        for c in chains:
            c.seed(seed)


_chains_lock = threading.Lock()
_all_seed = [DEFAULT_SEED]
