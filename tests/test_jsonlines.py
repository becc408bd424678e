"""The asyncio JSON-lines client and server, over real loopback sockets."""

import asyncio
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from socs_tcp import AsyncTCPClient as ExportedClient
from socs_tcp import MsgType as ExportedMsgType
from socs_tcp.errors import (
    ConnectFailedError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    PeerClosedError,
    ReadOverflowError,
)
from socs_tcp.jsonlines import (
    REPLY_IDS,
    AsyncTCPClient,
    CommandError,
    CommandTimeoutError,
    JsonLinesServer,
    MsgType,
    classify_id,
)
from socs_tcp.simulators.jsonlines import ThermalControllerSimulator

LOOPBACK = "127.0.0.1"


def run(coro, timeout=30.0):
    """Run one test scenario in a fresh event loop, with an overall deadline."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(condition, timeout=5.0, what="condition"):
    """Await ``condition()`` becoming truthy (polled), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.01)


class Inbox:
    """A message callback that records what it is given."""

    def __init__(self):
        self.calls = []

    async def __call__(self, *args, message):
        self.calls.append((args, message))

    @property
    def messages(self):
        return [m for _, m in self.calls]

    def ids(self):
        return [m.get("id") for m in self.messages]


class RawPeer:
    """A bare asyncio server on loopback for byte-level control: the device side."""

    def __init__(self):
        self.connections = []
        self.server = None

    async def __aenter__(self):
        async def accept(reader, writer):
            self.connections.append((reader, writer))
        self.server = await asyncio.start_server(accept, LOOPBACK, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        for _, writer in self.connections:
            writer.close()
        for _, writer in self.connections:
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, asyncio.TimeoutError):
                pass
        await asyncio.wait_for(self.server.wait_closed(), 5)

    async def peer(self):
        await until(lambda: self.connections, what="a client connection")
        return self.connections[0]

    async def send(self, data):
        _, writer = await self.peer()
        writer.write(data)
        await writer.drain()

    async def read_line(self, timeout=5.0):
        reader, _ = await self.peer()
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)


def new_client(port, inbox=None, *args, **kwargs):
    return AsyncTCPClient(LOOPBACK, port, inbox if inbox is not None else Inbox(), *args, **kwargs)


# ---------------------------------------------------------------- message types


def test_msg_type_values_prefixes_and_m2com_aliases():
    assert [m.value for m in MsgType] == ["command", "event", "telemetry"]
    assert (MsgType.COMMAND.prefix, MsgType.EVENT.prefix, MsgType.TELEMETRY.prefix) == ("cmd_", "evt_", "tel_")
    assert MsgType.Command is MsgType.COMMAND and MsgType.Event is MsgType.EVENT
    assert MsgType.Telemetry is MsgType.TELEMETRY
    assert ExportedMsgType is MsgType and ExportedClient is AsyncTCPClient


def test_classify_id():
    assert classify_id("cmd_move") == (MsgType.COMMAND, "move")
    assert classify_id("evt_inPosition") == (MsgType.EVENT, "inPosition")
    assert classify_id("tel_position") == (MsgType.TELEMETRY, "position")
    assert all(classify_id(r) == ("reply", r) for r in REPLY_IDS)
    assert classify_id("summaryState") == (None, "summaryState")
    assert classify_id("tel_") == (None, "tel_")
    assert classify_id(7) == (None, 7)


# ---------------------------------------------------------------- construction and connection


@pytest.mark.parametrize("kwargs, exc, needle", [
    ({"port": 0}, ValueError, "port"),
    ({"port": 70000}, ValueError, "70000"),
    # wrong types are TypeError, bad values ValueError (socs_tcp.core.checks)
    ({"port": True}, TypeError, "True"),
    ({"port": "5000"}, TypeError, "'5000'"),
    ({"host": ""}, ValueError, "host"),
    ({"host": 5}, TypeError, "5"),
    ({"timeout": "1"}, TypeError, "'1'"),
    ({"write_timeout": 0}, ValueError, "write_timeout"),
    ({"callback_process_message": "nope"}, TypeError, "'nope'"),
    ({"timeout": -1}, ValueError, "-1"),
    ({"sequence_generator": [1, 2]}, TypeError, "[1, 2]"),
    ({"on_disconnect": 5}, TypeError, "5"),
])
def test_constructor_rejects_bad_arguments(kwargs, exc, needle):
    args = {"host": LOOPBACK, "port": 5000, "callback_process_message": Inbox()}
    args.update(kwargs)
    host, port, callback = args.pop("host"), args.pop("port"), args.pop("callback_process_message")
    with pytest.raises(exc, match=None) as info:
        AsyncTCPClient(host, port, callback, **args)
    assert needle in str(info.value)


def test_connect_refused_names_address_and_reason():
    # a bound socket that does not listen: the kernel refuses connections to it
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, 0))
        port = blocker.getsockname()[1]

        async def scenario():
            client = new_client(port)
            with pytest.raises(ConnectFailedError) as info:
                await client.connect(timeout=5)
            assert isinstance(info.value, ConnectionError)
            assert f"127.0.0.1:{port}" in str(info.value) and "refused" in str(info.value).lower()
            assert not client.connected
            assert client.stats.connect_failures == 1
            await client.close()
        run(scenario())


