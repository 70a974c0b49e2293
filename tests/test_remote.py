"""Remote execution: a genie server process owns the device; values stay resident there.

Each test states what a user relies on: values equal eager's, parameters uploaded once, later
steps sending only fingerprints and inputs, freed tensors freed on the server, every failure a
clear error within a timeout, and a server that survives bad input from anyone who can reach it.
"""

from __future__ import annotations

import gc
import os
import socket
import struct
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

import genie
from genie.execution import scheduler
from genie.execution.remote import shm, wire
from genie.execution.remote.handle import RemoteValue

from conftest import DEVICE, host


@pytest.fixture(scope="module")
def srv():
    with genie.start_server() as s:
        yield s


@pytest.fixture
def remote(srv):
    with genie.remote(srv) as ex:
        yield ex


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Dropout(0.1), nn.Linear(64, 8))


# -------------------------------------------------------------------------------------------
# the server and the handle


def test_start_server_gives_a_handle(srv):
    assert srv.alive() and srv.pid > 0 and len(srv.token) >= 24
    host_, port = srv.address.rsplit(":", 1)
    assert host_ == "127.0.0.1" and int(port) > 0
    with genie.remote(srv):
        host(torch.ones(2, device=DEVICE) + 1)
    assert "connection from 127.0.0.1" in srv.log()


