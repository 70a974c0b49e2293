"""Shared-memory segments for tensor bytes between two processes on one host.

A segment is a file under /dev/shm, created by the client with a random name, mapped by both
sides, and unlinked by the client as soon as the server has answered the request that named it
(the mappings keep the memory until both drop it, so a crash leaves nothing behind). Names are
checked against one pattern before anything is opened, so a peer cannot name another file.

Python's ``multiprocessing.shared_memory`` is not used: before 3.13 a process that merely attaches
to a segment registers it with its resource tracker, which unlinks it when that process exits.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
import weakref

import torch

ROOT = "/dev/shm"
_NAME = re.compile(r"^genie-[0-9]{1,10}-[0-9a-f]{24}$")


def available() -> bool:
    return os.path.isdir(ROOT) and os.access(ROOT, os.W_OK)


class Segment:
    """A mapped segment; ``tensor`` is a uint8 CPU tensor over all of it (it keeps the mapping alive)."""

    __slots__ = ("name", "nbytes", "tensor", "_owner", "__weakref__")

    def __init__(self, name: str, nbytes: int, tensor: torch.Tensor, owner: bool):
        self.name = name
        self.nbytes = nbytes
        self.tensor = tensor
        self._owner = owner

    @classmethod
    def create(cls, nbytes: int) -> Segment:
        name = f"genie-{os.getpid()}-{secrets.token_hex(12)}"
        fd = os.open(os.path.join(ROOT, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(nbytes, 1))
            mm = mmap.mmap(fd, max(nbytes, 1))
        except BaseException:
            os.unlink(os.path.join(ROOT, name))
            raise
        finally:
            os.close(fd)
        return cls(name, nbytes, _over(mm, nbytes), owner=True)

    @classmethod
    def open(cls, name, nbytes: int) -> Segment:
        """Map a segment the peer created; ``nbytes`` must not exceed its size."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"not a genie shared-memory segment name: {name!r}")
        fd = os.open(os.path.join(ROOT, name), os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            size = os.fstat(fd).st_size
            if nbytes > size:
                raise ValueError(f"segment {name} holds {size} bytes, {nbytes} were announced")
            mm = mmap.mmap(fd, max(nbytes, 1))
        finally:
            os.close(fd)
        return cls(name, nbytes, _over(mm, nbytes), owner=False)

    def unlink(self) -> None:
        if self._owner:
            self._owner = False
            try:
                os.unlink(os.path.join(ROOT, self.name))
            except FileNotFoundError:
                pass

    def __del__(self):
        self.unlink()


_registry: dict[int, weakref.ref] = {}


def register(t: torch.Tensor, seg: Segment) -> None:
    """``t`` lives in ``seg`` (from its first byte): an upload of it can name the segment instead of
    copying. The tensor keeps the segment (and so its file) alive."""
    t._genie_segment = seg
    address = t.untyped_storage().data_ptr()
    _registry[address] = weakref.ref(seg, lambda _r, p=address: _registry.pop(p, None))


def registered(t: torch.Tensor):
    """The segment ``t``'s storage was registered with, if its file is still there to name."""
    ref = _registry.get(t.untyped_storage().data_ptr())
    seg = ref() if ref is not None else None
    return seg if seg is not None and seg._owner and getattr(t, "_genie_segment", None) is seg else None


def _over(mm: mmap.mmap, nbytes: int) -> torch.Tensor:
    import warnings
    with warnings.catch_warnings():  # frombuffer warns that the buffer is writable: it is meant to be
        warnings.simplefilter("ignore")
        t = torch.frombuffer(mm, dtype=torch.uint8)
    return t[:nbytes]
