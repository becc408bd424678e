"""The asyncio JSON-lines client of ``ts_m2com`` devices.

Wire format
    One JSON object per line, UTF-8: the protocol of the Rubin Observatory M2
    cell controller (``ts_m2com``), described in :mod:`socs_tcp.core.jsonwire`.
    Every message has an ``id``: ``cmd_<name>`` (with a ``sequence_id``),
    ``evt_<name>``, ``tel_<name>``, or one of the replies ``ack``, ``noack``,
    ``success``, ``fail``.  Received lines may end with ``"\\r\\n"`` or
    ``"\\n"``; the client writes ``"\\r\\n"`` (``line_ending="\\n"`` for
    peers that want ``"\\n"``).  A line that is not a JSON object is logged
    and skipped; only that line is lost.

Layers
    The wire format (ids, encoding, line splitting, bounded buffers) is
    :mod:`socs_tcp.core.jsonwire` on :class:`~socs_tcp.core.framing.MessageFramer`;
    the sockets are asyncio streams; connection failures are the
    :class:`~socs_tcp.errors.LinkError` subclasses of the rest of the library.

:class:`AsyncTCPClient` keeps the constructor, methods and attributes of
``lsst.ts.m2com.TcpClient`` (``connect``, ``close``, ``write_message``,
``last_sequence_id``, ``timeout``, a coroutine called with every received
message) and adds :meth:`AsyncTCPClient.send_command`, which waits for a
command's final status.  The other end, for tests and simulators, is
:class:`socs_tcp.testing.jsonserver.JsonLinesServer`;
``from socs_tcp.jsonlines import JsonLinesServer`` still works, for one
release.
"""

import asyncio
import inspect
import itertools
import logging
import os
import socket
import struct
import time

from ..core.checks import check_host, check_port, check_seconds, format_host_port
from ..core.deadline import Deadline
from ..core.jsonwire import (
    REPLY_IDS,
    TERMINATOR,
    InvalidMessageError,
    JsonLinesWire,
    MsgType,
    check_line_ending,
    check_name,
    classify_id,
    coerce_type,
    encode_details,
    join_message,
    reply_reason,
)
from ..core.stats import LinkStats
from ..errors import (
    ConnectFailedError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    PeerClosedError,
    ReadOverflowError,
)

__all__ = [
    "MsgType", "AsyncTCPClient", "CommandError", "CommandTimeoutError", "TERMINATOR", "REPLY_IDS", "classify_id",
    "JsonLinesServer",  # noqa: F822 (a lazy re-export: see __getattr__)
]

log = logging.getLogger("socs_tcp.jsonlines")  # the name the docs promise

_READ_CHUNK = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection
_TEXT_IN_LOG = 500  # characters of a message quoted in the log

#: Default ``close_grace`` of :class:`AsyncTCPClient`: how long :meth:`~AsyncTCPClient.close`
#: waits for an orderly close before it resets the connection, seconds.
CLOSE_GRACE = 0.5


def __getattr__(name):
    # the test server moved to socs_tcp.testing.jsonserver; this name is kept for one release
    if name == "JsonLinesServer":
        from ..testing.jsonserver import JsonLinesServer
        return JsonLinesServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def _call_hook(hook, *args):
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


class CommandError(RuntimeError):
    """The device refused (``noack``) or failed (``fail``) a command.

    Not a :class:`ConnectionError`: the link is fine, the device said no.

    Attributes:
        name (str): the command name (without ``cmd_``).
        sequence_id (int): the command's sequence id.
        status (str): ``"noack"`` or ``"fail"``.
        reply (dict): the reply message as received.
    """

    def __init__(self, message, name, sequence_id, status, reply):
        super().__init__(message)
        self.name = name
        self.sequence_id = sequence_id
        self.status = status
        self.reply = reply