def test_command_line_server_prints_its_address_and_a_token():
    env = dict(os.environ)
    env.pop("GENIE_SERVER_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "genie.server", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = proc.stdout.readline().split()
        assert line[:3] == ["genie-server", "listening", "on"]
        address, token = line[3], line[5].removeprefix("token=")
        assert address.startswith("127.0.0.1:") and line[4] == "device=cpu" and len(token) >= 24
        with genie.remote(address, token=token):
            assert host(torch.arange(4, device=DEVICE).sum()).item() == 6
    finally:
        proc.terminate()
        proc.wait(10)
        genie.execution.servers._drop(address)


# -------------------------------------------------------------------------------------------
# exactness and residency


def test_training_on_the_server_equals_eager(remote):
    eager = _mlp()
    lazy = _mlp().to(DEVICE)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    opt_l = torch.optim.AdamW(lazy.parameters(), lr=1e-2)
    for step in range(4):
        x, y = torch.randn(16, 32), torch.randint(0, 8, (16,))
        torch.manual_seed(10 + step)
        loss_e = nn.functional.cross_entropy(eager(x), y)
        opt_e.zero_grad()
        loss_e.backward()
        opt_e.step()
        torch.manual_seed(10 + step)
        loss_l = nn.functional.cross_entropy(lazy(x.to(DEVICE)), y.to(DEVICE))
        opt_l.zero_grad()
        loss_l.backward()
        opt_l.step()
        assert loss_l.item() == loss_e.item()
    for pe, pl in zip(eager.parameters(), lazy.parameters()):
        torch.testing.assert_close(host(pl.detach()), pe.detach(), rtol=0, atol=0)
        assert isinstance(pl.genie_node.value, RemoteValue)  # resident on the server, not here


def test_parameters_upload_once_and_later_steps_send_fingerprints(remote):
    conn = remote.conn
    model = _mlp().to(DEVICE)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 32)

    def step():
        loss = model(x.to(DEVICE)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    up0 = conn.bytes_up
    step()
    first = conn.bytes_up - up0
    assert first >= param_bytes  # the parameters went up with the first step
    step()
    sent, runs, up = conn.structures_sent, conn.runs, conn.bytes_up
    for _ in range(3):
        step()
    assert conn.structures_sent == sent  # the same structures: fingerprints only
    assert conn.runs - runs == 3  # one round trip per step (the loss read carries the result back)
    per_step = (conn.bytes_up - up) / 3
    assert per_step <= x.numel() * 4 + 64, per_step  # only the input batch goes up
    stats = genie.server_stats()
    assert stats["resident_bytes"] >= param_bytes


def test_freed_tensors_are_freed_on_the_server(remote):
    base = genie.server_stats()["resident_bytes"]
    big = torch.ones(256, 1024, device=DEVICE) * 2  # (a random value would stay: the RNG chain holds its node)
    genie.materialize(big)
    assert genie.server_stats()["resident_bytes"] >= base + big.numel() * 4
    del big
    assert genie.server_stats()["resident_bytes"] <= base


def test_random_values_equal_local_in_any_read_order(srv):
    def program():
        torch.remote_accelerator.manual_seed(7)
        a = torch.randn(5, device=DEVICE)
        b = torch.rand(3, device=DEVICE) + 1
        c = nn.functional.dropout(torch.ones(8, device=DEVICE), 0.5)
        return a, b, c

    local = [host(t) for t in program()]
    with genie.remote(srv):
        a, b, c = program()
        got = [host(c), host(a), host(b)]  # read in another order than made
        state = torch.remote_accelerator.get_rng_state()
    torch.testing.assert_close(got, [local[2], local[0], local[1]], rtol=0, atol=0)
    assert state.dtype == torch.uint8 and state.device.type == "cpu"


def test_views_writes_and_multi_output_values(remote):
    x = torch.arange(12.0).reshape(3, 4)
    lx = x.to(DEVICE)
    v = lx[1:, ::2]
    v.mul_(10)
    lx.t()[0].add_(1)
    x[1:, ::2].mul_(10)
    x.t()[0].add_(1)
    values, indices = lx.max(dim=1)
    genie.materialize(values)  # the tuple-valued node stays resident; its items are read later
    torch.testing.assert_close(host(indices), x.max(dim=1).indices)
    torch.testing.assert_close(host(values), x.max(dim=1).values)
    torch.testing.assert_close(host(lx), x)
    z = torch.randn(3, 3, dtype=torch.complex64)
    torch.testing.assert_close(host(z.to(DEVICE).conj() * 2), z.conj() * 2)


def test_values_computed_remotely_come_back_for_local_execution(srv):
    with genie.remote(srv):
        y = torch.arange(6.0, device=DEVICE).reshape(2, 3) * 3
        genie.materialize(y)
        assert isinstance(y.genie_node.value, RemoteValue)
    z = y.sum(0) + 1  # runs in this process: y comes back first
    torch.testing.assert_close(host(z), (torch.arange(6.0).reshape(2, 3) * 3).sum(0) + 1)


@pytest.mark.parametrize("via", ["shared memory", "socket"])
def test_large_tensors_round_trip_exactly(srv, via, monkeypatch):
    if via == "shared memory" and not shm.available():
        pytest.skip("/dev/shm is not available on this machine")
    if via == "socket":
        monkeypatch.setattr(shm, "available", lambda: False)
        genie.execution.servers._drop(srv.address)  # a fresh connection that offers no shared memory
    try:
        with genie.remote(srv) as ex:
            assert ex.conn.shm is (via == "shared memory")
            x = torch.randn(3, 1 << 19)  # 6 MiB: more than one chunk of the socket path
            y = host(x.to(DEVICE)[:, 1::3] * 2)
            torch.testing.assert_close(y, x[:, 1::3] * 2, rtol=0, atol=0)
            b = torch.randn(1 << 18, dtype=torch.bfloat16)
            torch.testing.assert_close(host(b.to(DEVICE).sqrt()), b.sqrt(), rtol=0, atol=0, equal_nan=True)
    finally:
        genie.execution.servers._drop(srv.address)


# -------------------------------------------------------------------------------------------
# sync points


def test_sync_report_counts_a_known_program(srv):
    x = torch.randn(4, 4)
    for where in ("local", "remote"):
        ctx = genie.remote(srv) if where == "remote" else _nullcontext()
        with ctx, genie.sync_points() as report:
            lx = x.to(DEVICE)
            total = 0.0
            for i in range(3):
                total += (lx * i).sum().item()  # sync: one per iteration, on this line
            print(lx.cpu().shape)
        rows = {r.lineno: r for r in report.rows()}
        loop = [r for r in rows.values() if "total +=" in r.line]
        assert len(loop) == 1, report.table()
        (row,) = loop
        assert row.syncs == 3 and row.reads == 0 and row.filename == __file__
        assert row.nodes == 2 * 3  # mul and sum each time (x.to(device) holds its copy from the call on)
        assert row.replayed + row.compiled + row.interpreted == 3
        assert row.wait_s > 0
        if where == "remote":
            assert row.bytes_down == 3 * 4  # three float32 scalars came back
        else:
            assert row.bytes_up == row.bytes_down == 0
        assert report.total.syncs == sum(r.syncs for r in rows.values())
        assert "total +=" in report.table()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_sync_report_prints_the_global_table(capsys):
    genie.sync_report(reset=True, file=False)
    (torch.ones(2, device=DEVICE) * 3).cpu()
    rep = genie.sync_report()
    out = capsys.readouterr().out
    assert "source line" in out and "test_remote.py" in out
    assert rep.total.syncs >= 1


# -------------------------------------------------------------------------------------------
# failures: clear errors, within a timeout, and the session goes on


def test_an_op_failing_on_the_server_names_the_op_and_the_session_survives(remote):
    x = torch.ones(3, device=DEVICE)
    idx = torch.tensor([0, 7]).to(DEVICE)  # out of range: only the kernel can tell
    bad = x.index_select(0, idx)
    with pytest.raises(IndexError, match=r"aten::index_select.*genie server 127\.0\.0\.1:\d+"):
        host(bad)
    assert bad.genie_node.value is None
    with pytest.raises(RuntimeError, match="genie server"):
        host(torch.empty(1 << 50, dtype=torch.uint8, device=DEVICE).fill_(1))  # no such memory
    assert host(x * 2).tolist() == [2.0, 2.0, 2.0]  # the session survives


def test_a_killed_server_gives_a_clear_error_and_a_new_one_works():
    dead = genie.start_server()
    try:
        with genie.remote(dead):
            w = torch.ones(4, device=DEVICE) * 2
            genie.materialize(w)
            dead.proc.kill()
            dead.proc.wait(10)
            t0 = time.monotonic()
            with pytest.raises(genie.RemoteError, match=dead.address):
                host(w + 1)
            assert time.monotonic() - t0 < 30
            with pytest.raises(genie.RemoteError, match=dead.address):
                host(w)
    finally:
        dead.close()
    with genie.start_server() as fresh, genie.remote(fresh):
        assert host(torch.ones(2, device=DEVICE) + 2).tolist() == [3.0, 3.0]


def _raw(srv, payload: bytes, read: bool = True) -> bytes:
    host_, port = srv.address.rsplit(":", 1)
    with socket.create_connection((host_, int(port)), timeout=20) as s:
        s.sendall(payload)
        if not read:
            return b""
        s.settimeout(20)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks)


