"""The wire format between a client and a genie server: data only, safe to parse from anyone.

A frame is a fixed header and a payload::

    magic  b"GNIE"   4 bytes
    version          u16   (``VERSION``; a peer speaking another version is refused)
    kind             u16   (``Kind``)
    length           u64   (payload bytes; refused past the receiver's limit before anything is read)

Control payloads are MessagePack maps (msgpack is a data format: maps, arrays, numbers, strings,
bytes). The few torch values an op call needs beyond those travel as msgpack extension types
decoded through a fixed table (``_EXT``): dtypes, devices, memory formats and layouts by name
from an allowlist, complex numbers, references to tensor payloads and to resident values. Nothing
received is unpickled, ``torch.load``-ed or evaluated; an unknown extension code, a name outside the
allowlist or a malformed structure is a ``ProtocolError``.

Tensor bytes travel beside the control message: inline (small), in a shared-memory segment the
client created (one host), or as ``DATA`` frames of at most ``CHUNK`` bytes that follow it.
"""

from __future__ import annotations

import enum
import re
import socket
import struct

import msgpack
import torch

from ... import _torch

MAGIC = b"GNIE"
VERSION = 2  # 2: write notes shared_writes and reads_written_items (capture/written_memory.py)
HEADER = struct.Struct("!4sHHQ")
CHUNK = 4 << 20  # bytes per DATA frame when tensor bytes go through the socket
INLINE_MAX = 64 << 10  # tensors up to this size travel inside the control message
MAX_CONTROL = 256 << 20  # a control frame larger than this is refused before it is read
MAX_TENSOR = 64 << 30  # one tensor payload larger than this is refused


class Kind(enum.IntEnum):
    HELLO = 1  # client -> server: token, version
    WELCOME = 2  # server -> client: device, shared memory verdict
    RUN = 3  # a plan: fingerprint (+ structure when new), inputs, what to keep, free, fetch
    DONE = 4  # a RUN or a request succeeded (fetched tensors follow as described)
    ERROR = 5  # a request failed: exception type, message, op
    FETCH = 6  # send back resident values
    STATS = 7  # resident bytes, tensors, plan cache
    FREE = 8  # release resident values (no answer)
    DATA = 9  # a chunk of tensor bytes
    PUT = 10  # store uploaded tensors as resident values


class ProtocolError(Exception):
    """Bytes that are not a well-formed genie frame or message."""


class PeerClosed(ConnectionError):
    """The other side closed the connection."""


# --------------------------------------------------------------------------------------------
# frames


def send_frame(sock: socket.socket, kind: int, payload) -> None:
    head = HEADER.pack(MAGIC, VERSION, int(kind), len(payload))
    if len(payload) <= INLINE_MAX:  # one segment on the wire, one system call
        sock.sendall(head + bytes(payload))
    else:
        sock.sendall(head)
        sock.sendall(payload)


def recv_exact(sock: socket.socket, n: int, into=None) -> memoryview:
    """Exactly ``n`` bytes (into ``into``, a writable buffer, when given). The socket's own timeout
    bounds every wait."""
    buf = memoryview(bytearray(n)) if into is None else memoryview(into).cast("B")
    got = 0
    while got < n:
        k = sock.recv_into(buf[got:], n - got)
        if k == 0:
            raise PeerClosed(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


def recv_header(sock: socket.socket, limit: int = MAX_CONTROL) -> tuple[Kind, int]:
    """(kind, length) of the next frame, validated: magic, version, known kind, length limit."""
    return parse_header(bytes(recv_exact(sock, HEADER.size)), limit)


def parse_header(head: bytes, limit: int = MAX_CONTROL) -> tuple[Kind, int]:
    magic, version, kind, length = HEADER.unpack(head)
    if magic != MAGIC:
        raise ProtocolError(f"not a genie frame (starts with {head[:8]!r})")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version} is not supported (this side speaks {VERSION})")
    try:
        kind = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown frame kind {kind}") from None
    if kind is not Kind.DATA and length > limit:
        raise ProtocolError(f"{kind.name} frame of {length} bytes is over the limit of {limit}")
    if kind is Kind.DATA and length > CHUNK:
        raise ProtocolError(f"DATA frame of {length} bytes is over the chunk size {CHUNK}")
    return kind, length


