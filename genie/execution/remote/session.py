"""The server's side of a connection, independent of any socket: a table of resident values, the
plan structures it knows by fingerprint, and execution on the server's device.

A plan arrives as its *structure* (op names with overloads, where every argument comes from: an
earlier node of the plan, or an input slot) once per fingerprint, and as per-run data every time:
the input slots' values (numbers, size lists, atoms, resident values by id, uploaded tensors),
every node's spec, the annotations execution reads, which values to keep (and the ids the client
gave them), which generator states to keep, what to free and what to send back. The server
rebuilds genie ``Node`` objects from the two and runs them with the same ``LocalExecutor`` the
client would use in-process (compiled replay included), so remote values are exactly local ones.

``ServerState`` is what all connections of one server share (the device, the executor, known
structures, op resolution); ``Session`` is one client's (its resident values, freed with it).
Hosting a session elsewhere (an actor of a distributed engine) needs only these two classes.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict

import torch

from ...graph.node import _EMPTY, Node, TensorSpec, getitem, intern_spec
from ...ops.rng_links import seed_state
from ..local import LocalExecutor
from ..plan import Plan
from .wire import Blob, ProtocolError, Ref, dtype_of

_OP_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)::([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)$")
_GENIE_OPS = {"genie::getitem": getitem, "genie::manual_seed": seed_state}
_LAYOUT_NAMES = {str(x).removeprefix("torch."): x for x in (torch.strided, torch.sparse_coo, torch.sparse_csr,
                                                           torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc)}
_ANNOTATIONS = ("grad_enabled", "default_dtype", "reads_written", "shared_writes", "reads_written_items")
# how long a run waits for the device while other clients' runs hold it
RUN_LOCK_TIMEOUT_S = float(os.environ.get("GENIE_SERVER_RUN_TIMEOUT_S", "600"))


def resolve_op(name):
    """An op overload by its wire name (``aten::add.Tensor``), or genie's own node targets. Ops that
    touch the server's files are refused."""
    target = _GENIE_OPS.get(name)
    if target is not None:
        return target
    m = _OP_NAME.match(name) if isinstance(name, str) else None
    if m is None:
        raise ProtocolError(f"not an op name: {name!r}")
    ns, op, overload = m.groups()
    try:
        target = getattr(getattr(getattr(torch.ops, ns), op), overload)
    except (AttributeError, RuntimeError):
        hint = "" if ns in ("aten", "prims") else \
            " (a custom op: start the server with --import MODULE, the module that registers it)"
        raise ProtocolError(f"unknown op {name}{hint}") from None
    if not isinstance(target, torch._ops.OpOverload):
        raise ProtocolError(f"unknown op {name}")

    if any(a.name == "filename" for a in target._schema.arguments):
        raise ProtocolError(f"{name} reads or writes the server's files: refused")
    return target


