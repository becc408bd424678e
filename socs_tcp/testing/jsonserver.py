"""The JSON-lines test server: the device end of :class:`~socs_tcp.messages.jsonlines.AsyncTCPClient`.

:class:`JsonLinesServer` answers commands as a device does (``ack`` or
``noack`` at once, then ``success`` or ``fail``), publishes events and
telemetry, and has fault hooks (slow acks, swallowed commands, dropped or
reset connections, raw bytes) for tests and simulators.  It speaks the wire
format of :mod:`socs_tcp.core.jsonwire`, like the client.

It is test support, not a link a driver uses: it moved here from
:mod:`socs_tcp.jsonlines`, where ``from socs_tcp.jsonlines import
JsonLinesServer`` keeps working for one release.  It logs to the
``socs_tcp.jsonlines`` logger unless given another.
"""

import asyncio
import inspect
import logging
import socket
import struct
import time
from collections import deque

from ..core.checks import check_port, check_seconds, format_host_port
from ..core.jsonwire import (
    TERMINATOR,
    InvalidMessageError,
    JsonLinesWire,
    MsgType,
    check_line_ending,
    check_name,
    classify_id,
    encode_details,
)
from ..errors import ReadOverflowError

__all__ = ["JsonLinesServer"]

log = logging.getLogger("socs_tcp.jsonlines")  # where its records went before it moved here

_READ_CHUNK = 65536


class _Connection:
    __slots__ = ("name", "reader", "writer", "lock", "wire", "task")

    def __init__(self, name, reader, writer, wire):
        self.name = name
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.wire = wire
        self.task = None


