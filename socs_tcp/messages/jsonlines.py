"""JSON-lines message links over TCP with asyncio: a client and a matching server.

Wire format
    One JSON object per message, UTF-8, terminated by ``"\\r\\n"``; this is
    the protocol of the Rubin Observatory M2 cell controller (``ts_m2com``).
    Every message has an ``id``:

    * ``cmd_<name>`` -- a command, with an integer ``sequence_id`` that the
      sender increments per command;
    * ``evt_<name>`` / ``tel_<name>`` -- an event / telemetry, optionally
      with ``compName`` naming the component it concerns (controllers often
      publish their own events and telemetry under the bare name, e.g.
      ``"inPosition"``);
    * ``ack`` / ``noack`` -- the receiver accepted the command (it is known
      and well formed) or refused it, with the command's ``sequence_id``;
    * ``success`` / ``fail`` -- the final status of an accepted command.

    Any other key of the object is a detail (parameter or value) of the
    message: ``{"id": "cmd_move", "sequence_id": 3, "x": 0.1}``.

Layers
    The framing (split and merged reads, multi-byte characters split across
    reads, bounded buffers) is :class:`~socs_tcp.core.framing.MessageFramer`; the
    sockets are asyncio streams; connection failures are the
    :class:`~socs_tcp.errors.LinkError` subclasses of the rest of the library.

:class:`AsyncTCPClient` keeps the constructor, methods and attributes of
``lsst.ts.m2com.TcpClient`` (``connect``, ``close``, ``write_message``,
``last_sequence_id``, ``timeout``, a coroutine called with every received
message) and adds :meth:`AsyncTCPClient.send_command`, which waits for a
command's final status.  :class:`JsonLinesServer` is the other end, for tests
and simulators, with fault hooks.
"""

import asyncio
import enum
import inspect
import itertools
import json
import logging
import os
import socket
import time
from collections import deque

from ..core.checks import check_host, check_port, check_seconds, format_host_port
from ..core.framing import FrameDecodeError, MessageFramer
from ..core.stats import LinkStats
from ..errors import ConnectFailedError, LinkError, LinkTimeoutError, PeerClosedError, ReadOverflowError

__all__ = [
    "MsgType", "AsyncTCPClient", "JsonLinesServer", "CommandError", "CommandTimeoutError",
    "TERMINATOR", "REPLY_IDS", "classify_id",
]

log = logging.getLogger("socs_tcp.jsonlines")  # the name the docs promise

#: End of every message on the wire.
TERMINATOR = "\r\n"

#: Ids of the replies to a command, in the order they can arrive.
REPLY_IDS = ("ack", "noack", "success", "fail")

_READ_CHUNK = 65536
_TEXT_IN_LOG = 500  # characters of a bad message quoted in the log


class MsgType(enum.Enum):
    """Kinds of message a client writes; the value names the kind, :attr:`prefix` starts the ``id``.

    The ``ts_m2com`` spellings ``MsgType.Command``, ``MsgType.Event`` and
    ``MsgType.Telemetry`` are aliases of the upper-case members.
    """

    #: Commands, ``cmd_<name>`` with a ``sequence_id``, answered by the device.
    COMMAND = "command"
    #: Events, ``evt_<name>``.
    EVENT = "event"
    #: Telemetry, ``tel_<name>``.
    TELEMETRY = "telemetry"
    Command = "command"
    Event = "event"
    Telemetry = "telemetry"

    @property
    def prefix(self):
        """``"cmd_"``, ``"evt_"`` or ``"tel_"``."""
        return _PREFIXES[self]


_PREFIXES = {MsgType.COMMAND: "cmd_", MsgType.EVENT: "evt_", MsgType.TELEMETRY: "tel_"}


def classify_id(msg_id):
    """Split a message ``id`` into its kind and name.

    Returns:
        tuple: ``(MsgType, name)`` for a prefixed id (``"tel_position"`` ->
        ``(MsgType.TELEMETRY, "position")``), ``("reply", msg_id)`` for one of
        :data:`REPLY_IDS`, and ``(None, msg_id)`` for anything else (a bare
        event or telemetry name, whose kind the protocol leaves to the
        reader).
    """
    if not isinstance(msg_id, str):
        return None, msg_id
    if msg_id in REPLY_IDS:
        return "reply", msg_id
    for kind, prefix in _PREFIXES.items():
        if msg_id.startswith(prefix) and len(msg_id) > len(prefix):
            return kind, msg_id[len(prefix):]
    return None, msg_id


