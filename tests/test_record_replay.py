"""Record and replay: the recording format, the recording proxy, the replay
server and their command lines, on real loopback sockets and real
subprocesses."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socs_tcp import TCPInterface
from socs_tcp.errors import LinkTimeoutError, PeerClosedError
from socs_tcp.testing import DeviceEmulator, ReplayServer, replay_fixture
from socs_tcp.testing.proxy import RecordingProxy
from socs_tcp.testing.recording import (
    FORMAT,
    Recorder,
    RecordingError,
    RecordingWriter,
    decode_chunk,
    encode_chunk,
    read_recording,
)
from socs_tcp.testing.replay import build_sessions

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def wait_for(condition, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def free_port():
    """A port with nothing listening on it (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def counting_device(**kwargs):
    """A polled device: each RDG? gets the next reading, ID? an identity."""
    count = {"n": 0}

    def reading(command):
        count["n"] += 1
        return f"{count['n']}.5"
    return DeviceEmulator({"ID?": "EMU,1"}, write_termination="\n",
                          default_response=lambda cmd: reading(cmd) if cmd == "RDG?" else f"ERR {cmd}", **kwargs)


def query_retrying(dev, command):
    """One query; if the device closed the link under it, once more on a fresh one."""
    try:
        return dev.query(command)
    except PeerClosedError:
        return dev.query(command)


def fault_session(dev, emu=None):
    """The client's side of a session: polls, a merged pair, and (when
    ``emu`` is given, i.e. while recording) the emulator's split, merge,
    drip and restart faults.  Returns every answer in order."""
    answers = [dev.query("ID?"), dev.query("RDG?"), dev.query("RDG?")]
    if emu:
        emu.split_replies(2, 0.05)   # long pauses, so that a loaded machine cannot merge the parts
    answers += [dev.query("RDG?"), dev.query("ID?")]
    if emu:
        emu.split_replies(None)
        emu.merge_replies(2)
    dev.write("RDG?")
    dev.write("ID?")
    answers += [dev.read_until(), dev.read_until()]
    if emu:
        emu.merge_replies(0)
        emu.slow_drip(0.02)
    answers += [dev.query("RDG?")]
    if emu:
        emu.slow_drip(None)
        emu.restart()
    answers += [query_retrying(dev, "RDG?"), dev.query("ID?"), dev.query("RDG?")]
    return answers


def client(port):
    return TCPInterface("127.0.0.1", port, 5.0, termination="\n")


# ----------------------------------------------------------------------
# the acceptance test: record faults through the proxy, replay, same answers
@pytest.mark.parametrize("timing", ["fast", "recorded"])
def test_recorded_fault_session_replays_same_answers_in_order(tmp_path, timing):
    path = tmp_path / "session.jsonl"
    emu = counting_device().start()
    try:
        with RecordingProxy("127.0.0.1", emu.port, path) as proxy:
            dev = client(proxy.port)
            recorded = fault_session(dev, emu)
            dev.close()
            wait_for(lambda: proxy.writer.events >= 1 and not proxy._sockets, what="proxy connections closed")
        device_saw = list(emu.received)
    finally:
        emu.shutdown()
    assert recorded == ["EMU,1", "1.5", "2.5", "3.5", "EMU,1", "4.5", "EMU,1", "5.5", "6.5", "EMU,1", "7.5"]

    rec = read_recording(path)
    assert rec.complete and not rec.truncated
    assert rec.connections() == [1, 2]  # the restart made a second connection
    closes = [ev for ev in rec.events if ev.kind == "close"]
    assert [(ev.conn, ev.by) for ev in closes] == [(1, "device"), (2, "client")]
    # the split and the drip show as several chunks of one reply
    chunks = [ev.data for ev in rec.events if ev.kind == "data" and ev.dir == "in"]
    for reply in (b"3.5\n", b"5.5\n"):
        assert reply in b"".join(chunks) and reply not in chunks, (reply, chunks)
    # the merged pair as one chunk
    assert any(ev.kind == "data" and ev.dir == "in" and ev.data == b"4.5\nEMU,1\n" for ev in rec.events)

    with ReplayServer(path, timing=timing) as server:
        dev = client(server.port)
        replayed = fault_session(dev)
        dev.close()
        assert server.summary()["unexpected"] == 0
        assert server.connections == 2  # the recorded close replayed as a close, the client reconnected
    assert replayed == recorded
    assert b"".join(server.received).decode() == "".join(f"{c}\n" for c in device_saw), device_saw


def test_successive_and_simultaneous_connections_get_their_own_ids(tmp_path, emulator):
    path = tmp_path / "s.jsonl"
    with RecordingProxy("127.0.0.1", emulator.port, path) as proxy:
        a = client(proxy.port)
        b = client(proxy.port)
        assert a.query("one") == "echo:one"
        assert b.query("two") == "echo:two"
        a.close()
        b.close()
        c = client(proxy.port)
        assert c.query("three") == "echo:three"
        c.close()
        wait_for(lambda: proxy.connections == 3 and not proxy._sockets, what="three closed connections")
    rec = read_recording(path)
    by_conn = {conn: rec.data("out", conn) for conn in rec.connections()}
    assert sorted(by_conn.values()) == [b"one\n", b"three\n", b"two\n"]
    assert by_conn[3] == b"three\n"
    for conn in (1, 2, 3):
        kinds = [ev.kind for ev in rec.events if ev.conn == conn]
        assert kinds[0] == "connect" and kinds[-1] == "close"


def test_proxy_is_transparent_for_binary_and_unsolicited_bytes(tmp_path):
    path = tmp_path / "bin.jsonl"
    with DeviceEmulator({b"\x01\x03": b"\x00\xff\x10"}, encoding=None, read_termination=None) as emu:
        with RecordingProxy("127.0.0.1", emu.port, path) as proxy:
            dev = TCPInterface("127.0.0.1", proxy.port, 5.0, encoding=None)
            assert dev.wrnrd(b"\x01\x03", 3) == b"\x00\xff\x10"
            emu.wait_for_clients(1)
            emu.send_garbage(b"\xfe\xfe")
            assert dev.read(2) == b"\xfe\xfe"
            dev.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {"t", "conn", "dir", "hex"} <= set(lines[2]) and lines[2]["hex"] == "0103"
    rec = read_recording(path)
    assert rec.data("in") == b"\x00\xff\x10\xfe\xfe"


# ----------------------------------------------------------------------
# bounded size
def test_cap_stops_recording_but_not_forwarding(tmp_path, emulator):
    path = tmp_path / "cap.jsonl"
    with RecordingProxy("127.0.0.1", emulator.port, path, max_bytes=2048) as proxy:
        dev = client(proxy.port)
        answers = [dev.query(f"q{i:03d}") for i in range(100)]
        dev.close()
    assert answers == [f"echo:q{i:03d}" for i in range(100)]  # forwarding went on past the cap
    assert path.stat().st_size <= 2048
    rec = read_recording(path)
    assert rec.complete and rec.truncated
    assert rec.events[-2].kind == "truncated"
    assert 0 < len(rec.events) < 200
    assert proxy.writer.dropped > 0


def test_rotation_keeps_n_bounded_parts(tmp_path, emulator):
    path = tmp_path / "rot.jsonl"
    with RecordingProxy("127.0.0.1", emulator.port, path, max_bytes=1024, keep=2) as proxy:
        dev = client(proxy.port)
        for i in range(200):
            assert dev.query(f"r{i:03d}") == f"echo:r{i:03d}"
        dev.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["rot.jsonl", "rot.jsonl.1", "rot.jsonl.2"]
    parts = []
    for name in ("rot.jsonl.2", "rot.jsonl.1", "rot.jsonl"):
        assert (tmp_path / name).stat().st_size <= 1024
        part = read_recording(tmp_path / name)
        parts.append(part.header["part"])
        assert not part.truncated
    assert parts == sorted(parts) and parts[-1] == proxy.writer.parts > 3
    newest = read_recording(path)
    assert newest.complete and newest.header["open"] == [1]
    assert newest.data("out").endswith(b"r199\n")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_full_disk_stops_recording_but_never_raises():
    writer = RecordingWriter("/dev/full")
    writer.connect(1)
    writer.data(1, "out", b"A\n")
    writer.close()
    assert isinstance(writer.failed, OSError)
    rec = Recorder(writer)
    rec.on_connect("127.0.0.1:1")
    rec.on_send(b"x")


def test_writer_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="max_bytes"):
        RecordingWriter(tmp_path / "x.jsonl", max_bytes=10)
    with pytest.raises(ValueError, match="keep"):
        RecordingWriter(tmp_path / "x.jsonl", keep=-1)
    writer = RecordingWriter(tmp_path / "x.jsonl")
    with pytest.raises(ValueError, match="'sideways'"):
        writer.data(1, "sideways", b"x")
    writer.close()


