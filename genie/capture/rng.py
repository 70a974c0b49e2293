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
import weakref

import torch

from .. import config
from ..execution.scheduler import materialize
from ..graph.node import Node
from ..ops.rng_links import seed_state

DEFAULT_SEED = 67280421310721  # torch's own default CPU seed
FLUSH_LINKS = int(os.environ.get("GENIE_RNG_FLUSH_LINKS", "1024"))


class RngChain:
    def __init__(self, index: int = 0):
        self.index = index  # the device whose generator this is (its seed nodes carry no spec)
        self._lock = threading.Lock()
        self.head = Node(seed_state, (DEFAULT_SEED,), {}, None)
        self.initial_seed = DEFAULT_SEED
        self.pending = 0  # links captured since the chain last ran
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
        if flush:
            materialize(prev)

    def seed(self, seed: int) -> None:
        with self._lock:
            self.initial_seed = int(seed)
            self.head = Node(seed_state, (int(seed),), {}, None)
            self.pending = 0

    def set_state(self, state: torch.Tensor) -> None:
        self._check(state)
        with self._lock:
            node = Node(seed_state, (None,), {}, None)
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


class DeviceGenerator(torch._C.Generator):
    """``torch.Generator(device="remote_accelerator")``: a generator of its own, as a CUDA
    generator is: a chain like the device's default one (same seeds give a CPU generator's
    streams, exact in any interleaving with the default chain, whatever order values are read
    in), which random ops given ``generator=`` link into instead of the default chain.

    torch offers Python backends no generator of their own (``PrivateUse1HooksInterface::
    getNewGenerator`` is C++ only), so this subclasses torch's generator type and overrides every
    method that reads or writes state; the C++ generator underneath only holds a throwaway state
    (seed validation, ``seed()``'s entropy) and never feeds a draw. ``_backend`` makes
    ``torch.Generator(device=...)`` build one."""

    __slots__ = ("chain",)

    def __new__(cls, index: int = 0):
        self = super().__new__(cls, "cpu")
        self.chain = RngChain(index)
        # ops receive the generator re-wrapped by the dispatcher (a plain torch._C.Generator over
        # the same C++ generator): the chain is found again by that generator's address
        _generator_chains[self._cdata] = self.chain
        weakref.finalize(self, _generator_chains.pop, self._cdata, None)
        return self

    @property
    def device(self) -> torch.device:
        return torch.device("remote_accelerator", self.chain.index)

    def manual_seed(self, seed):
        torch._C.Generator.manual_seed(self, seed)  # eager's checks of the seed, at the call
        self.chain.seed(torch._C.Generator.initial_seed(self))
        return self

    def seed(self) -> int:
        seed = torch._C.Generator.seed(self)  # a non-deterministic seed, as torch picks one
        self.chain.seed(seed)
        return seed

    def initial_seed(self) -> int:
        return self.chain.initial_seed

    def get_state(self) -> torch.Tensor:
        return self.chain.get_state(materialize)

    def set_state(self, state):
        self.chain.set_state(state)
        return self

    def clone_state(self):
        twin = DeviceGenerator(self.chain.index)
        twin.chain.initial_seed = self.chain.initial_seed
        twin.chain.set_state(self.get_state())
        return twin

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("genie: a remote_accelerator generator has no Philox offset and no graph-safe "
                           "state (CUDA generators do); use get_state/set_state")

    get_offset = set_offset = graphsafe_get_state = graphsafe_set_state = _refuse

    def __reduce__(self):
        # torch.Generator's own form (device, then (seed, offset, state)): torch.save/load and
        # copy.deepcopy rebuild a device generator with the same state
        return torch.Generator, (self.device,), (self.initial_seed(), None, self.get_state())

    def __setstate__(self, state) -> None:
        seed, _offset, gen_state = state
        self.chain.seed(seed)
        self.set_state(gen_state)

    def __repr__(self) -> str:
        return f"<genie generator on {self.device}>"


def link_random(node: Node, index: int, kwargs) -> None:
    """Link a captured random op into the chain it draws from: the ``generator=`` it was given,
    else its device's default chain. A device generator's node then runs with no generator
    argument: the executor draws from the execution device's generator swapped to the chain's
    state, as for the default chain. Any other generator is refused, as eager CUDA refuses a CPU
    generator for a CUDA op."""
    gen = kwargs.get("generator") if kwargs else None
    if gen is None:
        chain_for(index).link(node)
        return
    own = _generator_chains.get(gen._cdata)
    if own is None:
        raise RuntimeError(f"Expected a 'remote_accelerator' device type for generator but found '{gen.device.type}'")
    if own.index != index:
        raise RuntimeError(f"Expected a generator on remote_accelerator:{index} but found one on "
                           f"remote_accelerator:{own.index}")
    node.kwargs = {**node.kwargs, "generator": None}
    own.link(node)


_generator_chains: dict[int, RngChain] = {}  # C++ generator address -> the device generator's chain