def _frame(kind, body: bytes, version=wire.VERSION, length=None) -> bytes:
    return wire.HEADER.pack(wire.MAGIC, version, kind, len(body) if length is None else length) + body


def _error_of(answer: bytes) -> str:
    magic, _v, kind, length = wire.HEADER.unpack(answer[:wire.HEADER.size])
    assert magic == wire.MAGIC and kind == wire.Kind.ERROR
    return wire.unpack(answer[wire.HEADER.size:wire.HEADER.size + length])["message"]


@pytest.mark.parametrize("case", ["garbage", "http", "oversized", "wrong version", "wrong token", "not hello",
                                  "truncated", "bad msgpack"])
def test_bad_input_is_refused_and_the_server_keeps_serving(srv, case):
    hello = wire.pack({"token": srv.token, "version": wire.VERSION})
    payloads = {
        "garbage": os.urandom(64),
        "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "oversized": _frame(wire.Kind.HELLO, b"", length=1 << 40),
        "wrong version": _frame(wire.Kind.HELLO, hello, version=wire.VERSION + 1),
        "wrong token": _frame(wire.Kind.HELLO, wire.pack({"token": "x" * 32, "version": wire.VERSION})),
        "not hello": _frame(wire.Kind.RUN, wire.pack({"fp": b"0" * 16})),
        "truncated": _frame(wire.Kind.HELLO, hello)[:-5],
        "bad msgpack": _frame(wire.Kind.HELLO, b"\xc1\xc1\xc1"),
    }
    if case == "truncated":
        # the server waits for the rest within its handshake timeout; the client hangs up first
        _raw(srv, payloads[case], read=False)
    else:
        answer = _raw(srv, payloads[case])
        message = _error_of(answer)
        expected = {"garbage": "not a genie frame", "http": "not a genie frame", "oversized": "over the limit",
                    "wrong version": "version", "wrong token": "wrong token", "not hello": "expected HELLO",
                    "bad msgpack": "malformed"}[case]
        assert expected in message
    with genie.remote(srv):  # others are still served
        assert host(torch.full((2,), 5.0, device=DEVICE) - 1).tolist() == [4.0, 4.0]


