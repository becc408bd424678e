"""TCPInterface on real loopback sockets: failure paths first, then the bus operations."""

import json
import logging
import os
import socket
import threading
import time

import pytest

from socs_tcp import (
    ConnectFailedError,
    LinkError,
    LinkTimeoutError,
    PeerClosedError,
    ReadOverflowError,
    ReconnectPolicy,
    TCPInterface,
)
from socs_tcp.testing import DeviceEmulator


def _bytes_waiting(sock):
    """Bytes received by the kernel and not yet read from ``sock`` (without consuming them)."""
    try:
        return len(sock.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return 0


def closed_port():
    """A loopback port with nothing listening."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link(device, timeout=2.0, **kwargs):
    kwargs.setdefault("termination", "\n")
    return TCPInterface("127.0.0.1", device.port, timeout, **kwargs)


def open_fds():
    """``(socket inodes, other descriptors)`` open in this process."""
    sockets, other = set(), 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:   # closed meanwhile (the listing's own descriptor, another thread's)
            continue
        if target.startswith("socket:["):
            sockets.add(int(target[8:-1]))
        else:
            other += 1
    return sockets, other


def client_sockets_to(port):
    """How many TCP sockets this process holds whose peer is 127.0.0.1:*port*
    (the links' side of their connections; the emulator's side is not counted)."""
    mine, _ = open_fds()
    count = 0
    with open("/proc/net/tcp") as fh:
        next(fh)
        for line in fh:
            fields = line.split()
            remote, inode = fields[2], int(fields[9])
            if inode in mine and int(remote.split(":")[1], 16) == port:
                count += 1
    return count

# ---------------------------------------------------------------- connect failures


def test_refused_connect_logs_leaves_comm_none_and_raises_on_use(caplog):
    port = closed_port()
    with caplog.at_level(logging.WARNING, logger="socs_tcp"):
        dev = TCPInterface("127.0.0.1", port, 1.0)
    assert dev.comm is None
    assert "Connection refused" in caplog.text and str(port) in caplog.text
    with pytest.raises(ConnectFailedError) as info:
        dev.wrnrd_until("*IDN?\n", "\\n")
    assert isinstance(info.value, ConnectionError)
    assert str(port) in str(info.value)


def test_backoff_holds_back_attempts_then_allows_them():
    policy = ReconnectPolicy(initial=2.0, jitter=0)
    dev = TCPInterface("127.0.0.1", closed_port(), 1.0, reconnect_policy=policy)
    started = time.monotonic()
    with pytest.raises(ConnectFailedError, match=r"next attempt allowed in [0-2]\.\d+ s after 1 failed"):
        dev.write("x")
    assert time.monotonic() - started < 1.5, "a held-back attempt must fail fast, not wait out the 2 s backoff"
    assert dev.stats()["connect_failures"] == 1
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            dev.write("x")
        except ConnectFailedError as e:
            if "Connection refused" in str(e) and "next attempt" not in str(e):
                break
        time.sleep(0.02)
    assert dev.stats()["connect_failures"] == 2


def test_connect_timeout_is_its_own_setting():
    """A listener whose accept queue is full never completes the handshake."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        started = time.monotonic()
        dev = TCPInterface("127.0.0.1", port, 30.0, connect_timeout=0.3)
        elapsed = time.monotonic() - started
        if dev.comm is not None:
            pytest.skip("this kernel completed the handshake despite a full accept queue")
        assert elapsed < 5
        with pytest.raises(ConnectFailedError, match="connect_timeout=0.3"):
            dev.reconnect()
    finally:
        for s in fillers:
            s.close()
        server.close()


def test_unresolvable_host_is_a_connect_failure():
    dev = TCPInterface("no-such-host.invalid", 5025, 1.0, connect=False)
    with pytest.raises(ConnectFailedError, match="cannot resolve 'no-such-host.invalid'"):
        dev.connect()


def test_reconnect_gives_up_after_max_attempts():
    dev = TCPInterface("127.0.0.1", closed_port(), 1.0, connect=False,
                       reconnect_policy={"initial": 0.01, "jitter": 0})
    with pytest.raises(ConnectFailedError, match="gave up after 3 attempt"):
        dev.reconnect(max_attempts=3)
    assert dev.stats()["connect_failures"] == 3


def test_reconnect_forever_waits_for_the_device(make_emulator):
    port = closed_port()
    dev = TCPInterface("127.0.0.1", port, 1.0, connect=False, termination="\n",
                       reconnect_policy={"initial": 0.02, "cap": 0.05})
    started = []
    timer = threading.Timer(0.3, lambda: started.append(
        make_emulator({"PING": "PONG"}, write_termination="\n", port=port)))
    timer.start()
    try:
        dev.reconnect(max_attempts=None)
        assert dev.query("PING") == "PONG"
        assert dev.stats()["connect_failures"] >= 2
    finally:
        timer.join()

# ---------------------------------------------------------------- peer closed, timeouts


def test_device_closing_mid_read_is_reported_at_once(emulator):
    dev = link(emulator, timeout=5.0)
    emulator.drop_after(1)
    started = time.monotonic()
    with pytest.raises(PeerClosedError, match="closed the connection"):
        dev.query("*IDN?")
    assert time.monotonic() - started < 2.5, "EOF must not wait for the 5 s timeout"
    assert dev.comm is None
    assert dev.query("*IDN?") == "ACME,MODEL1,42,1.0"  # next use reconnects


def test_partial_reply_before_close_is_reported(make_emulator):
    device = make_emulator({"Q": "half-a-repl"}, write_termination="")
    dev = link(device)
    device.drop_after(2)
    dev.write("Q")
    with pytest.raises(PeerClosedError) as info:
        dev.query("Q")
    assert info.value.partial == b"half-a-repl"
    assert "11 bytes of an incomplete reply" in str(info.value)


def test_silent_device_times_out_but_stays_connected(emulator):
    dev = link(emulator)
    emulator.go_silent()
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError) as info:
        dev.query("*IDN?", timeout=0.2)
    assert 0.15 < time.monotonic() - started < 1.5
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ConnectionError)
    assert "nothing received" in str(info.value)
    assert dev.comm is not None, "a timeout is not a dead link"
    stats = dev.stats()
    assert stats["timeouts"] == 1 and stats["consecutive_failures"] == 1
    emulator.go_silent(False)
    assert dev.query("*IDN?") == "ACME,MODEL1,42,1.0"
    assert dev.stats()["consecutive_failures"] == 0