class JsonLinesServer:
    """Asyncio server speaking the JSON-lines protocol, for tests and simulators.

    Commands (``cmd_<name>``) are answered as a device does: ``ack`` at once
    when ``name`` is registered (``noack`` otherwise), then ``success`` or
    ``fail`` once the handler has run.  Handlers run one at a time, in order
    of arrival, across all clients.

    Args:
        host (str): address to bind; loopback by default.
        port (int): TCP port; ``0`` picks a free one (see :attr:`port`).
        name (str): used in log messages.
        log (logging.Logger): logger (default: this module's).
        prefix_ids (bool): send events and telemetry as ``evt_<name>`` /
            ``tel_<name>`` (default); ``False`` sends the bare name, as the
            M2 cell controller does.
        max_message_size (int): longest message accepted from a client; a
            longer one closes that connection.
        line_ending (str): what the server ends its lines with: ``"\\r\\n"``
            (default, as the M2 cell controller) or ``"\\n"``.  Lines from
            clients may end with either.
        write_timeout (float): a client that does not take a message within
            this many seconds is disconnected.

    Attributes:
        ack_delay (float): fault hook: seconds to wait before each ``ack``
            or ``noack``.
        answer_commands (bool): fault hook: ``False`` makes the server
            swallow commands without any reply (a hung controller).
        received (collections.deque): the last 1000 messages received, as
            dicts, for tests to inspect.
        invalid_messages (int): received lines that were not JSON objects.

    Handlers are registered with :meth:`register_command`.  A handler takes
    the command's details (a dict without ``id`` and ``sequence_id``), may be
    a coroutine function, and may return a dict whose items are added to the
    ``success`` reply.  An exception it raises becomes
    ``{"id": "fail", "sequence_id": n, "reason": "<the exception text>"}``.
    """

    def __init__(self, host="127.0.0.1", port=0, *, name="jsonlines-server", log=None, prefix_ids=True,
                 max_message_size=1 << 20, write_timeout=5.0, line_ending=TERMINATOR):
        check_port(port, lowest=0)
        self.host = host
        self._requested_port = port
        self.name = name
        self.log = log if log is not None else globals()["log"]
        self.prefix_ids = bool(prefix_ids)
        self.max_message_size = max_message_size
        self.write_timeout = check_seconds(write_timeout, "write_timeout", positive=True)
        self.ack_delay = 0.0
        self.answer_commands = True
        self.received = deque(maxlen=1000)
        self.invalid_messages = 0
        self.commands_run = 0
        self.line_ending = check_line_ending(line_ending)
        self._encoder = JsonLinesWire(max_message_size, line_ending)
        self._handlers = {}
        self._server = None
        self._port = None
        self._connections = set()
        self._queue = None
        self._worker = None
        self._client_event = None

    def __repr__(self):
        where = format_host_port(self.host, self._port) if self._port else "not started"
        return f"<{type(self).__name__} {self.name} {where} clients={len(self._connections)}>"

    @property
    def port(self):
        """The bound port (``None`` before :meth:`start`)."""
        return self._port

    @property
    def address(self):
        """``(host, port)`` to connect to."""
        return (self.host, self._port)

    @property
    def client_count(self):
        """Number of connected clients."""
        return len(self._connections)

    @property
    def commands(self):
        """Names of the registered commands."""
        return sorted(self._handlers)

    def register_command(self, name, handler=None):
        """Register ``handler`` for command ``name``; usable as a decorator.

        Raises:
            TypeError: ``handler`` is not callable.
            ValueError: ``name`` is empty or has white space.
        """
        check_name(name, "command name")
        if handler is None:
            def decorate(func):
                self.register_command(name, func)
                return func
            return decorate
        if not callable(handler):
            raise TypeError(f"handler of command {name!r} must be callable, got {handler!r}")
        self._handlers[name] = handler
        return handler

    # ------------------------------------------------------------------ life cycle
    async def start(self):
        """Bind, listen and start accepting clients.  Returns ``self``.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        if self._server is not None:
            raise RuntimeError(f"{self!r} was already started")
        self._queue = asyncio.Queue()
        self._client_event = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self._requested_port,
                                                  limit=_READ_CHUNK)
        sockname = self._server.sockets[0].getsockname()
        self.host, self._port = sockname[0], sockname[1]
        self._worker = asyncio.create_task(self._run_commands(), name=f"{self.name}-commands")
        self.log.info("%s listening on %s", self.name, format_host_port(self.host, self._port))
        return self

    async def close(self):
        """Stop listening, disconnect every client and stop the command worker.

        Safe to call more than once and before :meth:`start`.
        """
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [conn.task for conn in self._connections if conn.task is not None]
        await self.drop_connections()
        if tasks:
            # closed transports end the handlers by themselves; cancel only a straggler
            done, stragglers = await asyncio.wait(tasks, timeout=2.0)
            for task in stragglers:
                task.cancel()
            if stragglers:
                await asyncio.wait(stragglers, timeout=2.0)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        try:
            await asyncio.wait_for(server.wait_closed(), 5.0)
        except (asyncio.TimeoutError, TimeoutError):
            self.log.warning("%s: listener did not close within 5 s", self.name)
        self.log.info("%s on %s stopped", self.name, format_host_port(self.host, self._port))

    async def __aenter__(self):
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    async def wait_for_clients(self, count=1, timeout=5.0):
        """Wait until at least ``count`` clients are connected.

        Raises:
            TimeoutError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while len(self._connections) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.name}: {len(self._connections)} of {count} clients after {timeout} s")
            self._client_event.clear()
            try:
                await asyncio.wait_for(self._client_event.wait(), remaining)
            except (asyncio.TimeoutError, TimeoutError):
                pass

    async def drop_connections(self, abort=False):
        """Fault hook: close every client connection now (the listener stays open).

        Args:
            abort (bool): reset the connections (RST) instead of closing them.

        Returns:
            int: how many connections were closed.
        """
        connections = list(self._connections)
        for conn in connections:
            await self._drop(conn, "dropped by the server", abort=abort)
        return len(connections)

    # ------------------------------------------------------------------ sending
    async def send_message(self, message):
        """Send one message (a dict) to every client.

        Returns:
            int: the number of clients it was sent to.

        Raises:
            TypeError, ValueError: ``message`` is not a JSON object.
        """
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, got {type(message).__name__} {message!r:.80}")
        data = self._encoder.encode_object(message)
        return await self.send_raw(data)

    async def send_raw(self, data):
        """Fault hook: send ``data`` (bytes, unframed) to every client as it is.

        Returns:
            int: the number of clients it was sent to.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, got {type(data).__name__} {data!r:.80}")
        sent = 0
        for conn in list(self._connections):
            if await self._send_to(conn, bytes(data)):
                sent += 1
        return sent

    async def emit_event(self, name, details=None):
        """Send event ``name`` (``evt_<name>``, or the bare name without ``prefix_ids``) to every client."""
        return await self._emit(MsgType.EVENT, name, details)

    async def emit_telemetry(self, name, details=None):
        """Send telemetry ``name`` (``tel_<name>``, or the bare name without ``prefix_ids``) to every client."""
        return await self._emit(MsgType.TELEMETRY, name, details)

    async def _emit(self, kind, name, details):
        check_name(name)
        body = encode_details(details, {"id"})
        msg_id = (kind.prefix if self.prefix_ids else "") + name
        data = self._encoder.encode({"id": msg_id}, body)
        return await self.send_raw(data)

    async def _reply(self, conn, reply_id, sequence_id, extra=None):
        body = "{}"
        if extra:
            try:
                body = encode_details(extra, {"id", "sequence_id"})
            except (TypeError, ValueError) as exc:
                self.log.error("%s: cannot send the result of a command: %s", self.name, exc)
        data = self._encoder.encode({"id": reply_id, "sequence_id": sequence_id}, body)
        return await self._send_to(conn, data)

    async def _send_to(self, conn, data):
        if conn not in self._connections:
            return False
        try:
            async with conn.lock:
                conn.writer.write(data)
                await asyncio.wait_for(conn.writer.drain(), self.write_timeout)
        except (asyncio.TimeoutError, TimeoutError):
            await self._drop(conn, f"did not read {len(data)} bytes within {self.write_timeout:g} s", abort=True)
            return False
        except OSError as exc:
            await self._drop(conn, f"send failed: {exc}")
            return False
        return True

    # ------------------------------------------------------------------ serving
    async def _serve(self, reader, writer):
        peer = writer.get_extra_info("peername")
        name = format_host_port(peer[0], peer[1]) if peer else "client"
        conn = _Connection(name, reader, writer, JsonLinesWire(self.max_message_size, self.line_ending))
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        self._client_event.set()
        self.log.info("%s: client %s connected (%d connected)", self.name, name, len(self._connections))
        reason = "closed by the client"
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    if conn.wire.pending:
                        reason += f", {conn.wire.pending} bytes of an unterminated message discarded"
                    break
                try:
                    conn.wire.feed(data)
                except ReadOverflowError as exc:
                    reason = str(exc)
                    await self._handle_messages(conn)
                    break
                await self._handle_messages(conn)
        except asyncio.CancelledError:
            # only close() cancels a handler, and only one that outlived its closed
            # transport; ending normally keeps asyncio's stream callback from logging it
            reason = "server closing"
        except OSError as exc:
            reason = f"receive failed: {exc}"
        finally:
            await self._drop(conn, reason)

    async def _handle_messages(self, conn):
        while True:
            try:
                message = conn.wire.next_message()
            except InvalidMessageError as exc:
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s: %s", self.name, conn.name, exc)
                continue
            if message is None:
                return
            self.received.append(message)
            kind, cmd = classify_id(message.get("id"))
            if kind is not MsgType.COMMAND:
                self.log.debug("%s: %s sent %.500r (not a command; ignored)", self.name, conn.name, message)
                continue
            await self._accept_command(conn, cmd, message)

    async def _accept_command(self, conn, cmd, message):
        sequence_id = message.get("sequence_id")
        if not self.answer_commands:
            self.log.info("%s: not answering command %r (sequence_id %r)", self.name, cmd, sequence_id)
            return
        if self.ack_delay > 0:
            await asyncio.sleep(self.ack_delay)
        handler = self._handlers.get(cmd)
        if handler is None or isinstance(sequence_id, bool) or not isinstance(sequence_id, int):
            why = "unknown command" if handler is None else "no integer sequence_id"
            self.log.info("%s: noack for %r from %s: %s", self.name, cmd, conn.name, why)
            await self._reply(conn, "noack", sequence_id)
            return
        if await self._reply(conn, "ack", sequence_id):
            details = {k: v for k, v in message.items() if k not in ("id", "sequence_id")}
            self._queue.put_nowait((conn, cmd, sequence_id, handler, details))

    async def _run_commands(self):
        while True:
            conn, cmd, sequence_id, handler, details = await self._queue.get()
            try:
                result = handler(details)
                if inspect.isawaitable(result):
                    result = await result
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                self.log.info("%s: command %r (sequence_id %s) failed: %s", self.name, cmd, sequence_id, reason)
                await self._reply(conn, "fail", sequence_id, {"reason": reason})
            else:
                self.commands_run += 1
                extra = result if isinstance(result, dict) else None
                await self._reply(conn, "success", sequence_id, extra)

    async def _drop(self, conn, reason, abort=False):
        # closing the transport ends the connection's handler: its read returns end of stream
        if conn not in self._connections:
            return
        self._connections.discard(conn)
        if abort:
            # a zero linger time makes the close a reset (RST), even with nothing left to send
            sock = conn.writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
            conn.writer.transport.abort()
        else:
            conn.writer.close()
        try:
            await asyncio.wait_for(conn.writer.wait_closed(), 2.0)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            pass
        self.log.info("%s: client %s disconnected: %s (%d connected)", self.name, conn.name, reason,
                      len(self._connections))
