"""TCPServer / TCPClient (tcpcom-style message links) over real loopback sockets."""

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import socs_tcp
from socs_tcp import tcpcom
from socs_tcp.tcpcom import HANDSHAKE_ACCEPTED, HANDSHAKE_OCCUPIED, TCPClient, TCPServer

S, C = TCPServer, TCPClient
LOOPBACK = "127.0.0.1"
ACCEPTED = HANDSHAKE_ACCEPTED.encode() + b"\0"
OCCUPIED = HANDSHAKE_OCCUPIED.encode() + b"\0"
WAIT = 15.0  # generous deadline for anything that should happen "at once"


# ----------------------------------------------------------------------------
# helpers


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Recorder:
    """A state_changed callback that records calls and lets a test wait for them."""

    def __init__(self, name="cb", action=None):
        self.name = name
        self.action = action
        self.events = []
        self.threads = []
        self._cond = threading.Condition()

    def __call__(self, state, msg):
        with self._cond:
            self.events.append((state, msg))
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()
        if self.action is not None:
            self.action(state, msg)

    def wait_for(self, predicate, timeout=WAIT):
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.events):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.name}: timed out; events so far: {self.events}")
                self._cond.wait(remaining)
            return list(self.events)

    def wait_count(self, state, count=1, timeout=WAIT):
        return self.wait_for(lambda ev: sum(1 for s, _ in ev if s == state) >= count, timeout)

    def wait_message(self, msg, timeout=WAIT):
        return self.wait_for(lambda ev: (C.MESSAGE, msg) in ev, timeout)

    def states(self):
        with self._cond:
            return [s for s, _ in self.events]

    def messages(self):
        with self._cond:
            return [m for s, m in self.events if s == "MESSAGE"]


def tcpcom_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("tcpcom-")]


def open_sockets():
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def free_port():
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def recv_exactly(sock, count, timeout=WAIT):
    sock.settimeout(timeout)
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def recv_until_eof(sock, timeout=WAIT):
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


@pytest.fixture
def make_server():
    made = []

    def make(port=0, callback=None, **kwargs):
        server = TCPServer(port, callback if callback is not None else Recorder("server"), **kwargs)
        made.append(server)
        return server
    try:
        yield make
    finally:
        for server in made:
            server.terminate()


@pytest.fixture
def make_client():
    made = []

    def make(port, callback=None, host=LOOPBACK, **kwargs):
        client = TCPClient(host, port, callback if callback is not None else Recorder("client"), **kwargs)
        made.append(client)
        return client
    try:
        yield make
    finally:
        for client in made:
            client.disconnect()


@pytest.fixture
def raw_sockets():
    """Plain sockets made by a test; all closed afterwards."""
    made = []

    def make(*args):
        sock = socket.socket(*args)
        made.append(sock)
        return sock
    try:
        yield make
    finally:
        for sock in made:
            sock.close()


@pytest.fixture
def plain_server(raw_sockets):
    """A plain listening socket (a peer that speaks tcpcom with no handshake)."""
    listener = raw_sockets()
    listener.bind((LOOPBACK, 0))
    listener.listen(4)
    listener.settimeout(WAIT)
    return listener


def accept(listener, raw_sockets_list):
    conn, _ = listener.accept()
    raw_sockets_list.append(conn)
    return conn


@pytest.fixture
def conns():
    made = []
    try:
        yield made
    finally:
        for sock in made:
            sock.close()


def echo_server(make_server, **kwargs):
    """A server that answers each message ending in '?' with 'echo:<message>'."""
    rec = Recorder("server")
    holder = {}

    def on_message(state, msg):
        if state == S.MESSAGE and msg.endswith("?"):
            holder["server"].send_message(f"echo:{msg}")
    rec.action = on_message
    server = holder["server"] = make_server(0, rec, **kwargs)
    rec.wait_count(S.LISTENING)
    return server, rec


# ----------------------------------------------------------------------------
# states, in order