def test_timeout_is_a_deadline_for_the_whole_operation(make_emulator):
    """A device that keeps dripping bytes must not extend the deadline."""
    device = make_emulator({"Q": "x" * 100}, write_termination="\n")
    device.slow_drip(0.05)      # the whole reply would take 5 s
    dev = link(device)
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError, match="bytes received so far stay buffered"):
        dev.query("Q", timeout=0.4)
    assert time.monotonic() - started < 2.0, "5x the timeout, well short of the 5 s reply"


def test_read_timeout_keeps_received_bytes(make_emulator):
    device = make_emulator({"Q": "abc"}, write_termination="")
    dev = link(device)
    dev.write("Q")
    with pytest.raises(LinkTimeoutError, match="3 bytes received so far"):
        dev.read(5, timeout=0.3)
    dev.write("Q")
    assert dev.read(5) == "abcab"
    assert dev.read(1) == "c"


def test_slow_drip_reply_is_assembled(make_emulator):
    device = make_emulator({"Q": "dripped reply"}, write_termination="\r\n")
    device.slow_drip(0.002)
    dev = link(device, read_termination="\\r\\n", write_termination="\n")
    assert dev.query("Q") == "dripped reply"

# ---------------------------------------------------------------- framing


def test_merged_replies_are_split_and_nothing_is_lost(emulator):
    dev = link(emulator)
    emulator.merge_replies(3)
    for cmd in ("a", "b", "c"):
        dev.write(cmd)
    assert [dev.read_until() for _ in range(3)] == ["echo:a", "echo:b", "echo:c"]
    assert dev.stats()["buffered"] == 0


