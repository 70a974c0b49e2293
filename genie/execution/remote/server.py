"""The socket layer of a genie server: accept connections, check tokens, read frames, hand each
request to the connection's ``Session`` (session.py), write the answer.

One thread per connection; execution itself is serialized by the server state's lock. A
connection that sends anything that is not a well-formed frame (garbage, an HTTP request, a
truncated frame, an oversized length, another protocol version, a wrong token) gets an ERROR
frame where one can still be written, is logged and closed; the other connections go on. A
request that fails (an op's error, an unknown value) gets an ERROR frame and the session goes on.
Every read has a timeout: ``idle_s`` between requests, ``frame_s`` within one.

    python -m genie.server --host 127.0.0.1 --port 0 --device cpu

prints ``genie-server listening on HOST:PORT device=... token=...`` on its first line of stdout.
The token comes from ``GENIE_SERVER_TOKEN`` (or ``--token-file``); without one it is generated and
printed. Loopback only, unless ``--host`` names another address explicitly.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import secrets
import signal
import socket
import sys
import threading

import torch

from . import shm, wire
from .session import ServerState, Session, UnknownStructure
from .wire import Kind

log = logging.getLogger("genie.server")

HELLO_TIMEOUT_S = 10.0


class Server:
    """A listening socket and its connection threads. ``serve_forever`` blocks; ``close`` stops."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, device: str = "cpu", token: str | None = None,
                 idle_s: float = 3600.0, frame_s: float = 30.0):
        if not token:
            raise ValueError("a genie server needs a token")
        self.token = token.encode()
        self.state = ServerState(device)
        self.idle_s = idle_s
        self.frame_s = frame_s
        self.sock = socket.create_server((host, port), reuse_port=False)
        host, port = self.sock.getsockname()[:2]
        self.address = f"{host}:{port}"
        self._closed = threading.Event()
        self.connections = 0

    def serve_forever(self) -> None:
        self.sock.settimeout(0.5)  # wake to notice close()
        while not self._closed.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._closed.is_set():
                    return
                raise
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn, f"{peer[0]}:{peer[1]}"), daemon=True,
                             name=f"genie-conn-{self.connections}").start()

    def close(self) -> None:
        self._closed.set()
        self.sock.close()

    # ---------------------------------------------------------------- one connection

    def _serve(self, sock: socket.socket, peer: str) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = None
        why = "closed by the client"
        try:
            session = self._handshake(sock, peer)
            if session is None:
                why = "refused"
                return
            log.info("connection from %s: open (shared memory: %s)", peer, session.shm)
            while True:
                sock.settimeout(self.idle_s)
                try:
                    head = wire.recv_exact(sock, wire.HEADER.size)
                except wire.PeerClosed:
                    return
                sock.settimeout(self.frame_s)
                kind, length = wire.parse_header(bytes(head))
                if kind is Kind.DATA:
                    raise wire.ProtocolError("DATA frame where a request was expected")
                msg = wire.unpack(wire.recv_exact(sock, length)) if length else {}
                if not isinstance(msg, dict):
                    raise wire.ProtocolError("a request must be a map")
                self._request(sock, session, kind, msg, peer)
        except (wire.ProtocolError, TimeoutError, wire.PeerClosed) as e:
            why = f"{type(e).__name__}: {e}"
            log.warning("connection from %s: %s", peer, why)
            _try_send(sock, Kind.ERROR, {"type": "ProtocolError", "message": str(e)})
        except OSError as e:
            why = f"{type(e).__name__}: {e}"
            log.warning("connection from %s: %s", peer, why)
        except Exception as e:  # a bug of ours: log it, drop this connection only
            why = f"{type(e).__name__}: {e}"
            log.exception("connection from %s: internal error", peer)
        finally:
            if session is not None:
                session.close()
                log.info("connection from %s: closed (%s)", peer, why)
            try:
                sock.close()
            except OSError:
                pass

    def _handshake(self, sock, peer):
        sock.settimeout(HELLO_TIMEOUT_S)
        kind, hello = wire.recv_message(sock, limit=1 << 16)
        if kind is not Kind.HELLO or not isinstance(hello, dict):
            raise wire.ProtocolError(f"expected HELLO, got {kind.name}")
        token = hello.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.token):
            log.warning("connection from %s: wrong token", peer)
            _try_send(sock, Kind.ERROR, {"type": "PermissionError", "message": "wrong token"})
            return None
        session = Session(self.state)
        session.shm = False
        name, nonce = hello.get("shm"), hello.get("nonce")
        if name is not None and isinstance(nonce, bytes) and len(nonce) == 16 and shm.available():
            try:  # same host: the client's probe segment holds the nonce it sent
                seg = shm.Segment.open(name, 16)
                session.shm = bytes(seg.tensor.numpy()) == nonce
            except (OSError, ValueError):
                session.shm = False
        wire.send_message(sock, Kind.WELCOME, {"device": str(self.state.device), "shm": session.shm,
                                               "version": wire.VERSION, "pid": os.getpid()})
        return session

    def _request(self, sock, session: Session, kind, msg: dict, peer: str) -> None:
        try:
            # tensor payloads are read before anything runs, so the frames stay in step on failure
            blobs = _read_tensors(sock, msg.get("tensors", []), session.shm, self.state.device) \
                if kind in (Kind.RUN, Kind.PUT) else []
        except (ValueError, OSError) as e:
            raise wire.ProtocolError(f"tensor payload: {e}") from None
        try:
            if msg.get("free"):
                session.free(msg["free"])
            if kind is Kind.RUN:
                out = session.run(msg, blobs)
                reply = {"mode": session.last_mode}
            elif kind is Kind.FETCH:
                out = session.fetch(msg.get("ids", []))
                reply = {}
            elif kind is Kind.PUT:
                out, reply = session.put(msg.get("ids", []), blobs), {}
            elif kind is Kind.STATS:
                out, reply = [], session.stats()
            elif kind is Kind.FREE:
                return
            else:
                raise wire.ProtocolError(f"{kind.name} is not a request")
        except UnknownStructure as e:
            wire.send_message(sock, Kind.ERROR, {"type": "KeyError", "unknown_structure": True,
                                                 "message": f"unknown plan fingerprint {e.args[0]}"})
            return
        except wire.ProtocolError as e:
            log.warning("connection from %s: bad %s request: %s", peer, kind.name, e)
            wire.send_message(sock, Kind.ERROR, {"type": "ValueError", "message": f"bad request: {e}"})
            return
        except Exception as e:  # the op's own error: back to the client, the session goes on
            log.info("connection from %s: %s failed: %s: %s", peer, kind.name, type(e).__name__,
                     str(e).splitlines()[0] if str(e) else "")
            if isinstance(e, torch.OutOfMemoryError):
                name = "OutOfMemoryError"
            else:
                name = next((c.__name__ for c in type(e).__mro__ if c.__module__ == "builtins"), "RuntimeError")
            wire.send_message(sock, Kind.ERROR, {"type": name, "message": str(e)})
            return
        _send_tensors(sock, reply, out, msg.get("to"))