def test_bad_requests_after_the_handshake_get_errors_and_the_connection_goes_on(remote):
    conn = remote.conn
    with pytest.raises(ValueError, match="fingerprint"):
        conn.call(wire.Kind.RUN, {"fp": b"short", "in": [], "nspec": []})
    with pytest.raises(ValueError, match="does not match its fingerprint"):
        conn.call(wire.Kind.RUN, {"fp": b"0" * 16, "structure": wire.pack([["aten::add.Tensor", [], [], None]]),
                                  "in": [], "nspec": [None]})
    with pytest.raises(ValueError, match="no resident value"):
        conn.call(wire.Kind.FETCH, {"ids": [[123456789, None]]})
    assert host(torch.ones(1, device=DEVICE) * 4).item() == 4.0


def test_ops_that_touch_the_servers_files_are_refused():
    from genie.execution.remote.session import resolve_op
    from genie.execution.remote.wire import ProtocolError
    with pytest.raises(ProtocolError, match="server's files"):
        resolve_op("aten::from_file.default")
    for name in ("os.system", "aten::add", "../x::y.z", "aten::__class__.default", 7):
        with pytest.raises(ProtocolError):
            resolve_op(name)


def test_two_clients_at_once_get_their_own_results_and_a_gone_client_is_freed(srv):
    code = textwrap.dedent("""
        import torch, genie
        x = torch.arange(1000.0, device="remote_accelerator")
        for i in range(30):
            y = (x * i).sum().item()
            assert y == 499500.0 * i, y
        keep = torch.randn(1 << 18, device="remote_accelerator")
        genie.materialize(keep)
        print("ok", genie.server_stats()["sessions"], flush=True)
    """)
    env = dict(os.environ, GENIE_SERVERS=srv.address, GENIE_SERVER_TOKEN=srv.token)
    other = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    with genie.remote(srv):
        x = torch.arange(10.0, device=DEVICE)
        for i in range(30):
            assert host((x + i).sum()).item() == 45.0 + 10 * i
        out, err = other.communicate(timeout=120)
        assert other.returncode == 0, err
        assert out.startswith("ok ")
        deadline = time.monotonic() + 20
        while genie.server_stats()["sessions"] != 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the server notices the other client's disconnect
        stats = genie.server_stats()
        assert stats["sessions"] == 1 and stats["server_resident_bytes"] == stats["resident_bytes"]


# -------------------------------------------------------------------------------------------
# the wire format


def test_wire_values_round_trip_and_unknown_extensions_are_refused():
    import msgpack
    values = [None, True, 3, -2.5, "x", [1, 2], torch.float16, torch.device("cpu"), torch.channels_last,
              torch.strided, 1 + 2j, wire.Ref(5), wire.Blob(2), (3, 4)]
    back = wire.unpack(wire.pack(values))
    assert back[:-1] == values[:-1] and back[-1] == [3, 4]
    for code, data in [(99, b""), (wire.EXT_DTYPE, b"os.system"), (wire.EXT_DEVICE, b"cpu; rm -rf /"),
                       (wire.EXT_REF, b"123")]:
        with pytest.raises(wire.ProtocolError):
            wire.unpack(msgpack.packb(msgpack.ExtType(code, data)))
    with pytest.raises(TypeError):
        wire.pack(object())


