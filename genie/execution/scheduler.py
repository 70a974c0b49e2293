"""Materialization: find what a value depends on, run it, keep what is still needed.

Only unexecuted ancestors of the requested node are collected (iteratively: 1e6-op chains must
not recurse). Values produced in a run are kept when something outside the run still refers to
their node (a live LazyTensor, a storage root, a node captured later) and dropped otherwise, as
soon as their last consumer in the run has executed. Kept nodes are collapsed: their inputs are
released, so the graph behind a materialized value is freed.

A plan also carries its *fingerprint* (``Plan.key``, see execution/replay.py): the structure of
the run without its sizes and numbers, on which compiled programs are cached, and the inputs
(materialized values, numbers, size lists) such a program takes, in the order it takes them.

A dropped node keeps its inputs, so if the reference count ever under-reports (an interpreter
that borrows references) the cost is a recomputation, never a wrong or missing value.
"""

from __future__ import annotations

import os
import threading
from time import perf_counter

import torch

from .. import _torch
from ..graph.node import Node, TensorSpec, index_of, iter_inputs
from . import syncs
from .base import WANT_VALUE
from .plan import Plan, _collect
from .remote.handle import RemoteValue

_lock = threading.RLock()
_executor = None  # device 0's executor: the only one unless several servers are configured
_others: tuple = ()  # executors of remote_accelerator:1, :2, ... (one server each)
# How long a materialization waits for another thread's run to finish before it gives up.
LOCK_TIMEOUT_S = float(os.environ.get("GENIE_MATERIALIZE_TIMEOUT_S", "600"))

def _configured_servers() -> list[str]:
    return [a.strip() for a in os.environ.get("GENIE_SERVERS", "").split(",") if a.strip()]


def get_executor(index: int = 0):
    """The executor of ``remote_accelerator:index``."""
    global _executor
    if _executor is None:
        servers = _configured_servers()
        if servers:  # unmodified programs run on the configured servers, one device each
            from .remote import pool
            executors = [pool.executor_for(a, os.environ.get("GENIE_SERVER_TOKEN")) for a in servers]
            set_executor(executors[0], executors[1:])
        else:
            from .. import config
            from .local import LocalExecutor
            _executor = LocalExecutor(config.execution_device())
    if index == 0:
        return _executor
    if index <= len(_others):
        return _others[index - 1]
    raise RuntimeError(f"remote_accelerator:{index} has no executor: there are {device_count()} devices "
                       "(each genie server is one device; see genie.remote)")


def device_count() -> int:
    """How many ``remote_accelerator`` devices there are: one per server, one when execution is local."""
    if _executor is None:
        return max(1, len(_configured_servers()))
    return 1 + len(_others)


def set_executor(executor, others=()) -> None:
    """Plug in another execution target (e.g. a server-process executor); ``others``: the
    executors of devices 1, 2, ... when there are several."""
    global _executor, _others
    _executor, _others = executor, tuple(others)
    _autograd_in_caller(bool(_others))


def reset_executor() -> None:
    set_executor(None)


_serial_backward = threading.local()


def beyond_device_0() -> None:
    # a thread that makes tensors on remote_accelerator:1 or later will run their backward
    if getattr(_serial_backward, "was", None) is None:
        _autograd_in_caller(True)


def _autograd_in_caller(on: bool) -> None:
    """With several devices, backward runs in the thread that calls it (the autograd engine's
    "multithreading disabled" mode, which torch keeps per thread).

    torch's pure-Python PrivateUse1 device guard reports one device, so the engine makes one
    device thread and ready queue for the backend and stops at an internal assert on a gradient
    of ``remote_accelerator:1``; in the caller's thread every node goes through the CPU ready
    queue, which serves any device index. Nothing else changes: genie's backward ops are
    captured, not run, wherever the engine calls them."""
    was = getattr(_serial_backward, "was", None)
    if on and was is None:
        _serial_backward.was = _torch.is_multithreading_enabled()
        _torch.set_multithreading_enabled(False)
    elif not on and was is not None:
        _torch.set_multithreading_enabled(was)
        _serial_backward.was = None