# ----------------------------------------------------------------------
# device down
def test_proxy_with_device_down_closes_client_at_once_and_records_nothing(tmp_path):
    path = tmp_path / "down.jsonl"
    with RecordingProxy("127.0.0.1", free_port(), path, connect_timeout=2.0) as proxy:
        dev = TCPInterface("127.0.0.1", proxy.port, 5.0, termination="\n")
        start = time.monotonic()
        with pytest.raises(ConnectionError):
            dev.query("ID?")
        assert time.monotonic() - start < 5.0  # a clear error, not the query timeout
        wait_for(lambda: proxy.failed_connects >= 1, what="failed connect counted")
        dev.close()
    rec = read_recording(path)
    assert rec.complete
    assert [ev.kind for ev in rec.events] == ["end"]


def test_raw_client_of_proxy_with_device_down_sees_end_of_stream(tmp_path):
    with RecordingProxy("127.0.0.1", free_port(), tmp_path / "d.jsonl") as proxy:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            assert s.recv(10) == b""  # closed at once, no byte sent


# ----------------------------------------------------------------------
# command lines (real subprocesses)
class Cli:
    """A CLI subprocess, killed at the end whatever happens."""

    def __init__(self, *args):
        self.proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        self.first = self.proc.stdout.readline().strip()

    @property
    def port(self):
        assert self.first.startswith("listening on 127.0.0.1:"), (self.first, self.proc.stderr.read()
                                                                  if self.proc.poll() is not None else "")
        return int(self.first.rsplit(":", 1)[1])

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def cli():
    made = []

    def start(*args):
        c = Cli(*args)
        made.append(c)
        return c
    try:
        yield start
    finally:
        for c in made:
            c.kill()


