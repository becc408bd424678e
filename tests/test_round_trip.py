"""The common round trip (``Connection._round_trip``) and every way out of it.

Each test first makes the link do a round trip, so that its socket is set up
and the next ``query`` / ``wrnrd_until`` takes the one-frame path; then the
device does something unusual.  Whatever it does, the answer, the error, the
statistics and what the device received are those of the general path.  A
spy on ``_run`` shows which way an operation went (``spin_wait=0`` so that
the wait chooser's timed waits do not hand operations over).
"""

import os
import select
import socket
import struct
import threading
import time

import pytest

from socs_tcp import LinkError, LinkTimeoutError, PeerClosedError, TCPInterface

IDN = "ACME,MODEL1,42,1.0"


def warm_link(device, **kwargs):
    kwargs.setdefault("termination", "\n")
    kwargs.setdefault("spin_wait", 0)
    dev = TCPInterface("127.0.0.1", device.port, kwargs.pop("timeout", 2.0), **kwargs)
    assert dev.query("*IDN?") == IDN      # sets the socket up: later round trips are the common case
    return dev


@pytest.fixture
def handovers(monkeypatch):
    """Patch a link's ``_run`` to count the operations handed over to it."""
    def spy(dev):
        calls = []
        real = dev._run

        def counting(*args, **kwargs):
            calls.append(kwargs.get("deadline") or (args[5] if len(args) > 5 else None))
            return real(*args, **kwargs)
        monkeypatch.setattr(dev, "_run", counting)
        return calls
    return spy


