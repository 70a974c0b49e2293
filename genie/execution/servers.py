"""What a program uses: start a server, run materializations there, ask it what it holds.

    srv = genie.start_server(device="cpu")      # a subprocess; .address .pid .token .close()
    with genie.remote(srv):                      # or genie.remote("host:port", token=...)
        loss = model(x).sum(); loss.item()       # plans run on the server, values stay there

Connections are pooled per address: leaving a ``remote`` block switches execution back to the
local executor but keeps the connection (and the values resident on the server) until the
server handle is closed or the process ends. ``GENIE_SERVERS=host:port`` with
``GENIE_SERVER_TOKEN`` makes unmodified programs run on that server.

Several servers are several devices, as several GPUs are: ``genie.remote([srv0, srv1])`` (or
``GENIE_SERVERS=a:1,b:2``) makes ``remote_accelerator:0`` server 0 and ``remote_accelerator:1``
server 1, ``torch.remote_accelerator.device_count()`` 2, and ``x.to("remote_accelerator:1")`` a
copy that moves ``x``'s data from server 0 to server 1 (through this process).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time

from . import scheduler
from .remote import pool
from .remote.client import DEFAULT_TIMEOUT_S, RemoteError, RemoteExecutor

START_TIMEOUT_S = float(os.environ.get("GENIE_SERVER_START_TIMEOUT_S", "120"))



class ServerHandle:
    """A server process started by ``start_server``; a context manager that closes it."""

    def __init__(self, proc: subprocess.Popen, address: str, token: str, device: str, log_path: str):
        self.proc = proc
        self.address = address
        self.token = token
        self.device = device
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def close(self, timeout: float = 10.0) -> None:
        _drop(self.address)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<genie server {self.address} pid={self.pid} device={self.device}>"


def start_server(device: str = "cpu", host: str = "127.0.0.1", port: int = 0, imports=(),
                 timeout: float = START_TIMEOUT_S) -> ServerHandle:
    """Start ``python -m genie.server`` as a subprocess with a fresh token (handed over in its
    environment, never on the command line) and wait until it listens. ``imports``: modules the
    server imports first (they register custom ops the program uses)."""
    token = secrets.token_urlsafe(24)
    env = dict(os.environ, GENIE_SERVER_TOKEN=token)
    env.pop("GENIE_SERVERS", None)  # the server executes locally
    fd, log_path = tempfile.mkstemp(prefix="genie-server-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "genie.server", "--host", host, "--port", str(port),
                                 "--device", device, *[a for m in imports for a in ("--import", m)]],
                                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                env=env, text=True)
    line = _first_line(proc, timeout)
    if not line.startswith("genie-server listening on "):
        proc.kill()
        proc.wait()
        with open(log_path) as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"genie: the server did not start (first line {line!r}); its log:\n{tail}")
    address = line.split()[3]
    return ServerHandle(proc, address, token, device, log_path)


def _first_line(proc, timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not out:
        proc.kill()
        raise TimeoutError(f"genie: the server did not report its address within {timeout:.0f} s")
    return out[0].strip()


def _address(target) -> tuple[str, str | None]:
    if isinstance(target, ServerHandle):
        return target.address, target.token
    if isinstance(target, str):
        return target, None
    raise TypeError(f"genie.remote: expected a server handle or 'host:port', got {type(target).__name__}")


def executor_for(target, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S) -> RemoteExecutor:
    """The pooled executor for a server (connecting on first use)."""
    address, own_token = _address(target)
    return pool.executor_for(address, token or own_token, timeout)


def _drop(address: str) -> None:
    ex = pool.drop(address)
    if ex is not None:
        if scheduler._executor is ex or ex in scheduler._others:
            scheduler.reset_executor()
        ex.conn.close()


@contextlib.contextmanager
def remote(target, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
    """Materializations inside the block run on the server ``target`` (a ``ServerHandle`` or
    ``"host:port"``). A list of servers makes them devices ``remote_accelerator:0``, ``:1``, ...;
    the block then yields the list of their executors."""
    several = isinstance(target, (list, tuple))
    targets = list(target) if several else [target]
    if not targets:
        raise ValueError("genie.remote: no server given")
    if len({_address(t)[0] for t in targets}) != len(targets):
        raise ValueError("genie.remote: the same server is named twice (each server is one device)")
    executors = [executor_for(t, token, timeout) for t in targets]
    with scheduler._lock:
        previous = scheduler._executor, scheduler._others
        scheduler.set_executor(executors[0], executors[1:])
    try:
        yield executors if several else executors[0]
    finally:
        with scheduler._lock:
            scheduler.set_executor(*previous)


def server_stats(target=None) -> dict:
    """What a server holds for this client: resident bytes and values, known structures, runs.
    ``target``: a server (handle or address), or a device index; without it, the server of
    device 0. Pending frees are sent first."""
    if target is None or isinstance(target, int):
        ex = scheduler.get_executor(target or 0)
        if not ex.remote:
            raise RuntimeError("genie.server_stats: execution is local (use it inside genie.remote(...))")
    else:
        ex = executor_for(target)
    import gc
    gc.collect()  # handles in reference cycles are released now, not at some later collection
    t0 = time.perf_counter()
    stats = ex.conn.stats()
    stats["round_trip_s"] = time.perf_counter() - t0
    stats.pop("tensors", None)
    stats["address"] = ex.conn.address
    return stats


__all__ = ["RemoteError", "ServerHandle", "executor_for", "remote", "server_stats", "start_server"]