def test_split_replies_are_joined(emulator):
    dev = link(emulator)
    emulator.split_replies(3, gap=0.005)
    assert dev.query("hello world") == "echo:hello world"


def test_bytes_after_terminator_stay_for_next_read(make_emulator):
    device = make_emulator({"Q": "first\nsecond\nthi"}, write_termination="rd\n")
    dev = link(device)
    assert dev.wrnrd_until("Q\n", "\\n") == "first"
    assert dev.read_until("\\n") == "second"
    assert dev.read_until("\\n") == "third"


def test_multiple_terminators_and_escapes(make_emulator):
    device = make_emulator({"Q": "a;b\r\nc\x03"}, write_termination="")
    dev = link(device)
    dev.write("Q\n")
    assert dev.read_until("\\r\\n,;") == "a"
    assert dev.read_until(["\r\n", ";"]) == "b"
    assert dev.read_until(b"\x03") == "c"



def test_terminators_follow_each_call_whatever_was_given_before(make_emulator):
    # the link remembers the last str or bytes eot; every other form is parsed each call
    device = make_emulator({"Q": "a;b\r\nc\x03d;e!f;"}, write_termination="")
    dev = link(device)
    dev.write("Q\n")
    eot = [";"]
    assert dev.read_until(eot) == "a"
    eot[0] = "\r\n"                       # the same list, changed: its new terminator counts
    assert dev.read_until(eot) == "b"
    assert dev.read_until(b"\x03") == "c"
    with pytest.raises(ValueError, match="empty terminator"):
        dev.read_until("")
    with pytest.raises(ValueError, match="empty terminator"):
        dev.read_until("")                # a bad eot is never remembered
    assert dev.read_until(";") == "d"
    assert dev.read_until("!") == "e"     # two literals in turn
    assert dev.read_until(";") == "f"

def test_oversize_reply_is_a_clear_error_and_memory_stays_bounded(emulator):
    dev = link(emulator, max_read_size=4096)
    assert emulator.wait_for_clients(1)
    emulator.flood(total=200_000)
    with pytest.raises(ReadOverflowError, match="max_read_size=4096") as info:
        dev.read_until("\\n", timeout=5)
    assert isinstance(info.value, ConnectionError)
    assert dev.stats()["buffered"] <= 4096


def test_stale_reply_after_timeout_is_drained_when_configured(emulator):
    dev = link(emulator, drain_before_query=True)
    emulator.set_delay(0.3)
    with pytest.raises(LinkTimeoutError):
        dev.query("old", timeout=0.1)
    emulator.set_delay(0)
    deadline = time.monotonic() + 2
    while emulator.received.count("old") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    # let the late reply to "old" land in the socket (it is sent 0.3 s after "old" arrived)
    deadline = time.monotonic() + 10
    while not _bytes_waiting(dev.comm):
        assert time.monotonic() < deadline, "the late reply never arrived"
        time.sleep(0.01)
    assert dev.query("new") == "echo:new"


def test_without_drain_a_stale_reply_stays_buffered(emulator):
    """The documented default: nothing received is dropped without being asked."""
    dev = link(emulator)
    emulator.set_delay(0.2)
    with pytest.raises(LinkTimeoutError):
        dev.query("old", timeout=0.05)
    emulator.set_delay(0)
    assert dev.read_until(timeout=2) == "echo:old"


def test_drain_returns_and_logs_what_it_dropped(emulator, caplog):
    dev = link(emulator)
    dev.write("x")
    deadline = time.monotonic() + 2
    dropped = b""
    with caplog.at_level(logging.INFO, logger="socs_tcp"):
        while not dropped and time.monotonic() < deadline:
            dropped += dev.drain()
    assert dropped == b"echo:x\n"
    assert "drained 7 bytes" in caplog.text

# ---------------------------------------------------------------- bad input never sends


