"""Binary reads that return bytes: read_bytes, and readinto for bulk transfers."""

import array
import socket
import threading

import pytest

from socs_tcp import LinkTimeoutError, PeerClosedError, TCPInterface


class RawServer:
    """Accepts one client and sends it ``payload``; optionally stays open, then closes."""

    def __init__(self, payload, close_after=True):
        self.payload = payload
        self.close_after = close_after
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(self.payload)
            if not self.close_after:
                self.release.wait(10)

    def stop(self):
        self.release.set()
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def serve():
    servers = []

    def make(payload, close_after=True):
        server = RawServer(payload, close_after)
        servers.append(server)
        return server
    yield make
    for server in servers:
        server.stop()


def pattern(n):
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def test_readinto_fills_a_large_buffer_beyond_max_read_size_and_keeps_the_rest(serve):
    data = pattern(8 << 20)
    server = serve(data + b"tail\n", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0, max_read_size=4096)
    target = bytearray(len(data))
    assert dev.readinto(target) == len(data)
    assert target == data
    assert dev.read_until("\n") == "tail"
    assert dev.stats()["bytes_in"] == len(data) + 5


def test_readinto_takes_already_buffered_bytes_first(serve):
    server = serve(b"line\n" + pattern(1000), close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    assert dev.read_until("\n") == "line"   # may also buffer part of the binary block
    target = bytearray(1000)
    dev.readinto(target)
    assert target == pattern(1000)


def test_readinto_accepts_typed_arrays_and_memoryview_slices(serve):
    values = array.array("d", [1.5, -2.25, 1e300, 0.0])
    server = serve(values.tobytes() + b"xyz", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    received = array.array("d", [0.0] * 4)
    assert dev.readinto(received) == 32
    assert received == values
    tail = bytearray(10)
    assert dev.readinto(memoryview(tail)[2:5]) == 3
    assert bytes(tail[2:5]) == b"xyz"


def test_readinto_timeout_puts_received_bytes_back_in_order(serve):
    server = serve(pattern(1000), close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    target = bytearray(5000)
    with pytest.raises(LinkTimeoutError, match="1000 of 5000 bytes; they stay buffered"):
        dev.readinto(target, timeout=0.3)
    assert dev.is_connected
    assert dev.read_bytes(1000, timeout=1) == pattern(1000)


def test_readinto_timeout_with_more_than_max_read_size_says_where_the_bytes_are(serve):
    server = serve(pattern(3000), close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0, max_read_size=1024)
    target = bytearray(5000)
    with pytest.raises(LinkTimeoutError, match="3000 of 5000 bytes; they are in the first 3000 bytes"):
        dev.readinto(target, timeout=0.3)
    assert target[:3000] == pattern(3000)


def test_readinto_peer_close_reports_the_partial_data(serve):
    server = serve(pattern(700))
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    with pytest.raises(PeerClosedError, match="after 700 of 2048 bytes") as info:
        dev.readinto(bytearray(2048))
    assert info.value.partial == pattern(700)
    assert not dev.is_connected


@pytest.mark.parametrize("bad, message", [
    (b"read-only", "writable buffer"),
    ("text", "bytes-like"),
    (1024, "bytes-like"),
    (memoryview(bytearray(16))[::2], "C-contiguous"),
])
def test_readinto_rejects_bad_buffers_before_reading(serve, bad, message):
    server = serve(b"abc\n", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    with pytest.raises(TypeError, match=message):
        dev.readinto(bad)
    assert dev.read_until("\n") == "abc", "a rejected call must not consume anything"


def test_read_bytes_returns_bytes_whatever_the_encoding(serve):
    server = serve(b"\xff\xfe\x00rest\n", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0, encoding="ascii")
    assert dev.read_bytes(3) == b"\xff\xfe\x00"
    assert dev.read_until("\n") == "rest"


@pytest.mark.parametrize("count, error, message", [
    (-1, ValueError, ">= 0"),
    (1 << 21, ValueError, "max_read_size"),
    ("8", TypeError, "int"),
])
def test_read_bytes_bad_counts(serve, count, error, message):
    server = serve(b"", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    with pytest.raises(error, match=message):
        dev.read_bytes(count)


def test_read_bytes_of_a_large_block_keeps_the_rest_buffered(serve):
    server = serve(pattern(300_000) + b"tail\n", close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    assert dev.read_bytes(300_000) == pattern(300_000)
    assert dev.read_until("\n") == "tail"


def test_read_bytes_of_a_large_block_timeout_keeps_what_arrived_in_order(serve):
    server = serve(pattern(50_000), close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    with pytest.raises(LinkTimeoutError, match="50000 of 80000 bytes; they stay buffered"):
        dev.read_bytes(80_000, timeout=0.3)
    assert dev.is_connected
    assert dev.read_bytes(50_000, timeout=1) == pattern(50_000)


def test_read_bytes_of_a_large_block_peer_close_reports_the_partial_data(serve):
    server = serve(pattern(20_000))
    dev = TCPInterface("127.0.0.1", server.port, 5.0)
    with pytest.raises(PeerClosedError, match="after 20000 of 30000 bytes") as info:
        dev.read_bytes(30_000)
    assert info.value.partial == pattern(20_000)


def test_recv_hands_over_up_to_bufsize_in_one_call(serve):
    """A SOCS-style recv() loop gets as much as has arrived, up to bufsize,
    not buffer_size (4096) at a time; buffered bytes come first."""
    block = pattern(200_000)
    server = serve(b"x\n" + block, close_after=False)
    dev = TCPInterface("127.0.0.1", server.port, 5.0, buffer_size=4096)
    assert dev.read_until("\n") == "x"
    got = bytearray()
    sizes = []
    while len(got) < len(block):
        chunk = dev.recv(1 << 20)
        sizes.append(len(chunk))
        got += chunk
    assert bytes(got) == block
    assert max(sizes) > 4096, sizes
    dev.timeout = 0.3   # recv() waits for the link's timeout
    with pytest.raises(LinkTimeoutError):
        dev.recv(1 << 20)
    assert dev.is_connected