def test_connect_timeout_is_a_connect_failure():
    listener = socket.socket()
    held = []
    try:
        listener.bind((LOOPBACK, 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(64):  # fill the accept queue: the next handshake is not answered
            s = socket.socket()
            held.append(s)
            s.settimeout(0.3)
            try:
                s.connect((LOOPBACK, port))
            except OSError:
                break
        else:
            pytest.skip("the kernel accepted every connection; cannot provoke a connect timeout")

        async def scenario():
            client = new_client(port)
            t0 = time.monotonic()
            with pytest.raises(ConnectFailedError, match=rf"127\.0\.0\.1:{port}: timed out after 0\.5 s"):
                await client.connect(timeout=0.5)
            assert time.monotonic() - t0 < 5, "the connect deadline must hold"
            assert not client.connected
        run(scenario())
    finally:
        for s in held:
            s.close()
        listener.close()


@pytest.mark.parametrize("timeout, error", [(0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                                            ("5", TypeError), (None, TypeError)])
def test_connect_rejects_bad_timeout(timeout, error):
    async def scenario():
        with pytest.raises(error, match="timeout"):
            await new_client(5000).connect(timeout=timeout)
    run(scenario())


def test_close_without_connection_is_safe_and_idempotent():
    async def scenario():
        client = new_client(5000)
        assert not client.connected
        await client.close()
        await client.close()
        assert not client.connected and client.disconnect_reason is None
        assert await client.wait_disconnected() is None
    run(scenario())


def test_connect_close_connect_again():
    async def scenario():
        async with JsonLinesServer() as server:
            client = new_client(server.port)
            await client.connect()
            await client.connect()  # already connected: nothing happens
            assert client.connected and client.stats.connects == 1
            await server.wait_for_clients(1)
            await client.close()
            await client.close()
            assert not client.connected
            await until(lambda: server.client_count == 0, what="the server to see the close")
            await client.connect()
            assert client.connected and client.stats.connects == 2
            await client.write_message(MsgType.EVENT, "again")
            await until(lambda: len(server.received) == 1, what="the message after reconnecting")
            await client.close()
    run(scenario())


def test_concurrent_connects_open_one_connection():
    async def scenario():
        async with JsonLinesServer() as server:
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await asyncio.gather(*(client.connect() for _ in range(5)))
            assert client.connected and client.stats.connects == 1
            await server.wait_for_clients(1)
            await server.emit_event("once")
            await until(lambda: inbox.calls, what="the event")
            assert server.client_count == 1 and inbox.ids() == ["evt_once"]
            await client.close()
    run(scenario())


# ---------------------------------------------------------------- writing


def test_wire_format_of_each_message_type():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port)
            await client.connect()
            assert client.last_sequence_id == -1
            assert await client.write_message(MsgType.COMMAND, "move", {"x": 0.1, "y": -2}) == 1
            assert await device.read_line() == b'{"id":"cmd_move","sequence_id":1,"x":0.1,"y":-2}\r\n'
            assert await client.write_message("command", "stop") == 2
            assert await device.read_line() == b'{"id":"cmd_stop","sequence_id":2}\r\n'
            assert client.last_sequence_id == 2
            assert await client.write_message(MsgType.Event, "inPosition", {"tolerance": 0.001},
                                              comp_name="MTMount") is None
            assert json.loads(await device.read_line()) == {"id": "evt_inPosition", "compName": "MTMount",
                                                            "tolerance": 0.001}
            await client.write_message(MsgType.TELEMETRY, "elevation", comp_name="MTMount")
            assert await device.read_line() == b'{"id":"tel_elevation","compName":"MTMount"}\r\n'
            await client.write_message(MsgType.TELEMETRY, "temp", {"label": "caf\u00e9 \u00b0C", "nl": "a\r\nb"})
            line = await device.read_line()
            assert line.count(b"\r\n") == 1, "a newline inside a value is escaped, never a frame break"
            assert json.loads(line) == {"id": "tel_temp", "label": "caf\u00e9 \u00b0C", "nl": "a\r\nb"}
            assert client.messages_sent == 5 and client.stats.bytes_out > 0
            await client.close()
    run(scenario())


def test_sequence_ids_from_a_custom_generator_and_exhaustion():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port, sequence_generator=iter([100, 101]))
            await client.connect()
            assert await client.write_message(MsgType.COMMAND, "a") == 100
            assert await client.write_message(MsgType.COMMAND, "b") == 101
            with pytest.raises(RuntimeError, match="exhausted"):
                await client.write_message(MsgType.COMMAND, "c")
            assert client.last_sequence_id == 101
            # events and telemetry do not use sequence ids
            await client.write_message(MsgType.EVENT, "e")
            lines = [json.loads(await device.read_line()) for _ in range(3)]
            assert [m.get("sequence_id") for m in lines] == [100, 101, None]
            await client.close()
    run(scenario())


def test_default_sequence_ids_count_from_one():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port)
            await client.connect()
            ids = [await client.write_message(MsgType.COMMAND, f"c{i}") for i in range(5)]
            assert ids == [1, 2, 3, 4, 5]
            received = [json.loads(await device.read_line())["sequence_id"] for _ in range(5)]
            assert received == ids
            await client.close()
    run(scenario())


@pytest.mark.parametrize("args, exc, needle", [
    ((MsgType.COMMAND, "move", {"id": "x"}), ValueError, "'id'"),
    ((MsgType.EVENT, "ev", {"id": "x"}), ValueError, "'id'"),
    ((MsgType.COMMAND, "move", {"sequence_id": 9}), ValueError, "'sequence_id'"),
    ((MsgType.EVENT, "ev", {"compName": "A"}, "B"), ValueError, "'compName'"),
    ((MsgType.COMMAND, "move", None, "MTMount"), ValueError, "comp_name"),
    (("bogus", "move"), ValueError, "'bogus'"),
    ((3, "move"), ValueError, "3"),
    ((MsgType.COMMAND, ""), ValueError, "''"),
    ((MsgType.COMMAND, "two words"), ValueError, "'two words'"),
    ((MsgType.COMMAND, 5), TypeError, "5"),
    ((MsgType.COMMAND, "move", [1, 2]), TypeError, "[1, 2]"),
    ((MsgType.COMMAND, "move", {"x": float("nan")}), ValueError, "JSON"),
    ((MsgType.COMMAND, "move", {"x": object()}), TypeError, "JSON"),
    ((MsgType.COMMAND, "move", {1: 2}), TypeError, "1"),
    ((MsgType.TELEMETRY, "t", None, 7), TypeError, "7"),
])
def test_bad_messages_are_refused_before_anything_is_sent(args, exc, needle):
    async def scenario():
        async with JsonLinesServer() as server:
            client = new_client(server.port)
            await client.connect()
            with pytest.raises(exc) as info:
                await client.write_message(*args)
            assert needle in str(info.value)
            assert client.last_sequence_id == -1, "no sequence id may be used by a refused message"
            await client.write_message(MsgType.EVENT, "marker")
            await until(lambda: server.received, what="the marker")
            assert list(server.received) == [{"id": "evt_marker"}], "nothing else may have been sent"
            assert client.messages_sent == 1
            await client.close()
    run(scenario())


