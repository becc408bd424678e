"""Bounded memory against a device that floods: the library and the agents.

A device that sends data without ever completing a reply (no terminator, no
match), or that sends 100 MB, must cost at most ``max_read_size`` of buffer,
end in a clear :class:`~socs_tcp.errors.ReadOverflowError`, and leave the
link usable once the flood stops.  Memory is measured as the growth of the
peak resident set size (``VmHWM`` in ``/proc/<pid>/status``, reset through
``/proc/<pid>/clear_refs`` before the flood; where that reset is not allowed,
``VmRSS`` is sampled in a thread instead).
"""

import fcntl
import logging
import re
import struct
import termios
import threading
import time
from pathlib import Path

import pytest

from socs_tcp import LinkError, ReadOverflowError, TCPInterface
from socs_tcp_stack.stack import Stack, group_members

MIB = 1 << 20
FLOOD = 100_000_000  # not a multiple of any max_read_size used here: a tail is left over
#: Allowed growth of the peak RSS beyond max_read_size itself: the bytes are
#: copied when a frame is taken or discarded, plus allocator and logging slack.
SLACK = 8 * MIB


def wait_for(condition, timeout, what, interval=0.02):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def _status_bytes(pid, key):
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    assert match, f"no {key} in /proc/{pid}/status"
    return int(match.group(1)) * 1024


class PeakMemory:
    """Growth of the peak RSS of some processes since construction."""

    def __init__(self, pids):
        self.pids = list(pids)
        self.baseline = {pid: _status_bytes(pid, "VmRSS") for pid in self.pids}
        self._sampled = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = None
        try:
            for pid in self.pids:
                Path(f"/proc/{pid}/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self.exact = True
        except OSError:
            self.exact = False
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.005):
            for pid in self.pids:
                try:
                    rss = _status_bytes(pid, "VmRSS")
                except OSError:
                    continue
                self._sampled[pid] = max(self._sampled[pid], rss)

    def growth(self):
        """The largest peak-RSS growth among the processes, in bytes."""
        if self.exact:
            return max(_status_bytes(pid, "VmHWM") - self.baseline[pid] for pid in self.pids)
        return max(self._sampled[pid] - self.baseline[pid] for pid in self.pids)

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@pytest.fixture
def peak_memory():
    """``peak_memory(pids)`` starts a :class:`PeakMemory`; stopped after the test."""
    made = []

    def start(pids):
        made.append(PeakMemory(pids))
        return made[-1]
    try:
        yield start
    finally:
        for monitor in made:
            monitor.close()


class FloodEveryConnection:
    """Makes an emulated device flood each new client connection with
    ``total`` bytes (no terminator) until :meth:`stop`: a device stuck in a
    streaming mode, which a reconnect does not cure."""

    def __init__(self, device, total=FLOOD):
        self.device = device
        self.total = total
        self.floods = []
        self._stop = threading.Event()
        self._seen = None  # a client connected already is flooded at once
        self._thread = threading.Thread(target=self._run, name="flood-every-connection", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.005):
            if self.device.connections != self._seen and self.device.client_count:
                self._seen = self.device.connections
                self.floods.append(self.device.flood(total=self.total))

    def stop(self, timeout=60):
        """Stop flooding new connections and wait until every flood has ended
        (a flood ends when its client closes the connection)."""
        self._stop.set()
        self._thread.join(5)
        deadline = time.monotonic() + timeout
        for flood in self.floods:
            flood.join(max(0.0, deadline - time.monotonic()))
        return not any(flood.is_alive() for flood in self.floods)


@pytest.fixture
def flood_every_connection():
    made = []

    def start(device, total=FLOOD):
        made.append(FloodEveryConnection(device, total))
        return made[-1]
    try:
        yield start
    finally:
        for flooder in made:
            flooder.stop(timeout=10)


def idn_device(make_emulator):
    return make_emulator({"*IDN?": "ACME,PSU,1"}, write_termination="\n")


# ---------------------------------------------------------------- the library