def recv_message(sock: socket.socket, limit: int = MAX_CONTROL):
    """(kind, decoded payload) of the next control frame."""
    kind, length = recv_header(sock, limit)
    if kind is Kind.DATA:
        raise ProtocolError("DATA frame where a control frame was expected")
    return kind, unpack(recv_exact(sock, length)) if length else None


def send_message(sock: socket.socket, kind: int, message) -> None:
    send_frame(sock, kind, pack(message))


def send_stream(sock: socket.socket, raw: memoryview) -> None:
    """Tensor bytes as DATA frames of at most CHUNK bytes."""
    for start in range(0, len(raw), CHUNK):
        send_frame(sock, Kind.DATA, raw[start:start + CHUNK])


def recv_stream(sock: socket.socket, into: memoryview) -> None:
    got, n = 0, len(into)
    while got < n:
        kind, length = recv_header(sock)
        if kind is not Kind.DATA or length == 0 or got + length > n:
            raise ProtocolError(f"expected {n - got} more bytes of tensor data, got a {kind.name} frame of {length}")
        recv_exact(sock, length, into[got:got + length])
        got += length


# --------------------------------------------------------------------------------------------
# values: msgpack with a fixed table of extension types


class Ref:
    """A resident value on the server, by the id the client gave it."""
    __slots__ = ("id",)

    def __init__(self, id: int):
        self.id = id

    def __eq__(self, other):
        return isinstance(other, Ref) and other.id == self.id

    def __hash__(self):
        return hash(("Ref", self.id))

    def __repr__(self):
        return f"Ref({self.id})"