def _coerce_type(msg_type):
    if isinstance(msg_type, MsgType):
        return msg_type
    if isinstance(msg_type, str):
        try:
            return MsgType(msg_type.lower())
        except ValueError:
            pass
    raise ValueError(f"message type {msg_type!r} is not supported; use one of "
                     f"{', '.join(repr(m.value) for m in (MsgType.COMMAND, MsgType.EVENT, MsgType.TELEMETRY))}")


def _check_name(name, what="message name"):
    if not isinstance(name, str):
        raise TypeError(f"{what} must be str, got {type(name).__name__} {name!r}")
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"{what} must be a non-empty string without white space or control characters, got {name!r}")
    return name


def _dumps(obj):
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _encode_details(details, reserved):
    """Validate message details and return them as JSON text (an object)."""
    if details is None:
        return "{}"
    if not isinstance(details, dict):
        raise TypeError(f"msg_details must be a dict or None, got {type(details).__name__} {details!r:.80}")
    for key in details:
        if not isinstance(key, str):
            raise TypeError(f"msg_details keys must be str, got {type(key).__name__} {key!r}")
        if key in reserved:
            raise ValueError(f"msg_details already has the key {key!r}, which the message header sets")
    try:
        return _dumps(details)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"msg_details cannot be sent as JSON: {exc}") from None


def _join(header, body_json):
    """One JSON object from a header dict and the JSON text of the details (header keys first)."""
    head = _dumps(header)
    if body_json == "{}":
        return head
    return head[:-1] + "," + body_json[1:]


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
    __slots__ = ("name", "sequence_id", "future", "started", "acked")

    def __init__(self, name, sequence_id, future):
        self.name = name
        self.sequence_id = sequence_id
        self.future = future
        self.started = time.perf_counter()
        self.acked = False


