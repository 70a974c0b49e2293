"""The client's side: a connection to a genie server and the executor that ships plans to it.

One materialization is one round trip: the plan's structure travels once per fingerprint (the
server keeps it), then only the fingerprint and the per-run data (see session.py). Values the
plan keeps stay on the server as ``RemoteValue`` handles on the client's nodes; inputs that live
in this process are uploaded once and then stay resident too. Reading a value (``.cpu()``,
``.item()``) brings it back in the same round trip as the run that computes it.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import socket
import threading
from collections import OrderedDict

import torch

from ...graph.node import Node, TensorSpec, getitem, op_name
from ...ops.errors import from_remote
from ...ops.rng_links import SPENT, seed_state
from ..base import WANT_VALUE, Executor
from ..plan import _encode
from . import shm, wire
from .handle import RemoteValue
from .wire import INLINE_MAX, Blob, Kind, Ref

DEFAULT_TIMEOUT_S = float(os.environ.get("GENIE_REMOTE_TIMEOUT_S", "60"))

class RemoteError(ConnectionError):
    """The server cannot be reached or broke the protocol; names the server and its address."""


class _UnknownStructure(Exception):
    pass


def _provider(target):
    """The module that registered a Python custom op (imported on the server when it is torch's own)."""
    schema = getattr(target, "_schema", None)
    if schema is None or schema.name.split("::")[0] in ("aten", "prims"):
        return None
    from torch._library.custom_ops import OPDEFS
    opdef = OPDEFS.get(schema.name)
    return getattr(getattr(opdef, "_init_fn", None), "__module__", None)


def _wire_name(target) -> str:
    if target is getitem:
        return "genie::getitem"
    if target is seed_state:
        return "genie::manual_seed"
    schema = getattr(target, "_schema", None)
    if schema is None:
        raise TypeError(f"genie remote: node target {target!r} has no schema and cannot be sent to a server")
    return f"{schema.name}.{target._overloadname}"


class Connection:
    """One TCP connection to a server, its resident values and the structures it has been sent."""

    def __init__(self, host: str, port: int, token: str, timeout: float = DEFAULT_TIMEOUT_S):
        self.address = f"{host}:{port}"
        self.timeout = timeout
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._frees: list[int] = []
        self.known: set[bytes] = set()  # fingerprints this server holds from us
        self.dead: str | None = None
        self.bytes_up = self.bytes_down = 0
        self.runs = self.structures_sent = 0
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as e:
            raise RemoteError(f"genie: cannot connect to server {self.address}: {e}") from None
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        probe = None
        hello = {"token": token, "version": wire.VERSION, "pid": os.getpid()}
        if shm.available():
            # the server proves it shares this host's memory by reading a nonce from a segment
            probe = shm.Segment.create(16)
            nonce = secrets.token_bytes(16)
            probe.tensor.copy_(torch.frombuffer(bytearray(nonce), dtype=torch.uint8))
            hello["shm"] = probe.name
            hello["nonce"] = nonce
        try:
            kind, reply = self._exchange(Kind.HELLO, hello)
        finally:
            if probe is not None:
                probe.unlink()
        if kind is not Kind.WELCOME:
            self.sock.close()
            raise RemoteError(f"genie: server {self.address} refused the connection: {reply.get('message', reply)}")
        self.device = reply.get("device")
        self.shm = bool(reply.get("shm"))

    # ---------------------------------------------------------------- requests

    def _exchange(self, kind, msg, streams=(), downloads=None):
        """Send one request (and its streamed tensor bytes); read the answer. Any transport failure
        or timeout kills the connection with an error naming the server."""
        if self.dead is not None:
            raise RemoteError(f"genie: server {self.address} is gone ({self.dead})")
        try:
            wire.send_message(self.sock, kind, msg)
            for raw in streams:
                wire.send_stream(self.sock, memoryview(raw.numpy()))
            rkind, reply = wire.recv_message(self.sock)
            if not isinstance(reply, dict):
                raise wire.ProtocolError("answer is not a map")
            tensors = self._receive(reply.get("tensors", ()), downloads or {}) if rkind is Kind.DONE else None
            return rkind, (reply if tensors is None else {**reply, "tensors": tensors})
        except (OSError, wire.ProtocolError) as e:
            self._kill(e)
            what = "did not answer within the timeout" if isinstance(e, TimeoutError) else "is unreachable"
            raise RemoteError(f"genie: server {self.address} {what}: {type(e).__name__}: {e}") from None

    def _kill(self, why) -> None:
        self.dead = f"{type(why).__name__}: {why}"
        try:
            self.sock.close()
        except OSError:
            pass

    def _receive(self, descriptors, downloads) -> list:
        def shared(k, name, nbytes):
            seg = downloads.get(k)
            if seg is None or name != seg.name or nbytes > seg.nbytes:
                raise wire.ProtocolError("answer names a shared-memory segment that was not offered")
            return seg.tensor[:nbytes]

        out = wire.receive_tensors(self.sock, descriptors, shared)
        self.bytes_down += sum(d["h"]["nbytes"] for d in descriptors)  # headers checked by now
        for t in out:
            t._genie_private = True  # fresh memory nobody else holds (special_ops._to_copy may hand it out)
        return out

    def call(self, kind, msg, streams=(), downloads=None) -> dict:
        """A request whose answer is DONE; an ERROR is raised as the server's exception type."""
        with self._lock:
            msg["free"] = self.take_frees()
            rkind, reply = self._exchange(kind, msg, streams, downloads)
        if rkind is Kind.ERROR:
            if reply.get("unknown_structure"):
                raise _UnknownStructure()
            raise from_remote(reply.get("type"), f"{reply.get('message')} [genie server {self.address}]")
        if rkind is not Kind.DONE:
            self._kill(f"unexpected {rkind.name} answer")
            raise RemoteError(f"genie: server {self.address} answered {rkind.name} to {Kind(kind).name}")
        return reply

    def new_id(self) -> int:
        return next(self._ids)

    def release(self, vid: int) -> None:
        self._frees.append(vid)  # from __del__: no lock, a list append is atomic

    def take_frees(self) -> list:
        frees, self._frees = self._frees, []
        return frees

    # ---------------------------------------------------------------- tensors

    def upload(self, t: torch.Tensor, start: int, nbytes: int, descriptors: list, streams: list, segments: list) -> Blob:
        """Describe ``t`` (bytes ``[start, start + nbytes)`` of its storage) for a message."""
        if t.layout != torch.strided:
            raise NotImplementedError(f"genie remote: {t.layout} tensors cannot be sent to a server")
        if t.device.type != "cpu":
            t = t.cpu()
        seg = shm.registered(t) if start == 0 and self.shm else None
        if seg is not None and seg.nbytes == nbytes:  # already in shared memory (adopt): no copy
            segments.append(seg)
            descriptors.append({"h": wire.tensor_header(t, start, nbytes), "shm": seg.name})
        else:
            seg = _segment(nbytes) if self.shm and nbytes > INLINE_MAX else None
            if seg is not None:
                segments.append(seg)
            descriptors.append(wire.describe_tensor(t, start, nbytes, seg, streams))
        self.bytes_up += nbytes
        return Blob(len(descriptors) - 1)

    def download_offer(self, specs) -> tuple[list, dict]:
        """Shared-memory segments for tensors the answer will carry (by their specs' extents)."""
        names, segs = [], {}
        for k, spec in enumerate(specs):
            n = _extent_of_spec(spec) if self.shm and spec is not None else 0
            seg = _segment(n) if n > INLINE_MAX else None
            names.append(None if seg is None else seg.name)
            if seg is not None:
                segs[k] = seg
        return names, segs

    def fetch(self, value: RemoteValue, spec=None, index=None) -> torch.Tensor:
        """The tensor behind ``value`` (item ``index`` of a multi-output value), in this process."""
        if value.conn is not self:
            return value.conn.fetch(value, spec, index)
        names, segs = self.download_offer([spec])
        try:
            reply = self.call(Kind.FETCH, {"ids": [[value.id, index]], "to": names}, downloads=segs)
        finally:
            for s in segs.values():
                s.unlink()
        return reply["tensors"][0]

    def stats(self) -> dict:
        return self.call(Kind.STATS, {})

    def close(self) -> None:
        with self._lock:
            if self.dead is None:
                self._kill("closed by the client")
                self.dead = "closed by the client"


def _segment(nbytes: int):
    """A shared-memory segment, or None where /dev/shm cannot hold it (the socket carries the bytes)."""
    try:
        return shm.Segment.create(nbytes)
    except OSError:
        return None


def _extent_of_spec(spec: TensorSpec) -> int:
    if spec.__class__ is not TensorSpec or spec.layout != torch.strided:
        return 0
    if any(n == 0 for n in spec.shape):
        return 0
    last = sum((n - 1) * s for n, s in zip(spec.shape, spec.stride))
    return (last + 1) * spec.dtype.itemsize


_spec_wire: dict[int, tuple] = {}


def _encode_spec(s: TensorSpec) -> list:
    hit = _spec_wire.get(id(s))
    if hit is not None and hit[0] is s:
        return hit[1]
    enc = [list(s.shape), list(s.stride), s.offset, wire.dtype_name(s.dtype), s.storage_nbytes, s.conj, s.neg,
           str(s.layout).removeprefix("torch.")]
    _spec_wire[id(s)] = (s, enc)
    return enc


def _argument_at(nodes, path):
    """The argument a template path names: (node index, "a" or "k", position or name, list indices...)."""
    i, kind, key, *inner = path
    a = nodes[i].args[key] if kind == "a" else nodes[i].kwargs[key]
    for k in inner:
        a = a[k]
    return a


class Template:
    """What a fingerprint means on the wire, worked out once per fingerprint from a plan of it.

    The walk mirrors ``plan._encode`` exactly: every argument that is not a node of the plan
    takes the next input slot, so ``plan.inputs`` is the per-run slot data as it stands, and
    ``plan.specs`` holds each node's spec and each external node's spec at fixed positions."""

    __slots__ = ("raw", "fp", "node_spec_pos", "ext_slots", "ext_rng", "keep", "seeds", "rng_live", "rng_links",
                 "rng_consumed", "annotated", "imports", "slots")

    def __init__(self, plan):
        nodes = plan.nodes
        pos = {id(n): i for i, n in enumerate(nodes)}
        slot = 0
        spec_pos = 0
        ext_slots = []  # (slot, position of its spec in plan.specs, path to the argument)
        node_spec_pos = []

        def item(a, path):
            nonlocal slot, spec_pos
            c = a.__class__
            if c is Node:
                j = pos.get(id(a))
                if j is not None:
                    return j
                ext_slots.append((slot, spec_pos, path))
                spec_pos += 1
            elif c is tuple or c is list:
                for x in a:
                    if x.__class__ is not int:
                        return [item(x, path + (k,)) for k, x in enumerate(a)]
            elif isinstance(a, torch.Tensor):
                spec_pos += 1
            slot += 1
            return -slot

        records = []
        ext_rng, annotated, seeds, rng_nodes, consumed = [], [], [], [], set()
        for i, n in enumerate(nodes):
            node_spec_pos.append(spec_pos)
            spec_pos += 1
            args = [item(a, (i, "a", k)) for k, a in enumerate(n.args)]
            kwargs = [[name, item(a, (i, "k", name))] for name, a in n.kwargs.items()] if n.kwargs else []
            rng = n.rng
            link = None
            if rng.__class__ is Node:
                j = pos.get(id(rng))
                if j is None:
                    link = -1
                    ext_rng.append(i)
                else:
                    link = j
                    consumed.add(j)
                rng_nodes.append(i)
            if n.target is seed_state:
                seeds.append(i)
                rng_nodes.append(i)
            if n.runtime is not None:
                annotated.append(i)
            records.append([_wire_name(n.target), args, kwargs, link])
        self.slots = slot
        self.raw = wire.pack(records)
        self.imports = sorted({m for m in map(_provider, (n.target for n in nodes)) if m})
        self.fp = hashlib.blake2b(self.raw, digest_size=16).digest()
        self.node_spec_pos = node_spec_pos
        self.ext_slots = ext_slots
        self.ext_rng = ext_rng
        self.annotated = annotated
        self.seeds = set(seeds)
        self.keep = [i for i, k in enumerate(plan.kept) if k and i not in self.seeds]
        self.rng_links = [(i, r[3]) for i, r in enumerate(records) if r[3] is not None]
        self.rng_live = [i for i in rng_nodes if i not in consumed]
        self.rng_consumed = sorted(consumed)

    def disagreements(self, plan) -> list[str]:
        """Where this template's reading of ``plan`` differs from the local encoder's (``plan._encode``):
        the number of input slots, each external argument's slot and spec, each node's spec. Empty
        when they agree, as they must for every plan (the tests check every plan of the suite)."""
        problems = []
        if self.slots != len(plan.inputs):
            problems.append(f"{self.slots} input slots, the encoder made {len(plan.inputs)}")
        nodes, specs = plan.nodes, plan.specs
        for i, at in enumerate(self.node_spec_pos):
            if at >= len(specs) or specs[at] is not nodes[i].spec:
                problems.append(f"node {i} ({op_name(nodes[i].target)}): spec position {at} holds another spec")
        for slot, at, path in self.ext_slots:
            arg = _argument_at(nodes, path)
            if slot >= len(plan.inputs) or at >= len(specs) or specs[at] is not arg.spec:
                problems.append(f"external argument at {path}: slot {slot} or spec position {at} disagrees")
        return problems

    def links_hold(self, nodes) -> bool:
        """Whether the RNG links of ``nodes`` are the ones this template was made from. The
        fingerprint leaves them out (local replay reads them from the nodes); after a reseed, an
        older unexecuted random node and a newer one can share a plan with the same fingerprint
        but other links. A link outside the plan points at an executed node."""
        for i, j in self.rng_links:
            rng = nodes[i].rng
            if (rng.value is None) if j < 0 else (rng is not nodes[j]):
                return False
        return True


def _storage_bytes(value: torch.Tensor, spec) -> int:
    """Bytes of a node's value to send: its storage from the first byte, as far as the spec says
    the storage reaches (views re-derived from it on the server may reach that far) or its elements do."""
    start, n = wire.extent(value)
    return max(spec.storage_nbytes, start + n if value.numel() else 0)


def _locate(nodes, path) -> Node:
    i, where, key, *rest = path
    n = nodes[i]
    a = n.args[key] if where == "a" else n.kwargs[key]
    for k in rest:
        a = a[k]
    return a


_ANN_KEYS = ("grad_enabled", "default_dtype", "reads_written", "shared_writes", "reads_written_items")


class RemoteExecutor(Executor):
    """Runs plans on a server. ``replays``: plans come with fingerprints, on which structures are
    sent once."""

    replays = True
    remote = True

    def __init__(self, conn: Connection):
        self.conn = conn
        self.device = torch.device("cpu")  # where values read back on this side live
        self._templates: OrderedDict = OrderedDict()
        self.last_mode = "remote"
        self.last_up = self.last_down = 0

    def adopt(self, src: torch.Tensor):
        """Large sources are copied into shared memory, which the server maps as the resident value."""
        nbytes = src.numel() * src.element_size()
        conn = self.conn
        if conn.dead is not None or not conn.shm or nbytes <= INLINE_MAX:
            return src.detach().clone()
        seg = _segment(nbytes)
        if seg is None:
            return src.detach().clone()
        out = torch.empty(0, dtype=src.dtype).set_(seg.tensor.untyped_storage(), 0, src.shape, src.stride())
        out.copy_(src)
        shm.register(out, seg)
        return out

    def put(self, node: Node) -> None:
        """Make ``node``'s value, held in this process, resident on the server."""
        value = node.value
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"genie remote: {node!r} holds {type(value).__name__}, not a tensor")
        conn = self.conn
        up = conn.bytes_up
        descriptors, streams, segments = [], [], []
        conn.upload(value, 0, _storage_bytes(value, node.spec), descriptors, streams, segments)
        vid = conn.new_id()
        try:
            conn.call(Kind.PUT, {"ids": [vid], "tensors": descriptors}, streams)
        finally:
            for s in segments:
                s.unlink()
        node.value = RemoteValue(conn, vid)
        self.last_mode, self.last_up, self.last_down = "put", conn.bytes_up - up, 0

    def run_node(self, node):  # plans run whole, on the server
        raise NotImplementedError("RemoteExecutor runs whole plans")

    def _template(self, plan) -> Template:
        key = plan.key
        if key is None:
            return Template(plan)
        try:
            t = self._templates.get(key)
        except TypeError:  # an unhashable atom: nothing to cache on
            return Template(plan)
        if t is None:
            t = self._templates[key] = Template(plan)
            if len(self._templates) > 1024:
                self._templates.popitem(last=False)
        else:
            self._templates.move_to_end(key)
        return t

    def execute(self, plan) -> None:
        if plan.key is None:  # too large to fingerprint: encode it anyway (slots as _encode would)
            _encode(plan, plan.nodes)
        tpl = self._template(plan)
        if not tpl.links_hold(plan.nodes):  # same fingerprint, other RNG links (a reseeded chain)
            tpl = Template(plan)
        conn = self.conn
        up0, down0 = conn.bytes_up, conn.bytes_down
        try:
            self._run(plan, tpl, resend=tpl.fp not in conn.known)
        except _UnknownStructure:  # evicted on the server: once more, whole
            conn.known.discard(tpl.fp)
            self._run(plan, tpl, resend=True)
        self.last_up, self.last_down = conn.bytes_up - up0, conn.bytes_down - down0

    def _run(self, plan, tpl: Template, resend: bool) -> None:
        conn = self.conn
        nodes = plan.nodes
        specs = plan.specs
        table: list = []
        index: dict = {}

        def sidx(s):
            if s is None:
                return None
            if s.__class__ is tuple:
                return [sidx(x) for x in s]
            k = index.get(id(s))
            if k is None:
                k = index[id(s)] = len(table)
                table.append(_encode_spec(s))
            return k

        descriptors, streams, segments, uploads = [], [], [], []
        inputs = []
        sent: dict = {}  # id of a tensor uploaded in this message -> its Blob
        ext_at = {slot: (sp, path) for slot, sp, path in tpl.ext_slots}
        for k, v in enumerate(plan.inputs):
            c = v.__class__
            elsewhere = False
            if c is RemoteValue:
                if v.conn is conn:
                    inputs.append(Ref(v.id))
                    continue
                # resident on another server (another device: the source of a copy between devices):
                # it passes through this process and stays where it lives
                v = v.conn.fetch(v, specs[ext_at[k][0]] if k in ext_at else None)
                c = v.__class__
                elsewhere = True
            if isinstance(v, torch.Tensor):
                if elsewhere:
                    if k in ext_at:  # a node's value: laid out in a storage as large as its spec says
                        spec = specs[ext_at[k][0]]
                        if v.untyped_storage().nbytes() < spec.storage_nbytes:
                            from ..local import clone_exact
                            v = clone_exact(v, spec)
                        start, n = 0, _storage_bytes(v, spec)
                    else:
                        start, n = wire.extent(v)
                    inputs.append(conn.upload(v, start, n, descriptors, streams, segments))
                elif k in ext_at:  # a materialized node's value: its whole storage, and keep it there
                    blob = sent.get(id(v))
                    if blob is not None:  # the same value read at another place of the plan: sent once
                        inputs.append(blob)
                        continue
                    nbytes = _storage_bytes(v, specs[ext_at[k][0]])
                    blob = sent[id(v)] = conn.upload(v, 0, nbytes, descriptors, streams, segments)
                    inputs.append(blob)
                    uploads.append((k, conn.new_id()))
                else:
                    start, n = wire.extent(v)
                    inputs.append(conn.upload(v, start, n, descriptors, streams, segments))
            elif (c is tuple or c is list) and k in ext_at:
                # a multi-output node computed in this process (a local run between remote blocks):
                # each output's storage goes up, and the server keeps them as one value
                parts = []
                for t, spec in zip(v, specs[ext_at[k][0]]):
                    if isinstance(t, torch.Tensor):
                        parts.append(conn.upload(t, 0, _storage_bytes(t, spec), descriptors, streams, segments))
                    else:
                        parts.append(t)
                inputs.append(parts)
                if not elsewhere:
                    uploads.append((k, conn.new_id()))
            else:
                inputs.append(v)
        rng = []
        for i in tpl.ext_rng:
            state = nodes[i].rng.rng
            if state.__class__ is RemoteValue and state.conn is conn:
                rng.append([i, Ref(state.id)])
            elif state.__class__ is RemoteValue or isinstance(state, torch.Tensor):
                t = state.fetch() if state.__class__ is RemoteValue else state
                start, n = wire.extent(t)
                rng.append([i, conn.upload(t, start, n, descriptors, streams, segments)])
            else:
                n = nodes[i]
                raise RuntimeError(f"genie: {n.op} (node %{n.id}): the generator state it starts from is gone "
                                   "(a random value was dropped and then needed again)")
        ann = []
        for i in tpl.annotated:
            a = {k: v for k, v in nodes[i].runtime.items() if k in _ANN_KEYS}
            if "reads_written" in a:
                a["reads_written"] = [[where, j, sidx(s)] for where, j, s in a["reads_written"]]
            if "shared_writes" in a:
                a["shared_writes"] = [[k, j] for k, j in a["shared_writes"]]
            if "reads_written_items" in a:
                a["reads_written_items"] = [[where, k, j, sidx(s)] for where, k, j, s in a["reads_written_items"]]
            ann.append([i, a])
        keep = [[i, conn.new_id()] for i in tpl.keep]
        rkeep = [[i, conn.new_id()] for i in tpl.rng_live]
        msg = {
            "fp": tpl.fp,
            "in": inputs,
            "nspec": [sidx(specs[p]) for p in tpl.node_spec_pos],
            "xspec": [[slot, sidx(specs[sp])] for slot, sp, _ in tpl.ext_slots],
            "rng": rng, "ann": ann, "keep": keep, "rkeep": rkeep,
            "ups": [[k, vid] for k, vid in uploads],
            "tensors": descriptors,
        }
        msg["specs"] = table  # after every sidx call
        fetch = plan.fetched is WANT_VALUE
        downloads = {}
        if fetch:
            msg["fetch"] = [len(nodes) - 1]
            msg["to"], downloads = conn.download_offer([nodes[-1].spec])
        if resend:
            msg["structure"] = tpl.raw
            if tpl.imports:
                msg["imports"] = tpl.imports
            conn.structures_sent += 1
        conn.runs += 1
        try:
            reply = conn.call(Kind.RUN, msg, streams, downloads)
        finally:
            for s in segments:
                s.unlink()
            for s in downloads.values():
                s.unlink()
        conn.known.add(tpl.fp)
        self.last_mode = reply.get("mode") or "remote"
        # the run succeeded: record where every kept value and generator state now lives
        for i, vid in keep:
            nodes[i].value = RemoteValue(conn, vid)
        for i in tpl.seeds:
            nodes[i].value = True
        for i in tpl.ext_rng:  # before the links inside the plan lose their predecessors
            nodes[i].rng.rng = SPENT
        for i in tpl.rng_consumed:
            nodes[i].rng = SPENT
        for i, vid in rkeep:
            nodes[i].rng = RemoteValue(conn, vid)
        for k, vid in uploads:
            _locate(nodes, ext_at[k][1]).value = RemoteValue(conn, vid)
        if fetch:
            plan.fetched = reply["tensors"][0]