def test_every_state_of_both_classes_in_order(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    addr = f"{LOOPBACK}:{server.port}"
    assert not client.is_connected() and not client.is_connecting() and not server.is_connected()

    assert client.connect() is True
    assert client.is_connected() and server.is_connected()
    client.send_message("hello")
    srec.wait_message("hello")
    assert server.send_message("hi there") is True
    crec.wait_message("hi there")

    client.disconnect()  # returns once DISCONNECTED was delivered
    assert crec.events[-1] == (C.DISCONNECTED, "")
    assert not client.is_connected()
    srec.wait_count(S.LISTENING, 2)
    assert not server.is_connected()

    assert client.connect() is True
    srec.wait_count(S.CONNECTED, 2)
    server.disconnect()
    assert not server.is_connected()
    crec.wait_count(C.DISCONNECTED, 2)
    srec.wait_count(S.LISTENING, 3)

    server.terminate()
    assert server.is_terminated()
    assert srec.events == [
        (S.LISTENING, ""), (S.CONNECTED, LOOPBACK), (S.MESSAGE, "hello"), (S.LISTENING, ""),
        (S.CONNECTED, LOOPBACK), (S.LISTENING, ""), (S.TERMINATED, ""),
    ]
    assert crec.events == [
        (C.CONNECTING, addr), (C.CONNECTED, addr), (C.MESSAGE, "hi there"), (C.DISCONNECTED, ""),
        (C.CONNECTING, addr), (C.CONNECTED, addr), (C.DISCONNECTED, ""),
    ]


def test_state_values_are_the_original_strings():
    for cls, names in ((S, ["PORT_IN_USE", "LISTENING", "CONNECTED", "MESSAGE", "TERMINATED"]),
                       (C, ["CONNECTING", "CONNECTION_FAILED", "CONNECTED", "SERVER_OCCUPIED", "DISCONNECTED",
                            "MESSAGE"])):
        for name in names:
            assert getattr(cls, name) == name


def test_is_connecting_during_connect_and_not_in_connected_callback(make_server, make_client):
    server, _ = echo_server(make_server)
    seen = {}

    def action(state, msg):
        seen[state] = (client.is_connecting(), client.is_connected())
    client = make_client(server.port, Recorder("client", action))
    assert client.connect()
    assert seen[C.CONNECTING] == (True, False)
    assert seen[C.CONNECTED] == (False, True)
    assert not client.is_connecting()


def test_connect_when_connected_returns_true_without_callbacks(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    assert client.connect()
    before = list(crec.events)
    assert client.connect() is True
    assert crec.events == before
    assert client.send_message("one connection?", 10) == "echo:one connection?"  # after any CONNECTED callback
    assert srec.states().count(S.CONNECTED) == 1


# ----------------------------------------------------------------------------
# the server's port


def test_port_in_use_reported_and_nothing_runs(make_server, raw_sockets):
    holder = raw_sockets()
    holder.bind((LOOPBACK, 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    threads_before = tcpcom_threads()
    rec = Recorder("server")
    server = make_server(port, rec)
    assert rec.events == [(S.PORT_IN_USE, str(port))]  # before the constructor returned
    assert server.is_terminated() and not server.is_connected()
    assert server.port == port
    assert tcpcom_threads() == threads_before
    assert server.send_message("x") is False
    server.terminate()
    server.disconnect()
    assert rec.events == [(S.PORT_IN_USE, str(port))]


def test_second_server_on_a_busy_port_leaves_the_first_alone(make_server, make_client):
    first, frec = echo_server(make_server)
    rec = Recorder("second")
    second = make_server(first.port, rec)
    assert rec.events == [(S.PORT_IN_USE, str(first.port))]
    assert second.is_terminated() and not first.is_terminated()
    client = make_client(first.port)
    assert client.connect()
    assert client.send_message("still there?", 10) == "echo:still there?"


def test_port_zero_picks_a_port_and_listens_on_loopback(make_server):
    server = make_server(0)
    assert 0 < server.port < 65536
    assert server.host == LOOPBACK
    assert server._listener.getsockname() == (LOOPBACK, server.port)


def test_terminate_frees_the_port_at_once_even_with_a_client(make_server, make_client):
    server, _ = echo_server(make_server)
    port = server.port
    client = make_client(port)
    assert client.connect()
    client.send_message("warm up?", 10)
    server.terminate()
    rec = Recorder("again")
    again = make_server(port, rec)
    rec.wait_count(S.LISTENING)
    assert (S.PORT_IN_USE, str(port)) not in rec.events
    assert not again.is_terminated()


# ----------------------------------------------------------------------------
# one client at a time


def test_second_client_gets_server_occupied_and_first_is_unaffected(make_server, make_client):
    server, srec = echo_server(make_server)
    first_rec, second_rec = Recorder("first"), Recorder("second")
    first = make_client(server.port, first_rec)
    second = make_client(server.port, second_rec, handshake_timeout=WAIT)
    assert first.connect()

    started = time.monotonic()
    assert second.connect() is False
    assert time.monotonic() - started < WAIT  # decided by the refusal frame, not by the timeout
    addr = f"{LOOPBACK}:{server.port}"
    assert second_rec.events == [(C.CONNECTING, addr), (C.SERVER_OCCUPIED, addr)]
    assert not second.is_connected() and not second.is_connecting()

    assert first.is_connected() and server.is_connected()
    assert first.send_message("still mine?", 10) == "echo:still mine?"
    assert srec.states().count(S.CONNECTED) == 1
    assert first_rec.states() == [C.CONNECTING, C.CONNECTED]

    first.disconnect()
    srec.wait_count(S.LISTENING, 2)
    assert second.connect() is True
    assert second.send_message("my turn?", 10) == "echo:my turn?"


def test_refused_raw_client_reads_the_occupied_frame_then_end_of_stream(make_server, raw_sockets):
    server, srec = echo_server(make_server)
    first = raw_sockets()
    first.connect((LOOPBACK, server.port))
    assert recv_exactly(first, len(ACCEPTED)) == ACCEPTED
    srec.wait_count(S.CONNECTED)
    second = raw_sockets()
    second.connect((LOOPBACK, server.port))
    assert recv_until_eof(second) == OCCUPIED
    first.sendall(b"ping?\0")
    assert recv_exactly(first, len(b"echo:ping?\0")) == b"echo:ping?\0"


def test_plain_tcpcom_wire_behaviour_without_handshake(make_server, make_client, raw_sockets):
    server, srec = echo_server(make_server, handshake=False)
    raw = raw_sockets()
    raw.connect((LOOPBACK, server.port))
    srec.wait_count(S.CONNECTED)
    server.send_message("first")
    assert recv_exactly(raw, 6) == b"first\0"  # no reserved frame before it
    occupied_rec = Recorder("occupied")
    other = make_client(server.port, occupied_rec, handshake_timeout=WAIT)
    assert other.connect() is False  # refused by a plain close
    assert occupied_rec.states() == [C.CONNECTING, C.SERVER_OCCUPIED]
    raw.close()
    srec.wait_count(S.LISTENING, 2)
    client = make_client(server.port, handshake_timeout=0.2)
    assert client.connect() is True  # silence: taken as accepted after handshake_timeout
    assert client.send_message("plain?", 10) == "echo:plain?"


# ----------------------------------------------------------------------------
# framing on the wire


def test_server_unframes_split_merged_and_multibyte_input(make_server, raw_sockets):
    server, srec = echo_server(make_server)
    raw = raw_sockets()
    raw.connect((LOOPBACK, server.port))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    assert recv_exactly(raw, len(ACCEPTED)) == ACCEPTED
    raw.sendall(b"one\0two\0thr")
    srec.wait_message("two")
    raw.sendall(b"ee\0caf\xc3")         # split inside a message and inside 'é'
    srec.wait_message("three")
    raw.sendall(b"\xa9 \xe2\x82")       # split inside the euro sign
    raw.sendall(b"\xac\0\0last\0")      # an empty message, then another
    srec.wait_message("last")
    assert srec.messages() == ["one", "two", "three", "café €", "", "last"]


def test_client_unframes_split_merged_and_multibyte_input(make_client, plain_server, conns):
    crec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], crec, handshake_timeout=0.2)
    assert client.connect() is True  # a plain server says nothing: CONNECTED after handshake_timeout
    conn = accept(plain_server, conns)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(b"alpha\0be")
    crec.wait_message("alpha")
    conn.sendall(b"ta\0gr\xc3")
    crec.wait_message("beta")
    conn.sendall(b"\xbc\xc3\x9fe \xf0\x9f")
    conn.sendall(b"\x91\x8b\0x\0y\0")
    crec.wait_message("y")
    assert crec.messages() == ["alpha", "beta", "grüße 👋", "x", "y"]


def test_client_takes_a_first_message_from_a_plain_server_as_acceptance(make_client, plain_server, conns):
    crec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], crec, handshake_timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ok=client.connect(timeout=60)))
    thread.start()
    try:
        conn = accept(plain_server, conns)
        conn.sendall(b"welcome\0")
    finally:
        thread.join(WAIT)
    assert result == {"ok": True}  # did not wait for handshake_timeout
    crec.wait_message("welcome")
    assert crec.states() == [C.CONNECTING, C.CONNECTED, C.MESSAGE]