class ScriptedDevice:
    """A raw loopback server: answers ``*IDN?`` lines, then does what the
    test asks to the connection (``reset``, ``stall``)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.mode = "answer"
        self.conn = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.conn = conn
            conn.settimeout(0.1)
            pending = b""
            while not self._stop.is_set():
                if self.mode == "stall":
                    time.sleep(0.01)    # a device that stopped reading: poll its mode again shortly
                    continue
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                self.received += chunk
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if self.mode == "reset":
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        conn.close()    # RST, not FIN
                        self.conn = None
                        self.mode = "answer"
                        break
                    conn.sendall(IDN.encode() + b"\n" if line == b"*IDN?" else b"echo:" + line + b"\n")
                if self.conn is None:
                    break
            if self.conn is not None:
                self.conn.close()
                self.conn = None

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


@pytest.fixture
def scripted():
    device = ScriptedDevice()
    try:
        yield device
    finally:
        device.close()


def test_the_common_round_trip_stays_in_one_frame_and_counts_as_the_general_one(emulator, handovers):
    dev = warm_link(emulator)
    before = dev.stats()
    calls = handovers(dev)
    for i in range(50):
        assert dev.query(f"q{i}") == f"echo:q{i}"
        assert dev.wrnrd_until(f"w{i}", "\\n") == f"echo:w{i}"
    assert dev.wrnrd_bin_until("3f0a", "\\n") == "6563686f3a3f"     # "echo:?"
    assert calls == [], "the common case must not need the general path"
    after = dev.stats()
    assert after["transactions"] - before["transactions"] == 101
    sent = sum(len(f"q{i}\n") + len(f"w{i}\n") for i in range(50)) + 2
    assert after["bytes_out"] - before["bytes_out"] == sent
    received = sum(len(f"echo:q{i}\n") + len(f"echo:w{i}\n") for i in range(50)) + len("echo:?\n")
    assert after["bytes_in"] - before["bytes_in"] == received
    assert after["buffered"] == 0 and after["consecutive_failures"] == 0


def test_with_the_spin_on_the_answers_are_the_same(emulator):
    dev = warm_link(emulator, spin_wait=50e-6)
    assert [dev.query(f"s{i}") for i in range(300)] == [f"echo:s{i}" for i in range(300)]


def test_a_reply_in_pieces_is_finished_by_the_general_path(emulator, handovers):
    dev = warm_link(emulator)
    calls = handovers(dev)
    emulator.split_replies(4, gap=0.05)
    assert dev.query("split me please") == "echo:split me please"
    assert len(calls) == 1 and calls[0] is not None, "handed over with the operation's deadline"
    emulator.split_replies(None)
    assert dev.query("whole") == "echo:whole"
    assert len(calls) == 1


def test_bytes_after_the_terminator_stay_buffered(make_emulator, handovers):
    device = make_emulator({"*IDN?": IDN, "Q": "first\nsecond"}, write_termination="\n")
    dev = warm_link(device)
    calls = handovers(dev)
    assert dev.query("Q") == "first"
    assert calls == []
    assert dev.stats()["buffered"] == len("second\n")
    assert dev.read_until() == "second"
    assert dev.query("*IDN?") == IDN


def test_a_silent_device_times_out_at_the_deadline_and_the_link_stays(emulator, handovers):
    dev = warm_link(emulator, timeout=0.4)
    calls = handovers(dev)
    emulator.go_silent()
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError, match="nothing received"):
        dev.query("*IDN?")
    took = time.monotonic() - started
    assert 0.35 < took < 2.0, f"took {took:.3f} s with timeout=0.4"
    assert len(calls) == 1, "the kernel timeout ran out: the general path waits the rest"
    assert dev.comm is not None
    stats = dev.stats()
    assert stats["timeouts"] == 1 and stats["consecutive_failures"] == 1
    emulator.go_silent(False)
    assert dev.query("*IDN?") == IDN
    assert dev.stats()["consecutive_failures"] == 0


def test_close_on_timeout_still_closes_after_a_fast_start(emulator):
    dev = warm_link(emulator, timeout=0.3, close_on_timeout=True)
    emulator.set_delay(0.6)
    with pytest.raises(LinkTimeoutError, match="close_on_timeout"):
        dev.query("*IDN?")
    assert dev.comm is None
    emulator.set_delay(0)
    assert dev.query("*IDN?") == IDN


def test_a_device_that_closes_is_reported_at_once_and_the_next_call_reconnects(emulator, handovers):
    dev = warm_link(emulator, timeout=5.0)
    calls = handovers(dev)
    emulator.drop_after(1)
    started = time.monotonic()
    with pytest.raises(PeerClosedError, match="closed the connection"):
        dev.query("*IDN?")
    assert time.monotonic() - started < 2.5, "EOF must not wait for the 5 s timeout"
    assert calls == [], "the end of the stream is handled in the frame"
    assert dev.comm is None
    assert dev.stats()["consecutive_failures"] == 1
    assert dev.query("*IDN?") == IDN


def test_a_reset_connection_is_a_lost_connection(scripted, handovers):
    dev = warm_link(scripted, timeout=5.0)
    calls = handovers(dev)
    scripted.mode = "reset"
    with pytest.raises(LinkError, match="connection lost while waiting") as info:
        dev.query("*IDN?")
    assert not isinstance(info.value, PeerClosedError)
    assert calls == []
    assert dev.comm is None
    assert dev.query("*IDN?") == IDN


def test_a_device_that_stops_reading_times_out_in_the_send_and_nothing_is_resent(scripted, handovers):
    dev = warm_link(scripted, timeout=0.5)
    calls = handovers(dev)
    scripted.mode = "stall"
    big = "x" * (32 << 20)
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError, match="sending .* bytes timed out"):
        dev.wrnrd_until(big, "\\n")
    took = time.monotonic() - started
    assert took < 2.5, f"took {took:.3f} s with timeout=0.5"
    assert len(calls) == 1, "the kernel's send timeout cut the write short: the general path sends the rest"
    assert dev.comm is None, "part of the data may have gone: the connection is closed"
    scripted.mode = "answer"
    assert dev.query("*IDN?") == IDN
    assert scripted.received.count(b"*IDN?\n") == 2


def test_bytes_waiting_before_the_query_go_the_general_way(emulator, handovers):
    dev = warm_link(emulator, drain_before_query=True)
    calls = handovers(dev)
    emulator.send_garbage(b"unsolicited\n")
    assert select.select([dev.comm], [], [], 5.0)[0], "the unsolicited line arrives"
    assert dev.query("*IDN?") == IDN, "the stale line is discarded, not taken as the reply"
    assert len(calls) == 1


def test_a_bad_per_call_timeout_sends_nothing(emulator):
    dev = warm_link(emulator)
    before = dev.stats()["bytes_out"]
    with pytest.raises(ValueError, match="-1"):
        dev.query("*IDN?", timeout=-1)
    with pytest.raises(TypeError, match="'soon'"):
        dev.wrnrd_until("*IDN?", "\\n", timeout="soon")
    assert dev.stats()["bytes_out"] == before
    assert dev.query("*IDN?") == IDN


def test_a_short_per_call_timeout_is_a_deadline_on_a_warm_link(emulator):
    dev = warm_link(emulator, timeout=5.0)
    emulator.go_silent()
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError):
        dev.query("*IDN?", timeout=0.2)
    assert time.monotonic() - started < 1.5
    emulator.go_silent(False)
    dev.drain()
    assert dev.query("*IDN?", timeout=1.0) == IDN


def test_traffic_logging_turned_on_later_is_seen(emulator, caplog):
    dev = warm_link(emulator)
    with caplog.at_level("DEBUG", logger="socs_tcp.interface"):
        assert dev.query("*IDN?") == IDN
    assert any("*IDN?" in r.getMessage() for r in caplog.records)
    assert any(IDN in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("read", ["query", "read_until"])
def test_a_driver_that_sets_comm_timeout_itself_does_not_make_the_waits_spin(emulator, read):
    # a SOCS driver may call self.comm.settimeout(...) after connecting; CPython
    # then makes the descriptor non-blocking, and a blocking-read wait would
    # spin on read(2) until the reply came
    dev = warm_link(emulator)
    dev.comm.settimeout(3.0)
    assert not os.get_blocking(dev.comm.fileno())
    emulator.set_delay(0.2)
    if read == "query":
        assert dev.query("*IDN?") == IDN
    else:
        dev.write("*IDN?")
        assert dev.read_until() == IDN
    assert os.get_blocking(dev.comm.fileno()), "the first empty read made the descriptor blocking again"
    assert dev.comm.gettimeout() == 3.0, "the driver's Python timeout is kept"
    emulator.set_delay(0)
    assert dev.query("*IDN?") == IDN


def test_the_instance_dict_stays_compact_for_a_link_and_a_device_driver():
    """CPython 3.11 keeps method calls on ``self`` specialised only while an
    instance's ``__dict__`` holds at most 30 attributes; the connection keeps
    its state in slots, so a link leaves most of that room to a driver."""
    from socs_tcp.devices import Device, load

    link = TCPInterface("127.0.0.1", 1, connect=False)
    assert len(vars(link)) <= 10, sorted(vars(link))
    dev = Device(load("tpg366"), "127.0.0.1", 1, connect=False)
    assert len(vars(dev)) < 30, sorted(vars(dev))


def test_a_driver_can_add_attributes_and_shadow_the_links_with_class_attributes(emulator):
    """Slots change nothing for a SOCS-style driver: it adds attributes of its
    own, and a class attribute of the same name as a link attribute is
    still overridden by what ``__init__`` sets."""
    class Driver(TCPInterface):
        timeout = 99.0      # a default a driver might declare; __init__'s value wins on the instance
        name = "driver"

        def __init__(self, port):
            super().__init__("127.0.0.1", port, 2.0, termination="\n", spin_wait=0, name="cryostat")
            self.channels = [1, 2, 3]

    dev = Driver(emulator.port)
    try:
        assert (dev.timeout, dev.name, dev.channels) == (2.0, "cryostat", [1, 2, 3])
        assert dev.query("*IDN?") == IDN and dev.query("*IDN?") == IDN
        dev.timeout = 0.5
        assert dev.query("*IDN?") == IDN and dev.comm.gettimeout() == 0.5
    finally:
        dev.close()