@pytest.mark.parametrize("operation", [
    lambda dev: dev.read_until(timeout=30),
    lambda dev: dev.read_bin_until("\\n", timeout=30),
    lambda dev: dev.wrnrd_until("quiet", timeout=30),
    lambda dev: dev.expect(rb"END\r\n", timeout=30),
], ids=["read_until", "read_bin_until", "wrnrd_until", "expect"])
def test_a_100_mb_flood_is_one_clear_overflow_and_memory_stays_bounded(make_emulator, peak_memory, operation):
    device = idn_device(make_emulator)
    device.go_silent()  # "quiet" gets no reply: only the flood arrives
    dev = TCPInterface("127.0.0.1", device.port, 5.0, termination="\n")
    assert device.wait_for_clients(1)
    memory = peak_memory(["self"])
    flood = device.flood(total=FLOOD)

    with pytest.raises(ReadOverflowError, match=r"receive overflow: more than max_read_size=1048576 bytes") as info:
        operation(dev)
    assert isinstance(info.value, LinkError) and isinstance(info.value, ConnectionError)
    assert "the connection was closed" in str(info.value)
    stats = dev.stats()
    assert stats["bytes_in"] <= dev.max_read_size, "nothing is read past the limit"
    assert stats["buffered"] == 0 and stats["connected"] is False

    flood.join(30)
    assert not flood.is_alive(), "the device sees the connection close, so its flood ends"
    growth = memory.growth()
    assert growth <= dev.max_read_size + SLACK, f"peak RSS grew by {growth / MIB:.1f} MiB during a 100 MB flood"

    device.go_silent(False)
    assert dev.query("*IDN?") == "ACME,PSU,1", "the next query gets its own reply, no stale flood bytes"
    assert dev.stats()["connects"] == 2


def test_overflow_limit_is_the_configured_max_read_size(make_emulator):
    device = idn_device(make_emulator)
    dev = TCPInterface("127.0.0.1", device.port, 5.0, termination="\n", max_read_size=64 * 1024)
    assert device.wait_for_clients(1)
    flooder = device.flood(total=FLOOD)
    with pytest.raises(ReadOverflowError, match=r"max_read_size=65536 .*the 65536 buffered bytes were discarded"):
        dev.read_until()
    assert dev.stats()["bytes_in"] <= 64 * 1024
    # the flood stops once its connection is gone; a new connection made before
    # that would be flooded too, so wait for it (with a deadline)
    flooder.join(10)
    assert not flooder.is_alive(), "the flood did not stop after the client closed its connection"
    assert dev.query("*IDN?") == "ACME,PSU,1"


def test_a_device_flooding_every_connection_never_grows_memory(make_emulator, peak_memory, flood_every_connection,
                                                                caplog):
    device = idn_device(make_emulator)
    dev = TCPInterface("127.0.0.1", device.port, 5.0, termination="\n", max_read_size=MIB)
    memory = peak_memory(["self"])
    flooder = flood_every_connection(device)
    for _ in range(5):  # each attempt reconnects, is flooded again and overflows again
        with pytest.raises(ReadOverflowError, match="max_read_size=1048576"):
            dev.read_until(timeout=30)
        assert not dev.is_connected
    assert dev.stats()["connects"] == 5
    assert dev.stats()["bytes_in"] <= 5 * MIB
    assert flooder.stop(), "every flood ended once its connection was closed"
    growth = memory.growth()
    assert growth <= MIB + SLACK, f"peak RSS grew by {growth / MIB:.1f} MiB over five flooded connections"
    assert "discarded 1048576 buffered bytes and closed the connection" in caplog.text

    assert dev.query("*IDN?") == "ACME,PSU,1", "the link recovers once the device stops flooding"


def test_100_mb_read_in_pieces_passes_through_in_bounded_memory(make_emulator, peak_memory):
    """A large transfer that the caller consumes piece by piece is not an
    overflow: only what is buffered counts against max_read_size."""
    device = idn_device(make_emulator)
    dev = TCPInterface("127.0.0.1", device.port, 10.0, termination="\n", buffer_size=65536)
    assert device.wait_for_clients(1)
    memory = peak_memory(["self"])
    flood = device.flood(total=FLOOD)
    received = 0
    while received < FLOOD:
        chunk = dev.recv(65536)
        assert chunk and not chunk.strip(b"x")
        received += len(chunk)
    assert received == FLOOD
    flood.join(30)
    assert not flood.is_alive()
    growth = memory.growth()
    assert growth <= dev.max_read_size + SLACK, f"peak RSS grew by {growth / MIB:.1f} MiB while passing 100 MB"
    assert dev.query("*IDN?") == "ACME,PSU,1"