def test_record_cli_sigint_in_the_middle_of_a_transfer(tmp_path, cli):
    path = tmp_path / "big.jsonl"
    big = "x" * 500_000
    with DeviceEmulator({"BIG?": big}, write_termination="\n") as emu:
        emu.split_replies(500, 0.005)  # a long transfer: 1000 chunks, 5 s at least
        proc = cli("socs_tcp.record", "--device", emu.address, "--listen", "127.0.0.1:0", "--out", str(path))
        dev = TCPInterface("127.0.0.1", proc.port, 30.0, termination="\n", max_read_size=1 << 21)
        dev.write("BIG?")
        wait_for(lambda: path.exists() and path.stat().st_size > 20_000, what="part of the transfer recorded")
        code, out, err = proc.stop(signal.SIGINT)
        dev.close()
    assert code == 0, err
    assert out.startswith("recorded 1 connections")
    rec = read_recording(path)
    assert rec.complete
    assert rec.header["format"] == FORMAT
    received = rec.data("in")
    assert 0 < len(received) < len(big) and big.encode().startswith(received)  # stopped in the middle
    assert [(ev.kind, ev.by) for ev in rec.events[-2:]] == [("close", "proxy"), ("end", None)]


def test_record_then_replay_cli_sigterm(tmp_path, cli):
    path = tmp_path / "s.jsonl"
    emu = counting_device().start()
    try:
        rec_cli = cli("socs_tcp.record", "--device", emu.address, "--listen", "127.0.0.1:0", "--out", str(path))
        dev = client(rec_cli.port)
        recorded = [dev.query("RDG?"), dev.query("RDG?"), dev.query("ID?")]
        dev.close()
        code, _, err = rec_cli.stop(signal.SIGTERM)
        assert code == 0, err
    finally:
        emu.shutdown()
    rep = cli("socs_tcp.replay", str(path), "--port", "0", "--timing", "fast")
    dev = client(rep.port)
    assert [dev.query("RDG?"), dev.query("RDG?"), dev.query("ID?")] == recorded == ["1.5", "2.5", "EMU,1"]
    dev.close()
    code, out, err = rep.stop(signal.SIGTERM)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "replay summary: sessions=1 connections=1 matched=3 unexpected=0 exhausted=0"