def test_tensor_headers_are_checked_against_the_bytes_sent():
    ok = {"dtype": "float32", "shape": [2, 3], "stride": [3, 1], "offset": 0, "nbytes": 24}
    wire.check_header(ok)
    for bad in ({**ok, "nbytes": 20}, {**ok, "offset": 1}, {**ok, "shape": [2, -3]}, {**ok, "dtype": "object"},
                {**ok, "stride": [3]}, {**ok, "nbytes": 1 << 50}, "x"):
        with pytest.raises(wire.ProtocolError):
            wire.check_header(bad)


def test_random_bytes_never_break_the_parsers():
    from hypothesis import given
    from hypothesis import strategies as st

    from genie.execution.remote.session import Structure

    @given(st.binary(max_size=256))
    def check(data):
        for parse in (wire.unpack, lambda d: wire.parse_header(d.ljust(wire.HEADER.size, b"\0")[:wire.HEADER.size])):
            try:
                parse(data)
            except wire.ProtocolError:
                pass
        try:
            Structure(wire.unpack(data))
        except wire.ProtocolError:
            pass

    check()


def test_the_frame_header_is_fixed_and_versioned():
    assert wire.HEADER.size == 16 and wire.HEADER.format == "!4sHHQ"
    assert struct.unpack("!4s", wire.HEADER.pack(wire.MAGIC, 1, 1, 0)[:4])[0] == b"GNIE"


def test_the_executor_outside_a_remote_block_is_the_previous_one(srv):
    before = scheduler.get_executor()
    with genie.remote(srv) as ex:
        assert scheduler.get_executor() is ex
    assert scheduler.get_executor() is before
    gc.collect()


# -------------------------------------------------------------------------------------------
# uploads: x.to(device) holds one copy, made where the executor keeps inputs


@pytest.mark.parametrize("where", ["local", "remote"])
def test_an_upload_is_one_copy_taken_at_the_call(srv, where):
    ctx = genie.remote(srv) if where == "remote" else _nullcontext()
    with ctx:
        for src in (torch.randn(300, 200), torch.randn(200, 300).t(), torch.randn(8, 4)):  # big, permuted, small
            before = src.clone()
            lx = src.to(DEVICE)
            assert lx.genie_node.value is not None and not lx.genie_node.args  # materialized at the call
            assert lx.stride() == src.stride()
            src.add_(1)  # eager copied at the call: later writes to the source do not show
            torch.testing.assert_close(host(lx * 1), before, rtol=0, atol=0)
        strided = torch.randn(6, 8)[:, ::2]  # not dense: captured as a copy on the device
        ls = strided.to(DEVICE)
        assert ls.genie_node.value is None
        torch.testing.assert_close(host(ls), strided, rtol=0, atol=0)


def test_large_uploads_live_in_shared_memory_until_the_server_maps_them(remote):
    if not remote.conn.shm:
        pytest.skip("no shared memory with this server")
    src = torch.randn(512, 512)
    lx = src.to(DEVICE)
    value = lx.genie_node.value
    seg = shm.registered(value)
    assert seg is not None and seg.nbytes == src.numel() * 4
    up = remote.conn.bytes_up
    genie.materialize(lx)  # made resident: the segment is named, not copied
    assert isinstance(lx.genie_node.value, RemoteValue)
    assert remote.conn.bytes_up - up == src.numel() * 4
    assert not os.path.exists(os.path.join(shm.ROOT, seg.name))  # unlinked once the server mapped it
    out = lx.cpu()
    assert type(out) is torch.Tensor and out.is_contiguous()
    torch.testing.assert_close(out, src, rtol=0, atol=0)
    torch.testing.assert_close(lx.cpu(), src, rtol=0, atol=0)  # every read is a new tensor
    assert lx.cpu().data_ptr() != out.data_ptr()