def test_plain_server_closing_at_once_means_occupied(make_client, plain_server, conns):
    crec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], crec, handshake_timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(ok=client.connect(timeout=60)))
    thread.start()
    try:
        conn = accept(plain_server, conns)
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
    finally:
        thread.join(WAIT)
    assert result == {"ok": False}
    assert crec.states() == [C.CONNECTING, C.SERVER_OCCUPIED]


def test_late_acceptance_frame_is_not_reported_as_a_message(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec, handshake_timeout=0)  # CONNECTED before reading anything
    assert client.connect()
    assert client.send_message("hello?", 10) == "echo:hello?"
    server.send_message("news")
    crec.wait_message("news")
    assert crec.messages() == ["news"]


def test_too_long_message_drops_the_client(make_server, raw_sockets, caplog):
    server, srec = echo_server(make_server, max_message_size=64)
    raw = raw_sockets()
    raw.connect((LOOPBACK, server.port))
    assert recv_exactly(raw, len(ACCEPTED)) == ACCEPTED
    raw.sendall(b"ok\0" + b"x" * 200)
    srec.wait_count(S.LISTENING, 2)
    assert srec.messages() == ["ok"]
    try:
        assert recv_until_eof(raw) == b""
    except ConnectionResetError:  # the server may close with part of the flood unread
        pass
    assert any(r.levelno == logging.ERROR and "max_size=64" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------
# bad input and sending while not connected


def test_client_refuses_bad_messages_and_sends_nothing(make_client, plain_server, conns):
    client = make_client(plain_server.getsockname()[1], handshake_timeout=0)
    assert client.connect()
    conn = accept(plain_server, conns)
    with pytest.raises(ValueError, match=r"'a\\x00b'"):
        client.send_message("a\0b")
    with pytest.raises(ValueError, match="terminator"):
        client.send_message("x\0", 5)
    with pytest.raises(TypeError, match="bytes"):
        client.send_message(b"bytes")
    with pytest.raises(TypeError, match="int"):
        client.sendMessage(5)
    with pytest.raises(ValueError, match="encoded"):
        client.send_message("lone surrogate \udc80")
    assert client.send_message("after") is True
    assert recv_exactly(conn, 6) == b"after\0"  # nothing before it


def test_server_refuses_bad_messages_and_sends_nothing(make_server, raw_sockets):
    server, srec = echo_server(make_server)
    raw = raw_sockets()
    raw.connect((LOOPBACK, server.port))
    assert recv_exactly(raw, len(ACCEPTED)) == ACCEPTED
    srec.wait_count(S.CONNECTED)
    with pytest.raises(ValueError, match=r"'x\\x00y'"):
        server.send_message("x\0y")
    with pytest.raises(TypeError, match="NoneType"):
        server.sendMessage(None)
    assert server.send_message("ok") is True
    assert recv_exactly(raw, 3) == b"ok\0"


def test_sending_while_not_connected_returns_false_and_sends_nothing(make_server, make_client):
    server, srec = echo_server(make_server)
    client = make_client(server.port)
    assert client.send_message("x") is False
    assert client.send_message("x", 0.5) is None
    assert server.send_message("nobody") is False
    with pytest.raises(ValueError):  # bad input is an error even when not connected
        client.send_message("a\0")
    with pytest.raises(ValueError):
        server.send_message("a\0")
    assert client.connect()
    client.disconnect()
    assert client.send_message("x") is False
    srec.wait_count(S.LISTENING, 2)
    assert srec.messages() == []


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (math.nan, ValueError), (math.inf, ValueError),
                                        ("1", TypeError), (True, TypeError), (None, TypeError)])