def test_message_too_long_is_refused_without_using_a_sequence_id():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port, max_message_size=200)
            await client.connect()
            with pytest.raises(ValueError, match="max_message_size=200"):
                await client.write_message(MsgType.COMMAND, "big", {"blob": "x" * 300})
            assert client.last_sequence_id == -1 and client.messages_sent == 0
            await client.close()
    run(scenario())


def test_write_when_not_connected_raises_runtime_error():
    async def scenario():
        client = new_client(5000)
        with pytest.raises(RuntimeError, match="not connected to 127.0.0.1:5000"):
            await client.write_message(MsgType.COMMAND, "move")
        assert client.last_sequence_id == -1
        with pytest.raises(RuntimeError, match="not connected"):
            await client.send_command("move")
        async with JsonLinesServer() as server:
            client = new_client(server.port)
            await client.connect()
            await client.close()
            with pytest.raises(RuntimeError, match="not connected"):
                await client.write_message(MsgType.EVENT, "after_close")
            assert not server.received
    run(scenario())


def test_details_are_not_modified():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port)
            await client.connect()
            details = {"x": 1}
            await client.write_message(MsgType.COMMAND, "move", details)
            assert details == {"x": 1}
            await device.read_line()
            await client.close()
    run(scenario())


# ---------------------------------------------------------------- receiving


def test_messages_reach_the_callback_with_args_in_order():
    async def scenario():
        async with JsonLinesServer() as server:
            inbox = Inbox()
            client = new_client(server.port, inbox, "first", 2)
            await client.connect()
            await server.wait_for_clients(1)
            for i in range(20):
                await server.emit_telemetry("position", {"i": i})
            await until(lambda: len(inbox.calls) == 20, what="20 messages")
            assert all(args == ("first", 2) for args, _ in inbox.calls)
            assert [m["i"] for m in inbox.messages] == list(range(20))
            assert client.messages_received == 20
            await client.close()
    run(scenario())


def test_plain_function_callback_and_failing_callback(caplog):
    async def scenario():
        seen = []

        def callback(message):
            if message.get("boom"):
                raise KeyError("callback bug")
            seen.append(message["id"])

        async with JsonLinesServer() as server:
            client = new_client(server.port, callback)
            await client.connect()
            await server.wait_for_clients(1)
            await server.emit_event("one")
            await server.emit_event("bad", {"boom": True})
            await server.emit_event("two")
            await until(lambda: len(seen) == 2, what="the messages around the failing one")
            assert seen == ["evt_one", "evt_two"] and client.connected
            await client.close()

    with caplog.at_level(logging.ERROR, logger="socs_tcp.jsonlines"):
        run(scenario())
    assert any("callback_process_message failed" in r.getMessage() and "evt_bad" in r.getMessage()
               for r in caplog.records)


def test_invalid_json_and_non_objects_are_logged_with_their_text_and_skipped(caplog):
    async def scenario():
        async with RawPeer() as device:
            inbox = Inbox()
            client = new_client(device.port, inbox)
            await client.connect()
            await device.send(b'{"id": "tel_a", "v": 1}\r\n{not json at all\r\n[1, 2, 3]\r\n"text"\r\n'
                              b'\xff\xfe{"id": 1}\r\n\r\n   \r\n{"id": "tel_b", "v": 2}\r\n')
            await until(lambda: len(inbox.calls) == 2, what="the two valid messages")
            assert inbox.ids() == ["tel_a", "tel_b"]
            assert client.invalid_messages == 4 and client.connected
            await client.close()

    with caplog.at_level(logging.WARNING, logger="socs_tcp.jsonlines"):
        run(scenario())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "not valid JSON" in text and "'{not json at all'" in text
    assert "not a JSON object: '[1, 2, 3]'" in text and "not a JSON object: '\"text\"'" in text
    assert "not valid utf-8" in text


def test_split_and_merged_frames_and_a_split_multibyte_character():
    async def scenario():
        async with RawPeer() as device:
            inbox = Inbox()
            client = new_client(device.port, inbox)
            await client.connect()
            sent = 0

            async def send_apart(*parts):
                # each part only once the client has read everything before it: separate reads
                nonlocal sent
                for part in parts:
                    await device.send(part)
                    sent += len(part)
                    await until(lambda n=sent: client.stats.bytes_in == n, what=f"{sent} bytes at the client")

            message = '{"id":"evt_note","text":"\u00b0C \u20ac \U0001f600"}\r\n'.encode()
            await send_apart(*[message[i:i + 1] for i in range(len(message))])  # one byte at a time
            euro = message.index("\u20ac".encode())
            await send_apart(message[:euro + 1], message[euro + 1:euro + 2], message[euro + 2:])
            merged = b"".join(b'{"id":"tel_m","n":%d}\r\n' % i for i in range(50))
            await send_apart(merged[:-7], merged[-7:])
            await until(lambda: len(inbox.calls) == 52, what="all messages")
            assert inbox.messages[0] == inbox.messages[1] == {"id": "evt_note", "text": "\u00b0C \u20ac \U0001f600"}
            assert [m["n"] for m in inbox.messages[2:]] == list(range(50))
            assert client.invalid_messages == 0
            await client.close()
    run(scenario())


# ---------------------------------------------------------------- close() with a device that stopped reading

TCP_ESTABLISHED = 1
BULK = {"data": "x" * 200_000}


def tcp_state(sock):
    """The kernel's TCP state of ``sock`` (Linux ``TCP_INFO``): 1 is ESTABLISHED."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


def non_reading_listener():
    """A listening socket whose connections have a small receive buffer, and that nobody reads."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind((LOOPBACK, 0))
    listener.listen(4)
    return listener


async def block_a_writer(client):
    """Write until a write_message blocks on the full socket; return the task of the blocked write."""
    async def flood():
        while True:
            await client.write_message(MsgType.EVENT, "bulk", BULK)

    task = asyncio.create_task(flood())
    # the transport holds more than its high-water mark only when the socket takes nothing more
    # (read from the transport itself, not client.pending_write_bytes, so that the test also runs,
    # and fails, on a client without it)
    transport = client._writer.transport
    await until(lambda: transport.get_write_buffer_size() > 65536 or task.done(), timeout=10, what="a blocked write")
    assert client.pending_write_bytes == transport.get_write_buffer_size()
    assert not task.done(), task
    return task