def test_replay_cli_reports_unexpected_and_can_fail(tmp_path, cli):
    path = write_recording(tmp_path, [("out", b"A\n"), ("in", b"1\n")])
    rep = cli("socs_tcp.replay", str(path), "--port", "0", "--on-unexpected", "reply", "--error-reply", "ERR\\n",
              "--fail-on-unexpected")
    dev = client(rep.port)
    assert dev.query("B") == "ERR"
    assert dev.query("A") == "1"
    dev.close()
    code, out, err = rep.stop()
    assert code == 1
    assert "unexpected=1" in out
    assert "unexpected request" in err and "B" in err


def test_replay_cli_options_reach_the_server(tmp_path, cli):
    rep = cli("socs_tcp.replay", str(write_recording(tmp_path, POLL)), "--port", "0", "--match", "queues",
              "--context", "1", "--timing", "0.5", "--at-end", "loop", "--on-unexpected", "ignore")
    dev = client(rep.port)
    # with --context 1, RDG? right after ID? gets the answer recorded after ID? ("2"); other RDG? take
    # the plain RDG? queue in order, looping
    assert [dev.query("ID?"), dev.query("RDG?"), dev.query("RDG?"), dev.query("RDG?")] == ["EMU", "2", "1", "2"]
    with pytest.raises(LinkTimeoutError):
        dev.query("NOPE?", timeout=0.3)
    dev.close()
    code, out, err = rep.stop(signal.SIGTERM)
    assert code == 0, err
    assert "matched=4 unexpected=1" in out