@pytest.mark.parametrize("call, exc, needle", [
    (lambda d: d.write_bin("0a0"), ValueError, "odd length"),
    (lambda d: d.wrnrd_bin("zz", 1), ValueError, "non-hex character 'z'"),
    (lambda d: d.wrnrd_bin_until("0a", "\\q"), ValueError, "unknown escape"),
    (lambda d: d.wrnrd("x", -1), ValueError, "bytes_to_read must be >= 0, got -1"),
    (lambda d: d.wrnrd("x", 1.5), TypeError, "bytes_to_read must be an int"),
    (lambda d: d.wrnrd("x", 10 ** 9), ValueError, "exceeds max_read_size"),
    (lambda d: d.wrnrd_until("x", ""), ValueError, "empty terminator"),
    (lambda d: d.wrnrd_until("x", "\\n", timeout=-1), ValueError, "timeout must be"),
    (lambda d: d.wrnrd_until("x", "\\n", timeout="soon"), TypeError, "'soon'"),
    (lambda d: d.write(12), TypeError, "data must be str or bytes, got int"),
    (lambda d: d.send("text"), TypeError, "send() needs bytes, got str"),
    (lambda d: d.expect("(unclosed"), ValueError, "not a valid regular expression"),
    (lambda d: d.recv(0), ValueError, "bufsize"),
])
def test_bad_input_raises_before_anything_is_sent(emulator, call, exc, needle):
    dev = link(emulator)
    connects = dev.stats()["connects"]
    with pytest.raises(exc) as info:
        call(dev)
    assert needle in str(info.value)
    assert not isinstance(info.value, ConnectionError)
    assert dev.query("sync") == "echo:sync"
    assert emulator.received == ["sync"], "nothing of the bad call may reach the device"
    assert dev.stats()["connects"] == connects, "bad input must not trigger a reconnect"


def test_query_needs_a_read_termination(emulator):
    dev = TCPInterface("127.0.0.1", emulator.port, 1.0)
    with pytest.raises(ValueError, match="no read_termination"):
        dev.query("*IDN?")
    assert emulator.received == []


def test_str_on_a_bytes_only_link(emulator):
    dev = link(emulator, encoding=None)
    with pytest.raises(TypeError, match="encoding=None"):
        dev.write("text")
    assert dev.query(b"raw") == b"echo:raw"


@pytest.mark.parametrize("kwargs, needle", [
    ({"ip_address": "", "port": 1}, "ip_address"),
    ({"ip_address": None, "port": 1}, "ip_address"),
    ({"ip_address": "h", "port": 0}, "port must be an integer in 1..65535, got 0"),
    ({"ip_address": "h", "port": "x"}, "got 'x'"),
    ({"ip_address": "h", "port": 5.5}, "got 5.5"),
    ({"ip_address": "h", "port": 1, "timeout": -2}, "timeout must be"),
    ({"ip_address": "h", "port": 1, "max_read_size": 0}, "max_read_size"),
    ({"ip_address": "h", "port": 1, "family": "IPX"}, "family"),
    ({"ip_address": "h", "port": 1, "read_termination": ""}, "empty terminator"),
    ({"ip_address": "h", "port": 1, "reconnect_policy": {"cap": -1}}, "cap"),
    ({"ip_address": "h", "port": 1, "reconnect_policy": {"speed": 1}}, "speed"),
])
def test_bad_constructor_arguments(kwargs, needle):
    kwargs.setdefault("timeout", 1.0)
    with pytest.raises(ValueError) as info:
        TCPInterface(connect=False, **kwargs)
    assert needle in str(info.value)