# -------------------------------------------------------------------------------------------
# custom ops: torch's own are imported by the server as needed, others with --import


def test_custom_ops_run_on_a_server_that_imports_their_module(tmp_path, monkeypatch):
    (tmp_path / "genie_remote_ops.py").write_text(textwrap.dedent("""
        import torch

        @torch.library.custom_op("genie_remote_test::triple", mutates_args=())
        def triple(x: torch.Tensor) -> torch.Tensor:
            return x * 3

        @triple.register_fake
        def _(x):
            return torch.empty_like(x)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    import genie_remote_ops  # noqa: F401  (registers the op in this process)
    x = torch.arange(4.0)
    with genie.start_server() as bare, genie.remote(bare):
        with pytest.raises(ValueError, match=r"unknown op genie_remote_test::triple.default \(a custom op: start "
                                             r"the server with --import"):
            host(torch.ops.genie_remote_test.triple(x.to(DEVICE)))
    with genie.start_server(imports=["genie_remote_ops"]) as srv, genie.remote(srv):
        torch.testing.assert_close(host(torch.ops.genie_remote_test.triple(x.to(DEVICE)) + 1), x * 3 + 1)


def test_the_remote_example_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "example", "remote_server.py")], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, GENIE_SERVERS=""))
    assert out.returncode == 0, out.stderr
    assert "step 4: loss" in out.stdout and "remote_server.py:" in out.stdout


def test_a_multi_output_value_computed_locally_goes_up_when_a_remote_plan_reads_it(srv):
    # the fused CPU attention kernel is random-tagged: computing b locally runs a's kernel too (the
    # device's random chain), and a's two-output value then lives in this process
    torch.manual_seed(0)
    q = torch.randn(1, 2, 4, 8)
    lq = q.to(DEVICE)
    a = nn.functional.scaled_dot_product_attention(lq, lq, lq)
    b = nn.functional.scaled_dot_product_attention(lq * 2, lq, lq)
    assert torch.equal(host(b), nn.functional.scaled_dot_product_attention(q * 2, q, q))
    with genie.remote(srv):
        assert torch.equal(host(a + 1), nn.functional.scaled_dot_product_attention(q, q, q) + 1)


def test_a_value_read_at_two_places_of_a_plan_is_sent_once(remote):
    x = torch.randn(64, 64)
    lx = x.to(DEVICE)  # held in this process until a plan reads it
    up = remote.conn.bytes_up
    assert torch.allclose(host((lx * 2 + lx.sin()).sum()), (x * 2 + x.sin()).sum())
    assert remote.conn.bytes_up - up <= x.numel() * 4 + 1024  # one copy (plus the message's own bytes)


def test_optimizer_steps_on_the_server_write_in_place_without_copies(remote):
    model = _mlp().to(DEVICE)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randn(4, 32).to(DEVICE)

    def step():
        opt.zero_grad()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(3):
        step()
    before = genie.server_stats()["steals"]
    step()
    step()
    # each step updates 4 parameters and their two AdamW moments in place, on their own buffers (a
    # resident value the plan supersedes is not copied first)
    assert genie.server_stats()["steals"] - before >= 2 * 4 * 3


def test_the_template_and_the_encoder_read_one_format():
    # the remote template walks a plan as plan._encode does (slots, external arguments, specs); the
    # nox tests session checks that on every plan of the suite (GENIE_CHECK_TEMPLATES=1), and a
    # template made to disagree is caught
    from genie.execution import plan as plans
    from genie.execution.remote.client import Template
    w = torch.randn(4, 4).to(DEVICE)
    genie.materialize(w)
    y = (torch.randn(4, 4, device=DEVICE) @ w).relu().sum(0) + torch.ones(4, device=DEVICE)
    plan = plans.Plan(y.genie_node)
    template = Template(plan)
    assert template.disagreements(plan) == [] and template.ext_slots
    template.slots += 1
    template.node_spec_pos[-1] = 0
    problems = template.disagreements(plan)
    assert len(problems) == 2 and "input slots" in problems[0]
