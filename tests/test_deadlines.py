"""One deadline per operation: the sans-IO Deadline, then every phase of a
real operation over loopback with a per-call timeout smaller than the link's."""

import pytest

from socs_tcp.core.deadline import Deadline
from socs_tcp.errors import LinkTimeoutError


class FakeClock:
    """A clock the test moves by hand (pure logic, no sleeping)."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_deadline_counts_down_and_expires():
    clock = FakeClock()
    d = Deadline.start(0.5, 10.0, clock=clock)
    assert d.timeout == 0.5
    assert d.remaining() == pytest.approx(0.5)
    assert not d.expired
    clock.now += 0.2
    assert d.remaining() == pytest.approx(0.3)
    assert d.bound(1.5) == pytest.approx(0.3)
    assert d.bound(0.1) == pytest.approx(0.1)
    assert d.bound(None) == pytest.approx(0.3)
    assert d.poll_ms() == 300
    assert d.elapsed() == pytest.approx(0.2)
    d.check("a reply")
    clock.now += 0.3
    assert d.expired
    assert d.remaining() == 0.0
    assert d.poll_ms() == 0
    with pytest.raises(LinkTimeoutError, match="waiting for x: the operation's timeout of 0.5 s ran out"):
        d.check(lambda: "waiting for x")


def test_deadline_uses_the_default_and_none_is_unlimited():
    clock = FakeClock()
    assert Deadline.start(None, 2.0, clock=clock).timeout == 2.0
    forever = Deadline.start(None, None, clock=clock)
    clock.now += 1e6
    assert forever.remaining() is None
    assert not forever.expired
    assert forever.bound(3.0) == 3.0
    assert forever.bound(None) is None
    assert forever.poll_ms() == -1
    forever.check("never raises")


def test_poll_ms_rounds_up_so_a_wait_never_ends_early():
    clock = FakeClock()
    assert Deadline.start(0.0004, None, clock=clock).poll_ms() == 1


@pytest.mark.parametrize("bad, exc", [
    (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("soon", TypeError), (True, TypeError), ([1], TypeError),
])
def test_bad_timeout_is_refused_naming_the_value(bad, exc):
    with pytest.raises(exc, match="timeout must be") as info:
        Deadline.start(bad, 1.0)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)


# ---------------------------------------------------------------- every phase of a real operation
import socket  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

from socs_tcp import ConnectFailedError, TCPInterface, cmd_tcp  # noqa: E402
from socs_tcp.core import deadline as deadline_module  # noqa: E402

LINK_TIMEOUT = 1.5   # the link's default: every per-call timeout below is much smaller
CALL_TIMEOUT = 0.2
BOUND = 1.0          # generous: well below LINK_TIMEOUT, a small multiple of CALL_TIMEOUT
BIG = 64 << 20       # more than any loopback socket buffers hold


class StalledReader:
    """A device that accepts one connection and then never reads from it."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # inherited by the accepted socket
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.conns = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.conns.append(conn)

    def close(self):
        self.listener.close()
        self._thread.join(5)
        for conn in self.conns:
            conn.close()