def test_from_address_forms(emulator):
    for address in (emulator.address, f"tcp://{emulator.address}", f"TCP::127.0.0.1::{emulator.port}",
                    f"TCPIP0::127.0.0.1::{emulator.port}::SOCKET",
                    f"host=127.0.0.1,port={emulator.port},timeout=1.5"):
        with TCPInterface.from_address(address, termination="\n") as dev:
            assert dev.query("*IDN?") == "ACME,MODEL1,42,1.0"
    assert TCPInterface.from_address(f"host=127.0.0.1,port={emulator.port},timeout=1.5", connect=False).timeout == 1.5
    with pytest.raises(ValueError, match="'GPIB0::1::INSTR' is not a TCP address"):
        TCPInterface.from_address("GPIB0::1::INSTR")
    assert TCPInterface.parse_address("[::1]:80") == {"host": "::1", "port": 80}
    assert TCPInterface.parse_address("nonsense") is None


def ipv6_available():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback on this machine")
def test_ipv6_loopback():
    with DeviceEmulator({"*IDN?": "V6"}, write_termination="\n", host="::1") as device:
        for dev in (TCPInterface("::1", device.port, 1.0, termination="\n", family="INET6"),
                    TCPInterface.from_address(f"[::1]:{device.port}", termination="\n")):
            with dev:
                assert dev.comm.family == socket.AF_INET6
                assert dev.query("*IDN?") == "V6"
        dev = TCPInterface("::1", device.port, 1.0, family="INET")
        assert dev.comm is None  # an IPv6 literal cannot be reached over IPv4

# ---------------------------------------------------------------- bus operations


def test_text_and_binary_operations(make_emulator):
    device = make_emulator({b"A": b"0123456789", b"\x01\x02": b"\x10\x20\x0d\x0a"}, encoding=None,
                           write_termination="", read_termination="\n")
    dev = link(device, termination=None)
    assert dev.write("A\n") == 2
    assert dev.read(4) == "0123"
    assert dev.read_bin(2) == "3435"
    assert dev.read_until("9") == "678"
    assert dev.write_bin("01020a") == 3
    assert dev.read_bin_until("\\r\\n") == "1020"
    assert dev.wrnrd("A\n", 3) == "012"
    dev.drain()
    assert dev.wrnrd_bin("01020A", 4) == "10200d0a"
    assert dev.wrnrd_bin_until("01020a", "\\x0d") == "1020"
    assert dev.read(1) == "\n"
    assert dev.wrnrd_until("A\n", "5") == "01234"
    assert dev.read(0) == ""


def test_text_codecs_are_read_on_each_call(make_emulator):
    device = make_emulator({b"\xc2\xb5": b"\xc2\xb5 utf8", b"\xb5": b"\xb5 latin", b"?": b"\xff"}, encoding=None,
                           write_termination="\n", read_termination="\n")
    dev = link(device)
    assert dev.query("µ") == "µ utf8"              # the default codec, UTF-8 strict
    assert dev.wrnrd_until("µ") == "µ utf8"
    dev.encoding = "latin-1"
    assert dev.query("µ") == "µ latin"
    dev.encoding, dev.encoding_errors = "ascii", "replace"
    assert dev.query("µ") == "\ufffd"              # sent as b"?", the reply b"\xff" replaced
    dev.encoding, dev.encoding_errors = "utf-8", "strict"
    assert dev.wrnrd_until("µ") == "µ utf8"


def test_write_termination_and_rstrip(make_emulator):
    device = make_emulator({"MEAS?": "  1.5  "}, write_termination="\r\n", read_termination="\r\n")
    dev = link(device, read_termination="\\r\\n", write_termination="\\r\\n", rstrip=True)
    assert dev.query("MEAS?") == "  1.5"
    assert dev.wrnrd_until("MEAS?") == "  1.5"


def test_expect_matches_across_chunks(make_emulator):
    device = make_emulator({"boot": "loading... done\nREADY> more"}, write_termination="")
    device.split_replies(4, gap=0.005)
    dev = link(device)
    dev.write("boot")
    assert dev.expect(r"READY>\s?") == "loading... done\nREADY> "
    assert dev.read(4) == "more"
    with pytest.raises(LinkTimeoutError, match="a match of"):
        dev.expect("NEVER", timeout=0.1)