def test_close_releases_a_connection_whose_device_stopped_reading():
    listener = non_reading_listener()
    conn = None
    try:
        async def scenario():
            nonlocal conn
            client = new_client(listener.getsockname()[1], write_timeout=60.0)
            await client.connect()
            conn, _ = listener.accept()
            assert tcp_state(conn) == TCP_ESTABLISHED
            blocked = await block_a_writer(client)
            transport_socket = client._writer.get_extra_info("socket")  # white box: the client's own socket
            t0 = time.monotonic()
            await client.close()
            assert time.monotonic() - t0 < 10.0, "close() must not wait for the device (grace 0.5 s)"
            assert not client.connected
            # the blocked write wakes with a clear error, long before its write_timeout of 60 s
            with pytest.raises(LinkClosedError, match="closed by the client"):
                await asyncio.wait_for(blocked, 5.0)
            assert transport_socket.fileno() == -1, "the client's socket must be closed"
            # the device sees the end of the connection (here a reset: it never read the data)
            await until(lambda: tcp_state(conn) != TCP_ESTABLISHED, what="the device to see the close")
            with pytest.raises(RuntimeError, match="not connected"):  # closed: simply not connected
                await client.write_message(MsgType.EVENT, "after")
        run(scenario())
    finally:
        if conn is not None:
            conn.close()
        listener.close()


class OneClientDevice:
    """A device that takes one client at a time, never reads, greets each client it takes with
    ``evt_hello`` (``n`` counts them) and closes any other connection at once."""

    def __init__(self):
        self.listener = non_reading_listener()
        self.port = self.listener.getsockname()[1]
        self.taken = 0
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="one-client-device", daemon=True)
        self._thread.start()

    def _run(self):
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        current = None
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(50))
                if current is not None and events.get(current.fileno(), 0) & (
                        select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                    poller.unregister(current)
                    current.close()
                    current = None
                if events.get(self.listener.fileno(), 0) & select.POLLIN:
                    sock, _ = self.listener.accept()
                    if current is not None:
                        self.refused += 1
                        sock.close()
                        continue
                    current = sock
                    self.taken += 1
                    current.sendall(b'{"id":"evt_hello","n":%d}\r\n' % self.taken)
                    poller.register(current, select.POLLRDHUP)
        finally:
            if current is not None:
                current.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.listener.close()


def test_command_timeout_bounds_the_write_to_a_device_that_stopped_reading():
    listener = non_reading_listener()
    conn = None
    try:
        async def scenario():
            nonlocal conn
            client = new_client(listener.getsockname()[1], write_timeout=60.0, max_message_size=64 << 20)
            await client.connect()
            conn, _ = listener.accept()
            t0 = time.monotonic()
            with pytest.raises(CommandTimeoutError, match="did not take it within 0.5 s") as info:
                # one deadline for the whole command: the write may not use write_timeout's 60 s
                await asyncio.wait_for(client.send_command("big", {"data": "x" * (32 << 20)}, timeout=0.5), 10.0)
            assert time.monotonic() - t0 < 5.0
            assert info.value.acked is False and info.value.sequence_id == 1
            assert client.stats.snapshot(client.connected)["timeouts"] == 1
            await client.close()
        run(scenario())
    finally:
        if conn is not None:
            conn.close()
        listener.close()


def test_write_timeout_shorter_than_the_command_timeout_still_applies():
    listener = non_reading_listener()
    conn = None
    try:
        async def scenario():
            nonlocal conn
            client = new_client(listener.getsockname()[1], write_timeout=0.3, max_message_size=64 << 20)
            await client.connect()
            conn, _ = listener.accept()
            with pytest.raises(LinkTimeoutError, match="did not take") as info:
                await asyncio.wait_for(client.send_command("big", {"data": "x" * (32 << 20)}, timeout=30.0), 10.0)
            assert not isinstance(info.value, CommandTimeoutError)
            await client.close()
        run(scenario())
    finally:
        if conn is not None:
            conn.close()
        listener.close()


def test_a_device_that_takes_one_client_accepts_the_reconnect_after_close():
    device = OneClientDevice()
    try:
        async def scenario():
            inbox = Inbox()
            client = new_client(device.port, inbox, write_timeout=60.0)
            await client.connect()
            await until(lambda: inbox.messages, what="the first greeting")
            blocked = await block_a_writer(client)
            await client.close()
            with pytest.raises(LinkClosedError):
                await asyncio.wait_for(blocked, 5.0)
            await client.connect()
            await until(lambda: len(inbox.messages) == 2, what="the greeting of the reconnect")
            assert inbox.messages[1] == {"id": "evt_hello", "n": 2}
            assert client.connected and device.refused == 0
            await client.close()
        run(scenario())
    finally:
        device.close()


def test_a_write_waiting_on_a_lost_connection_raises_peer_closed():
    listener = non_reading_listener()
    try:
        async def scenario():
            client = new_client(listener.getsockname()[1], write_timeout=60.0)
            await client.connect()
            conn, _ = listener.accept()
            blocked = await block_a_writer(client)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            conn.close()  # a reset from the device
            with pytest.raises(PeerClosedError):
                await asyncio.wait_for(blocked, 5.0)
            await until(lambda: not client.connected, what="the loss to be seen")
            await client.close()
        run(scenario())
    finally:
        listener.close()


def test_close_of_a_healthy_link_is_orderly():
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port)
            await client.connect()
            await client.write_message(MsgType.EVENT, "last", {"v": 1})
            await client.close()
            reader, _ = await device.peer()
            # everything written arrives, then an end of stream (not a reset)
            assert await asyncio.wait_for(reader.read(), 5) == b'{"id":"evt_last","v":1}\r\n'
    run(scenario())


@pytest.mark.parametrize("value, error", [(-1, ValueError), ("1", TypeError)])
def test_bad_close_grace_is_refused(value, error):
    with pytest.raises(error, match="close_grace"):
        new_client(5000, close_grace=value)


# ---------------------------------------------------------------- line endings: "\n" and "\r\n"


