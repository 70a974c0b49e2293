"""Genie: run unmodified PyTorch programs against a remote accelerator, lazily.

Importing genie registers the ``remote_accelerator`` device. Tensors there are LazyTensors: each
op is captured into a graph with exact metadata; values are computed, on the execution device,
only when something reads them.
"""

from __future__ import annotations

import contextlib

import torch

from . import _backend
from . import config as _config
from .capture import decisions as _decisions
from .capture import dispatch as _dispatch
from .capture import hooks as _capture_hooks
from .capture.lazy_tensor import LazyTensor
from .capture.stats import capture_stats, reset_capture_stats
from .config import execution_device
from .execution import scheduler as _scheduler
from .execution import syncs as _syncs
from .execution.servers import RemoteError, ServerHandle, remote, server_stats, start_server
from .graph.graph import Graph, get_graph, graph_of
from .graph.node import Node, TensorSpec
from .semantics import context as _semantic_context
from .semantics import patterns
from .semantics.analysis import analyze
from .semantics.context import keep_structure, phase

_backend.register()
_capture_hooks.semantics.first_use = _semantic_context.install

__version__ = "0.1.0"


def set_execution_device(device) -> None:
    """Where captured graphs execute from now on (``"cpu"`` or ``"cuda"``): the executor and every
    decision capture made for the previous device (kernels, policies, traces) go with it."""
    _config.set_execution_device(device)
    _scheduler.reset_executor()
    _decisions.forget()


class RemoteAcceleratorDevice:
    """The device handle: ``RemoteAcceleratorDevice.get_device(0) == torch.device("remote_accelerator:0")``."""

    @staticmethod
    def get_device(index: int = 0) -> torch.device:
        n = _scheduler.device_count()
        if not 0 <= index < n:
            raise RuntimeError(f"remote_accelerator: device index {index} out of range ({n} device{'s' * (n != 1)})")
        return torch.device("remote_accelerator", index)


def replay_stats() -> dict:
    """Compiled replay (execution/replay.py): hits, misses, compiles, compile time, cache size (of the
    server, when execution is remote)."""
    executor = _scheduler.get_executor()
    if executor.remote:  # the server replays
        return server_stats()["replay"]
    programs = getattr(executor, "programs", None)
    if programs is None or not getattr(executor, "replays", False):
        return {"enabled": False}
    return programs.stats()


def reset_replay_stats() -> None:
    programs = getattr(_scheduler.get_executor(), "programs", None)
    if programs is not None:
        programs.reset_stats()


def materialize(*tensors):
    """Compute the given LazyTensors now (their values stay cached on the execution device)."""
    for t in tensors:
        _dispatch.value_of(t, local=False)


def sync_report(file=None, reset: bool = False):
    """Every materialization so far, grouped by the source line that caused it (syncs.py); printed
    to ``file`` (stdout by default; ``file=False`` prints nothing) and returned."""
    import sys
    report = _syncs.report()
    if file is not False:
        print(report.table(), file=file or sys.stdout)
    if reset:
        snapshot = _syncs.SyncReport(dict(report.sites))
        report.clear()
        return snapshot
    return report


@contextlib.contextmanager
def sync_points():
    """Record the materializations of one block: ``with genie.sync_points() as report: ...``."""
    report = _syncs.SyncReport()
    _syncs.push(report)
    try:
        yield report
    finally:
        _syncs.pop(report)


__all__ = [
    "Graph", "LazyTensor", "Node", "RemoteAcceleratorDevice", "RemoteError", "ServerHandle", "TensorSpec",
    "analyze", "capture_stats", "execution_device", "get_graph", "graph_of", "keep_structure", "materialize", "patterns", "phase", "remote", "replay_stats",
    "reset_capture_stats", "reset_replay_stats", "server_stats", "set_execution_device", "start_server",
    "sync_points", "sync_report",
]