def test_cli_bad_arguments_name_the_value(tmp_path):
    res = subprocess.run([sys.executable, "-m", "socs_tcp.record", "--device", "nohost", "--out", "x"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert res.returncode == 2 and "'nohost'" in res.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "socs_tcp-recording", "version": 9}\n')
    res = subprocess.run([sys.executable, "-m", "socs_tcp.replay", str(bad), "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert res.returncode == 2 and f"{bad}:1: version" in res.stderr
    res = subprocess.run([sys.executable, "-m", "socs_tcp.replay", str(bad), "--port", "0", "--timing", "slow"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert res.returncode == 2


# ----------------------------------------------------------------------
# replay options
def write_recording(tmp_path, items, name="r.jsonl"):
    """A recording written by hand: items are (dir, bytes), ('close', by),
    ('connect', None) or ('t', seconds) to move the clock."""
    path = tmp_path / name
    lines = [{"format": FORMAT, "version": 1, "started": "2026-01-01T00:00:00+00:00", "source": "proxy"}]
    t, conn = 0.0, 1
    lines.append({"t": t, "conn": conn, "event": "connect"})
    for kind, value in items:
        if kind == "t":
            t += value
        elif kind == "close":
            lines.append({"t": t, "conn": conn, "event": "close", "by": value, "reason": ""})
        elif kind == "connect":
            conn += 1
            lines.append({"t": t, "conn": conn, "event": "connect"})
        else:
            lines.append({"t": t, "conn": conn, "dir": kind, **encode_chunk(value)})
    lines.append({"t": t, "event": "end", "events": len(lines) - 1})
    path.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    return path


POLL = [("out", b"RDG?\n"), ("in", b"1\n"), ("out", b"ID?\n"), ("in", b"EMU\n"), ("out", b"RDG?\n"), ("in", b"2\n")]


def test_strict_order_rejects_reordered_queries(tmp_path):
    with ReplayServer(write_recording(tmp_path, POLL), timing="fast") as server:
        dev = client(server.port)
        start = time.monotonic()
        with pytest.raises(PeerClosedError):
            dev.query("ID?")  # recorded second
        assert time.monotonic() - start < 5.0
        assert server.unexpected == [(1, b"ID?\n")]


def test_queues_serve_each_request_its_own_answers(tmp_path):
    with ReplayServer(write_recording(tmp_path, POLL), match="queues", timing="fast") as server:
        dev = client(server.port)
        assert [dev.query("ID?"), dev.query("RDG?"), dev.query("RDG?")] == ["EMU", "1", "2"]
        assert server.summary()["unexpected"] == 0


def test_strict_matching_is_by_stream_not_by_chunk(tmp_path):
    with ReplayServer(write_recording(tmp_path, POLL), timing="fast") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"RD")
            s.sendall(b"G?\nID?\nRDG?")  # split and merged
            s.sendall(b"\n")
            data = b""
            while data.count(b"\n") < 3:
                chunk = s.recv(100)
                assert chunk
                data += chunk
    assert data == b"1\nEMU\n2\n"


def test_queues_with_context_keep_an_enq_answer_with_its_mnemonic(tmp_path):
    path = write_recording(tmp_path, [("out", b"PR1\r\n"), ("in", b"\x06\r\n"), ("out", b"\x05"), ("in", b"0,1.0E-03\r\n"),
                                      ("out", b"UNI\r\n"), ("in", b"\x06\r\n"), ("out", b"\x05"), ("in", b"0\r\n")])

    def ask(port, mnemonic):
        dev = TCPInterface("127.0.0.1", port, 5.0, termination="\r\n")
        assert dev.query(mnemonic) == "\x06"
        dev.send(b"\x05")
        return dev.read_until()
    with ReplayServer(path, match="queues", context=1, timing="fast", request_end="\n") as server:
        assert ask(server.port, "UNI") == "0"
        assert ask(server.port, "PR1") == "0,1.0E-03"
        assert not server.unexpected
    with ReplayServer(path, match="queues", timing="fast", request_end="\n") as server:
        assert ask(server.port, "UNI") == "0,1.0E-03"  # without context the ENQ queue is shared
    with pytest.raises(ValueError, match="context"):
        ReplayServer(path, context=-1)


@pytest.mark.parametrize("match", ["strict", "queues"])
def test_at_end_close_or_loop(tmp_path, match):
    path = write_recording(tmp_path, POLL)
    with ReplayServer(path, timing="fast", match=match, at_end="close") as server:
        dev = client(server.port)
        assert [dev.query("RDG?"), dev.query("ID?"), dev.query("RDG?")] == ["1", "EMU", "2"]
        with pytest.raises(PeerClosedError):
            dev.query("RDG?")
        assert server.exhausted == 1 and not server.unexpected
    with ReplayServer(path, timing="fast", match=match, at_end="loop") as server:
        dev = client(server.port)
        answers = [dev.query(q) for q in ["RDG?", "ID?", "RDG?"] * 3]
        assert answers == ["1", "EMU", "2"] * 3
        dev.close()
        dev = client(server.port)  # a connection after the last session starts again too
        assert dev.query("RDG?") == "1"


def test_after_the_last_session_close_closes_new_connections(tmp_path):
    with ReplayServer(write_recording(tmp_path, POLL), timing="fast") as server:
        dev = client(server.port)
        dev.query("RDG?")
        dev.close()
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            assert s.recv(10) == b""
        assert server.exhausted == 1


def test_unexpected_ignore_and_reply(tmp_path, caplog):
    path = write_recording(tmp_path, POLL)
    caplog.set_level(logging.WARNING, logger="socs_tcp.testing")
    with ReplayServer(path, timing="fast", on_unexpected="ignore") as server:
        dev = client(server.port)
        with pytest.raises(LinkTimeoutError):
            dev.query("NOPE?", timeout=0.3)
        assert dev.query("RDG?") == "1"  # the session stays where it was
        assert server.summary()["unexpected_requests"] == [b"NOPE?\n"]
    assert "unexpected request" in caplog.text and "NOPE?" in caplog.text
    with ReplayServer(path, timing="fast", on_unexpected="reply", error_reply="ERR 1\n") as server:
        dev = client(server.port)
        assert dev.query("NOPE?") == "ERR 1"
        assert dev.query("RDG?") == "1"
        assert dev.query("BAD") == "ERR 1"
        assert server.summary()["unexpected"] == 2


def test_unexpected_binary_request_is_whatever_arrived(tmp_path):
    path = write_recording(tmp_path, [("out", b"\x01\x02"), ("in", b"\xaa")])
    with ReplayServer(path, timing="fast", on_unexpected="reply", error_reply=b"\xee") as server:
        assert server.request_end is None
        dev = TCPInterface("127.0.0.1", server.port, 5.0, encoding=None)
        assert dev.wrnrd(b"\x09", 1) == b"\xee"
        assert dev.wrnrd(b"\x01\x02", 1) == b"\xaa"
        assert server.unexpected == [(1, b"\x09")]


def test_timing_modes(tmp_path):
    # the device took 30 s to answer: recorded timing keeps the client waiting,
    # fast and scaled do not (bounds are generous: the 5 s client timeout)
    path = write_recording(tmp_path, [("out", b"SLOW?\n"), ("t", 30.0), ("in", b"ok\n")])
    with ReplayServer(path, timing="recorded") as server:
        dev = client(server.port)
        with pytest.raises(LinkTimeoutError):
            dev.query("SLOW?", timeout=0.5)
    with ReplayServer(path, timing="fast") as server:
        assert client(server.port).query("SLOW?") == "ok"
    with ReplayServer(path, timing=0.01) as server:
        start = time.monotonic()
        assert client(server.port).query("SLOW?") == "ok"
        assert time.monotonic() - start >= 0.25  # 30 s scaled by 0.01 is waited, not skipped
    with pytest.raises(ValueError, match="'slow'"):
        ReplayServer(path, timing="slow")
    with pytest.raises(ValueError, match="-1"):
        ReplayServer(path, timing=-1)


def test_recorded_banner_close_and_reconnect(tmp_path):
    path = write_recording(tmp_path, [("in", b"HELLO\n"), ("out", b"A\n"), ("in", b"1\n"), ("t", 0.01),
                                      ("close", "device"), ("connect", None), ("in", b"HELLO\n"),
                                      ("out", b"A\n"), ("in", b"2\n")])
    sessions = build_sessions(read_recording(path))
    assert [s.closed_by for s in sessions] == ["device", None]
    with ReplayServer(path, timing="fast") as server:
        dev = client(server.port)
        assert dev.read_until() == "HELLO"
        assert dev.query("A") == "1"
        with pytest.raises(PeerClosedError):
            dev.read_until()
        assert dev.read_until() == "HELLO"  # reconnected: the second session's banner
        assert dev.query("A") == "2"
        assert server.connections == 2


def test_replay_options_are_checked(tmp_path):
    path = write_recording(tmp_path, POLL)
    for key, value in [("match", "fuzzy"), ("at_end", "rewind"), ("on_unexpected", "panic")]:
        with pytest.raises(ValueError, match=repr(value)):
            ReplayServer(path, **{key: value})
    with pytest.raises(ValueError, match="70000"):
        ReplayServer(path, port=70000)


# ----------------------------------------------------------------------
# emulator integration: from_recording keeps the fault API, the fixture
def test_from_recording_has_the_fault_api(tmp_path):
    path = write_recording(tmp_path, POLL)
    server = DeviceEmulator.from_recording(path, timing="fast")
    assert isinstance(server, DeviceEmulator)
    with server:
        server.split_replies(1, 0.001)
        dev = client(server.port)
        assert dev.query("RDG?") == "1"
        server.split_replies(None)
        server.go_silent()
        with pytest.raises(LinkTimeoutError):
            dev.query("ID?", timeout=0.3)
        server.go_silent(False)
        server.restart()
        dev2 = client(server.port)  # a new connection gets the next session: none left
        with pytest.raises(ConnectionError):  # closed at once (a reset if the query got there first)
            dev2.query("RDG?")
    assert server.received == [b"RDG?\n", b"ID?\n"]


polled = replay_fixture(os.path.join(HERE, "data", "recordings", "poll_example.jsonl"), timing="fast", at_end="loop")


def test_replay_fixture_serves_committed_recording(polled):
    dev = client(polled.port)
    assert [dev.query("RDG?") for _ in range(3)] == ["1.5", "2.5", "3.5"]
    assert dev.query("ID?") == "EMU,1"
    assert polled.summary()["unexpected"] == 0


# ----------------------------------------------------------------------
# in-process recording
def test_recorder_hooks_write_a_session(tmp_path):
    path = tmp_path / "in.jsonl"
    rec = Recorder(path, device="127.0.0.1:1")
    rec.on_connect("127.0.0.1:1")
    rec.on_send(b"A\n")
    rec.on_recv(b"1\n")
    rec.on_close("peer closed")
    rec.on_connect("127.0.0.1:1")
    rec.on_send(b"B\n")
    rec.close()
    got = read_recording(path)
    assert got.header["source"] == "interface"
    assert [(e.kind, e.conn, e.dir, e.data) for e in got.events if e.kind != "end"] == [
        ("connect", 1, None, b""), ("data", 1, "out", b"A\n"), ("data", 1, "in", b"1\n"), ("close", 1, None, b""),
        ("connect", 2, None, b""), ("data", 2, "out", b"B\n"), ("close", 2, None, b"")]
    with pytest.raises(TypeError, match="record"):
        Recorder.coerce(42)


def test_tcp_interface_record_option(tmp_path, emulator):
    path = tmp_path / "iface.jsonl"
    recorder = Recorder(path)
    dev = TCPInterface("127.0.0.1", emulator.port, 5.0, termination="\n", record=recorder)
    assert dev.query("A") == "echo:A"
    emulator.drop_connections()
    assert query_retrying(dev, "B") == "echo:B"
    dev.close()
    recorder.close()
    rec = read_recording(path)
    assert rec.header["source"] == "interface" and rec.complete
    assert rec.data("out") == b"A\nB\n" and rec.data("in") == b"echo:A\necho:B\n"
    assert rec.connections() == [1, 2]
    assert [ev.by for ev in rec.events if ev.kind == "close"] == ["device", "interface"]
    with ReplayServer(path, timing="fast") as server:
        dev = TCPInterface("127.0.0.1", server.port, 5.0, termination="\n")
        assert dev.query("A") == "echo:A"
        assert query_retrying(dev, "B") == "echo:B"  # the device's close replayed, then the second connection
        assert server.connections == 2


def test_tcp_interface_record_option_checked_and_off_by_default(tmp_path, emulator):
    with pytest.raises(TypeError, match="record must be"):
        TCPInterface("127.0.0.1", emulator.port, 5.0, record=str(tmp_path / "x.jsonl"), connect=False)
    assert not (tmp_path / "x.jsonl").exists()
    dev = TCPInterface("127.0.0.1", emulator.port, 5.0, termination="\n")
    assert dev._recorder is None
    assert dev.query("A") == "echo:A"


def _record_one_poll(device_name, emulator_class, path):
    """Poll the shipped device file ``device_name`` once against its
    independent emulator, recording in-process to ``path``; the polled values."""
    from socs_tcp.devices import Device
    recorder = Recorder(path)
    with emulator_class() as emu:
        dev = Device.from_file(device_name, emu.address, record=recorder)
        live = dev.poll()
        dev.close()
    recorder.close()
    return live


def test_device_driver_records_in_process(tmp_path):
    # a device file without a connection init sequence
    _sys_path_insert(HERE)
    from emulators.pcr500ma import PCR500MAEmulator

    from socs_tcp.devices import Device
    path = tmp_path / "pcr.jsonl"
    live = _record_one_poll("pcr500ma", PCR500MAEmulator, path)
    assert live
    with ReplayServer(path, timing="fast") as server:
        dev = Device.from_file("pcr500ma", server.address)
        assert dev.poll() == live
        dev.close()
        assert server.summary()["unexpected"] == 0


def test_device_init_sequence_is_recorded_in_process(tmp_path):
    # the TPG 366 file's connection init (ENQ, then discard) runs in the driver's _connect
    # hook on the raw socket: it is recorded right after the connect event, in order
    _sys_path_insert(HERE)
    from emulators.tpg366 import TPG366Emulator

    from socs_tcp.devices import Device
    path = tmp_path / "tpg.jsonl"
    live = _record_one_poll("tpg366", TPG366Emulator, path)
    rec = read_recording(path)
    kinds = [(e.kind, e.dir) for e in rec.events]
    assert kinds[:2] == [("connect", None), ("data", "out")]
    assert [e.kind for e in rec.events].count("connect") == 1
    assert rec.events[1].data == b"\x05"
    with ReplayServer(path, timing="fast") as server:
        dev = Device.from_file("tpg366", server.address)
        assert dev.poll() == live
        dev.close()
        assert server.summary()["unexpected"] == 0


def _sys_path_insert(path):
    if path not in sys.path:
        sys.path.insert(0, path)


# ----------------------------------------------------------------------
# the format
def test_text_stays_readable_and_binary_is_hex():
    assert encode_chunk(b"PR1\r\n") == {"text": "PR1\r\n"}
    assert encode_chunk("µbar\n".encode()) == {"text": "µbar\n"}
    assert encode_chunk(b"\x06\r\n") == {"hex": "060d0a"}
    assert encode_chunk(b"\xff") == {"hex": "ff"}
    assert decode_chunk({"b64": "AP8="}) == b"\x00\xff"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["out", "in"]), st.integers(1, 3), st.binary(min_size=1, max_size=64)),
                max_size=30))
