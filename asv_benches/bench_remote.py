"""A genie server on loopback: round trips and bandwidth, each as a ratio to its floor measured in
the same run (a bare socket round trip between two processes; a plain memory copy of the same
size). The server is a subprocess started once per benchmark class."""

from __future__ import annotations

import copy
import socket
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

import genie

from .common import REMOTE, median_us
from .zoo import HIDDEN, SEQ, encoder

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


def _mlp():
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8))


# name -> (make model, make one batch): a small MLP, and the zoo's transformer encoder
LOOPS = {
    "mlp": (_mlp, lambda g: torch.randn(16, 32, generator=g)),
    "transformer": (encoder, lambda g: torch.randn(2, SEQ, HIDDEN, generator=g)),
}
STEPS = 10


def _state(model, opt) -> list:
    return [*model.parameters(), *(t for st in opt.state.values() for t in st.values()
                                   if isinstance(t, torch.Tensor) and t.dim() > 0)]


def training_loop(srv, name: str, repeat: int = 5) -> dict:
    """A 10-step training loop (new batch each step, forward, backward, AdamW, read the loss):
    seconds eager, with the local executor and on the server with resident weights (interleaved
    rounds, medians), and the bytes each remote step moves, beside what the model's state (weights
    and AdamW's moments) costs to move once each way, which a server without residency would
    move every step."""
    make_model, make_batch = LOOPS[name]
    torch.manual_seed(0)
    eager = make_model()
    local = copy.deepcopy(eager).to(REMOTE)
    opts = {"eager": torch.optim.AdamW(eager.parameters(), lr=1e-3),
            "local": torch.optim.AdamW(local.parameters(), lr=1e-3)}
    with genie.remote(srv) as ex:
        remote = copy.deepcopy(eager).to(REMOTE)
    opts["remote"] = torch.optim.AdamW(remote.parameters(), lr=1e-3)
    models = {"eager": eager, "local": local, "remote": remote}
    losses = {}

    def loop(kind):
        m, opt = models[kind], opts[kind]
        g = torch.Generator().manual_seed(1)
        dev = "cpu" if kind == "eager" else REMOTE
        out = []
        for _ in range(STEPS):
            x = make_batch(g)
            opt.zero_grad()
            loss = m(x.to(dev)).float().square().mean()
            loss.backward()
            opt.step()
            out.append(loss.item())
        losses[kind] = out

    def run_remote():
        with genie.remote(srv):
            loop("remote")

    conn = ex.conn
    loop("eager")
    loop("local")
    run_remote()  # the first loop uploads the weights and compiles; later ones are steady state
    up, down = conn.bytes_up, conn.bytes_down
    run_remote()  # bytes of a steady loop (the timed rounds below alternate with local runs, and
    # random ops of the two share the device's generator chain, whose state then moves too)
    up_step, down_step = (conn.bytes_up - up) / STEPS, (conn.bytes_down - down) / STEPS
    loop("eager")
    loop("local")
    times = {"eager": [], "local": [], "remote": []}
    for _ in range(repeat):
        for kind, fn in (("eager", lambda: loop("eager")), ("local", lambda: loop("local")), ("remote", run_remote)):
            t0 = time.perf_counter()
            fn()
            times[kind].append(time.perf_counter() - t0)
    assert losses["remote"] == losses["local"], "the server's losses differ from the local executor's"
    with genie.remote(srv):  # the model's state moved once each way, as a server without residency would
        u0, d0 = conn.bytes_up, conn.bytes_down
        host = [t.detach().cpu() for t in _state(remote, opts["remote"])]
        for t in host:
            genie.materialize(t.to(REMOTE))
        state_down, state_up = conn.bytes_down - d0, conn.bytes_up - u0
    batch = make_batch(torch.Generator()).numel() * 4
    return {"eager_s": statistics.median(times["eager"]), "local_s": statistics.median(times["local"]),
            "remote_s": statistics.median(times["remote"]), "up_per_step": up_step, "down_per_step": down_step,
            "batch_bytes": batch, "state_up": state_up, "state_down": state_down}


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


class TrainingLoop(_Server):
    """A 10-step training loop with weights resident on the server: time over the local executor's
    and over eager's, and bytes moved per step against the model state's bytes (what a server
    without residency would move each way every step)."""
    params = list(LOOPS)
    param_names = ["model"]
    timeout = 600

    def setup_cache(self):
        with genie.start_server() as srv:
            return {name: training_loop(srv, name) for name in LOOPS}

    def setup(self, r, name):
        pass

    def teardown(self, r, name):
        pass

    def track_remote_over_local(self, r, name):
        return r[name]["remote_s"] / r[name]["local_s"]

    track_remote_over_local.unit = "ratio to the local executor"

    def track_remote_over_eager(self, r, name):
        return r[name]["remote_s"] / r[name]["eager_s"]

    track_remote_over_eager.unit = "ratio to eager"

    def track_bytes_per_step(self, r, name):
        return r[name]["up_per_step"] + r[name]["down_per_step"]

    track_bytes_per_step.unit = "bytes"

    def track_state_bytes_each_way(self, r, name):
        return r[name]["state_up"]

    track_state_bytes_each_way.unit = "bytes"


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
        for name in LOOPS:
            t = training_loop(srv, name)
            print(f"{name} x{STEPS} steps: eager {t['eager_s'] * 1e3:.1f} ms, local executor {t['local_s'] * 1e3:.1f} ms, "
                  f"server {t['remote_s'] * 1e3:.1f} ms ({t['remote_s'] / t['local_s']:.2f}x local, "
                  f"{t['remote_s'] / t['eager_s']:.2f}x eager); per step up {t['up_per_step']:.0f} B "
                  f"(batch {t['batch_bytes']} B), down {t['down_per_step']:.0f} B; the state once each way: "
                  f"up {t['state_up']} B, down {t['state_down']} B")