def materialize(node: Node, local: bool = False, index: int | None = None):
    """The value of ``node``, computing whatever it depends on. ``local``: a tensor in this
    process is wanted (a value resident on a server is brought back, with the run that computes
    it when there is one). ``index``: the device of a node without a tensor spec (a generator
    state). Every call that runs or reads something is a sync point (syncs.py)."""
    value = node.value
    if value is not None:
        if local and value.__class__ is RemoteValue:
            t0 = perf_counter()
            conn = value.conn
            down = conn.bytes_down
            value = conn.fetch(value, node.spec)
            syncs.record(0, "read", 0, conn.bytes_down - down, perf_counter() - t0)
        elif not local and value.__class__ is torch.Tensor and _executor is not None and _executor.remote:
            # held in this process (an upload not yet used): materializing makes it resident there
            t0 = perf_counter()
            executor = _executor if not _others else get_executor(_device_of(node, index))
            with _lock:
                if node.value is value:
                    executor.put(node)
            syncs.record(0, "put", executor.last_up, 0, perf_counter() - t0)
        return value
    if not _lock.acquire(timeout=LOCK_TIMEOUT_S):
        raise TimeoutError(f"genie: waited {LOCK_TIMEOUT_S:.0f} s for another thread's materialization "
                           f"(set GENIE_MATERIALIZE_TIMEOUT_S to wait longer); {node!r} was not computed")
    fetched = None
    try:
        if node.value is None:
            t0 = perf_counter()
            executor = get_executor()
            if _others:  # several devices: this one's executor, after the inputs other devices hold
                here = _device_of(node, index)
                executor = get_executor(here)
                _run_other_devices(node, here)
                if node.value is not None:
                    return materialize(node, local, index)
            if not executor.remote and RemoteValue.live:
                _bring_back(node)  # values left on a server by an earlier remote block
            plan = Plan(node, getattr(executor, "replays", False))
            if local and executor.remote:
                plan.fetched = WANT_VALUE
            try:
                executor.execute(plan)
                fetched = plan.fetched
                n = len(plan.nodes)
            finally:
                plan.finish()
            syncs.record(n, getattr(executor, "last_mode", "interpreted"), getattr(executor, "last_up", 0),
                         getattr(executor, "last_down", 0), perf_counter() - t0)
    finally:
        _lock.release()
    if local and fetched is not None and fetched is not WANT_VALUE:
        return fetched
    return materialize(node, local, index) if local else node.value


def _device_of(node: Node, index: int | None) -> int:
    i = index_of(node)
    return i if i is not None else (index or 0)


def _run_other_devices(target: Node, index: int) -> None:
    """Materialize what ``target``'s device (``index``) reads from other devices (the sources of
    copies between devices), each on its own device, so the plan for ``target`` holds nodes of one
    device only and takes those values as inputs (the client moves them between servers)."""
    for n in _collect(target):
        i = index_of(n)
        if i is not None and i != index:
            continue
        for a in iter_inputs(n):
            j = index_of(a)
            # not yet computed, or held in this process (an upload): computed or put on its own device
            if j is not None and j != index and (a.value is None or a.value.__class__ is torch.Tensor):
                materialize(a)


def _bring_back(target: Node) -> None:
    """Before a local run: inputs whose values are resident on a server come back to this process."""
    for n in _collect(target):
        for a in iter_inputs(n):
            v = a.value
            if v.__class__ is RemoteValue:
                a.value = v.fetch() if a.spec.__class__ is TensorSpec else \
                    tuple(None if s is None else v.conn.fetch(v, s, k) for k, s in enumerate(a.spec))
            if a.rng.__class__ is RemoteValue:  # the generator state a random node left
                a.rng = a.rng.fetch()