class Blob:
    """A tensor payload: index into the message's ``tensors`` table."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __eq__(self, other):
        return isinstance(other, Blob) and other.index == self.index

    def __repr__(self):
        return f"Blob({self.index})"


_DTYPES = {str(d).removeprefix("torch."): d for d in vars(torch).values() if isinstance(d, torch.dtype)}
_MEMORY_FORMATS = {str(m).removeprefix("torch."): m for m in (torch.contiguous_format, torch.channels_last,
                                                               torch.channels_last_3d, torch.preserve_format)}
_LAYOUTS = {str(lay).removeprefix("torch."): lay for lay in (torch.strided, torch.sparse_coo, torch.sparse_csr,
                                                               torch.sparse_csc, torch.sparse_bsr, torch.sparse_bsc,
                                                               torch._mkldnn, torch.jagged)}
_DEVICE_TEXT = re.compile(r"^(cpu|cuda|meta|remote_accelerator)(:[0-9]{1,4})?$")
_COMPLEX = struct.Struct("<dd")
_U64 = struct.Struct("<Q")

EXT_DTYPE, EXT_DEVICE, EXT_MEMORY_FORMAT, EXT_LAYOUT, EXT_COMPLEX, EXT_BLOB, EXT_REF, EXT_TUPLE = range(1, 9)


def dtype_name(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def dtype_of(name) -> torch.dtype:
    d = _DTYPES.get(name) if isinstance(name, str) else None
    if d is None:
        raise ProtocolError(f"unknown dtype {name!r}")
    return d


def _default(v):
    c = v.__class__
    if c is torch.dtype:
        return msgpack.ExtType(EXT_DTYPE, dtype_name(v).encode())
    if c is torch.device:
        return msgpack.ExtType(EXT_DEVICE, str(v).encode())
    if c is torch.memory_format:
        return msgpack.ExtType(EXT_MEMORY_FORMAT, str(v).removeprefix("torch.").encode())
    if c is torch.layout:
        return msgpack.ExtType(EXT_LAYOUT, str(v).removeprefix("torch.").encode())
    if c is complex:
        return msgpack.ExtType(EXT_COMPLEX, _COMPLEX.pack(v.real, v.imag))
    if c is Ref:
        return msgpack.ExtType(EXT_REF, _U64.pack(v.id))
    if c is Blob:
        return msgpack.ExtType(EXT_BLOB, _U64.pack(v.index))
    if c is tuple or isinstance(v, tuple):  # torch.Size and other tuples: kernels take them as lists
        return list(v)
    raise TypeError(f"genie wire: cannot send a value of type {type(v).__name__}")


def _ext_hook(code: int, data: bytes):
    try:
        text = data.decode() if code in (EXT_DTYPE, EXT_DEVICE, EXT_MEMORY_FORMAT, EXT_LAYOUT) else None
    except UnicodeDecodeError:
        raise ProtocolError(f"extension {code}: not text") from None
    if code == EXT_DTYPE:
        return dtype_of(text)
    if code == EXT_DEVICE:
        if not _DEVICE_TEXT.match(text):
            raise ProtocolError(f"bad device {text!r}")
        return torch.device(text)
    if code == EXT_MEMORY_FORMAT:
        if text not in _MEMORY_FORMATS:
            raise ProtocolError(f"unknown memory format {text!r}")
        return _MEMORY_FORMATS[text]
    if code == EXT_LAYOUT:
        if text not in _LAYOUTS:
            raise ProtocolError(f"unknown layout {text!r}")
        return _LAYOUTS[text]
    if code == EXT_COMPLEX and len(data) == _COMPLEX.size:
        return complex(*_COMPLEX.unpack(data))
    if code == EXT_REF and len(data) == 8:
        return Ref(_U64.unpack(data)[0])
    if code == EXT_BLOB and len(data) == 8:
        return Blob(_U64.unpack(data)[0])
    raise ProtocolError(f"unknown or malformed extension type {code}")


_packer_opts = dict(default=_default, use_bin_type=True, strict_types=True)


def pack(message) -> bytes:
    return msgpack.packb(message, **_packer_opts)


def unpack(data):
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=True, use_list=True)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack's own errors on garbage: one type for the caller
        raise ProtocolError(f"malformed message: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------
# tensors


def tensor_header(t: torch.Tensor, start: int, nbytes: int) -> dict:
    """What the receiver needs to rebuild ``t`` from the bytes ``[start, start + nbytes)`` of its
    storage: dtype, sizes, strides, offset (in elements, from ``start``), the lazy bits."""
    return {"dtype": dtype_name(t.dtype), "shape": list(t.shape), "stride": list(t.stride()),
            "offset": t.storage_offset() - start // t.element_size(), "nbytes": nbytes,
            "conj": t.is_conj(), "neg": t.is_neg()}


def extent(t: torch.Tensor) -> tuple[int, int]:
    """(first byte, bytes) of ``t``'s storage that its elements touch."""
    size = t.element_size()
    if t.numel() == 0:
        return t.storage_offset() * size, 0
    last = t.storage_offset() + sum((n - 1) * s for n, s in zip(t.shape, t.stride()) if n > 0)
    return t.storage_offset() * size, (last - t.storage_offset() + 1) * size


def raw_bytes(t: torch.Tensor, start: int, nbytes: int) -> torch.Tensor:
    """A uint8 CPU view of bytes ``[start, start + nbytes)`` of ``t``'s storage."""
    raw = torch.empty(0, dtype=torch.uint8)
    raw.set_(t.untyped_storage(), start, (nbytes,), (1,))
    return raw