# ---------------------------------------------------------------- the agent


@pytest.mark.integration
def test_agent_survives_a_flooding_device_with_bounded_memory(make_emulator, peak_memory, flood_every_connection):
    """TCPBusAgent with acq running, device floods 100 MB on every connection:
    the agent stays up, degraded with the overflow as last_error, its peak RSS
    grows by less than max_read_size + 24 MiB, and it recovers when the flood stops."""
    device = make_emulator({"VOLT?": "1.25"}, write_termination="\n")
    with Stack() as stack:
        stack.add_instance("TCPBusAgent", "bus", [
            "--address", f"127.0.0.1:{device.port}", "--timeout", 5.0, "--sample-rate", 5.0,
            "--max-read-size", MIB, "--acq-query", "volt=VOLT?", "--mode", "acq"])
        agent = stack.start_agent("bus")
        client = stack.client("bus")

        def acq():
            return client.acq.status().session

        wait_for(lambda: (acq().get("data") or {}).get("values") == {"volt": 1.25}, 30, "acq values")
        pids = group_members(agent.pid)
        assert agent.pid in pids
        memory = peak_memory(pids)

        device.go_silent()  # from now on the only thing the agent receives is the flood
        flooder = flood_every_connection(device)
        degraded = wait_for(lambda: acq()["data"] if acq()["data"].get("degraded") else None, 60, "degraded")
        assert "receive overflow" in degraded["last_error"] and "max_read_size=1048576" in degraded["last_error"]
        assert degraded["connected"] is False
        # several acq cycles in a row are flooded, each on a new connection
        wait_for(lambda: acq()["data"]["stats"]["errors"] >= 5, 60, "five overflowed cycles")
        data = acq()["data"]
        assert data["degraded"] is True and "receive overflow" in data["last_error"]
        assert agent.alive() and acq()["status"] == "running"
        growth = memory.growth()
        assert growth <= MIB + 3 * SLACK, f"agent peak RSS grew by {growth / MIB:.1f} MiB under the flood"

        assert flooder.stop(), "every flood ended once the agent closed its connection"
        device.go_silent(False)
        recovered = wait_for(lambda: acq()["data"] if not acq()["data"]["degraded"] else None, 30, "recovery")
        assert recovered["last_error"] is None
        wait_for(lambda: acq()["data"].get("values") == {"volt": 1.25} and not acq()["data"]["degraded"],
                 10, "fresh values after the flood")
        assert agent.alive()
        log = agent.log_text()
        assert "receive overflow" in log and "acq no longer degraded" in log
        client.acq.stop()
        client.acq.wait(timeout=10)


def _waiting_bytes(sock):
    """Bytes received by the kernel and not yet read (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


def test_one_drain_discards_more_than_max_read_size_waiting_on_the_socket(make_emulator, caplog):
    device = make_emulator({"*IDN?": "ACME"}, write_termination="\n")
    dev = TCPInterface("127.0.0.1", device.port, 5.0, termination="\n", max_read_size=4096)
    assert device.wait_for_clients(1)
    device.send_garbage(b"z" * 20000)
    deadline = time.monotonic() + 5
    while _waiting_bytes(dev.comm) < 20000:
        assert time.monotonic() < deadline, "the garbage never arrived"
        time.sleep(0.01)
    with caplog.at_level(logging.INFO, logger="socs_tcp"):
        head = dev.drain()
    assert head == b"z" * 4096, "drain returns the first max_read_size bytes"
    assert "drained 20000 bytes" in caplog.text
    assert _waiting_bytes(dev.comm) == 0
    assert dev.query("*IDN?") == "ACME"