def test_lf_only_lines_are_delivered_one_by_one_as_they_arrive():
    async def scenario():
        async with RawPeer() as device:
            inbox = Inbox()
            client = new_client(device.port, inbox)
            await client.connect()
            # a JSON Lines peer: "\n" alone; each line is delivered before any "\r\n" arrives
            await device.send(b'{"id":"tel_a","n":1}\n{"id":"tel_a","n":2}\n')
            await until(lambda: len(inbox.calls) == 2, what="two LF-terminated messages")
            await device.send(b'{"id":"tel_a","n":3}\r\n{"id":"tel_a","n":4}\n\n{"id":"tel_a","n":5}\r\n')
            await until(lambda: len(inbox.calls) == 5, what="five messages in all")
            assert [m["n"] for m in inbox.messages] == [1, 2, 3, 4, 5]
            assert client.invalid_messages == 0
            await client.close()
    run(scenario())


def test_a_malformed_lf_line_costs_only_that_line(caplog):
    async def scenario():
        async with RawPeer() as device:
            inbox = Inbox()
            client = new_client(device.port, inbox)
            await client.connect()
            await device.send(b'{"id":"tel_a","n":1}\n{"id":"tel_a",\n\xff\xfe\n[7]\r\n{"id":"tel_a","n":2}\n')
            await until(lambda: len(inbox.calls) == 2, what="the good lines around the bad ones")
            assert [m["n"] for m in inbox.messages] == [1, 2]
            assert client.invalid_messages == 3 and client.connected
            await client.close()

    with caplog.at_level(logging.WARNING, logger="socs_tcp.jsonlines"):
        run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3, warnings
    assert any("""'{"id":"tel_a",'""" in w for w in warnings)


@pytest.mark.parametrize("line_ending", ["\r\n", "\n"])
def test_client_writes_its_line_ending(line_ending):
    async def scenario():
        async with RawPeer() as device:
            client = new_client(device.port, line_ending=line_ending)
            assert client.line_ending == line_ending
            await client.connect()
            await client.write_message(MsgType.COMMAND, "move", {"x": 1})
            await client.write_message(MsgType.EVENT, "e")
            reader, _ = await device.peer()
            expected = (b'{"id":"cmd_move","sequence_id":1,"x":1}' + line_ending.encode()
                        + b'{"id":"evt_e"}' + line_ending.encode())
            assert await asyncio.wait_for(reader.readexactly(len(expected)), 5) == expected
            await client.close()
    run(scenario())


@pytest.mark.parametrize("kwargs, error", [({"line_ending": "\r"}, ValueError), ({"line_ending": b"\n"}, TypeError)])
def test_bad_line_ending_is_refused_naming_it(kwargs, error):
    with pytest.raises(error, match="line_ending"):
        new_client(5000, **kwargs)
    with pytest.raises(error, match="line_ending"):
        JsonLinesServer(**kwargs)


def test_server_reads_lf_lines_and_can_write_them():
    async def scenario():
        async with make_server(line_ending="\n") as server:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
            try:
                writer.write(b'{"id":"cmd_add","sequence_id":1,"a":1,"b":2}\nnot json\n'
                             b'{"id":"cmd_add","sequence_id":2,"a":2,"b":2}\r\n')
                await writer.drain()
                lines = [await asyncio.wait_for(reader.readuntil(b"\n"), 5) for _ in range(4)]
                assert all(line.endswith(b"}\n") and not line.endswith(b"\r\n") for line in lines)
                replies = [json.loads(line) for line in lines]
                assert {(r["id"], r["sequence_id"]) for r in replies} == {
                    ("ack", 1), ("success", 1), ("ack", 2), ("success", 2)}
                assert server.invalid_messages == 1
            finally:
                writer.close()
                await writer.wait_closed()
    run(scenario())


def test_lf_client_and_lf_server_end_to_end():
    async def scenario():
        async with make_server(line_ending="\n") as server:
            inbox = Inbox()
            client = new_client(server.port, inbox, line_ending="\n")
            await client.connect()
            await server.wait_for_clients(1)
            assert (await client.send_command("add", {"a": 2, "b": 3}))["sum"] == 5
            await server.emit_telemetry("t", {"v": 1})
            await until(lambda: "tel_t" in inbox.ids(), what="telemetry")
            await client.close()
    run(scenario())


def test_server_is_reachable_at_its_old_and_new_paths():
    import socs_tcp.jsonlines as short
    import socs_tcp.messages.jsonlines as messages
    from socs_tcp.testing.jsonserver import JsonLinesServer as moved
    assert short.JsonLinesServer is messages.JsonLinesServer is moved is JsonLinesServer
    assert "JsonLinesServer" in messages.__all__
    with pytest.raises(AttributeError, match="NoSuchThing"):
        messages.NoSuchThing  # noqa: B018


def test_a_message_longer_than_max_message_size_closes_the_link():
    async def scenario():
        disconnects = []
        async with RawPeer() as device:
            inbox = Inbox()
            client = new_client(device.port, inbox, max_message_size=256,
                                on_disconnect=lambda c, err: disconnects.append(err))
            await client.connect()
            await device.send(b'{"id":"tel_ok"}\r\n' + b"x" * 1000)
            reason = await asyncio.wait_for(client.wait_disconnected(), 5)
            assert isinstance(reason, ReadOverflowError) and "max_size=256" in str(reason)
            assert inbox.ids() == ["tel_ok"], "messages completed before the overflow are delivered"
            assert disconnects == [reason] and not client.connected
            await client.close()
    run(scenario())


def test_message_rate_is_logged_at_debug_level(caplog):
    async def scenario():
        async with JsonLinesServer() as server:
            client = new_client(server.port, check_message_rate=True, message_rate_interval=0.2, timeout=0.05,
                                name="rated")
            await client.connect()
            await server.wait_for_clients(1)
            for i in range(30):
                await server.emit_telemetry("t", {"i": i})
            await until(lambda: client.message_rate is not None and client.message_rate > 0,
                        what="a measured message rate")
            await until(lambda: any("messages/s" in r.getMessage() for r in caplog.records), what="the rate log")
            # the read timeout wakes the loop, so a silent link reports 0 messages/s
            await until(lambda: client.message_rate == 0, what="the rate of a silent link")
            await client.close()

    with caplog.at_level(logging.DEBUG, logger="socs_tcp.jsonlines"):
        run(scenario())
    rate_logs = [r for r in caplog.records if "messages/s" in r.getMessage()]
    assert rate_logs and all(r.levelno == logging.DEBUG and "rated" in r.getMessage() for r in rate_logs)


