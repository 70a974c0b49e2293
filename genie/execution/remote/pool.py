"""One executor (one connection) per server address, shared by every device and call naming it.

Below the executor registry (scheduler.py) and the user's API (servers.py): both take executors from
here, and neither imports the other for it.
"""

from __future__ import annotations

import os
import threading

from .client import DEFAULT_TIMEOUT_S, Connection, RemoteExecutor

_pool: dict[str, RemoteExecutor] = {}
_pool_lock = threading.Lock()


def executor_for(address: str, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> RemoteExecutor:
    """The pooled executor for the server at ``host:port`` (connecting on first use)."""
    token = token or os.environ.get("GENIE_SERVER_TOKEN")
    if not token:
        raise ValueError(f"genie.remote: no token for {address} (pass token=..., or set GENIE_SERVER_TOKEN)")
    with _pool_lock:
        ex = _pool.get(address)
        if ex is not None and ex.conn.dead is None:
            return ex
        host, _, port = address.rpartition(":")
        ex = RemoteExecutor(Connection(host, int(port), token, timeout))
        _pool[address] = ex
        return ex


def drop(address: str) -> RemoteExecutor | None:
    """Take the server's executor out of the pool (the caller closes it)."""
    with _pool_lock:
        return _pool.pop(address, None)
