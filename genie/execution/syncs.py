"""Sync points: every materialization, recorded against the user's source line that caused it.

Users of lazy-tensor systems lose most of their time to syncs they did not know they had (an
``.item()`` in a loop, a print, a branch on a value). Each materialization and each read of a
resident value is recorded here with the first frame outside genie and torch that led to it: how
many nodes ran, whether they ran as a replayed or freshly compiled program or were interpreted,
bytes moved to and from a server, and the time spent waiting. ``genie.sync_report()`` prints
them grouped by line, busiest first; ``with genie.sync_points() as report:`` records one block.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, field

import torch

_GENIE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_lock = threading.Lock()


@dataclass
class SyncSite:
    """The materializations one source line caused."""
    filename: str
    lineno: int
    function: str
    line: str = ""
    syncs: int = 0
    nodes: int = 0
    replayed: int = 0
    compiled: int = 0
    interpreted: int = 0
    reads: int = 0  # reads of values computed earlier (no nodes ran)
    puts: int = 0  # values held here made resident on a server
    bytes_up: int = 0
    bytes_down: int = 0
    wait_s: float = 0.0

    @property
    def where(self) -> str:
        return f"{os.path.basename(self.filename)}:{self.lineno} ({self.function})"


@dataclass
class SyncReport:
    sites: dict = field(default_factory=dict)

    def rows(self) -> list[SyncSite]:
        return sorted(self.sites.values(), key=lambda s: (-s.wait_s, -s.syncs))

    @property
    def total(self) -> SyncSite:
        t = SyncSite("<total>", 0, "")
        for s in self.sites.values():
            for f in ("syncs", "nodes", "replayed", "compiled", "interpreted", "reads", "puts", "bytes_up", "bytes_down",
                      "wait_s"):
                setattr(t, f, getattr(t, f) + getattr(s, f))
        return t

    def clear(self) -> None:
        self.sites.clear()

    def record(self, frame, nodes: int, mode: str, up: int, down: int, wait_s: float) -> None:
        key = (frame.f_code.co_filename, frame.f_lineno)
        site = self.sites.get(key)
        if site is None:
            site = self.sites[key] = SyncSite(key[0], key[1], frame.f_code.co_name, _source(key[0], key[1]))
        site.syncs += 1
        site.nodes += nodes
        if mode == "read":
            site.reads += 1
        elif mode == "put":
            site.puts += 1
        elif mode in ("replayed", "compiled", "interpreted"):
            setattr(site, mode, getattr(site, mode) + 1)
        site.bytes_up += up
        site.bytes_down += down
        site.wait_s += wait_s

    def table(self) -> str:
        head = (f"{'source line':<40} {'syncs':>6} {'nodes':>7} {'replay':>6} {'compile':>7} {'interp':>6} "
                f"{'reads':>5} {'puts':>4} {'up':>10} {'down':>10} {'wait ms':>9}")
        lines = [head, "-" * len(head)]
        for s in self.rows() + [self.total]:
            lines.append(f"{s.where if s.lineno else '<total>':<40.40} {s.syncs:>6} {s.nodes:>7} {s.replayed:>6} "
                         f"{s.compiled:>7} {s.interpreted:>6} {s.reads:>5} {s.puts:>4} {_bytes(s.bytes_up):>10} "
                         f"{_bytes(s.bytes_down):>10} {s.wait_s * 1e3:>9.2f}")
            if s.line:
                lines.append(f"    {s.line[:100]}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _source(filename: str, lineno: int) -> str:
    import linecache
    return linecache.getline(filename, lineno).strip()


_global = SyncReport()
_scoped: list[SyncReport] = []


def user_frame():
    """The innermost frame outside genie and torch (the line that asked for a value)."""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if not (name.startswith(_GENIE_DIR) or name.startswith(_TORCH_DIR) or name.startswith("<genie-replay")):
            return f
        f = f.f_back
    return sys._getframe(2)


def record(nodes: int, mode: str, up: int, down: int, wait_s: float) -> None:
    frame = user_frame()
    with _lock:
        _global.record(frame, nodes, mode, up, down, wait_s)
        for r in _scoped:
            r.record(frame, nodes, mode, up, down, wait_s)


def report() -> SyncReport:
    return _global


def push(r: SyncReport) -> None:
    with _lock:
        _scoped.append(r)


def pop(r: SyncReport) -> None:
    with _lock:
        _scoped.remove(r)