def test_bad_response_time_is_refused_before_sending(make_server, make_client, bad, error):
    server, srec = echo_server(make_server)
    client = make_client(server.port)
    assert client.connect()
    with pytest.raises(error, match="response_time"):
        client.send_message("never sent?", bad)
    with pytest.raises(TypeError, match="not both"):
        client.send_message("never sent?", 1, responseTime=2)
    assert client.send_message("marker?", 10) == "echo:marker?"
    assert srec.messages() == ["marker?"]


# ----------------------------------------------------------------------------
# replies


def test_reply_is_returned_and_not_passed_to_the_callback(make_server, make_client):
    server, _ = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    assert client.connect()
    assert client.send_message("ping?", 10) == "echo:ping?"
    assert client.sendMessage("pong?", 10) == "echo:pong?"
    assert client.sendMessage("camel?", responseTime=10) == "echo:camel?"
    server.send_message("unsolicited")
    crec.wait_message("unsolicited")
    assert crec.messages() == ["unsolicited"]


def test_no_reply_in_time_returns_none(make_server, make_client):
    server, srec = echo_server(make_server)
    client = make_client(server.port)
    assert client.connect()
    started = time.monotonic()
    assert client.send_message("no question mark", 0.2) is None
    assert 0.15 <= time.monotonic() - started < WAIT
    srec.wait_message("no question mark")


def test_late_reply_goes_to_the_callback_not_to_the_next_request(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec, late_reply_window=120)
    assert client.connect()
    assert client.send_message("slow", 0.2) is None
    srec.wait_message("slow")
    server.send_message("late reply to slow")   # may arrive before or during the next request
    assert client.send_message("fast?", 10) == "echo:fast?"
    crec.wait_message("late reply to slow")
    assert client.send_message("next?", 10) == "echo:next?"
    assert crec.messages() == ["late reply to slow"]  # delivered once, to the callback


def test_late_reply_arriving_while_idle_is_not_returned_later(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec, late_reply_window=120)
    assert client.connect()
    assert client.send_message("slow", 0.2) is None
    server.send_message("late")
    crec.wait_message("late")
    assert client.send_message("fast?", 10) == "echo:fast?"
    assert crec.messages() == ["late"]


def test_without_a_late_reply_window_the_next_message_is_the_reply(make_server, make_client):
    server, srec = echo_server(make_server)
    client = make_client(server.port, late_reply_window=0)
    assert client.connect()
    assert client.send_message("slow", 0.2) is None
    srec.wait_message("slow")
    assert client.send_message("fast?", 10) == "echo:fast?"


def test_request_returns_none_at_once_when_the_server_disconnects(make_server, make_client):
    holder = {}

    def action(state, msg):
        if state == S.MESSAGE and msg == "bye":
            holder["server"].disconnect()
    srec = Recorder("server", action)
    server = holder["server"] = make_server(0, srec)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    assert client.connect()
    started = time.monotonic()
    assert client.send_message("bye", 60) is None
    assert time.monotonic() - started < WAIT
    crec.wait_count(C.DISCONNECTED)
    srec.wait_count(S.LISTENING, 2)


def test_request_from_inside_a_message_callback_gets_its_reply(make_server, make_client):
    server, _ = echo_server(make_server)
    answers = []

    def action(state, msg):
        if state == C.MESSAGE and msg == "ask me":
            answers.append(client.send_message("inner?", 10))
    crec = Recorder("client", action)
    client = make_client(server.port, crec)
    assert client.connect()
    server.send_message("ask me")
    wait_until(lambda: answers, what="the inner request")
    assert answers == ["echo:inner?"]
    assert crec.messages() == ["ask me"]