def check_header(h) -> tuple:
    """Validate a received tensor header; returns (dtype, shape, stride, offset, nbytes, conj, neg)."""
    if not isinstance(h, dict):
        raise ProtocolError("tensor header is not a map")
    try:
        dtype = dtype_of(h["dtype"])
        shape, stride, offset, nbytes = h["shape"], h["stride"], h["offset"], h["nbytes"]
        conj, neg = bool(h.get("conj", False)), bool(h.get("neg", False))
    except KeyError as e:
        raise ProtocolError(f"tensor header lacks {e}") from None
    ints = (shape, stride)
    if not all(isinstance(x, list) and all(isinstance(i, int) and i >= 0 for i in x) for x in ints) \
            or len(shape) != len(stride) or len(shape) > 64:
        raise ProtocolError("tensor header: sizes and strides must be lists of non-negative ints of one length")
    if not isinstance(offset, int) or offset < 0 or not isinstance(nbytes, int) or not 0 <= nbytes <= MAX_TENSOR:
        raise ProtocolError(f"tensor header: bad offset {offset!r} or byte count {nbytes!r}")
    size = dtype.itemsize
    if all(n > 0 for n in shape):
        need = (offset + sum((n - 1) * s for n, s in zip(shape, stride)) + 1) * size
        if need > nbytes:
            raise ProtocolError(f"tensor header: the elements reach byte {need}, past the {nbytes} bytes sent")
    if nbytes % size:
        raise ProtocolError(f"tensor header: {nbytes} bytes is not a whole number of {dtype} elements")
    return dtype, shape, stride, offset, nbytes, conj, neg


def describe_tensor(t: torch.Tensor, start: int, nbytes: int, segment, streams: list) -> dict:
    """The descriptor of bytes ``[start, start + nbytes)`` of ``t``'s storage for a message: copied
    into ``segment`` (a mapped shared-memory segment the sender chose, or None), inline when small,
    else appended to ``streams`` to follow the message as DATA frames."""
    header = tensor_header(t, start, nbytes)
    raw = raw_bytes(t, start, nbytes)
    if segment is not None:
        segment.tensor[:nbytes].copy_(raw)
        return {"h": header, "shm": segment.name}
    if nbytes <= INLINE_MAX:
        return {"h": header, "data": raw.numpy().tobytes()}
    streams.append(raw)
    return {"h": header, "stream": True}


def receive_tensors(sock: socket.socket, descriptors, shared, device=None) -> list[torch.Tensor]:
    """The tensors a message describes: inline bytes, a shared-memory segment (``shared(k, name,
    nbytes)`` maps it, by the receiver's own rule for which segments it accepts) or DATA frames that
    follow the message on ``sock``, in order. Each is rebuilt from its checked header, on ``device``."""
    if not isinstance(descriptors, list):
        raise ProtocolError("tensors must be a list")
    out = []
    for k, d in enumerate(descriptors):
        if not isinstance(d, dict):
            raise ProtocolError("tensor descriptor is not a map")
        header = check_header(d.get("h"))
        nbytes = header[4]
        if "data" in d:
            data = d["data"]
            if not isinstance(data, bytes) or len(data) != nbytes:
                raise ProtocolError("inline tensor bytes do not match their header")
            raw = torch.frombuffer(bytearray(data), dtype=torch.uint8) if nbytes else torch.empty(0, dtype=torch.uint8)
        elif "shm" in d:
            raw = shared(k, d["shm"], nbytes)
        elif d.get("stream"):
            raw = torch.empty(nbytes, dtype=torch.uint8)
            recv_stream(sock, memoryview(raw.numpy()))
        else:
            raise ProtocolError("tensor descriptor names no bytes")
        if device is not None and device.type != "cpu":
            raw = raw.to(device)
        out.append(tensor_from(raw, header))
    return out


def tensor_from(raw: torch.Tensor, header: tuple) -> torch.Tensor:
    """Rebuild a tensor over ``raw`` (uint8, exactly ``nbytes``) from a checked header."""
    dtype, shape, stride, offset, nbytes, conj, neg = header
    out = torch.empty(0, dtype=dtype, device=raw.device)
    out.set_(raw.untyped_storage(), offset, shape, stride)
    if conj:
        _torch.set_conj(out, True)
    if neg:
        _torch.set_neg(out, True)
    return out
