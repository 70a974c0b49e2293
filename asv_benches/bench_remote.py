"""A genie server on loopback: round trips and bandwidth, each as a ratio to its floor measured in
the same run (a bare socket round trip between two processes; a plain memory copy of the same
size). The server is a subprocess started once per benchmark class."""

from __future__ import annotations

import socket
import subprocess
import sys

import torch

import genie

from .common import REMOTE, median_us

MIB = 1 << 20
_ECHO = """
import socket, sys
s = socket.create_server(("127.0.0.1", 0)); print(s.getsockname()[1], flush=True)
c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    b = c.recv(64)
    if not b: break
    c.sendall(b)
"""


def _median_s(fn, repeat: int) -> float:
    """Median seconds of one call (each call timed on its own: transfers are long, loops short)."""
    return median_us(fn, number=1, repeat=repeat) / 1e6


def bare_round_trip_s(repeat: int = 2000) -> float:
    """16 bytes to an echo process and back, on loopback with TCP_NODELAY (the floor of any RPC)."""
    proc = subprocess.Popen([sys.executable, "-c", _ECHO], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            payload = b"x" * 16

            def once():
                s.sendall(payload)
                got = 0
                while got < 16:
                    got += len(s.recv(64))
            return _median_s(once, repeat)
    finally:
        proc.kill()
        proc.wait()


def round_trips(srv, repeat: int = 500) -> dict:
    """Seconds per materialization of a small cached plan (``x + 1`` on a resident x), with and
    without bringing the value back, beside the bare socket round trip."""
    bare = bare_round_trip_s(repeat * 4)
    with genie.remote(srv):
        x = torch.ones(8, 8, device=REMOTE)
        genie.materialize(x)
        run = _median_s(lambda: genie.materialize(x + 1), repeat)
        read = _median_s(lambda: (x + 1).sum().item(), repeat)
    return {"bare_s": bare, "run_s": run, "read_s": read}


def bandwidth(srv, mib: int, repeat: int = 5) -> dict:
    """Seconds to move ``mib`` MiB to the server (``x.to(device)``, materialized) and back
    (``.cpu()`` of a resident value), beside ``clone()`` of the same bytes (a plain memory copy
    into fresh memory, which is what both ends of a transfer produce)."""
    n = mib * MIB // 4
    host = torch.randn(n)
    memcpy = _median_s(lambda: host.clone(), repeat)
    with genie.remote(srv):
        up = _median_s(lambda: genie.materialize(host.to(REMOTE)), repeat)
        resident = host.to(REMOTE)
        genie.materialize(resident)
        down = _median_s(lambda: resident.cpu(), repeat)
    return {"memcpy_s": memcpy, "up_s": up, "down_s": down}


class _Server:
    def setup(self, *args):
        self.srv = genie.start_server()

    def teardown(self, *args):
        self.srv.close()


class RoundTrip(_Server):
    """Ratios: a small cached plan's round trip (run / run and read back) over a bare socket round trip."""
    timeout = 300
    unit = "ratio to a bare socket round trip"

    def track_run_ratio(self):
        r = round_trips(self.srv)
        return r["run_s"] / r["bare_s"]

    track_run_ratio.unit = unit

    def track_read_ratio(self):
        r = round_trips(self.srv)
        return r["read_s"] / r["bare_s"]

    track_read_ratio.unit = unit


class Bandwidth(_Server):
    """Bandwidth to and from the server as a fraction of a memory copy's (1 = memcpy speed)."""
    params = [1, 64, 256]
    param_names = ["MiB"]
    timeout = 600
    unit = "fraction of memcpy bandwidth"

    def track_upload_fraction(self, mib):
        b = bandwidth(self.srv, mib)
        return b["memcpy_s"] / b["up_s"]

    track_upload_fraction.unit = unit

    def track_download_fraction(self, mib):
        b = bandwidth(self.srv, mib)
        return b["memcpy_s"] / b["down_s"]

    track_download_fraction.unit = unit


if __name__ == "__main__":  # python -m asv_benches.bench_remote: the figures in one run
    with genie.start_server() as srv:
        r = round_trips(srv)
        print(f"round trip: bare socket {r['bare_s'] * 1e6:.1f} us; small cached plan {r['run_s'] * 1e6:.1f} us "
              f"({r['run_s'] / r['bare_s']:.2f}x), with the value read back {r['read_s'] * 1e6:.1f} us "
              f"({r['read_s'] / r['bare_s']:.2f}x)")
        for mib in (1, 64, 256):
            b = bandwidth(srv, mib)
            gbs = mib * MIB / 1e9
            print(f"{mib:>4} MiB: memcpy {gbs / b['memcpy_s']:.2f} GB/s; up {gbs / b['up_s']:.2f} GB/s "
                  f"({b['memcpy_s'] / b['up_s']:.2f} of memcpy); down {gbs / b['down_s']:.2f} GB/s "
                  f"({b['memcpy_s'] / b['down_s']:.2f} of memcpy)")