class CommandTimeoutError(LinkTimeoutError):
    """A command's final status did not arrive before the deadline.

    Attributes:
        name (str): the command name.
        sequence_id (int): its sequence id.
        acked (bool): whether the ``ack`` had arrived.
    """

    def __init__(self, message, name, sequence_id, acked):
        super().__init__(message)
        self.name = name
        self.sequence_id = sequence_id
        self.acked = acked


class _Pending:
    """A command waiting for its final status, with the one deadline of the whole operation."""

    __slots__ = ("name", "sequence_id", "future", "deadline", "acked")

    def __init__(self, name, sequence_id, future, deadline):
        self.name = name
        self.sequence_id = sequence_id
        self.future = future
        self.deadline = deadline
        self.acked = False


class AsyncTCPClient:
    """Asyncio client of a JSON-lines device (the ``ts_m2com`` ``TcpClient`` contract).

    Args:
        host (str): device host name or address.
        port (int): device TCP port.
        callback_process_message (callable): coroutine function called as
            ``await callback_process_message(*args, message=msg)`` for every
            received message (a ``dict``), in order of arrival; the next
            message is read only once it returns.  A plain function is
            accepted too.  Exceptions it raises are logged, not propagated.
        *args: leading positional arguments of ``callback_process_message``.
        log (logging.Logger): logger to use (default: this module's).
        sequence_generator (iterator): source of command sequence ids
            (default: ``1, 2, 3, ...``).
        name (str): name used in log messages and errors.
        check_message_rate (bool): log the received message rate at
            ``DEBUG`` level once per ``message_rate_interval``.
        timeout (float): read timeout in seconds: the receive loop waits at
            most this long for data before it wakes up for its periodic work
            (the message-rate report); it does not close an idle link.
        on_disconnect (callable): called as ``on_disconnect(client, error)``
            (and awaited if it returns an awaitable) when the connection ends
            for any reason other than :meth:`close`: the device closed it,
            it was reset, or the device overflowed the receive buffer.
            ``error`` is a :class:`~socs_tcp.errors.LinkError` saying why.
        max_message_size (int): the longest message accepted, in bytes; a
            longer one closes the connection with
            :class:`~socs_tcp.errors.ReadOverflowError`.
        message_rate_interval (float): seconds between message-rate reports.
        command_timeout (float): default deadline of :meth:`send_command`.
        write_timeout (float): how long a write may wait for the socket to
            accept the data (a device that stops reading) before
            :class:`~socs_tcp.errors.LinkTimeoutError`.
        line_ending (str): what the client ends its lines with: ``"\\r\\n"``
            (default, as ``ts_m2com``) or ``"\\n"``.  Lines from the device
            may end with either.
        close_grace (float): how long :meth:`close` waits for an orderly
            close (unsent data taken, then the end of stream) before it resets
            the connection, seconds (default :data:`CLOSE_GRACE`, 0.5 s).

    Attributes:
        log (logging.Logger): the logger.
        timeout (float): read timeout in seconds (see above).
        last_sequence_id (int): sequence id of the last command written
            (``-1`` before the first).
        message_rate (float): the last measured rate, messages per second
            (``None`` until measured; only with ``check_message_rate``).
        disconnect_reason (LinkError): why the last connection ended, or
            ``None`` while connected or after :meth:`close`.
        stats (socs_tcp.core.stats.LinkStats): byte, connect and command counters
            (commands sent with :meth:`send_command` count as transactions,
            with their round-trip latency).

    The client is used from one event loop.  Code in other threads submits
    coroutines with :func:`asyncio.run_coroutine_threadsafe`.
    """

    def __init__(self, host, port, callback_process_message, *args, log=None, sequence_generator=None,
                 name="tcp-client", check_message_rate=False, timeout=1.0, on_disconnect=None,
                 max_message_size=1 << 20, message_rate_interval=1.0, command_timeout=10.0, write_timeout=10.0,
                 line_ending=TERMINATOR, close_grace=CLOSE_GRACE):
        host = check_host(host)
        check_port(port)
        if not callable(callback_process_message):
            raise TypeError(f"callback_process_message must be callable, got {callback_process_message!r}")
        if on_disconnect is not None and not callable(on_disconnect):
            raise TypeError(f"on_disconnect must be callable or None, got {on_disconnect!r}")
        if sequence_generator is not None and not hasattr(sequence_generator, "__next__"):
            raise TypeError(f"sequence_generator must be an iterator, got {sequence_generator!r}")
        self.host = host
        self.port = port
        self.name = str(name)
        self.log = log if log is not None else globals()["log"]
        self.timeout = check_seconds(timeout, "timeout", positive=True)
        self.check_message_rate = bool(check_message_rate)
        self.message_rate_interval = check_seconds(message_rate_interval, "message_rate_interval", positive=True)
        self.command_timeout = check_seconds(command_timeout, "command_timeout", positive=True)
        self.write_timeout = check_seconds(write_timeout, "write_timeout", positive=True)
        self.close_grace = check_seconds(close_grace, "close_grace")
        self.on_disconnect = on_disconnect
        self.last_sequence_id = -1
        self.message_rate = None
        self.disconnect_reason = None
        self.stats = LinkStats()
        self.messages_received = 0
        self.messages_sent = 0
        self.invalid_messages = 0
        self._callback = callback_process_message
        self._args = args
        self._sequence = sequence_generator if sequence_generator is not None else itertools.count(1)
        self.line_ending = check_line_ending(line_ending)
        self._wire = JsonLinesWire(max_message_size, line_ending)
        self._reader = None
        self._writer = None
        self._read_task = None
        self._released = None
        self._connect_lock = asyncio.Lock()
        self._disconnected = None
        self._closing = False
        self._pending = {}
        self._rate_count = 0
        self._rate_start = time.monotonic()

    def __repr__(self):
        state = "connected" if self.connected else "not connected"
        return f"<{type(self).__name__} {self.name} {self.address} {state}>"

    @property
    def address(self):
        """``"host:port"`` of the device."""
        return format_host_port(self.host, self.port)

    @property
    def connected(self):
        """True while the connection is open and its receive loop runs."""
        return (self._writer is not None and not self._writer.is_closing()
                and self._read_task is not None and not self._read_task.done())

    # ------------------------------------------------------------------ life cycle
    async def connect(self, timeout=10.0):
        """Connect to the device (does nothing if already connected).

        Args:
            timeout (float): deadline of the connection attempt, seconds.

        Raises:
            ConnectFailedError: refused, unreachable, or not connected within
                ``timeout``; the message names ``host:port`` and the reason.
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is not a positive, finite number.
        """
        timeout = check_seconds(timeout, "timeout", positive=True)
        # one attempt at a time: a second caller waits, then finds the link up
        async with self._connect_lock:
            if not self.connected:
                await self._open(timeout)

    async def _open(self, timeout):
        await self._release()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, limit=_READ_CHUNK), timeout)
        except (asyncio.TimeoutError, TimeoutError):
            self.stats.connect_failures += 1
            raise ConnectFailedError(f"{self.name}: cannot connect to {self.address}: "
                                     f"timed out after {timeout:g} s") from None
        except OSError as exc:
            self.stats.connect_failures += 1
            # asyncio puts "Connect call failed (addr)" in strerror; the errno text says why
            reason = os.strerror(exc.errno) if exc.errno else (str(exc) or type(exc).__name__)
            raise ConnectFailedError(f"{self.name}: cannot connect to {self.address}: {reason}") from exc
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        dropped = self._wire.reset()
        if dropped:
            self.log.info("%s: discarded %d bytes left from the previous connection", self.name, dropped)
        self._reader, self._writer = reader, writer
        loop = asyncio.get_running_loop()
        # resolved, with the error a waiting write raises, the moment this connection is let go
        self._released = loop.create_future()
        self._disconnected = loop.create_future()
        self._closing = False
        self.disconnect_reason = None
        self.stats.connects += 1
        self._rate_count = 0
        self._rate_start = time.monotonic()
        self._read_task = asyncio.create_task(self._read_loop(reader), name=f"{self.name}-read")
        self.log.info("%s: connected to %s", self.name, self.address)

    async def close(self):
        """Stop the receive loop and close the connection, at once.

        The close is orderly when it can be: what was written is sent, then an
        end of stream.  If the device does not take the unsent data (it has
        stopped reading) within ``close_grace`` seconds (0.5 s by default),
        the connection is reset instead, so the socket is released and the
        device sees the end of the connection either way.

        A :meth:`write_message` (or :meth:`send_command`) blocked on a device
        that stopped reading wakes at once with
        :class:`~socs_tcp.errors.LinkClosedError`; commands waiting in
        :meth:`send_command` fail with it too.  ``on_disconnect`` is not
        called.  Safe to call without a connection and more than once.
        """
        self._closing = True
        self.disconnect_reason = None
        was_open = self._writer is not None
        error = LinkClosedError(f"{self.name}: connection to {self.address} closed by the client")
        await self._release(error)
        self._fail_pending(error)
        if was_open:
            self.log.info("%s: connection to %s closed", self.name, self.address)

    async def _release(self, error=None):
        """Cancel the receive loop and close the socket, if any; a waiting write raises ``error``."""
        task, writer, released = self._read_task, self._writer, self._released
        self._read_task = self._reader = self._writer = self._released = None
        if released is not None and not released.done():
            released.set_result(error or LinkClosedError(f"{self.name}: connection to {self.address} closed"))
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            await self._shut(writer)
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(self.disconnect_reason)

    async def _shut(self, writer):
        """Close ``writer``'s connection: orderly within ``close_grace``, then by a reset."""
        transport = writer.transport
        try:
            if not transport.is_closing() and writer.can_write_eof():
                writer.write_eof()
        except OSError:
            pass
        writer.close()
        # waited on with asyncio.wait, which does not cancel it: cancelling wait_closed() would
        # cancel the protocol's own close future, and a second wait would fail at once
        closed = asyncio.ensure_future(writer.wait_closed())
        await asyncio.wait((closed,), timeout=self.close_grace)
        if not closed.done():
            self.log.info("%s: %s did not take the last %d bytes within close_grace=%g s; resetting the connection",
                          self.name, self.address, transport.get_write_buffer_size(), self.close_grace)
            # the data the device does not read would keep the socket open for ever: reset it.
            # Closing alone is not enough: the kernel would still try to send that data, and the
            # FIN after it, to a device that reads nothing; a zero linger time sends a reset.
            sock = writer.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                except OSError:
                    pass
            transport.abort()
            await asyncio.wait((closed,), timeout=1.0)
        if closed.done():
            if not closed.cancelled():
                closed.exception()  # an error of the closing connection is of no interest here
        else:
            self.log.warning("%s: the connection to %s did not close after a reset", self.name, self.address)

    async def wait_disconnected(self):
        """Wait until the current connection ends; return why.

        Returns:
            LinkError or None: the reason of an unexpected loss, ``None``
            after :meth:`close` (or when there is no connection).
        """
        if self._disconnected is None:
            return self.disconnect_reason
        return await asyncio.shield(self._disconnected)

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc_info):
        await self.close()

    # ------------------------------------------------------------------ writing
    def _next_sequence_id(self):
        try:
            value = next(self._sequence)
        except StopIteration:
            raise RuntimeError(f"{self.name}: the sequence generator is exhausted") from None
        self.last_sequence_id = value
        return value

    async def write_message(self, msg_type, msg_name, msg_details=None, comp_name=None):
        """Write one message to the device.

        Args:
            msg_type (MsgType): command, event or telemetry (the strings
                ``"command"``, ``"event"``, ``"telemetry"`` are accepted too).
            msg_name (str): the name; the ``id`` becomes ``cmd_<name>``,
                ``evt_<name>`` or ``tel_<name>``.
            msg_details (dict): the details (parameters or values).
            comp_name (str): for an event or telemetry, the component it
                concerns, sent as ``compName``.

        Returns:
            int or None: the ``sequence_id`` given to a command (also in
            :attr:`last_sequence_id`), ``None`` for other types.

        Raises:
            ValueError: unsupported ``msg_type``; ``msg_details`` already has
                ``id`` (or ``sequence_id`` for a command, ``compName`` with
                ``comp_name``); ``comp_name`` given for a command; an empty
                name; a value JSON cannot carry (NaN, infinity).
            TypeError: details that are not a dict or not JSON-serialisable.
            RuntimeError: not connected.
            LinkTimeoutError: the device did not take the message within
                ``write_timeout`` (it has stopped reading).
            LinkClosedError: :meth:`close` was called while the write waited.
            PeerClosedError: the connection was lost while writing.

        Nothing is written, and no sequence id is used, when an error is
        raised before writing.
        """
        return await self._write(msg_type, msg_name, msg_details, comp_name)

    async def _write(self, msg_type, msg_name, msg_details=None, comp_name=None, pending=None):
        msg_type = coerce_type(msg_type)
        check_name(msg_name)
        reserved = {"id"}
        if msg_type is MsgType.COMMAND:
            reserved.add("sequence_id")
            if comp_name is not None:
                raise ValueError(f"comp_name applies to events and telemetry, not to command {msg_name!r}")
        elif comp_name is not None:
            check_name(comp_name, "comp_name")
            reserved.add("compName")
        body = encode_details(msg_details, reserved)
        header = {"id": msg_type.prefix + msg_name}
        # checked before a sequence id is taken; 32 bytes leave room for the sequence_id field
        size = len(join_message(header, body).encode("utf-8")) + len(self.line_ending) + 32
        if size > self._wire.max_size:
            raise ValueError(f"message {header['id']!r} of about {size} bytes exceeds max_message_size="
                             f"{self._wire.max_size}")
        if not self.connected:
            raise RuntimeError(f"{self.name}: not connected to {self.address}")
        sequence_id = None
        if msg_type is MsgType.COMMAND:
            sequence_id = self._next_sequence_id()
            header["sequence_id"] = sequence_id
        elif comp_name is not None:
            header["compName"] = comp_name
        data = self._wire.encode(header, body)
        if pending is not None:
            pending.sequence_id = sequence_id
            self._pending[sequence_id] = pending
        # the write's own limit, and for a command no more than what is left of its deadline
        await self._send(data, self.write_timeout if pending is None else pending.deadline.bound(self.write_timeout))
        return sequence_id

    @property
    def pending_write_bytes(self):
        """Bytes written but not yet taken by the socket (``0`` when not
        connected): they grow when the device stops reading."""
        writer = self._writer
        return 0 if writer is None else writer.transport.get_write_buffer_size()

    async def _send(self, data, timeout):
        """Write ``data`` (one whole message) and wait up to ``timeout`` for the socket to take it.

        Concurrent writes never interleave: the transport queues each message
        whole, in order.
        """
        writer, released = self._writer, self._released
        if writer is None or writer.is_closing() or released is None or released.done():
            raise PeerClosedError(f"{self.name}: connection to {self.address} is closed")
        writer.write(data)
        transport = writer.transport
        if transport.get_write_buffer_size() > transport.get_write_buffer_limits()[0]:
            await self._drain(writer, released, len(data), timeout)
        self.stats.bytes_out += len(data)
        self.messages_sent += 1
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("%s -> %s", self.name, data[:_TEXT_IN_LOG].decode("utf-8", "replace").rstrip())

    async def _drain(self, writer, released, size, timeout):
        """Wait until the socket takes the queued data, the deadline passes, or the connection is let go."""
        drain = asyncio.ensure_future(writer.drain())
        try:
            await asyncio.wait((drain, released), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not drain.done():
                drain.cancel()
        failure = None if not drain.done() or drain.cancelled() else drain.exception()
        if released.done():
            error = released.result()
            raise type(error)(f"{error}; {size} bytes of a message may not have been sent")
        if not drain.done():
            raise LinkTimeoutError(f"{self.name}: {self.address} did not take {size} bytes within {timeout:g} s")
        if failure is not None:
            if isinstance(failure, OSError):
                raise PeerClosedError(f"{self.name}: connection to {self.address} lost while writing: "
                                      f"{failure}") from failure
            raise failure

    async def send_command(self, msg_name, msg_details=None, timeout=None):
        """Write a command and wait for its final status.

        The device answers ``ack`` (accepted) then ``success`` or ``fail``,
        or ``noack`` (refused); replies are matched by ``sequence_id``.  Every
        reply is also passed to ``callback_process_message``.

        Args:
            msg_name (str): the command name (without ``cmd_``).
            msg_details (dict): its parameters.
            timeout (float): deadline of the whole command, seconds
                (default: ``command_timeout``): the write (at most
                ``write_timeout`` of it) and the wait for the final status.

        Returns:
            dict: the ``success`` reply.

        Raises:
            CommandError: ``noack`` or ``fail``.
            CommandTimeoutError: no final status in time, or the device did
                not even take the command in time (its ``acked`` says whether
                the ``ack`` came); a :class:`LinkTimeoutError`.
            LinkTimeoutError: the device did not take the command within
                ``write_timeout``, when that is shorter than ``timeout``.
            LinkError: the connection ended while waiting.
            ValueError, TypeError, RuntimeError: as :meth:`write_message`;
                also a ``timeout`` that is not a number (:class:`TypeError`)
                or not positive (:class:`ValueError`).
        """
        if timeout is not None:
            timeout = check_seconds(timeout, "timeout", positive=True)
        # one deadline for the whole command: the write and the wait for its final status
        deadline = Deadline(self.command_timeout if timeout is None else timeout, clock=time.perf_counter)
        pending = _Pending(msg_name, None, asyncio.get_running_loop().create_future(), deadline)
        try:
            await self._write(MsgType.COMMAND, msg_name, msg_details, pending=pending)
        except LinkTimeoutError:
            self._pending.pop(pending.sequence_id, None)
            if not deadline.expired:
                raise  # write_timeout, shorter than what was left of the command's timeout
            self.stats.failure(timeout=True)
            raise CommandTimeoutError(f"command {msg_name!r} (sequence_id {pending.sequence_id}): the device did not "
                                      f"take it within {deadline.timeout:g} s", msg_name, pending.sequence_id,
                                      False) from None
        except BaseException:
            if pending.sequence_id is not None:
                self._pending.pop(pending.sequence_id, None)
            raise
        sequence_id = pending.sequence_id
        try:
            reply = await asyncio.wait_for(asyncio.shield(pending.future), deadline.remaining())
        except (asyncio.TimeoutError, TimeoutError):
            self._pending.pop(sequence_id, None)
            self.stats.failure(timeout=True)
            what = "acknowledged but no final status" if pending.acked else "no acknowledgement"
            raise CommandTimeoutError(f"command {msg_name!r} (sequence_id {sequence_id}): {what} "
                                      f"within {deadline.timeout:g} s", msg_name, sequence_id, pending.acked) from None
        except CommandError:
            self.stats.failure()
            raise
        finally:
            self._pending.pop(sequence_id, None)
        self.stats.success(deadline.elapsed())
        return reply

    def _match_reply(self, message):
        reply_id = message.get("id")
        if reply_id not in REPLY_IDS:
            return
        sequence_id = message.get("sequence_id")
        pending = self._pending.get(sequence_id) if isinstance(sequence_id, int) else None
        if pending is None:
            if self._pending or self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("%s: %s for sequence_id %r, which no command is waiting for",
                               self.name, reply_id, sequence_id)
            return
        if reply_id == "ack":
            pending.acked = True
            return
        del self._pending[sequence_id]
        if pending.future.done():
            return
        if reply_id == "success":
            pending.future.set_result(message)
            return
        if reply_id == "noack":
            text = f"command {pending.name!r} (sequence_id {sequence_id}) was not acknowledged by the device (noack)"
        else:
            text = f"command {pending.name!r} (sequence_id {sequence_id}) failed on the device"
        pending.future.set_exception(CommandError(text + reply_reason(message), pending.name, sequence_id,
                                                  reply_id, message))

    def _fail_pending(self, error):
        pending, self._pending = self._pending, {}
        for item in pending.values():
            if not item.future.done():
                item.future.set_exception(type(error)(
                    f"{error} while command {item.name!r} (sequence_id {item.sequence_id}) was waiting"))

    # ------------------------------------------------------------------ reading
    async def _read_loop(self, reader):
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(_READ_CHUNK), self.timeout)
                except (asyncio.TimeoutError, TimeoutError):
                    self._tick_rate()
                    continue
                if not data:
                    pending = self._wire.pending
                    raise PeerClosedError(
                        f"{self.name}: {self.address} closed the connection"
                        + (f"; {pending} bytes of an unterminated message discarded" if pending else ""))
                self.stats.bytes_in += len(data)
                overflow = None
                try:
                    self._wire.feed(data)
                except ReadOverflowError as exc:
                    overflow = exc
                await self._deliver()
                self._tick_rate()
                if overflow is not None:
                    raise ReadOverflowError(f"{self.name}: {overflow}")
        except asyncio.CancelledError:
            raise
        except LinkError as exc:
            await self._lost(exc)
        except OSError as exc:
            await self._lost(PeerClosedError(f"{self.name}: connection to {self.address} lost: {exc}"))

    async def _deliver(self):
        wire = self._wire
        while True:
            try:
                message = wire.next_message()
            except InvalidMessageError as exc:
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s: %s", self.name, self.address, exc)
                continue
            if message is None:
                return
            self.messages_received += 1
            self._rate_count += 1
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("%s <- %.500r", self.name, message)
            self._match_reply(message)
            try:
                await self._run_callback(message)
            except Exception:
                self.log.exception("%s: callback_process_message failed on %.500r", self.name, message)

    async def _run_callback(self, message):
        result = self._callback(*self._args, message=message)
        if inspect.isawaitable(result):
            await result

    def _tick_rate(self):
        if not self.check_message_rate:
            return
        now = time.monotonic()
        elapsed = now - self._rate_start
        if elapsed >= self.message_rate_interval:
            self.message_rate = self._rate_count / elapsed
            self.log.debug("%s: %.1f messages/s from %s", self.name, self.message_rate, self.address)
            self._rate_count = 0
            self._rate_start = now

    async def _lost(self, error):
        if self._closing:
            return
        self.disconnect_reason = error
        self.stats.failure()
        self.log.warning("%s: connection lost: %s", self.name, error)
        await self._release(error)
        self._fail_pending(error)
        if self.on_disconnect is not None:
            try:
                await _call_hook(self.on_disconnect, self, error)
            except Exception:
                self.log.exception("%s: on_disconnect hook failed", self.name)

    def snapshot(self):
        """Counters as a JSON-safe dict: :meth:`LinkStats.snapshot` plus message counts."""
        data = self.stats.snapshot(self.connected)
        data.update({"messages_received": self.messages_received, "messages_sent": self.messages_sent,
                     "invalid_messages": self.invalid_messages, "message_rate": self.message_rate,
                     "pending_commands": len(self._pending)})
        return data