def test_recv_and_send_socs_semantics(emulator):
    dev = link(emulator)
    dev.send(b"*IDN?\n")
    data = b""
    while not data.endswith(b"\n"):
        data += dev.recv()
    assert data == b"ACME,MODEL1,42,1.0\n"
    dev.send(b"*IDN?\n")
    rest = b""
    while not rest.endswith(b"\n"):
        chunk = dev.recv(4)
        assert 0 < len(chunk) <= 4
        rest += chunk
    assert rest == data
    dev.timeout = 0.1  # SOCS drivers adjust the attribute directly
    with pytest.raises(LinkTimeoutError):
        dev.recv()
    assert dev.comm is not None


def test_recv_reset_on_error_reconnects(emulator):
    dev = link(emulator, timeout=0.1)
    first = dev.comm
    with pytest.raises(LinkTimeoutError):
        dev.recv(reset_on_error=True)
    assert dev.comm is not None and dev.comm is not first


def test_device_restart_between_queries_is_transparent(emulator):
    dev = link(emulator)
    assert dev.query("1") == "echo:1"
    emulator.restart()
    assert dev.query("2") == "echo:2"
    assert dev.stats()["reconnects"] == 1


def test_reconnect_resets_the_buffer(emulator, caplog):
    dev = link(emulator)
    dev.write("x")
    deadline = time.monotonic() + 2
    while dev.stats()["bytes_in"] < 7 and time.monotonic() < deadline:
        dev._pull_pending()
    with caplog.at_level(logging.WARNING, logger="socs_tcp"):
        dev.reconnect()
    assert "discarded 7 bytes left from the previous connection" in caplog.text
    assert dev.query("y") == "echo:y"


def test_disconnect_and_context_manager(emulator):
    with link(emulator) as dev:
        assert dev.is_connected
        dev.disconnect()
        assert not dev.is_connected and dev.comm is None
        assert dev.query("again") == "echo:again"
    assert dev.comm is None

# ---------------------------------------------------------------- stats, logging, resources


def test_stats_are_json_safe_and_count(emulator):
    dev = link(emulator)
    for i in range(5):
        dev.query(str(i))
    stats = dev.stats()
    json.dumps(stats)
    assert stats["transactions"] == 5 and stats["connected"] is True
    assert stats["bytes_out"] == 10 and stats["bytes_in"] == 35
    assert 0 < stats["latency_p50"] <= stats["latency_p99"]
    assert stats["last_success"] > time.time() - 60
    assert {type(v) for v in stats.values()} <= {bool, int, float, type(None)}


def test_traffic_logged_at_debug_as_hex_and_text(emulator, caplog):
    dev = link(emulator)
    with caplog.at_level(logging.DEBUG, logger="socs_tcp.interface"):
        dev.query("*IDN?")
    assert "> 2a 49 44 4e 3f 0a |*IDN?\\n|" in caplog.text
    assert "< " in caplog.text and "|ACME,MODEL1,42,1.0\\n|" in caplog.text


def test_no_file_descriptors_leak(emulator):
    dev = link(emulator)
    dev.query("warm")
    assert client_sockets_to(emulator.port) == 1
    _, other_before = open_fds()
    for i in range(50):
        dev.query(str(i))
        if i % 10 == 0:
            emulator.drop_connections()
            with pytest.raises(LinkError):
                dev.read_until(timeout=1)
        with pytest.raises(LinkTimeoutError):
            dev.read_until(timeout=0.001)
    for _ in range(10):
        TCPInterface("127.0.0.1", emulator.port, 1.0).disconnect()
    # only the links' own sockets are counted: the emulator runs in this
    # process and closes its side of each dropped connection in its own time
    # (and other tests' threads may still be finishing), so a count of all of
    # the process's descriptors is not the library's
    assert client_sockets_to(emulator.port) == 1, "only the live link's connection is open"
    dev.disconnect()
    assert client_sockets_to(emulator.port) == 0
    assert open_fds()[1] <= other_before, "no descriptor other than a socket is left open"