def test_format_round_trip_for_arbitrary_bytes(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("rt") / "rt.jsonl"
    with RecordingWriter(path) as writer:
        for conn in sorted({c for _, c, _ in chunks}):
            writer.connect(conn, "127.0.0.1:1")
        for direction, conn, data in chunks:
            writer.data(conn, direction, data)
    rec = read_recording(path)
    got = [(e.dir, e.conn, e.data) for e in rec.events if e.kind == "data"]
    assert got == chunks
    assert rec.complete


@given(st.binary(max_size=64))
def test_chunk_codec_round_trip(data):
    assert decode_chunk(encode_chunk(data)) == data


BAD_LINES = [
    ('{"t": 0, "conn": 1, "dir": "out", "hex": "0g"}', "hex: not valid"),
    ('{"t": 0, "conn": 1, "dir": "up", "text": "x"}', "dir: must be one of"),
    ('{"t": -1, "conn": 1, "dir": "out", "text": "x"}', "t: must be a number"),
    ('{"t": 0, "conn": 0, "dir": "out", "text": "x"}', "conn: must be an int >= 1"),
    ('{"t": 0, "conn": 1, "dir": "out", "text": "x", "hex": "00"}', "exactly one of"),
    ('{"t": 0, "conn": 1, "dir": "out", "text": "x", "colour": 1}', "colour: unknown key"),
    ('{"t": 0, "conn": 1, "event": "close", "by": "ghost"}', "by: must be one of"),
    ('{"t": 0, "event": "explode"}', "event: must be one of"),
    ('[1, 2]', "must be a JSON object"),
    ('{"t": 0, "conn": 1, "dir": "out", "text"', "not a JSON line"),
]


@pytest.mark.parametrize("line, message", BAD_LINES)
def test_reader_names_file_line_and_key(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{{"format": "{FORMAT}", "version": 1}}\n{{"t": 0, "conn": 1, "event": "connect"}}\n{line}\n')
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_reader_header_and_partial_last_line(tmp_path):
    path = tmp_path / "h.jsonl"
    path.write_text('{"format": "pcap", "version": 1}\n')
    with pytest.raises(RecordingError, match=r"h.jsonl:1: format: not a socs_tcp recording"):
        read_recording(path)
    path.write_text("")
    with pytest.raises(RecordingError, match="empty file"):
        read_recording(path)
    path.write_text(f'{{"format": "{FORMAT}", "version": 1}}\n{{"t": 0, "conn": 1, "event": "connect"}}\n{{"t": 0.1, "co')
    with pytest.raises(RecordingError, match="h.jsonl:3: not a JSON line"):
        read_recording(path)
    rec = read_recording(path, allow_partial=True)
    assert [e.kind for e in rec.events] == ["connect"] and not rec.complete


def test_writer_is_thread_safe(tmp_path):
    path = tmp_path / "mt.jsonl"
    writer = RecordingWriter(path)

    def work(conn):
        writer.connect(conn)
        for i in range(200):
            writer.data(conn, "out", f"{conn}:{i}\n".encode())
        writer.close_conn(conn, "client")
    threads = [threading.Thread(target=work, args=(c,)) for c in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    rec = read_recording(path)
    for conn in (1, 2, 3, 4):
        assert rec.data("out", conn) == b"".join(f"{conn}:{i}\n".encode() for i in range(200))