def test_concurrent_requests_each_get_their_own_reply(make_server, make_client):
    server, _ = echo_server(make_server)
    client = make_client(server.port)
    assert client.connect()
    results = {}

    def ask(i):
        results[i] = client.send_message(f"q{i}?", 30)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 2)
    assert results == {i: f"echo:q{i}?" for i in range(8)}


# ----------------------------------------------------------------------------
# disconnects, restarts, graceful close


def test_message_sent_just_before_server_disconnect_is_delivered(make_server, make_client):
    holder = {}

    def action(state, msg):  # the tcpcom "time server" pattern
        if state == S.CONNECTED:
            holder["server"].send_message("the time is now")
            holder["server"].disconnect()
    srec = Recorder("server", action)
    server = holder["server"] = make_server(0, srec)
    for _ in range(3):
        crec = Recorder("client")
        client = make_client(server.port, crec)
        assert client.connect()
        crec.wait_count(C.DISCONNECTED)
        assert crec.states() == [C.CONNECTING, C.CONNECTED, C.MESSAGE, C.DISCONNECTED]
        assert crec.messages() == ["the time is now"]


def test_message_sent_just_before_client_disconnect_is_delivered(make_server, make_client):
    server, srec = echo_server(make_server)
    for i in range(3):
        client = make_client(server.port)
        assert client.connect()
        client.send_message(f"goodbye {i}")
        client.disconnect()
        srec.wait_count(S.LISTENING, i + 2)
    assert srec.messages() == ["goodbye 0", "goodbye 1", "goodbye 2"]


def test_server_restart_under_a_connected_client(make_server, make_client):
    server, _ = echo_server(make_server)
    port = server.port
    crec = Recorder("client")
    client = make_client(port, crec)
    assert client.connect()
    server.terminate()
    crec.wait_count(C.DISCONNECTED)
    assert not client.is_connected()
    assert client.send_message("anyone?", 0.5) is None

    holder = {}

    def answer(state, msg):
        if state == S.MESSAGE:
            holder["server"].send_message("new:" + msg)
    holder["server"] = make_server(port, Recorder("again", answer))
    assert client.connect() is True
    assert client.send_message("hello", 10) == "new:hello"


SERVER_SCRIPT = """
import sys
from socs_tcp.tcpcom import TCPServer
server = TCPServer(int(sys.argv[1]), lambda state, msg: None)
sys.stdout.write(f"{server.port}\\n")
sys.stdout.flush()
sys.stdin.read()
"""


@pytest.fixture
def server_process():
    procs = []

    def start(port=0):
        proc = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(port)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        line = proc.stdout.readline()
        assert line.strip().isdigit(), f"server process did not start: {line!r}"
        return proc, int(line)
    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(WAIT)
            proc.stdin.close()
            proc.stdout.close()


def test_client_sees_a_killed_server_process_and_reconnects(server_process, make_server, make_client):
    proc, port = server_process()
    crec = Recorder("client")
    client = make_client(port, crec)
    assert client.connect() is True
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(WAIT)
    crec.wait_count(C.DISCONNECTED)
    assert not client.is_connected()

    srec = Recorder("replacement")
    make_server(port, srec)
    srec.wait_count(S.LISTENING)
    assert S.PORT_IN_USE not in srec.states()
    assert client.connect() is True
    assert crec.states() == [C.CONNECTING, C.CONNECTED, C.DISCONNECTED, C.CONNECTING, C.CONNECTED]


def test_connect_to_a_closed_port_fails_quickly(make_client):
    crec = Recorder("client")
    client = make_client(free_port(), crec)
    started = time.monotonic()
    assert client.connect(timeout=30) is False
    assert time.monotonic() - started < WAIT
    assert crec.states() == [C.CONNECTING, C.CONNECTION_FAILED]
    assert not client.is_connected() and not client.is_connecting()
    assert not [name for name in tcpcom_threads() if "client" in name]


def test_connect_timeout_is_respected_against_a_full_backlog(make_client, raw_sockets):
    listener = raw_sockets()
    listener.bind((LOOPBACK, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    for _ in range(8):  # fill the accept queue until the kernel drops new SYNs
        filler = raw_sockets()
        filler.settimeout(0.5)
        try:
            filler.connect((LOOPBACK, port))
        except TimeoutError:
            break
    else:
        pytest.skip("this kernel does not drop connections to a full backlog")
    crec = Recorder("client")
    client = make_client(port, crec)
    started = time.monotonic()
    assert client.connect(timeout=0.5) is False
    elapsed = time.monotonic() - started
    assert 0.45 <= elapsed < WAIT
    assert crec.states() == [C.CONNECTING, C.CONNECTION_FAILED]


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (math.nan, ValueError), ("5", TypeError),
                                        (False, TypeError)])