def _reply_reason(reply):
    extra = {k: v for k, v in reply.items() if k not in ("id", "sequence_id")}
    if not extra:
        return ""
    for key in ("reason", "message", "error"):
        if isinstance(extra.get(key), str) and len(extra) == 1:
            return f": {extra[key]}"
    try:
        return f": {_dumps(extra)}"
    except ValueError:
        return f": {extra!r}"


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
                 max_message_size=1 << 20, message_rate_interval=1.0, command_timeout=10.0, write_timeout=10.0):
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
        self._framer = MessageFramer(TERMINATOR, "utf-8", max_message_size)
        self._reader = None
        self._writer = None
        self._read_task = None
        self._write_lock = None
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
        dropped = self._framer.reset()
        if dropped:
            self.log.info("%s: discarded %d bytes left from the previous connection", self.name, dropped)
        self._reader, self._writer = reader, writer
        self._write_lock = asyncio.Lock()
        self._disconnected = asyncio.get_running_loop().create_future()
        self._closing = False
        self.disconnect_reason = None
        self.stats.connects += 1
        self._rate_count = 0
        self._rate_start = time.monotonic()
        self._read_task = asyncio.create_task(self._read_loop(reader), name=f"{self.name}-read")
        self.log.info("%s: connected to %s", self.name, self.address)

    async def close(self):
        """Stop the receive loop and close the connection.

        Safe to call without a connection and more than once.  Commands
        waiting in :meth:`send_command` fail with
        :class:`~socs_tcp.errors.LinkError`.  ``on_disconnect`` is not called.
        """
        self._closing = True
        self.disconnect_reason = None
        was_open = self._writer is not None
        await self._release()
        self._fail_pending(LinkError(f"{self.name}: connection to {self.address} closed by the client"))
        if was_open:
            self.log.info("%s: connection to %s closed", self.name, self.address)

    async def _release(self):
        """Cancel the receive loop and close the socket, if any."""
        task, writer = self._read_task, self._writer
        self._read_task = self._reader = self._writer = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if writer is not None:
            try:
                if not writer.is_closing() and writer.can_write_eof():
                    writer.write_eof()
            except OSError:
                pass
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2.0)
            except (OSError, asyncio.TimeoutError, TimeoutError):
                pass
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(self.disconnect_reason)

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
            LinkError: the connection failed while writing.

        Nothing is written, and no sequence id is used, when an error is
        raised before writing.
        """
        return await self._write(msg_type, msg_name, msg_details, comp_name)

    async def _write(self, msg_type, msg_name, msg_details=None, comp_name=None, pending=None):
        msg_type = _coerce_type(msg_type)
        _check_name(msg_name)
        reserved = {"id"}
        if msg_type is MsgType.COMMAND:
            reserved.add("sequence_id")
            if comp_name is not None:
                raise ValueError(f"comp_name applies to events and telemetry, not to command {msg_name!r}")
        elif comp_name is not None:
            _check_name(comp_name, "comp_name")
            reserved.add("compName")
        body = _encode_details(msg_details, reserved)
        header = {"id": msg_type.prefix + msg_name}
        # checked before a sequence id is taken; 32 bytes leave room for the sequence_id field
        size = len(_join(header, body).encode("utf-8")) + len(TERMINATOR) + 32
        if size > self._framer.max_size:
            raise ValueError(f"message {header['id']!r} of about {size} bytes exceeds max_message_size="
                             f"{self._framer.max_size}")
        if not self.connected:
            raise RuntimeError(f"{self.name}: not connected to {self.address}")
        sequence_id = None
        if msg_type is MsgType.COMMAND:
            sequence_id = self._next_sequence_id()
            header["sequence_id"] = sequence_id
        elif comp_name is not None:
            header["compName"] = comp_name
        data = self._framer.encode(_join(header, body))
        if pending is not None:
            pending.sequence_id = sequence_id
            self._pending[sequence_id] = pending
        await self._send(data)
        return sequence_id

    async def _send(self, data):
        writer = self._writer
        async with self._write_lock:
            if writer is None or writer.is_closing():
                raise PeerClosedError(f"{self.name}: connection to {self.address} is closed")
            writer.write(data)
            try:
                await asyncio.wait_for(writer.drain(), self.write_timeout)
            except (asyncio.TimeoutError, TimeoutError):
                raise LinkTimeoutError(f"{self.name}: {self.address} did not take {len(data)} bytes "
                                       f"within {self.write_timeout:g} s") from None
            except OSError as exc:
                raise PeerClosedError(f"{self.name}: connection to {self.address} lost while writing: {exc}") from exc
        self.stats.bytes_out += len(data)
        self.messages_sent += 1
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("%s -> %s", self.name, data[:_TEXT_IN_LOG].decode("utf-8", "replace").rstrip())

    async def send_command(self, msg_name, msg_details=None, timeout=None):
        """Write a command and wait for its final status.

        The device answers ``ack`` (accepted) then ``success`` or ``fail``,
        or ``noack`` (refused); replies are matched by ``sequence_id``.  Every
        reply is also passed to ``callback_process_message``.

        Args:
            msg_name (str): the command name (without ``cmd_``).
            msg_details (dict): its parameters.
            timeout (float): deadline for the final status, seconds
                (default: ``command_timeout``).

        Returns:
            dict: the ``success`` reply.

        Raises:
            CommandError: ``noack`` or ``fail``.
            CommandTimeoutError: no final status in time (its ``acked`` says
                whether the ``ack`` came); a :class:`LinkTimeoutError`.
            LinkError: the connection ended while waiting.
            ValueError, TypeError, RuntimeError: as :meth:`write_message`;
                also a ``timeout`` that is not a number (:class:`TypeError`)
                or not positive (:class:`ValueError`).
        """
        timeout = self.command_timeout if timeout is None else check_seconds(timeout, "timeout", positive=True)
        pending = _Pending(msg_name, None, asyncio.get_running_loop().create_future())
        try:
            await self._write(MsgType.COMMAND, msg_name, msg_details, pending=pending)
        except BaseException:
            if pending.sequence_id is not None:
                self._pending.pop(pending.sequence_id, None)
            raise
        sequence_id = pending.sequence_id
        deadline = pending.started + timeout
        try:
            reply = await asyncio.wait_for(asyncio.shield(pending.future), max(0.0, deadline - time.perf_counter()))
        except (asyncio.TimeoutError, TimeoutError):
            self._pending.pop(sequence_id, None)
            self.stats.failure(timeout=True)
            what = "acknowledged but no final status" if pending.acked else "no acknowledgement"
            raise CommandTimeoutError(f"command {msg_name!r} (sequence_id {sequence_id}): {what} "
                                      f"within {timeout:g} s", msg_name, sequence_id, pending.acked) from None
        except CommandError:
            self.stats.failure()
            raise
        finally:
            self._pending.pop(sequence_id, None)
        self.stats.success(time.perf_counter() - pending.started)
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
        pending.future.set_exception(CommandError(text + _reply_reason(message), pending.name, sequence_id,
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
                    pending = self._framer.pending
                    raise PeerClosedError(
                        f"{self.name}: {self.address} closed the connection"
                        + (f"; {pending} bytes of an unterminated message discarded" if pending else ""))
                self.stats.bytes_in += len(data)
                overflow = None
                try:
                    self._framer.feed(data)
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
        framer = self._framer
        while True:
            try:
                text = framer.next_message()
            except FrameDecodeError as exc:
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s: %s", self.name, self.address, exc)
                continue
            if text is None:
                return
            if not text.strip():
                continue
            try:
                message = json.loads(text)
            except ValueError as exc:
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s that is not valid JSON (%s): %r",
                                 self.name, self.address, exc, text[:_TEXT_IN_LOG])
                continue
            if not isinstance(message, dict):
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s that is not a JSON object: %r",
                                 self.name, self.address, text[:_TEXT_IN_LOG])
                continue
            self.messages_received += 1
            self._rate_count += 1
            if self.log.isEnabledFor(logging.DEBUG):
                self.log.debug("%s <- %s", self.name, text[:_TEXT_IN_LOG])
            self._match_reply(message)
            try:
                await self._run_callback(message)
            except Exception:
                self.log.exception("%s: callback_process_message failed on %r", self.name, text[:_TEXT_IN_LOG])

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
        await self._release()
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


# ---------------------------------------------------------------------- server


class _Connection:
    __slots__ = ("name", "reader", "writer", "lock", "framer", "task")

    def __init__(self, name, reader, writer, framer):
        self.name = name
        self.reader = reader
        self.writer = writer
        self.lock = asyncio.Lock()
        self.framer = framer
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
                 max_message_size=1 << 20, write_timeout=5.0):
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
        self._encoder = MessageFramer(TERMINATOR, "utf-8", max_message_size)
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
        _check_name(name, "command name")
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
        data = self._encoder.encode(_encode_details(message, ()))
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
        _check_name(name)
        body = _encode_details(details, {"id"})
        msg_id = (kind.prefix if self.prefix_ids else "") + name
        data = self._encoder.encode(_join({"id": msg_id}, body))
        return await self.send_raw(data)

    async def _reply(self, conn, reply_id, sequence_id, extra=None):
        body = "{}"
        if extra:
            try:
                body = _encode_details(extra, {"id", "sequence_id"})
            except (TypeError, ValueError) as exc:
                self.log.error("%s: cannot send the result of a command: %s", self.name, exc)
        data = self._encoder.encode(_join({"id": reply_id, "sequence_id": sequence_id}, body))
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
        conn = _Connection(name, reader, writer, MessageFramer(TERMINATOR, "utf-8", self.max_message_size))
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        self._client_event.set()
        self.log.info("%s: client %s connected (%d connected)", self.name, name, len(self._connections))
        reason = "closed by the client"
        try:
            while True:
                data = await reader.read(_READ_CHUNK)
                if not data:
                    if conn.framer.pending:
                        reason += f", {conn.framer.pending} bytes of an unterminated message discarded"
                    break
                try:
                    conn.framer.feed(data)
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
                text = conn.framer.next_message()
            except FrameDecodeError as exc:
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s: %s", self.name, conn.name, exc)
                continue
            if text is None:
                return
            if not text.strip():
                continue
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self.invalid_messages += 1
                self.log.warning("%s: skipping a message from %s that is not a JSON object: %r",
                                 self.name, conn.name, text[:_TEXT_IN_LOG])
                continue
            self.received.append(message)
            kind, cmd = classify_id(message.get("id"))
            if kind is not MsgType.COMMAND:
                self.log.debug("%s: %s sent %r (not a command; ignored)", self.name, conn.name, text[:_TEXT_IN_LOG])
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
            conn.writer.transport.abort()
        else:
            conn.writer.close()
        try:
            await asyncio.wait_for(conn.writer.wait_closed(), 2.0)
        except (OSError, asyncio.TimeoutError, TimeoutError):
            pass
        self.log.info("%s: client %s disconnected: %s (%d connected)", self.name, conn.name, reason,
                      len(self._connections))