def _read_tensors(sock, descriptors, use_shm: bool, device: torch.device) -> list:
    def shared(k, name, nbytes):
        if not use_shm:
            raise ValueError("shared memory was not agreed on this connection")
        return shm.Segment.open(name, nbytes).tensor

    return wire.receive_tensors(sock, descriptors, shared, device)


def _send_tensors(sock, reply: dict, tensors: list, offers) -> None:
    descriptors, streams = [], []
    offers = offers if isinstance(offers, list) else []
    for k, t in enumerate(tensors):
        start, nbytes = wire.extent(t)
        name = offers[k] if k < len(offers) else None
        seg = None
        if name is not None and nbytes > wire.INLINE_MAX:
            try:
                seg = shm.Segment.open(name, nbytes)
            except (OSError, ValueError):
                pass  # not mappable after all: through the socket
        descriptors.append(wire.describe_tensor(t, start, nbytes, seg, streams))
    reply["tensors"] = descriptors
    wire.send_message(sock, Kind.DONE, reply)
    for raw in streams:
        wire.send_stream(sock, memoryview(raw.numpy()))


def _try_send(sock, kind, msg) -> None:
    try:
        sock.settimeout(2.0)
        wire.send_message(sock, kind, msg)
    except OSError:
        pass


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="genie-server", description="Serve a genie execution device.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless given explicitly)")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port; the bound one is printed)")
    p.add_argument("--device", default="cpu", help="execution device: cpu or cuda[:N]")
    p.add_argument("--token-file", help="read the token from this file (else GENIE_SERVER_TOKEN, else generated)")
    p.add_argument("--idle-timeout", type=float, default=3600.0, help="seconds a connection may stay silent")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (it registers custom ops the clients' programs use); repeatable")
    args = p.parse_args(argv)
    import importlib
    for module in args.imports:
        importlib.import_module(module)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s genie-server %(message)s")
    if args.token_file:
        with open(args.token_file) as f:
            token, hint = f.read().strip(), f"from {args.token_file}"
    elif os.environ.get("GENIE_SERVER_TOKEN"):
        token, hint = os.environ["GENIE_SERVER_TOKEN"], "from GENIE_SERVER_TOKEN"
    else:
        token = secrets.token_urlsafe(24)
        hint = token
    from ... import config
    device = config._validate(args.device)
    server = Server(args.host, args.port, str(device), token, idle_s=args.idle_timeout)
    print(f"genie-server listening on {server.address} device={device} token={hint}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0