def test_policy_max_attempts_stops_implicit_reconnects_until_reconnect(make_emulator):
    port = closed_port()
    dev = TCPInterface("127.0.0.1", port, 1.0, termination="\n",
                       reconnect_policy={"initial": 0, "jitter": 0, "max_attempts": 2})
    with pytest.raises(ConnectFailedError):
        dev.query("x")  # second failed attempt
    with pytest.raises(ConnectFailedError, match="gave up after 2 failed attempt"):
        dev.query("x")
    make_emulator({"x": "y"}, write_termination="\n", port=port)
    with pytest.raises(ConnectFailedError, match="call reconnect"):
        dev.query("x")
    dev.reconnect()
    assert dev.query("x") == "y"


def test_timeout_zero_takes_what_already_arrived(emulator):
    dev = link(emulator)
    dev.write("now")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            assert dev.read_until(timeout=0) == "echo:now"
            break
        except LinkTimeoutError:
            time.sleep(0.01)
    else:
        pytest.fail("the reply never became readable with timeout=0")


def test_expect_keeps_compiled_flags(make_emulator):
    import re
    device = make_emulator({"q": "Login: "}, write_termination="")
    dev = link(device)
    dev.write("q")
    assert dev.expect(re.compile("login:", re.IGNORECASE)) == "Login:"


def test_next_attempt_in_follows_the_backoff(emulator):
    dev = TCPInterface("127.0.0.1", emulator.port, 1.0)
    assert dev.next_attempt_in() is None, "connected: nothing to wait for"
    down = TCPInterface("127.0.0.1", closed_port(), 1.0, reconnect_policy=ReconnectPolicy(initial=0.2, jitter=0))
    assert 0.0 < down.next_attempt_in() <= 0.2
    deadline = time.monotonic() + 2
    while down.next_attempt_in() > 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert down.next_attempt_in() == 0.0
    gave_up = TCPInterface("127.0.0.1", closed_port(), 1.0, reconnect_policy=ReconnectPolicy(max_attempts=1))
    assert gave_up.next_attempt_in() is None, "no automatic attempt after max_attempts"


def test_query_follows_a_changed_read_termination(make_emulator):
    device = make_emulator({"A": "one;", "B": "two\n"}, write_termination="")
    dev = TCPInterface("127.0.0.1", device.port, 2.0, read_termination="\n", write_termination="\n")
    assert dev.query("B") == "two"
    dev.read_termination = (b";",)
    assert dev.query("A") == "one"


def test_close_on_timeout_drops_a_late_reply_that_drain_cannot_catch(make_emulator):
    device = make_emulator(default_response=lambda cmd: f"echo:{cmd}", write_termination="\n")
    dev = TCPInterface("127.0.0.1", device.port, 2.0, termination="\n", drain_before_query=True,
                       close_on_timeout=True)
    device.set_delay(0.4)
    with pytest.raises(LinkTimeoutError, match="close_on_timeout"):
        dev.query("first", timeout=0.2)
    assert not dev.is_connected
    assert dev.query("second") == "echo:second", "the late echo:first died with the old connection"
    device.set_delay(0)
    assert dev.query("third") == "echo:third"


def test_without_close_on_timeout_a_late_reply_can_answer_the_next_query(make_emulator):
    """Why the option exists: the late reply lands while the next query waits."""
    device = make_emulator(default_response=lambda cmd: f"echo:{cmd}", write_termination="\n")
    dev = TCPInterface("127.0.0.1", device.port, 2.0, termination="\n", drain_before_query=True)
    device.set_delay(0.4)
    with pytest.raises(LinkTimeoutError):
        dev.query("first", timeout=0.2)
    assert dev.query("second") == "echo:first"


def test_close_on_timeout_leaves_plain_reads_alone(make_emulator):
    device = make_emulator({}, write_termination="\n")
    dev = TCPInterface("127.0.0.1", device.port, 2.0, termination="\n", close_on_timeout=True)
    with pytest.raises(LinkTimeoutError):
        dev.read_until(timeout=0.1)
    assert dev.is_connected, "a read with no request outstanding has no late reply to fear"