def test_bad_connect_timeout_is_refused(make_client, bad, error):
    crec = Recorder("client")
    client = make_client(free_port(), crec)
    with pytest.raises(error, match="timeout"):
        client.connect(bad)
    assert crec.events == []


def test_disconnect_during_connect_makes_it_fail(make_client, plain_server):
    crec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], crec, handshake_timeout=60)  # a silent server
    result = {}
    thread = threading.Thread(target=lambda: result.update(ok=client.connect(timeout=60)))
    thread.start()
    try:
        wait_until(client.is_connecting, what="connect() to start")
        client.disconnect()
    finally:
        thread.join(WAIT)
    assert result == {"ok": False}
    assert crec.states() == [C.CONNECTING, C.CONNECTION_FAILED]
    assert not client.is_connected() and not client.is_connecting()


def test_incomplete_message_at_close_is_logged_not_delivered(make_server, raw_sockets, caplog):
    server, srec = echo_server(make_server)
    raw = raw_sockets()
    raw.connect((LOOPBACK, server.port))
    assert recv_exactly(raw, len(ACCEPTED)) == ACCEPTED
    raw.sendall(b"whole\0partial")
    srec.wait_message("whole")
    raw.close()
    srec.wait_count(S.LISTENING, 2)
    assert srec.messages() == ["whole"]
    assert any(r.levelno == logging.WARNING and "7 bytes discarded" in r.getMessage() for r in caplog.records)


def test_ipv6_loopback(make_server, make_client):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    server, srec = echo_server(make_server, host="::1")
    crec = Recorder("client")
    client = make_client(server.port, crec, host="::1")
    assert client.connect()
    assert client.send_message("v6?", 10) == "echo:v6?"
    assert crec.events[0] == (C.CONNECTING, f"[::1]:{server.port}")
    assert (S.CONNECTED, "::1") in srec.events


# ----------------------------------------------------------------------------
# callbacks


def test_a_raising_server_callback_is_logged_and_the_link_goes_on(make_server, make_client, caplog):
    def action(state, msg):
        if state == S.MESSAGE and msg == "boom":
            raise RuntimeError("callback failure")
    srec = Recorder("server", action)
    server = make_server(0, srec)
    client = make_client(server.port)
    assert client.connect()
    client.send_message("boom")
    client.send_message("next")
    srec.wait_message("next")
    assert server.is_connected() and client.is_connected()
    wait_until(lambda: any("raised" in r.getMessage() for r in caplog.records), what="the logged failure")
    records = [r for r in caplog.records if "raised" in r.getMessage()]
    assert records and records[0].exc_info and records[0].exc_info[0] is RuntimeError
    assert records[0].name == "socs_tcp.tcpcom"


def test_a_raising_client_callback_is_logged_and_the_link_goes_on(make_server, make_client, caplog):
    server, _ = echo_server(make_server)

    def action(state, msg):
        if state in (C.CONNECTED, C.MESSAGE):
            raise ValueError(f"bad {state}")
    crec = Recorder("client", action)
    client = make_client(server.port, crec)
    assert client.connect() is True
    server.send_message("first")
    server.send_message("second")
    crec.wait_message("second")
    assert client.send_message("still ok?", 10) == "echo:still ok?"

    def failures():
        return [r for r in caplog.records if "raised" in r.getMessage()]
    wait_until(lambda: len(failures()) == 3, what="three logged callback failures")
    assert all(r.exc_info and r.exc_info[0] is ValueError for r in failures())


def test_callbacks_run_in_named_threads_one_at_a_time(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    assert client.connect()
    server.send_message("m")
    crec.wait_message("m")
    assert set(srec.threads) == {f"tcpcom-server-events[{server.port}]"}
    assert crec.threads[:2] == ["MainThread", "MainThread"]  # CONNECTING, CONNECTED: in connect()
    assert crec.threads[2] == f"tcpcom-client-events[{LOOPBACK}:{server.port}]"
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("tcpcom-"))


def test_disconnect_from_a_client_callback(make_server, make_client):
    server, srec = echo_server(make_server)

    def action(state, msg):
        if state == C.MESSAGE and msg == "go away":
            client.disconnect()
    crec = Recorder("client", action)
    client = make_client(server.port, crec)
    assert client.connect()
    server.send_message("go away")
    server.send_message("discarded")
    crec.wait_count(C.DISCONNECTED)
    srec.wait_count(S.LISTENING, 2)
    assert crec.states() == [C.CONNECTING, C.CONNECTED, C.MESSAGE, C.DISCONNECTED]
    wait_until(lambda: not [n for n in tcpcom_threads() if "client" in n], what="client threads to end")


def test_terminate_from_a_server_callback(make_server, make_client):
    holder = {}

    def action(state, msg):
        if state == S.MESSAGE and msg == "stop":
            holder["server"].terminate()
    srec = Recorder("server", action)
    server = holder["server"] = make_server(0, srec)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    assert client.connect()
    client.send_message("stop")
    srec.wait_count(S.TERMINATED)
    crec.wait_count(C.DISCONNECTED)
    assert srec.states() == [S.LISTENING, S.CONNECTED, S.MESSAGE, S.TERMINATED]
    assert server.is_terminated()
    wait_until(lambda: not tcpcom_threads(), what="all threads to end")