class FullBacklog:
    """A listener that never accepts, its backlog filled by parked
    connections, so a new connect gets no answer at all (its SYN is dropped)."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.parked = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = socket.socket()
            probe.settimeout(0.3)
            try:
                probe.connect(("127.0.0.1", self.port))
            except TimeoutError:
                probe.close()
                return  # the backlog is full: this connect got no answer
            self.parked.append(probe)
        self.close()
        raise RuntimeError("could not fill the listener's backlog")

    def close(self):
        for sock in self.parked:
            sock.close()
        self.listener.close()


@pytest.fixture
def stalled():
    device = StalledReader()
    try:
        yield device
    finally:
        device.close()


@pytest.fixture
def full_backlog():
    device = FullBacklog()
    try:
        yield device
    finally:
        device.close()


def timed(call):
    started = time.monotonic()
    with pytest.raises(ConnectionError) as info:
        call()
    return time.monotonic() - started, info.value


def test_send_phase_honours_the_per_call_timeout(stalled):
    dev = TCPInterface("127.0.0.1", stalled.port, LINK_TIMEOUT, encoding=None)
    try:
        took, error = timed(lambda: dev.wrnrd_until(b"x" * BIG, b"\n", timeout=CALL_TIMEOUT))
        assert isinstance(error, LinkTimeoutError), error
        assert took < BOUND, f"the send phase took {took:.2f} s with timeout={CALL_TIMEOUT}"
        assert "sending" in str(error) and f"{CALL_TIMEOUT} s" in str(error)
        assert dev.comm is None, "a half-sent message must not stay on the connection"
    finally:
        dev.close()


def test_connect_phase_honours_the_per_call_timeout(full_backlog):
    dev = TCPInterface("127.0.0.1", full_backlog.port, LINK_TIMEOUT, connect=False)
    took, error = timed(lambda: dev.read(1, timeout=CALL_TIMEOUT))
    assert isinstance(error, LinkTimeoutError), error
    assert took < BOUND, f"connecting took {took:.2f} s with timeout={CALL_TIMEOUT}"
    assert "connecting" in str(error) and "deadline" in str(error)
    assert dev.stats()["connect_failures"] == 1


def test_connect_without_a_per_call_timeout_uses_connect_timeout(full_backlog):
    dev = TCPInterface("127.0.0.1", full_backlog.port, LINK_TIMEOUT, connect_timeout=0.3, connect=False)
    took, error = timed(lambda: dev.read(1))
    assert isinstance(error, ConnectFailedError) and not isinstance(error, LinkTimeoutError), error
    assert "connect_timeout=0.3" in str(error)
    assert took < LINK_TIMEOUT


def test_receive_phase_honours_the_per_call_timeout(stalled):
    dev = TCPInterface("127.0.0.1", stalled.port, LINK_TIMEOUT)
    try:
        took, error = timed(lambda: dev.read_until("\n", timeout=CALL_TIMEOUT))
        assert isinstance(error, LinkTimeoutError), error
        assert CALL_TIMEOUT <= took < BOUND
        took, error = timed(lambda: dev.readinto(bytearray(10), timeout=CALL_TIMEOUT))
        assert isinstance(error, LinkTimeoutError), error
        assert CALL_TIMEOUT <= took < BOUND
    finally:
        dev.close()


@pytest.fixture
def bus_link():
    made = []

    def make(port):
        cmd_tcp.init_tcp("deadline", f"host=127.0.0.1,port={port},timeout={LINK_TIMEOUT}")
        made.append("deadline")
        return "deadline"
    yield make
    for tcp_id in made:
        if tcp_id in cmd_tcp.links():
            cmd_tcp.deinit_tcp(tcp_id)


def test_cmd_tcp_send_phase_honours_the_per_call_timeout(stalled, bus_link):
    tcp_id = bus_link(stalled.port)
    took, error = timed(lambda: cmd_tcp.wrnrd_until_tcp(tcp_id, "x" * BIG, "\\n", CALL_TIMEOUT))
    assert isinstance(error, LinkTimeoutError), error
    assert took < BOUND, f"wrnrd_until_tcp took {took:.2f} s with timeout={CALL_TIMEOUT}"


def test_cmd_tcp_connect_phase_honours_the_per_call_timeout(full_backlog, bus_link):
    tcp_id = bus_link(full_backlog.port)
    took, error = timed(lambda: cmd_tcp.wrnrd_until_tcp(tcp_id, "*IDN?\n", "\\n", CALL_TIMEOUT))
    assert isinstance(error, LinkTimeoutError), error
    assert took < BOUND, f"wrnrd_until_tcp took {took:.2f} s with timeout={CALL_TIMEOUT}"


def test_the_timeout_is_checked_once_per_call(emulator, bus_link, monkeypatch):
    calls = []
    real = deadline_module.check_seconds

    def counting(value, what, **kwargs):
        calls.append(value)
        return real(value, what, **kwargs)
    monkeypatch.setattr(deadline_module, "check_seconds", counting)
    tcp_id = bus_link(emulator.port)
    assert cmd_tcp.wrnrd_until_tcp(tcp_id, "*IDN?\n", "\\n", 1.0) == "ACME,MODEL1,42,1.0"
    assert calls == [1.0]
    dev = cmd_tcp.get_link(tcp_id)
    assert dev.wrnrd_until("*IDN?\n", "\\n", timeout=0.5) == "ACME,MODEL1,42,1.0"
    assert calls == [1.0, 0.5]


@pytest.mark.parametrize("blocking_wait", [True, False], ids=["blocking-read", "poll"])
def test_both_wait_strategies_hold_the_deadline(stalled, blocking_wait):
    """The blocking read (bounded by SO_RCVTIMEO / SO_SNDTIMEO) and the poll
    wait (the fallback where those are not usable) both end on time, and
    neither ends early (the kernel timeout is 90 % of the budget: the read
    waits again for the rest)."""
    dev = TCPInterface("127.0.0.1", stalled.port, LINK_TIMEOUT, encoding=None)
    dev._blocking_wait = blocking_wait
    try:
        for timeout in (0.05, CALL_TIMEOUT, 0.3):
            took, error = timed(lambda t=timeout: dev.read_until(b"\n", timeout=t))
            assert isinstance(error, LinkTimeoutError), error
            assert timeout <= took < timeout + BOUND, f"a read with timeout={timeout} took {took:.3f} s"
        took, error = timed(lambda: dev.wrnrd_until(b"x" * BIG, b"\n", timeout=CALL_TIMEOUT))
        assert isinstance(error, LinkTimeoutError) and took < BOUND, (error, took)
    finally:
        dev.close()



def test_comm_keeps_the_socs_timeout_behaviour_for_drivers_that_use_it(stalled):
    """The blocking wait changes only comm's descriptor mode: comm still
    reports the link's timeout and a driver's own comm.recv() honours it."""
    dev = TCPInterface("127.0.0.1", stalled.port, 0.3)
    try:
        with pytest.raises(LinkTimeoutError):
            dev.read_until("\n", timeout=0.05)   # the link's own wait ran first
        assert dev.comm.gettimeout() == 0.3
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            dev.comm.recv(10)
        assert 0.3 <= time.monotonic() - started < BOUND + 0.3
    finally:
        dev.close()