_TORCH_MODULE = re.compile(r"^torch(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def import_providers(modules) -> None:
    """Import the modules that register the custom ops of a structure, where they are torch's own
    (``torch.nn.modules.linear_cross_entropy`` registers its ops when first imported). Any other
    module is the server operator's choice (``--import``), never the client's."""
    import importlib
    if not isinstance(modules, list):
        raise ProtocolError("imports: expected a list of module names")
    for m in modules:
        if isinstance(m, str) and _TORCH_MODULE.match(m):
            try:
                importlib.import_module(m)
            except ImportError:
                pass  # the op stays unknown and says so


class Structure:
    """A plan structure, decoded once: per node (target, args template, kwargs template, rng)."""

    __slots__ = ("nodes", "ext_slots")

    def __init__(self, records):
        if not isinstance(records, list) or not records:
            raise ProtocolError("plan structure: expected a non-empty list of nodes")
        nodes = []
        for i, rec in enumerate(records):
            if not isinstance(rec, list) or len(rec) != 4:
                raise ProtocolError(f"plan structure: node {i} is not [op, args, kwargs, rng]")
            op, args, kwargs, rng = rec
            _check_items(args, i)
            if not isinstance(kwargs, list) or not all(isinstance(kv, list) and len(kv) == 2 and
                                                       isinstance(kv[0], str) for kv in kwargs):
                raise ProtocolError(f"plan structure: node {i} kwargs malformed")
            _check_items([kv[1] for kv in kwargs], i)
            if not (rng is None or (isinstance(rng, int) and -1 <= rng < i)):
                raise ProtocolError(f"plan structure: node {i} rng link {rng!r} malformed")
            nodes.append((resolve_op(op), args, kwargs, rng))
        self.nodes = nodes


def _check_items(items, i):
    if not isinstance(items, list):
        raise ProtocolError(f"plan structure: node {i} arguments malformed")
    for x in items:
        if isinstance(x, list):
            _check_items(x, i)
        elif not isinstance(x, int) or isinstance(x, bool) or x >= i:
            raise ProtocolError(f"plan structure: node {i} refers to {x!r}, not an earlier node or a slot")


class ServerState:
    """What every connection of one server shares."""

    def __init__(self, device="cpu", structures: int = 1024):
        self.device = torch.device(device)
        self.executor = LocalExecutor(self.device)
        self.lock = threading.Lock()  # genie's executor and graph state are process-wide: one run at a time
        self.book = threading.Lock()  # the sessions and the structure cache (connection threads share them)
        self.structures: OrderedDict = OrderedDict()
        self.limit = structures
        self.runs = 0
        self.sessions: set = set()

    def structure(self, fp, raw, imports=None) -> Structure:
        """The structure for fingerprint ``fp``: from ``raw`` (checked against ``fp``) or the cache."""
        if not isinstance(fp, bytes) or len(fp) != 16:
            raise ProtocolError("fingerprint must be 16 bytes")
        if raw is not None:
            if not isinstance(raw, bytes) or hashlib.blake2b(raw, digest_size=16).digest() != fp:
                raise ProtocolError("plan structure does not match its fingerprint")
            from .wire import unpack
            if imports:
                import_providers(imports)
            with self.book:
                s = self.structures.get(fp)
            if s is None:
                s = Structure(unpack(raw))
            with self.book:
                self.structures[fp] = s
                if len(self.structures) > self.limit:
                    self.structures.popitem(last=False)
            return s
        with self.book:
            s = self.structures.get(fp)
            if s is None:
                raise UnknownStructure(fp.hex())
            self.structures.move_to_end(fp)
        return s

    def execute(self, plan) -> str:
        """Run a plan on the device (one at a time); returns how it ran."""
        if not self.lock.acquire(timeout=RUN_LOCK_TIMEOUT_S):
            raise TimeoutError(f"genie server: waited {RUN_LOCK_TIMEOUT_S:.0f} s for other clients' runs")
        try:
            self.executor.execute(plan)
            self.runs += 1
            return self.executor.last_mode
        finally:
            self.lock.release()


class UnknownStructure(KeyError):
    """The server does not know a fingerprint (never sent, or evicted): the client resends it whole."""


class Session:
    """One client's resident values and requests."""

    def __init__(self, state: ServerState):
        self.state = state
        self.values: dict[int, object] = {}
        with state.book:
            state.sessions.add(self)
        self.last_mode = None  # how the last plan ran on the server: interpreted, compiled or replayed

    # ---------------------------------------------------------------- bookkeeping

    def free(self, ids) -> None:
        if not isinstance(ids, list):
            raise ProtocolError("free: expected a list of ids")
        pop = self.values.pop
        for i in ids:
            pop(i, None)

    def close(self) -> None:
        """The client is gone: everything it kept here is freed."""
        with self.state.book:
            self.values.clear()
            self.state.sessions.discard(self)

    def resident_bytes(self) -> int:
        """Bytes of the storages behind this session's values (each storage counted once)."""
        total = 0
        seen = set()
        for v in list(self.values.values()):
            for t in (v if isinstance(v, (tuple, list)) else (v,)):
                if isinstance(t, torch.Tensor):
                    s = t.untyped_storage()
                    if s.data_ptr() not in seen:
                        seen.add(s.data_ptr())
                        total += s.nbytes()
        return total

    def stats(self) -> dict:
        state = self.state
        with state.book:
            sessions = list(state.sessions)
        return {"resident_bytes": self.resident_bytes(), "resident_values": len(self.values),
                "device": str(state.device), "structures": len(state.structures), "runs": state.runs,
                "sessions": len(sessions), "server_resident_bytes": sum(s.resident_bytes() for s in sessions),
                "replay": state.executor.programs.stats(),
                # in-place writes that reused their input's buffer instead of copying it first
                "steals": state.executor.steals}

    def lookup(self, ref: Ref):
        try:
            return self.values[ref.id]
        except KeyError:
            raise ProtocolError(f"no resident value {ref.id} in this session") from None

    def put(self, ids, blobs) -> list:
        """Store uploaded tensors under the ids the client gave them (one id per tensor sent)."""
        if not isinstance(ids, list) or len(ids) != len(blobs) or not all(isinstance(i, int) for i in ids):
            raise ProtocolError("put: one integer id per tensor sent")
        self.values.update(zip(ids, blobs))
        return []

    def fetch(self, ids) -> list[torch.Tensor]:
        """The tensors behind ``ids`` (pairs: resident id, item of a multi-output value or None),
        on the CPU, for sending back."""
        return [self._tensor(self.lookup(Ref(vid)), vid, item) for vid, item in _pairs(ids)]

    @staticmethod
    def _tensor(v, what, item=None) -> torch.Tensor:
        if item is not None and isinstance(v, (tuple, list)) and isinstance(item, int) and 0 <= item < len(v):
            v = v[item]
        if not isinstance(v, torch.Tensor):
            raise ProtocolError(f"resident value {what} is not a tensor")
        return v.cpu() if v.device.type != "cpu" else v

    # ---------------------------------------------------------------- a plan

    def run(self, msg: dict, blobs: list) -> list[torch.Tensor]:
        """Execute one RUN message (``blobs``: its uploaded tensors, already rebuilt on the server's
        device; the message's frees were done before). Returns the tensors asked for in ``fetch``.
        Nothing is stored unless the whole plan ran."""
        state = self.state
        structure = state.structure(msg.get("fp"), msg.get("structure"), msg.get("imports"))
        inputs = msg.get("in")
        specs = [_spec(s) for s in msg.get("specs", ())]
        nspec = msg.get("nspec")
        if not isinstance(inputs, list) or not isinstance(nspec, list) or len(nspec) != len(structure.nodes):
            raise ProtocolError("run: inputs or node specs malformed")
        xspec = dict(_pairs(msg.get("xspec", [])))

        def spec_at(k):
            if k is None:
                return None
            if isinstance(k, list):
                return tuple(spec_at(x) for x in k)
            if not isinstance(k, int) or not 0 <= k < len(specs):
                raise ProtocolError(f"run: spec index {k!r} out of range")
            return specs[k]

        def value_of(v):
            c = v.__class__
            if c is Ref:
                return self.lookup(v)
            if c is Blob:
                if not 0 <= v.index < len(blobs):
                    raise ProtocolError(f"run: tensor {v.index} was not sent")
                return blobs[v.index]
            if c is list:
                return [value_of(x) for x in v]
            return v

        slots = []
        ext_nodes = {}
        for k, v in enumerate(inputs):
            if k in xspec:  # a materialized node outside the plan: a stub node holding its value
                node = Node(None, (), _EMPTY, spec_at(xspec[k]), value=value_of(v))
                ext_nodes[k] = node
                slots.append(node)
            else:
                slots.append(value_of(v))

        nodes: list[Node] = []

        def build(item):
            if item.__class__ is list:
                return [build(x) for x in item]
            if item >= 0:
                return nodes[item]
            k = -1 - item
            if k >= len(slots):
                raise ProtocolError(f"run: slot {k} was not sent")
            return slots[k]

        ext_rng = dict(_pairs(msg.get("rng", [])))
        anns = dict(_pairs(msg.get("ann", [])))
        for i, (target, args, kwargs, rng) in enumerate(structure.nodes):
            node = Node(target, tuple(build(a) for a in args),
                        {k: build(a) for k, a in kwargs} if kwargs else _EMPTY, spec_at(nspec[i]))
            if rng is not None:
                if rng >= 0:
                    node.rng = nodes[rng]
                else:
                    if i not in ext_rng:
                        raise ProtocolError(f"run: node {i} needs a generator state that was not sent")
                    stub = Node(seed_state, (None,), _EMPTY, None, value=True)
                    stub.rng = value_of(ext_rng[i])
                    if stub.rng.__class__ is not torch.Tensor:
                        raise ProtocolError(f"run: generator state for node {i} is not a tensor")
                    node.rng = stub
            if i in anns:
                node.runtime = _annotations(anns[i], spec_at)
            nodes.append(node)

        keep = _pairs(msg.get("keep", []))
        rkeep = _pairs(msg.get("rkeep", []))
        plan = Plan.over(nodes, {i for i, _ in keep})
        self.last_mode = state.execute(plan)
        values = self.values
        for i, vid in keep:
            v = nodes[i].value
            if v is None:
                raise RuntimeError(f"genie server: node {i} was to be kept but has no value")
            values[vid] = v
        for i, vid in rkeep:
            s = nodes[i].rng
            if s.__class__ is not torch.Tensor:
                raise RuntimeError(f"genie server: node {i} left no generator state to keep")
            values[vid] = s
        for v in ext_rng.values():  # each external state started exactly one link: spent now
            if v.__class__ is Ref:
                values.pop(v.id, None)
        for k, vid in _pairs(msg.get("ups", [])):
            node = ext_nodes.get(k)
            if node is None:
                raise ProtocolError(f"run: slot {k} is not an uploaded value")
            values[vid] = node.value
        return [self._tensor(nodes[i].value, f"of node {i}") for i in msg.get("fetch", ())]


def _pairs(items):
    if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise ProtocolError("run: expected a list of pairs")
    return items


_spec_cache: dict = {}


def _spec(s) -> TensorSpec:
    key = repr(s) if isinstance(s, list) else None
    spec = _spec_cache.get(key)
    if spec is not None:
        return spec
    try:
        shape, stride, offset, dtype, nbytes, conj, neg, layout = s
        ok = all(isinstance(x, int) and x >= 0 for x in shape) and all(isinstance(x, int) for x in stride) \
            and isinstance(offset, int) and offset >= 0 and isinstance(nbytes, int) and nbytes >= 0
    except (TypeError, ValueError):
        ok = False
    if not ok or layout not in _LAYOUT_NAMES:
        raise ProtocolError(f"malformed tensor spec {s!r}")
    spec = intern_spec(shape, stride, offset, dtype_of(dtype), nbytes, bool(conj), bool(neg), _LAYOUT_NAMES[layout])
    if len(_spec_cache) > 65536:
        _spec_cache.clear()
    _spec_cache[key] = spec
    return spec


def _annotations(ann, spec_at) -> dict:
    if not isinstance(ann, dict) or not set(ann) <= set(_ANNOTATIONS):
        raise ProtocolError(f"run: annotations {ann!r} malformed")
    out = dict(ann)
    try:
        if "reads_written" in out:
            out["reads_written"] = [(_where(where), _index(i), spec_at(s)) for where, i, s in out["reads_written"]]
        if "shared_writes" in out:
            # each written tensor shares the buffer of an earlier one (execution.local._prepare_writes)
            out["shared_writes"] = [(_index(k), _index(j, below=_index(k))) for k, j in out["shared_writes"]]
        if "reads_written_items" in out:
            out["reads_written_items"] = [(_where(where), _index(k), _index(i), spec_at(s))
                                          for where, k, i, s in out["reads_written_items"]]
    except (TypeError, ValueError) as e:
        raise ProtocolError(f"run: annotations {ann!r} malformed ({e})") from None
    return out


def _index(v, below: int | None = None) -> int:
    if v.__class__ is not int or v < 0 or (below is not None and v >= below):
        raise ValueError(f"{v!r} is not an index" + ("" if below is None else f" below {below}"))
    return v


def _where(v):
    """An argument position (an index) or a keyword argument's name."""
    if v.__class__ is str:
        return v
    return _index(v)