# ----------------------------------------------------------------------------
# idempotence and clean-up


def test_disconnect_and_terminate_are_idempotent(make_server, make_client):
    server, srec = echo_server(make_server)
    crec = Recorder("client")
    client = make_client(server.port, crec)
    client.disconnect()  # never connected
    server.disconnect()  # no client
    assert crec.events == [] and srec.states() == [S.LISTENING]
    assert client.connect()
    client.disconnect()
    client.disconnect()
    assert crec.states().count(C.DISCONNECTED) == 1
    srec.wait_count(S.LISTENING, 2)
    assert client.connect()
    srec.wait_count(S.CONNECTED, 2)
    server.disconnect()
    server.disconnect()
    crec.wait_count(C.DISCONNECTED, 2)
    server.terminate()
    server.terminate()
    assert srec.states().count(S.TERMINATED) == 1
    assert srec.states().count(S.LISTENING) == 3
    client.disconnect()
    assert crec.states().count(C.DISCONNECTED) == 2


def test_threads_and_sockets_are_gone_after_disconnect_and_terminate(make_server, make_client):
    sockets_before = open_sockets()
    assert tcpcom_threads() == []
    server, srec = echo_server(make_server)
    client = make_client(server.port)
    assert client.connect()
    assert client.send_message("hello?", 10) == "echo:hello?"
    assert len(tcpcom_threads()) == 4
    client.disconnect()
    assert not [n for n in tcpcom_threads() if "client" in n]
    srec.wait_count(S.LISTENING, 2)
    # the listener and the wake-up pair remain while the server runs
    wait_until(lambda: open_sockets() == sockets_before + 3, what="client sockets to close")

    assert client.connect()
    server.disconnect()  # the client's threads end by themselves when the server drops it
    wait_until(lambda: not [n for n in tcpcom_threads() if "client" in n], what="client threads to end")
    server.terminate()
    assert tcpcom_threads() == []
    wait_until(lambda: open_sockets() == sockets_before, what="all sockets to close")


# ----------------------------------------------------------------------------
# compatibility with tcpcom scripts


SEED_SCRIPT = '''
from socs_tcp.tcpcom import *

events = []

def onServerStateChanged(state, msg):
    events.append(("server", state, msg))
    if state == TCPServer.MESSAGE and msg.endswith("?"):
        server.sendMessage("answer to " + msg)

def onStateChanged(state, msg):
    events.append(("client", state, msg))

server = TCPServer(port, stateChanged = onServerStateChanged, isVerbose = True)
client = TCPClient(ipAddress = "127.0.0.1", port = port, stateChanged = onStateChanged, isVerbose = True)
connected = client.connect(5)
isConnected = client.isConnected()
isConnecting = client.isConnecting()
serverConnected = server.isConnected()
client.sendMessage("hello")
reply = client.sendMessage("question?", 5)
reply2 = client.sendMessage("again?", responseTime = 5)
other = TCPClient("127.0.0.1", port, onStateChanged)
otherConnected = other.connect()
versions = (TCPServer.getVersion(), TCPClient.getVersion(), server.getVersion())
client.disconnect()
server.terminate()
terminated = server.isTerminated()
'''


def test_a_tcpcom_script_runs_unchanged():
    ns = {"port": free_port()}
    try:
        exec(compile(SEED_SCRIPT, "tcpcom_script", "exec"), ns)
    finally:
        for name in ("client", "other"):
            if name in ns:
                ns[name].disconnect()
        if "server" in ns:
            ns["server"].terminate()
    assert ns["connected"] is True and ns["isConnected"] is True
    assert ns["isConnecting"] is False and ns["serverConnected"] is True
    assert ns["reply"] == "answer to question?" and ns["reply2"] == "answer to again?"
    assert ns["otherConnected"] is False
    assert ns["versions"] == (socs_tcp.__version__,) * 3
    assert ns["terminated"] is True
    server_states = [(s, m) for who, s, m in ns["events"] if who == "server"]
    assert server_states == [("LISTENING", ""), ("CONNECTED", "127.0.0.1"), ("MESSAGE", "hello"),
                             ("MESSAGE", "question?"), ("MESSAGE", "again?"), ("LISTENING", ""), ("TERMINATED", "")]
    client_states = [s for who, s, _ in ns["events"] if who == "client"]
    assert client_states == ["CONNECTING", "CONNECTED", "CONNECTING", "SERVER_OCCUPIED", "DISCONNECTED"]


def test_positional_arguments_as_in_the_original():
    srec = Recorder("server")
    server = TCPServer(free_port(), srec, False)
    try:
        client = TCPClient(LOOPBACK, server.port, Recorder("client"), False)
        try:
            assert client.connect(5)
            client.sendMessage("x", 0.2)
            srec.wait_message("x")
        finally:
            client.disconnect()
    finally:
        server.terminate()