def test_no_rate_logging_unless_asked(caplog):
    async def scenario():
        async with JsonLinesServer() as server:
            client = new_client(server.port, message_rate_interval=0.05, timeout=0.05)
            await client.connect()
            await server.wait_for_clients(1)
            await server.emit_event("x")
            await until(lambda: client.messages_received == 1, what="the message")
            await client.close()
            assert client.message_rate is None

    with caplog.at_level(logging.DEBUG, logger="socs_tcp.jsonlines"):
        run(scenario())
    assert not any("messages/s" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- peer close


@pytest.mark.parametrize("hook_kind", ["sync", "async"])
def test_peer_close_marks_the_link_closed_logs_and_calls_the_hook(caplog, hook_kind):
    async def scenario():
        calls = []

        def sync_hook(client, error):
            calls.append((client, error))

        async def async_hook(client, error):
            await asyncio.sleep(0)
            calls.append((client, error))

        async with RawPeer() as device:
            client = new_client(device.port, name="dev",
                                on_disconnect=sync_hook if hook_kind == "sync" else async_hook)
            await client.connect()
            await device.send(b'{"id":"evt_partial"')   # an unterminated message, then EOF
            _, writer = await device.peer()
            writer.close()
            reason = await asyncio.wait_for(client.wait_disconnected(), 5)
            assert isinstance(reason, PeerClosedError) and isinstance(reason, ConnectionError)
            assert "closed the connection" in str(reason) and "unterminated" in str(reason)
            assert not client.connected and client.disconnect_reason is reason
            await until(lambda: calls, what="the on_disconnect hook")
            assert calls == [(client, reason)]
            with pytest.raises(RuntimeError, match="not connected"):
                await client.write_message(MsgType.EVENT, "late")
            await client.close()
            assert calls == [(client, reason)], "close() does not call the hook"

    with caplog.at_level(logging.WARNING, logger="socs_tcp.jsonlines"):
        run(scenario())
    assert any("dev: connection lost" in r.getMessage() for r in caplog.records)


def test_connection_reset_is_reported_as_lost():
    async def scenario():
        async with JsonLinesServer() as server:
            client = new_client(server.port)
            await client.connect()
            await server.wait_for_clients(1)
            assert await server.drop_connections(abort=True) == 1
            reason = await asyncio.wait_for(client.wait_disconnected(), 5)
            assert isinstance(reason, LinkError)
            assert "reset" in str(reason).lower(), reason  # abort=True is a reset, not an orderly close
            assert not client.connected
            # and the client can come back
            await client.connect()
            await server.wait_for_clients(1)
            await server.emit_event("back")
            await until(lambda: client.messages_received == 1, what="a message after reconnecting")
            await client.close()
    run(scenario())


def test_hook_may_reconnect_from_inside():
    async def scenario():
        async with JsonLinesServer() as server:
            reconnected = asyncio.Event()

            async def hook(client, error):
                await client.connect(timeout=5)
                reconnected.set()

            client = new_client(server.port, on_disconnect=hook)
            await client.connect()
            await server.wait_for_clients(1)
            await server.drop_connections()
            await asyncio.wait_for(reconnected.wait(), 5)
            assert client.connected and client.stats.connects == 2
            await client.close()
    run(scenario())


# ---------------------------------------------------------------- commands through the server


def make_server(**kwargs):
    server = JsonLinesServer(**kwargs)
    server.register_command("add", lambda d: {"sum": d["a"] + d["b"]})

    @server.register_command("nothing")
    def nothing(details):
        return None

    @server.register_command("refuse")
    def refuse(details):
        raise ValueError(f"value {details.get('value')} out of range")

    @server.register_command("wait")
    async def wait(details):
        await asyncio.sleep(details.get("seconds", 0.2))
        return {"waited": details.get("seconds", 0.2)}
    return server


def test_command_ack_then_success_with_handler_result():
    async def scenario():
        async with make_server() as server:
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await client.connect()
            reply = await client.send_command("add", {"a": 2, "b": 3})
            assert reply == {"id": "success", "sequence_id": 1, "sum": 5}
            assert await client.send_command("nothing") == {"id": "success", "sequence_id": 2}
            assert inbox.messages == [{"id": "ack", "sequence_id": 1}, reply,
                                      {"id": "ack", "sequence_id": 2}, {"id": "success", "sequence_id": 2}]
            assert list(server.received) == [{"id": "cmd_add", "sequence_id": 1, "a": 2, "b": 3},
                                             {"id": "cmd_nothing", "sequence_id": 2}]
            assert server.commands_run == 2
            snap = client.snapshot()
            assert snap["transactions"] == 2 and snap["latency_last"] > 0 and snap["pending_commands"] == 0
            await client.close()
    run(scenario())


def test_command_fail_carries_the_reason_and_sequence_id():
    async def scenario():
        async with make_server() as server:
            client = new_client(server.port)
            await client.connect()
            await client.send_command("nothing")
            with pytest.raises(CommandError) as info:
                await client.send_command("refuse", {"value": 99})
            err = info.value
            assert (err.name, err.sequence_id, err.status) == ("refuse", 2, "fail")
            assert err.reply == {"id": "fail", "sequence_id": 2, "reason": "value 99 out of range"}
            assert "'refuse' (sequence_id 2) failed on the device: value 99 out of range" in str(err)
            assert not isinstance(err, ConnectionError), "a refusal is not a link failure"
            assert client.connected and client.stats.errors == 1
            await client.close()
    run(scenario())


def test_unknown_command_gets_noack():
    async def scenario():
        async with make_server() as server:
            client = new_client(server.port)
            await client.connect()
            with pytest.raises(CommandError) as info:
                await client.send_command("doesNotExist")
            assert info.value.status == "noack" and info.value.sequence_id == 1
            assert "'doesNotExist' (sequence_id 1) was not acknowledged by the device (noack)" in str(info.value)
            # the link is fine afterwards; messages that are not commands get no reply
            await client.write_message(MsgType.EVENT, "not_a_command")
            assert (await client.send_command("add", {"a": 1, "b": 1}))["sum"] == 2
            await client.close()
    run(scenario())


def test_command_without_integer_sequence_id_gets_noack():
    async def scenario():
        async with make_server() as server:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
            try:
                writer.write(b'{"id":"cmd_add","a":1,"b":2}\r\n{"id":"cmd_add","sequence_id":"7","a":1,"b":2}\r\n')
                await writer.drain()
                first = json.loads(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
                second = json.loads(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
                assert first == {"id": "noack", "sequence_id": None}
                assert second == {"id": "noack", "sequence_id": "7"}
            finally:
                writer.close()
                await writer.wait_closed()
    run(scenario())


def test_silent_device_times_out_without_ack():
    async def scenario():
        async with make_server() as server:
            server.answer_commands = False
            client = new_client(server.port)
            await client.connect()
            with pytest.raises(CommandTimeoutError) as info:
                await client.send_command("add", {"a": 1, "b": 2}, timeout=0.3)
            err = info.value
            assert isinstance(err, LinkTimeoutError) and isinstance(err, TimeoutError)
            assert isinstance(err, ConnectionError)
            assert (err.name, err.sequence_id, err.acked) == ("add", 1, False)
            assert "'add' (sequence_id 1): no acknowledgement within 0.3 s" in str(err)
            assert client.connected and client.stats.timeouts == 1
            server.answer_commands = True
            assert (await client.send_command("add", {"a": 1, "b": 2}))["sequence_id"] == 2
            await client.close()
    run(scenario())


def test_slow_command_times_out_after_ack_and_a_late_reply_is_ignored():
    async def scenario():
        async with make_server() as server:
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await client.connect()
            with pytest.raises(CommandTimeoutError) as info:
                await client.send_command("wait", {"seconds": 0.6}, timeout=0.2)
            assert info.value.acked is True
            assert "acknowledged but no final status within 0.2 s" in str(info.value)
            # the late success reaches the callback but no waiter
            await until(lambda: {"id": "success", "sequence_id": 1, "waited": 0.6} in inbox.messages,
                        what="the late reply")
            assert (await client.send_command("nothing"))["sequence_id"] == 2
            await client.close()
    run(scenario())


def test_ack_delay_fault_hook():
    async def scenario():
        async with make_server() as server:
            server.ack_delay = 0.5
            client = new_client(server.port)
            await client.connect()
            with pytest.raises(CommandTimeoutError) as info:
                await client.send_command("nothing", timeout=0.1)
            assert info.value.acked is False
            server.ack_delay = 0.0
            reply = await client.send_command("nothing", timeout=5)
            assert reply["sequence_id"] == 2
            await client.close()
    run(scenario())


def test_commands_run_one_at_a_time_in_order_of_arrival():
    async def scenario():
        async with make_server() as server:
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await client.connect()
            slow = asyncio.create_task(client.send_command("wait", {"seconds": 0.3}))
            fast = asyncio.create_task(client.send_command("nothing"))
            await asyncio.gather(slow, fast)
            ids = [(m["id"], m["sequence_id"]) for m in inbox.messages]
            # both are acknowledged at once; the second runs after the first has finished
            assert ids.index(("ack", 2)) < ids.index(("success", 1)) < ids.index(("success", 2))
            await client.close()
    run(scenario())


def test_pending_command_fails_when_the_link_drops():
    async def scenario():
        async with make_server() as server:
            client = new_client(server.port)
            await client.connect()
            waiting = asyncio.create_task(client.send_command("wait", {"seconds": 5}, timeout=10))
            await until(lambda: server.commands_run == 0 and len(server.received) == 1, what="the command")
            await server.drop_connections()
            with pytest.raises(PeerClosedError, match=r"'wait' \(sequence_id 1\)"):
                await waiting
            await client.close()
    run(scenario())


def test_close_fails_pending_commands():
    async def scenario():
        async with make_server() as server:
            server.answer_commands = False
            client = new_client(server.port)
            await client.connect()
            waiting = asyncio.create_task(client.send_command("add", {"a": 1, "b": 1}, timeout=10))
            await until(lambda: len(server.received) == 1, what="the command at the server")
            await client.close()
            with pytest.raises(LinkError, match="closed by the client"):
                await waiting
    run(scenario())


@pytest.mark.parametrize("timeout, error", [(0, ValueError), (-2, ValueError), ("1", TypeError)])
def test_send_command_rejects_bad_timeout(timeout, error):
    async def scenario():
        async with make_server() as server:
            client = new_client(server.port)
            await client.connect()
            with pytest.raises(error, match="timeout"):
                await client.send_command("nothing", timeout=timeout)
            assert client.last_sequence_id == -1
            await client.close()
    run(scenario())


# ---------------------------------------------------------------- server: events, telemetry, faults


def test_events_and_telemetry_reach_every_client():
    async def scenario():
        async with JsonLinesServer() as server:
            inboxes = [Inbox(), Inbox()]
            clients = [new_client(server.port, inbox) for inbox in inboxes]
            for client in clients:
                await client.connect()
            await server.wait_for_clients(2)
            assert await server.emit_event("inPosition", {"inPosition": True}) == 2
            assert await server.emit_telemetry("position", {"x": 1.5, "ring": [1, 2]}) == 2
            assert await server.send_message({"id": "custom", "v": 1}) == 2
            for inbox in inboxes:
                await until(lambda inbox=inbox: len(inbox.calls) == 3, what="three messages at each client")
                assert inbox.messages == [{"id": "evt_inPosition", "inPosition": True},
                                          {"id": "tel_position", "x": 1.5, "ring": [1, 2]},
                                          {"id": "custom", "v": 1}]
            for client in clients:
                await client.close()
    run(scenario())


def test_bare_ids_like_the_m2_controller():
    async def scenario():
        async with JsonLinesServer(prefix_ids=False) as server:
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await client.connect()
            await server.wait_for_clients(1)
            await server.emit_event("summaryState", {"summaryState": 2})
            await server.emit_telemetry("position", {"x": 0.0})
            await until(lambda: len(inbox.calls) == 2, what="two messages")
            assert inbox.ids() == ["summaryState", "position"]
            await client.close()
    run(scenario())


def test_drop_connections_fault_hook():
    async def scenario():
        async with JsonLinesServer() as server:
            clients = [new_client(server.port) for _ in range(2)]
            for client in clients:
                await client.connect()
            await server.wait_for_clients(2)
            assert await server.drop_connections() == 2
            for client in clients:
                assert isinstance(await asyncio.wait_for(client.wait_disconnected(), 5), PeerClosedError)
            assert server.client_count == 0
            assert await server.emit_event("nobody") == 0
            for client in clients:
                await client.close()
    run(scenario())


def test_server_skips_invalid_input_and_keeps_serving(caplog):
    async def scenario():
        async with make_server() as server:
            reader, writer = await asyncio.open_connection(LOOPBACK, server.port)
            try:
                writer.write(b'garbage\r\n[1]\r\n\xff\r\n{"id":"cmd_add","sequence_id":4,"a":1,"b":1}\r\n')
                await writer.drain()
                ack = json.loads(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
                done = json.loads(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
                assert ack == {"id": "ack", "sequence_id": 4}
                assert done == {"id": "success", "sequence_id": 4, "sum": 2}
                assert server.invalid_messages == 3
            finally:
                writer.close()
                await writer.wait_closed()

    with caplog.at_level(logging.WARNING, logger="socs_tcp.jsonlines"):
        run(scenario())
    assert any("'garbage'" in r.getMessage() for r in caplog.records)


def test_server_api_rejects_bad_input():
    async def scenario():
        server = JsonLinesServer()
        await server.close()  # before start: nothing to do
        with pytest.raises(ValueError, match="'has space'"):
            server.register_command("has space", print)
        with pytest.raises(TypeError, match="must be callable"):
            server.register_command("x", 5)
        with pytest.raises(ValueError, match="99999"):
            JsonLinesServer(port=99999)
        async with server:
            with pytest.raises(RuntimeError, match="already started"):
                await server.start()
            with pytest.raises(TypeError, match="dict"):
                await server.send_message([1])
            with pytest.raises(ValueError, match="'id'"):
                await server.emit_event("e", {"id": "other"})
            with pytest.raises(TypeError, match="bytes"):
                await server.send_raw("text")
            with pytest.raises(TimeoutError):
                await server.wait_for_clients(1, timeout=0.1)
            assert server.commands == []
        await server.close()  # twice: nothing to do
    run(scenario())


def test_server_close_disconnects_clients():
    async def scenario():
        server = await JsonLinesServer().start()
        port = server.port
        client = new_client(port)
        await client.connect()
        await server.wait_for_clients(1)
        await server.close()
        assert isinstance(await asyncio.wait_for(client.wait_disconnected(), 5), PeerClosedError)
        with pytest.raises(ConnectFailedError):
            await client.connect(timeout=2)
        await client.close()
    run(scenario())


# ---------------------------------------------------------------- the simulator


def test_simulator_model_in_process():
    async def scenario():
        now = [0.0]
        async with JsonLinesServer() as server:
            sim = ThermalControllerSimulator(server, setpoint=20.0, noise=0.0, seed=1, clock=lambda: now[0])
            assert sorted(server.commands) == ["fail", "getStatus", "setTemperature", "slow"]
            inbox = Inbox()
            client = new_client(server.port, inbox)
            await client.connect()
            await server.wait_for_clients(1)
            await client.send_command("setTemperature", {"value": 30})
            now[0] = 100.0
            status = await client.send_command("getStatus")
            assert status["setpoint"] == 30.0 and status["temperature"] == pytest.approx(30.0, abs=0.01)
            tel = sim.telemetry()
            assert tel["ring"] == [pytest.approx(30.0, abs=0.01)] * 3 and tel["intake"] < tel["exhaust"]
            for bad in ({"value": 500}, {"value": "hot"}, {}):
                with pytest.raises(CommandError, match="value"):
                    await client.send_command("setTemperature", bad)
            with pytest.raises(CommandError, match="requested failure"):
                await client.send_command("fail")
            with pytest.raises(CommandError, match="duration"):
                await client.send_command("slow", {"duration": -1})
            assert (await client.send_command("slow", {"duration": 0.01}))["duration"] == 0.01
            await until(lambda: {"id": "evt_setpointChanged", "setpoint": 30.0} in inbox.messages,
                        what="the setpoint event")
            await client.close()
        with pytest.raises(ValueError, match="telemetry_interval"):
            ThermalControllerSimulator(JsonLinesServer(), telemetry_interval=0)
    run(scenario())


@pytest.fixture
def simulator_process():
    """``python -m socs_tcp.simulators.jsonlines --port 0`` as a process; yields (process, port)."""
    proc = subprocess.Popen([sys.executable, "-m", "socs_tcp.simulators.jsonlines", "--port", "0",
                             "--telemetry-interval", "0.1", "--heartbeat-interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_simulator_process_serves_and_stops_cleanly(simulator_process):
    proc, port = simulator_process

    async def scenario():
        inbox = Inbox()
        client = new_client(port, inbox)
        await client.connect()
        try:
            await until(lambda: {"tel_temperature", "evt_heartbeat"} <= set(inbox.ids()), 10,
                        "telemetry and a heartbeat")
            tel = next(m for m in inbox.messages if m["id"] == "tel_temperature")
            assert set(tel) == {"id", "ring", "intake", "exhaust", "setpoint"} and len(tel["ring"]) == 3
            await client.send_command("setTemperature", {"value": 25.5})
            await until(lambda: any(m.get("setpoint") == 25.5 for m in inbox.messages
                                    if m["id"] == "tel_temperature"), 10, "the new setpoint in telemetry")
            with pytest.raises(CommandError) as info:
                await client.send_command("fail")
            assert info.value.status == "fail"
            with pytest.raises(CommandError) as info:
                await client.send_command("noSuchCommand")
            assert info.value.status == "noack"
        finally:
            await client.close()
    run(scenario())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_simulator_process_reports_a_port_in_use():
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "socs_tcp.simulators.jsonlines", "--port", str(port)],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "cannot start" in proc.stderr and proc.stdout == ""


def test_unused_sequence_generator_iterator_is_accepted():
    client = AsyncTCPClient(LOOPBACK, 5000, Inbox(), sequence_generator=itertools.count(10))
    assert client.last_sequence_id == -1 and repr(client).endswith("127.0.0.1:5000 not connected>")