def test_verbose_mode_logs_states_at_info_and_traffic_at_debug(make_server, make_client, caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="socs_tcp.tcpcom")
    server, srec = echo_server(make_server, isVerbose=True)
    client = make_client(server.port, is_verbose=True)
    assert client.connect()
    assert client.send_message("hi?", 10) == "echo:hi?"
    client.disconnect()
    server.terminate()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("LISTENING" in m for m in info) and any("CONNECTED" in m for m in info)
    assert any("TERMINATED" in m for m in info) and any("DISCONNECTED" in m for m in info)
    assert any("68 69 3f 00" in m for m in debug)  # "hi?\0" as traffic
    assert capsys.readouterr() == ("", "")


def test_quiet_mode_logs_nothing_above_debug_for_normal_operation(make_server, make_client, caplog):
    caplog.set_level(logging.DEBUG, logger="socs_tcp.tcpcom")
    server, _ = echo_server(make_server)
    client = make_client(server.port)
    assert client.connect()
    assert client.send_message("hi?", 10) == "echo:hi?"
    client.disconnect()
    server.terminate()
    assert [r.getMessage() for r in caplog.records if r.levelno > logging.DEBUG] == []


def test_versions():
    assert TCPServer.getVersion() == TCPClient.get_version() == socs_tcp.__version__
    assert tcpcom.TCPServer.get_version() == socs_tcp.__version__


# ----------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize("kwargs, error, match", [
    ({"port": "5000"}, TypeError, "port"),
    ({"port": True}, TypeError, "port"),
    ({"port": -1}, ValueError, "port"),
    ({"port": 65536}, ValueError, "port"),
    ({"port": 0, "state_changed": "callback"}, TypeError, "state_changed"),
    ({"port": 0, "state_changed": print, "stateChanged": print}, TypeError, "not both"),
    ({"port": 0, "is_verbose": "yes"}, TypeError, "is_verbose"),
    ({"port": 0, "host": 127}, TypeError, "host"),
    ({"port": 0, "handshake": 1}, TypeError, "handshake"),
    ({"port": 0, "send_timeout": 0}, ValueError, "send_timeout"),
    ({"port": 0, "linger": -1}, ValueError, "linger"),
    ({"port": 0, "encoding": "utf-16"}, ValueError, "ASCII"),
    ({}, TypeError, "port"),
])
def test_bad_server_arguments(kwargs, error, match):
    threads = tcpcom_threads()
    with pytest.raises(error, match=match):
        TCPServer(**kwargs)
    assert tcpcom_threads() == threads


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((None, 5000), {}, TypeError, "ip_address"),
    ((123, 5000), {}, TypeError, "ip_address"),
    (("", 5000), {}, ValueError, "ip_address"),
    ((LOOPBACK, 0), {}, ValueError, "port"),
    ((LOOPBACK, "5000"), {}, TypeError, "port"),
    ((LOOPBACK,), {}, TypeError, "port"),
    ((LOOPBACK, 5000, 42), {}, TypeError, "state_changed"),
    ((LOOPBACK, 5000), {"handshake_timeout": -1}, ValueError, "handshake_timeout"),
    ((LOOPBACK, 5000), {"late_reply_window": "x"}, TypeError, "late_reply_window"),
    ((LOOPBACK, 5000), {"ipAddress": LOOPBACK}, TypeError, "not both"),
])
def test_bad_client_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        TCPClient(*args, **kwargs)


def test_camelcase_keywords_are_accepted():
    rec = Recorder()
    client = TCPClient(ipAddress="[::1]", port=5000, stateChanged=rec, isVerbose=True)
    assert client.address == "[::1]:5000"
    assert not client.isConnected() and not client.isConnecting()


# ---------------------------------------------------------------- one deadline per request


def test_response_time_bounds_the_send_to_a_server_that_stopped_reading(plain_server, make_client, conns):
    # a server that took the connection and reads nothing: its buffers fill and the send blocks
    plain_server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    rec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], rec, handshake_timeout=0, send_timeout=60.0,
                         max_message_size=64 << 20)
    assert client.connect(timeout=5)
    accept(plain_server, conns)
    t0 = time.monotonic()
    reply = client.send_message("x" * (32 << 20), response_time=0.5)
    elapsed = time.monotonic() - t0
    assert reply is None
    # the request's response_time bounds the send too, not only the wait for the reply
    assert elapsed < 5.0, f"send_message(..., response_time=0.5) took {elapsed:.1f} s (send_timeout is 60 s)"
    # a send cut off half-way closes the connection: no partial message is followed by another
    rec.wait_count(C.DISCONNECTED)
    assert not client.is_connected()


def test_connect_timeout_bounds_the_handshake_wait(plain_server, make_client, conns):
    rec = Recorder("client")
    client = make_client(plain_server.getsockname()[1], rec, handshake_timeout=30.0)
    t0 = time.monotonic()
    # a plain server that says nothing: the handshake wait ends with the connect deadline, not after 30 s
    assert client.connect(timeout=0.3)
    assert time.monotonic() - t0 < 5 * 0.3 + 1.0
    assert rec.states()[:2] == [C.CONNECTING, C.CONNECTED]
