"""``TCPInterface``: one robust TCP link to a device.

A drop-in replacement for ``socs.tcp.TCPInterface`` (same constructor,
attributes, ``send``/``recv`` and private hooks) that adds framing, the
``cmd_tcp`` bus operations, deadlines, reconnect policy, statistics and
distinct exceptions.  All methods are blocking and thread-safe: OCS operations
run in threads, and a write-and-read holds the link's lock from the first byte
written to the last byte read.
"""

import logging
import math
import os
import select
import socket
import threading
import time

from ..core.buffer import ReceiveBuffer
from ..core.checks import check_seconds
from ..core.codec import (
    bytes_to_hex,
    decode_escapes,
    format_traffic,
    hex_to_bytes,
    parse_address,
    parse_conf_string,
)
from ..core.deadline import Deadline
from ..core.policy import ReconnectPolicy
from ..core.readers import check_count, compile_pattern, describe, extract_match, terminators
from ..core.stats import LinkStats
from ..errors import ConnectFailedError, LinkError, LinkTimeoutError, PeerClosedError, ReadOverflowError

__all__ = ["TCPInterface"]

log = logging.getLogger("socs_tcp.interface")  # the name the docs promise

class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()
_FAMILIES = {
    None: socket.AF_UNSPEC, "AUTO": socket.AF_UNSPEC, "UNSPEC": socket.AF_UNSPEC,
    "INET": socket.AF_INET, "IPV4": socket.AF_INET, "AF_INET": socket.AF_INET,
    "INET6": socket.AF_INET6, "IPV6": socket.AF_INET6, "AF_INET6": socket.AF_INET6,
}
# errno values that mean "this connection is dead", as opposed to a timeout.
_DEAD_LINK = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


class TCPInterface:
    """A TCP link to a device.

    Positional arguments are those of ``socs.tcp.TCPInterface``; everything
    else is keyword-only.

    Args:
        ip_address (str): host name or IP address (IPv4 or IPv6) of the device.
        port (int): TCP port of the device.
        timeout (float or None): default deadline, in seconds, of each read
            and write operation (``None`` waits forever).  Also the default
            ``connect_timeout``.
        encoding (str or None): text encoding of ``str`` data and of the
            results of the text reads.  ``None`` makes text reads return
            ``bytes`` and makes ``str`` data an error.
        encoding_errors (str): how decode/encode errors are handled
            (``'strict'``, ``'replace'``, ``'ignore'``, ...).
        read_termination: terminator(s) used by :meth:`query` and by
            :meth:`read_until`/:meth:`wrnrd_until` when no ``eot`` is given.
            Same forms as ``eot`` (``"\\n"``, ``"\\r\\n,\\n"``, bytes, list).
            Default ``None``.
        write_termination (str or bytes or None): appended by :meth:`write`,
            :meth:`wrnrd`, :meth:`wrnrd_until` and :meth:`query` to the data,
            str or bytes (escapes allowed).  Default ``None``: data is sent exactly as given.
        termination: shortcut for both terminations; an explicit
            ``read_termination`` or ``write_termination`` takes precedence.
        rstrip (bool): strip trailing whitespace from the results of the
            message reads (:meth:`read_until`, :meth:`wrnrd_until`,
            :meth:`query`).
        max_read_size (int): the most bytes buffered while waiting for a
            read to complete (default 1 MiB).  Exceeding it raises
            :class:`~socs_tcp.errors.ReadOverflowError`.
        buffer_size (int): the most bytes taken from the socket per ``recv``.
        family: ``None``/``'auto'`` (any, in resolver order), ``'INET'`` /
            ``'IPv4'``, ``'INET6'``/``'IPv6'``, or a ``socket.AF_*`` value.
        connect_timeout (float or None): deadline of one connection attempt;
            defaults to ``timeout``.
        keepalive (bool): enable TCP keepalive (idle 10 s, probes every 5 s,
            3 probes), so a vanished device is noticed on an idle link.
        nodelay (bool): set ``TCP_NODELAY`` (no Nagle delay on small writes).
        reconnect_policy (ReconnectPolicy or dict): backoff, jitter, cap,
            attempts and cool-down between connection attempts.
        drain_before_query (bool): before each write-and-read, discard (and
            log) any bytes already received, so a late reply to an earlier,
            timed-out query is never taken as this query's answer.
        close_on_timeout (bool): when a write-and-read times out, close the
            connection (the next operation reconnects).  A late reply can
            then never be read at all, not even one that arrives while the
            next query waits, which ``drain_before_query`` cannot catch.  For
            devices without request ids that are polled and queried from
            several threads, as OCS agents do.
        connect (bool): connect in the constructor, as SOCS does (default).
            A failure is logged, not raised, and leaves ``comm`` as ``None``.
        name (str): label used in log messages (default ``host:port``).

    Attributes:
        ip_address, port, timeout: as given.
        comm (socket.socket or None): the connected socket, ``None`` while
            disconnected.
        lock (threading.RLock): held by every operation; hold it yourself to
            make several operations one atomic transaction.
    """

    def __init__(self, ip_address, port, timeout=10.0, *, encoding="utf-8", encoding_errors="strict",
                 read_termination=_UNSET, write_termination=_UNSET, termination=None, rstrip=False,
                 max_read_size=1 << 20, buffer_size=4096, family=None, connect_timeout=_UNSET,
                 keepalive=True, nodelay=True, reconnect_policy=None, drain_before_query=False,
                 close_on_timeout=False, connect=True, name=None):
        self.comm = None  # first, so __del__ works whatever fails below
        if not isinstance(ip_address, str) or not ip_address.strip():
            raise ValueError(f"ip_address must be a non-empty host name or IP address str, got {ip_address!r}")
        try:
            port_number = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"port must be an integer in 1..65535, got {port!r}") from None
        if isinstance(port, bool) or port_number != port and not isinstance(port, str) or not 0 < port_number < 65536:
            raise ValueError(f"port must be an integer in 1..65535, got {port!r}")
        self.ip_address = ip_address.strip()
        if self.ip_address.startswith("[") and self.ip_address.endswith("]"):
            self.ip_address = self.ip_address[1:-1]
        self.port = port_number
        self.timeout = check_seconds(timeout, "timeout", allow_none=True)
        self.connect_timeout = (self.timeout if connect_timeout is _UNSET
                                else check_seconds(connect_timeout, "connect_timeout", allow_none=True))
        if encoding is not None:
            "".encode(encoding)  # LookupError names an unknown codec
        self.encoding = encoding
        self.encoding_errors = encoding_errors
        if read_termination is _UNSET:
            read_termination = termination
        if write_termination is _UNSET:
            write_termination = termination
        self._text_encoding = encoding or "latin-1"
        self.read_termination = (None if read_termination is None
                                 else terminators(read_termination, self._text_encoding))
        self.write_termination = (b"" if write_termination is None
                                  else decode_escapes(write_termination, self._text_encoding))
        self.rstrip = bool(rstrip)
        if isinstance(max_read_size, bool) or not isinstance(max_read_size, int) or max_read_size < 1:
            raise ValueError(f"max_read_size must be a positive int, got {max_read_size!r}")
        if isinstance(buffer_size, bool) or not isinstance(buffer_size, int) or buffer_size < 1:
            raise ValueError(f"buffer_size must be a positive int, got {buffer_size!r}")
        self.max_read_size = max_read_size
        self.buffer_size = buffer_size
        key = family.upper() if isinstance(family, str) else family
        if key in _FAMILIES:
            self.family = _FAMILIES[key]
        elif family in (socket.AF_INET, socket.AF_INET6, socket.AF_UNSPEC):
            self.family = family
        else:
            raise ValueError(f"family must be 'INET', 'INET6', 'auto' or a socket.AF_* value, got {family!r}")
        self.keepalive = bool(keepalive)
        self.nodelay = bool(nodelay)
        self.reconnect_policy = ReconnectPolicy.coerce(reconnect_policy)
        self.drain_before_query = bool(drain_before_query)
        self.close_on_timeout = bool(close_on_timeout)
        self.name = name or f"{self.ip_address}:{self.port}"

        self.lock = threading.RLock()
        self._buffer = ReceiveBuffer(max_read_size)
        self._stats = LinkStats()
        self._failures = 0            # consecutive failed connection attempts
        self._next_attempt = 0.0      # monotonic time before which no attempt is made
        self._last_connect_error = None
        self._warned = False          # a failure streak has been logged at WARNING
        self._poll_sock = None        # the socket self._poll watches
        self._poll = None
        self._timeout_sock = None     # the socket whose timeout was last set ...
        self._timeout_value = None    # ... and to what
        self._debug = False           # traffic logging on, decided once per operation
        self._op_deadline = None      # the Deadline of the operation in progress (under the lock)
        if connect:
            self._attempt_connect()

    # ------------------------------------------------------------------
    # construction from strings
    @staticmethod
    def parse_address(address):
        """Host and port of ``address``, as ``{'host': str, 'port': int}``, or ``None``.

        See :func:`socs_tcp.core.codec.parse_address` for the accepted forms.
        """
        return parse_address(address)

    @classmethod
    def from_address(cls, address, timeout=_UNSET, **kwargs):
        """Create a link from an address string.

        ``address`` is any form :meth:`parse_address` accepts, or a
        ``cmd_tcp`` conf string ``host=...,port=...[,timeout=...]`` (whose
        timeout is used unless ``timeout`` is passed).

        Raises:
            ValueError: ``address`` is neither; the message names it.
        """
        if isinstance(address, str) and "=" in address:
            conf = parse_conf_string(address)
            if timeout is _UNSET:
                timeout = conf["timeout"] if conf["timeout"] is not None else 10.0
            return cls(conf["host"], conf["port"], timeout, **kwargs)
        parsed = parse_address(address)
        if parsed is None:
            raise ValueError(
                f"address {address!r} is not a TCP address; use host:port, [v6addr]:port, tcp://host:port, "
                "TCP::host::port, TCPIP0::host::port::SOCKET or host=...,port=...")
        return cls(parsed["host"], parsed["port"], 10.0 if timeout is _UNSET else timeout, **kwargs)

    def __repr__(self):
        state = "connected" if self.comm is not None else "disconnected"
        return f"<{type(self).__name__} {self.name} {state}>"

    # ------------------------------------------------------------------
    # connection management (the SOCS hooks are _connect and _reset)
    def _connect(self, address):
        """Open a socket to ``address`` (``(host, port)``).

        Returns the connected socket, or ``None`` after logging why not.
        """
        host, port = address[0], address[1]
        limit = self._connect_limit()
        try:
            infos = socket.getaddrinfo(host, port, self.family, socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as e:
            self._connect_failed(f"cannot resolve {host!r}: {e}")
            return None
        error = None
        for af, kind, proto, _, sockaddr in infos:
            sock = socket.socket(af, kind, proto)
            try:
                sock.settimeout(limit)
                sock.connect(sockaddr)
                self._configure(sock)
            except OSError as e:
                sock.close()
                error = e
                continue
            return sock
        if isinstance(error, (socket.timeout, TimeoutError)):
            if limit == self.connect_timeout:
                reason = f"no answer within connect_timeout={self.connect_timeout} s"
            else:
                reason = (f"no answer within the {limit:.3g} s left of the operation's deadline "
                          f"(connect_timeout={self.connect_timeout} s)")
        else:
            reason = getattr(error, "strerror", None) or str(error)
        self._connect_failed(f"cannot connect to {host}:{port}: {reason}")
        return None

    def _connect_limit(self):
        """How long one connection attempt may take: ``connect_timeout``,
        cut to what is left of the current operation's deadline."""
        deadline = self._op_deadline
        return self.connect_timeout if deadline is None else deadline.bound(self.connect_timeout)

    def _connect_failed(self, reason):
        self._last_connect_error = reason
        log.log(logging.DEBUG if self._warned else logging.WARNING, "%s: %s", self.name, reason)
        self._warned = True

    def _configure(self, sock):
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for opt, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
                if hasattr(socket, opt):
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, opt), value)

    def _attempt_connect(self):
        """One connection attempt, with bookkeeping.  Returns the socket or None."""
        sock = self._connect((self.ip_address, self.port))
        if sock is None:
            self._failures += 1
            self._stats.connect_failures += 1
            self._next_attempt = time.monotonic() + self.reconnect_policy.delay(self._failures)
            return None
        self.comm = sock
        stale = self._buffer.drain()
        if stale:
            log.warning("%s: discarded %d bytes left from the previous connection: %s",
                        self.name, len(stale), format_traffic(stale))
        if self._failures:
            log.info("%s: connected after %d failed attempt(s)", self.name, self._failures)
        elif self._stats.connects:
            log.info("%s: reconnected", self.name)
        else:
            log.info("%s: connected", self.name)
        self._failures = 0
        self._next_attempt = 0.0
        self._warned = False
        self._stats.connects += 1
        return sock

    def _close(self, reason=None):
        sock, self.comm = self.comm, None
        if sock is None:
            return
        if reason:
            log.log(logging.DEBUG if self._warned else logging.WARNING, "%s: closing connection: %s",
                    self.name, reason)
            self._warned = True
        try:
            sock.close()
        except OSError:
            pass
        if self.reconnect_policy.cooldown:
            self._next_attempt = max(self._next_attempt, time.monotonic() + self.reconnect_policy.cooldown)

    def _reset(self):
        """Close the connection and make one new attempt at once (SOCS hook).

        Honours the policy's cool-down by waiting for it.
        """
        self._close()
        wait = self._next_attempt - time.monotonic()
        deadline = self._op_deadline
        if deadline is not None and deadline.expired:
            self._last_connect_error = "the operation's deadline ran out before a reconnect"
            return
        if wait > 0 and self._failures == 0:
            if deadline is not None and deadline.bound(wait) < wait:
                self._last_connect_error = (f"the reconnect cool-down of {wait:.3g} s is longer than what is "
                                            "left of the operation's deadline")
                return
            time.sleep(wait)
        self._attempt_connect()

    def _ensure_connected(self):
        sock = self.comm
        if sock is not None:
            return sock
        limit = self.reconnect_policy.max_attempts
        if limit is not None and 0 < limit <= self._failures:
            raise ConnectFailedError(
                f"{self.name}: not connected; gave up after {self._failures} failed attempt(s) "
                f"(reconnect_policy.max_attempts={limit}): {self._last_connect_error}; call reconnect() to try again")
        wait = self._next_attempt - time.monotonic()
        if wait > 0:
            reason = self._last_connect_error or "cool-down after the last connection"
            raise ConnectFailedError(
                f"{self.name}: not connected ({reason}); next attempt allowed in {wait:.2f} s "
                f"after {self._failures} failed attempt(s)")
        deadline = self._op_deadline
        if deadline is not None and deadline.expired:
            raise LinkTimeoutError(f"{self.name}: not connected, and the operation's deadline "
                                   f"({deadline.timeout} s) ran out before a connection attempt")
        sock = self._attempt_connect()
        if sock is None:
            if deadline is not None and deadline.expired:
                raise LinkTimeoutError(f"{self.name}: timed out connecting: {self._last_connect_error}")
            raise ConnectFailedError(f"{self.name}: {self._last_connect_error}")
        return sock

    def next_attempt_in(self):
        """Seconds until the backoff allows the next reconnect attempt.

        ``None`` while connected, and when no automatic attempt will be made
        (``reconnect_policy.max_attempts`` used up); ``0.0`` when one is
        allowed now.  A poller uses it to retry as soon as the device may be
        back instead of waiting for its next cycle.
        """
        if self.comm is not None:
            return None
        limit = self.reconnect_policy.max_attempts
        if limit is not None and 0 < limit <= self._failures:
            return None
        return max(0.0, self._next_attempt - time.monotonic())

    @property
    def is_connected(self):
        """True while a socket is open (the device may still have gone away
        unnoticed; the next operation finds out)."""
        return self.comm is not None

    def connect(self):
        """Connect now if not connected (respecting the backoff).

        Raises:
            ConnectFailedError: the attempt failed or is held back by backoff.
        """
        with self.lock:
            self._ensure_connected()

    def disconnect(self):
        """Close the socket.  The next operation reconnects."""
        with self.lock:
            if self.comm is not None:
                log.info("%s: disconnected", self.name)
            self._close()

    close = disconnect

    def reconnect(self, max_attempts=1):
        """Close and connect again, retrying with the policy's backoff.

        Args:
            max_attempts (int or None): attempts before giving up; ``< 1`` or
                ``None`` keeps trying until a connection is made.

        Raises:
            ConnectFailedError: ``max_attempts`` attempts failed.
        """
        if max_attempts is not None and (isinstance(max_attempts, bool) or not isinstance(max_attempts, int)):
            raise ValueError(f"max_attempts must be an int or None, got {max_attempts!r}")
        forever = max_attempts is None or max_attempts < 1
        with self.lock:
            self._close()
            self._failures = 0
            attempt = 0
            while True:
                wait = self._next_attempt - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                attempt += 1
                if self._attempt_connect() is not None:
                    return
                if not forever and attempt >= max_attempts:
                    raise ConnectFailedError(
                        f"{self.name}: reconnect gave up after {attempt} attempt(s): {self._last_connect_error}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disconnect()
        return False

    def __del__(self):
        sock = getattr(self, "comm", None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    # ------------------------------------------------------------------
    # statistics
    def stats(self):
        """Counters and timings of this link, as a JSON-safe dict.

        Keys: ``connected``, ``bytes_in``, ``bytes_out``, ``transactions``,
        ``timeouts``, ``errors``, ``connects``, ``reconnects``,
        ``connect_failures``, ``consecutive_failures``, ``last_success``
        (UNIX time or ``None``), ``latency_last``, ``latency_mean``,
        ``latency_p50``, ``latency_p95``, ``latency_p99`` (seconds or
        ``None``), plus ``buffered`` (bytes waiting to be read).
        """
        with self.lock:
            snap = self._stats.snapshot(self.comm is not None)
            snap["buffered"] = len(self._buffer)
            return snap

    # ------------------------------------------------------------------
    # low level I/O (callers hold the lock)
    def _link_failed(self, error):
        """Count a failed operation and log the start of a failure streak."""
        self._stats.failure(timeout=isinstance(error, LinkTimeoutError))
        log.log(logging.DEBUG if self._warned else logging.WARNING, "%s", error)
        self._warned = True

    def _fill(self, deadline, what, arg=None, into=None):
        """Receive more bytes, waiting until ``deadline``: into the buffer, or
        straight into the writable memoryview ``into`` (returns the count)."""
        sock = self.comm or self._ensure_connected()
        room = self.max_read_size - len(self._buffer)
        if into is None and room <= 0:
            self._overflow()
        end = deadline.end
        if end is None:
            remaining = -1
        else:
            remaining = end - time.monotonic()
            if remaining <= 0:
                # past the deadline (or timeout=0): take what is already
                # waiting on the socket, but do not wait for more
                before = len(self._buffer)
                self._pull_pending()
                if len(self._buffer) > before:
                    return 0
                raise self._timeout(what, arg)
            remaining = math.ceil(remaining * 1000)
        if self._poll_sock is not sock:
            self._watch(sock)
        if not self._poll.poll(remaining):
            raise self._timeout(what, arg)
        try:
            # poll said readable: a plain read(2) cannot block, and skips the
            # second poll that socket.recv makes on a socket with a timeout
            if into is None:
                data = os.read(sock.fileno(), min(self.buffer_size, room))
            else:
                count = os.readv(sock.fileno(), (into,))
                data = into[:count]
        except (BlockingIOError, InterruptedError):
            return 0  # spurious wake-up: the caller checks the buffer and waits again
        except OSError as e:
            self._close(f"receive failed: {e}")
            raise LinkError(f"{self.name}: connection lost while waiting for {describe(what, arg)}: {e}") from e
        if not data:
            partial = self._buffer.peek()
            self._close("device closed the connection")
            raise PeerClosedError(
                f"{self.name}: device closed the connection while waiting for {describe(what, arg)}"
                + (f" ({len(partial)} bytes of an incomplete reply: {format_traffic(partial, 64)})"
                   if partial else ""), partial)
        self._stats.bytes_in += len(data)
        if self._debug:
            log.debug("%s < %s", self.name, format_traffic(bytes(data[:256])))
        if into is None:
            self._buffer.feed(data)
        return len(data)

    def _watch(self, sock):
        """Make ``self._poll`` watch ``sock`` for input (data, end of stream
        or an error).  One poll object per socket, so waiting costs one
        system call."""
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self._poll_sock = sock

    def _readable(self, sock, wait):
        """Wait up to ``wait`` seconds (``None``: forever) for ``sock`` to be readable."""
        if self._poll_sock is not sock:
            self._watch(sock)
        return bool(self._poll.poll(-1 if wait is None else math.ceil(wait * 1000)))

    def _set_timeout(self, sock):
        """Give ``sock`` the link's timeout, calling ``settimeout`` only when it
        changed (drivers that use ``comm`` directly see the SOCS behaviour)."""
        if self._timeout_sock is not sock or self._timeout_value != self.timeout:
            sock.settimeout(self.timeout)
            self._timeout_sock = sock
            self._timeout_value = self.timeout

    def _timeout(self, what, arg):
        buffered = len(self._buffer)
        return LinkTimeoutError(
            f"{self.name}: timed out waiting for {describe(what, arg)}"
            + (f"; {buffered} bytes received so far stay buffered" if buffered else "; nothing received"))

    def _overflow(self):
        # The rest of the oversized data is still in flight: on this connection
        # its tail would be taken as the start of the next reply, so the
        # connection is closed too and the next operation starts on a new one.
        dropped = self._buffer.drain()
        self._close()
        log.error("%s: discarded %d buffered bytes and closed the connection: over max_read_size=%d: %s",
                  self.name, len(dropped), self.max_read_size, format_traffic(dropped, 64))
        raise ReadOverflowError(
            f"{self.name}: receive overflow: more than max_read_size={self.max_read_size} bytes arrived without "
            f"completing the read; the {len(dropped)} buffered bytes were discarded and the connection was "
            "closed (the next operation reconnects)")

    def _pull_pending(self):
        """Move bytes already waiting on the socket into the buffer, without
        blocking.  Notices a connection the device has closed meanwhile."""
        sock = self.comm
        while sock is not None and self._readable(sock, 0):
            room = self._buffer.room
            if room <= 0:
                return
            try:
                data = os.read(sock.fileno(), min(self.buffer_size, room))
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._close(f"connection broken: {e}")
                return
            if not data:
                self._close("device closed the connection")
                return
            self._stats.bytes_in += len(data)
            if self._debug:
                log.debug("%s < %s", self.name, format_traffic(data))
            self._buffer.feed(data)

    def _send_bytes(self, data, deadline):
        """Send all of ``data`` before ``deadline``; on a dead connection
        reconnect once and resend."""
        sock = self.comm
        if sock is None or self._poll_sock is not sock or self._poll.poll(0):
            # something is waiting (stale bytes or end of stream): take it
            # first, so a device that closed the connection is noticed now
            self._pull_pending()
            sock = self._ensure_connected()
        try:
            self._sendall(sock, data, deadline)
            return
        except TimeoutError:
            raise self._send_timed_out(data, deadline) from None
        except OSError as e:
            self._close(f"send failed: {e}")
            first = e
        self._reset()
        if self.comm is None:
            if deadline.expired:
                raise LinkTimeoutError(f"{self.name}: send failed ({first}) and the operation's deadline "
                                       f"({deadline.timeout} s) ran out reconnecting: {self._last_connect_error}")
            raise ConnectFailedError(
                f"{self.name}: send failed ({first}) and reconnecting failed: {self._last_connect_error}") from first
        try:
            self._sendall(self.comm, data, deadline)
        except TimeoutError:
            raise self._send_timed_out(data, deadline) from None
        except OSError as e:
            self._close(f"send failed again: {e}")
            raise LinkError(f"{self.name}: send failed twice: {first}; then {e}") from e

    def _send_timed_out(self, data, deadline):
        self._close("send timed out")
        return LinkTimeoutError(
            f"{self.name}: sending {len(data)} bytes timed out (the operation's timeout is {deadline.timeout} s); "
            "the connection was closed because part of the data may have been sent")

    def _sendall(self, sock, data, deadline):
        """Write all of ``data`` before ``deadline``, one write(2) in the common case.

        Raises:
            TimeoutError: the device stopped reading before all was sent.
            OSError: the connection is broken.
        """
        if self._timeout_sock is not sock or self._timeout_value != self.timeout:
            self._set_timeout(sock)
        if self._debug:
            log.debug("%s > %s", self.name, format_traffic(data))
        try:
            # a socket with a timeout has a non-blocking descriptor: write(2)
            # returns what fits; without one, MSG_DONTWAIT does the same
            sent = os.write(sock.fileno(), data) if self.timeout is not None else sock.send(data, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent != len(data):
            self._write_rest(sock, memoryview(data)[sent:], deadline)
        self._stats.bytes_out += len(data)

    def _write_rest(self, sock, view, deadline):
        """Write ``view`` as the socket's send buffer gets room, before ``deadline``."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while view:
            if deadline.expired or not poller.poll(deadline.poll_ms()):
                raise TimeoutError("send timed out")
            try:
                sent = sock.send(view, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            view = view[sent:]

    # ------------------------------------------------------------------
    # input checking (before anything touches the socket)
    def _encode(self, data, terminate=True):
        if isinstance(data, str):
            if self.encoding is None:
                raise TypeError(f"{self.name}: this link has encoding=None, so data must be bytes, got str {data!r}")
            raw = data.encode(self.encoding, self.encoding_errors)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise TypeError(f"data must be str or bytes, got {type(data).__name__}: {data!r}")
        return raw + self.write_termination if terminate else raw

    def _decode(self, frame, strip=False):
        if strip:
            frame = frame.rstrip()
        if self.encoding is None:
            return frame
        return frame.decode(self.encoding, self.encoding_errors)

    def _terminators(self, eot):
        if eot is None:
            terms = self.read_termination
            if terms is None:
                raise ValueError(f"{self.name}: no eot given and the link has no read_termination")
            # read_termination may have been assigned in any eot form
            return terms if type(terms) is tuple else terminators(terms, self._text_encoding)
        return terminators(eot, self._text_encoding)

    # ------------------------------------------------------------------
    # the operation skeleton: lock, deadline, stats
    def _run(self, send, extract, arg, what, timeout):
        """Optionally send ``send``, then receive until ``extract(arg)``
        returns something other than ``None``, and return that.  ``what``
        names the kind of read for error messages (see
        :func:`~socs_tcp.core.readers.describe`)."""
        with self.lock:
            deadline = Deadline.start(timeout, self.timeout)  # the one check of the per-call timeout
            self._op_deadline = deadline
            self._debug = log.isEnabledFor(logging.DEBUG)
            try:
                if send is not None:
                    if self.drain_before_query and extract is not None:
                        self._discard_stale()
                    self._send_bytes(send, deadline)
                frame = None
                if extract is not None:
                    buffer = self._buffer
                    if buffer:
                        frame = extract(arg)
                    while frame is None:
                        self._fill(deadline, what, arg)
                        frame = extract(arg)
            except LinkTimeoutError as e:
                if self.close_on_timeout and send is not None and extract is not None:
                    self._close("no reply before the deadline: closed so that a late reply cannot answer "
                                "a later query (close_on_timeout)")
                    e = LinkTimeoutError(f"{e}; the connection was closed (close_on_timeout), the next "
                                         "operation reconnects")
                    self._link_failed(e)
                    raise e from None
                self._link_failed(e)
                raise
            except LinkError as e:
                self._link_failed(e)
                raise
            finally:
                self._op_deadline = None
            self._stats.success(deadline.elapsed())
            self._warned = False
            return frame

    def _drain_all(self):
        """Discard everything received so far, buffered or waiting on the
        socket, however much that is (up to 64 x ``max_read_size`` from a
        device that never stops sending).  Returns ``(count, head)``: the
        number of bytes discarded and the first ``max_read_size`` of them."""
        head = bytearray()
        count = 0
        while count <= 64 * self.max_read_size:
            self._pull_pending()
            chunk = self._buffer.drain()
            if not chunk:
                break
            count += len(chunk)
            if len(head) < self.max_read_size:
                head += chunk[:self.max_read_size - len(head)]
        return count, bytes(head)

    def _discard_stale(self):
        count, head = self._drain_all()
        if count:
            log.warning("%s: discarded %d stale bytes before a query: %s", self.name, count,
                        format_traffic(head, 64))

    def _some(self, n):
        buffer = self._buffer
        return buffer.extract_some(n) if buffer else None

    def _match(self, regex):
        return extract_match(self._buffer, regex, self._op_deadline)

    # ------------------------------------------------------------------
    # SOCS-compatible primitives
    def send(self, msg):
        """Send all of ``msg`` (bytes).

        If the connection is down or broken it is reset and the send is tried
        once more, as in SOCS.

        Raises:
            TypeError: ``msg`` is not bytes-like (nothing is sent, no reconnect).
            ConnectionError: a :class:`~socs_tcp.errors.LinkError` subclass if
                the data could not be sent.
        """
        if not isinstance(msg, (bytes, bytearray, memoryview)):
            raise TypeError(f"send() needs bytes, got {type(msg).__name__}: {msg!r}; encode text first, "
                            "e.g. msg.encode()")
        self._run(bytes(msg), None, None, None, None)

    def recv(self, bufsize=4096, reset_on_error=False):
        """Return the bytes available now (at most ``bufsize``), waiting up to
        ``timeout`` for the first one.

        Raises:
            LinkTimeoutError: nothing arrived in time.
            PeerClosedError: the device closed the connection.
            ConnectFailedError: not connected and connecting failed.

        With ``reset_on_error=True`` the connection is reset before raising.
        """
        if isinstance(bufsize, bool) or not isinstance(bufsize, int) or bufsize < 1:
            raise ValueError(f"bufsize must be a positive int, got {bufsize!r}")
        try:
            return self._run(None, self._some, bufsize, "data", None)
        except LinkError:
            if reset_on_error:
                with self.lock:
                    self._reset()
            raise

    # ------------------------------------------------------------------
    # bus operations
    def write(self, data):
        """Write ``data`` (str or bytes) plus ``write_termination``.  Returns the byte count."""
        raw = self._encode(data)
        self._run(raw, None, None, None, None)
        return len(raw)

    def write_bin(self, data):
        """Write hex ``data`` (``"0a0d"`` sends ``b"\\n\\r"``).  Returns the byte count."""
        raw = hex_to_bytes(data)
        self._run(raw, None, None, None, None)
        return len(raw)

    def read(self, bytes_to_read, timeout=None):
        """Read exactly ``bytes_to_read`` bytes (decoded with ``encoding``).

        On timeout the bytes received so far stay buffered.
        """
        n = check_count(bytes_to_read, self.max_read_size)
        return self._decode(self._run(None, self._buffer.maybe_extract_exact, n, "exact", timeout))

    def read_bin(self, bytes_to_read, timeout=None):
        """Like :meth:`read`, returning lowercase hex."""
        n = check_count(bytes_to_read, self.max_read_size)
        return bytes_to_hex(self._run(None, self._buffer.maybe_extract_exact, n, "exact", timeout))

    def read_bytes(self, bytes_to_read, timeout=None):
        """Read exactly ``bytes_to_read`` bytes and return them as ``bytes``,
        whatever the link's ``encoding``.

        At most ``max_read_size`` bytes; use :meth:`readinto` for larger
        binary transfers.  On timeout the bytes received so far stay buffered.
        """
        n = check_count(bytes_to_read, self.max_read_size)
        return self._run(None, self._buffer.maybe_extract_exact, n, "exact", timeout)

    def readinto(self, buffer, timeout=None):
        """Fill all of ``buffer`` with received bytes; return how many (its size).

        For bulk binary data: bytes go from the socket straight into the
        caller's writable buffer (``bytearray``, ``memoryview``, ``array``,
        a contiguous NumPy array, ...), with no intermediate copies, so the
        transfer is not limited by ``max_read_size``; the buffer's size is
        the bound.  Bytes already buffered by earlier reads come first.

        Args:
            buffer: a writable, C-contiguous bytes-like object.
            timeout: deadline for the whole transfer (default ``timeout``).

        Raises:
            TypeError: ``buffer`` is not writable bytes-like (nothing is read).
            LinkTimeoutError: the buffer was not filled in time.  The bytes
                received so far are put back in the link's buffer, if they
                fit in ``max_read_size``, so a retry reads the stream in
                order; otherwise the message says how many bytes of
                ``buffer`` hold data.
            PeerClosedError: the device closed the connection first; its
                ``partial`` holds the bytes received.
        """
        try:
            view = memoryview(buffer)
        except TypeError:
            raise TypeError(f"readinto needs a writable bytes-like buffer, got {type(buffer).__name__}") from None
        if view.readonly:
            raise TypeError(f"readinto needs a writable buffer, got a read-only {type(buffer).__name__}")
        if not view.c_contiguous:
            raise TypeError(f"readinto needs a C-contiguous buffer, got a non-contiguous {type(buffer).__name__}")
        view = view.cast("B")
        total = len(view)
        with self.lock:
            deadline = Deadline.start(timeout, self.timeout)
            self._op_deadline = deadline
            self._debug = log.isEnabledFor(logging.DEBUG)
            got = 0
            source = self._buffer
            try:
                while got < total:
                    if source:
                        chunk = source.extract_some(total - got)
                        view[got:got + len(chunk)] = chunk
                        got += len(chunk)
                    else:
                        got += self._fill(deadline, "exact", total, view[got:])
            except LinkError as e:
                e = self._readinto_failed(e, view[:got], total)
                self._link_failed(e)
                raise e from None
            finally:
                self._op_deadline = None
            self._stats.success(deadline.elapsed())
            self._warned = False
            return total

    def _readinto_failed(self, error, received, total):
        """The exception to raise when :meth:`readinto` stops after ``received``."""
        got = len(received)
        if isinstance(error, PeerClosedError):
            return PeerClosedError(f"{error} after {got} of {total} bytes", bytes(received))
        if not isinstance(error, LinkTimeoutError) or not got:
            return error
        try:
            self._buffer.unread(received)
        except ReadOverflowError:
            return LinkTimeoutError(f"{self.name}: timed out after receiving {got} of {total} bytes; they are in "
                                    f"the first {got} bytes of the buffer (too many to keep in max_read_size="
                                    f"{self.max_read_size})")
        return LinkTimeoutError(f"{self.name}: timed out after receiving {got} of {total} bytes; "
                                "they stay buffered for the next read")

    def read_until(self, eot=None, timeout=None):
        """Read up to the first terminator of ``eot`` (default ``read_termination``).

        The terminator is consumed but not returned; later bytes stay buffered.
        """
        terms = self._terminators(eot)
        return self._decode(self._run(None, self._buffer.maybe_extract_until, terms, "until", timeout)[0], self.rstrip)

    def read_bin_until(self, eot, timeout=None):
        """Like :meth:`read_until`, returning lowercase hex."""
        terms = self._terminators(eot)
        return bytes_to_hex(self._run(None, self._buffer.maybe_extract_until, terms, "until", timeout)[0])

    def wrnrd(self, data, bytes_to_read, timeout=None):
        """Write ``data`` then read exactly ``bytes_to_read`` bytes, atomically."""
        raw = self._encode(data)
        n = check_count(bytes_to_read, self.max_read_size)
        return self._decode(self._run(raw, self._buffer.maybe_extract_exact, n, "exact", timeout))

    def wrnrd_bin(self, data, bytes_to_read, timeout=None):
        """Write hex ``data`` then read ``bytes_to_read`` bytes as hex, atomically."""
        raw = hex_to_bytes(data)
        n = check_count(bytes_to_read, self.max_read_size)
        return bytes_to_hex(self._run(raw, self._buffer.maybe_extract_exact, n, "exact", timeout))

    def wrnrd_until(self, data, eot=None, timeout=None):
        """Write ``data`` then read up to a terminator of ``eot``, atomically."""
        raw = self._encode(data)
        terms = self._terminators(eot)
        return self._decode(self._run(raw, self._buffer.maybe_extract_until, terms, "until", timeout)[0], self.rstrip)

    def wrnrd_bin_until(self, data, eot, timeout=None):
        """Write hex ``data`` then read up to a terminator of ``eot``, as hex, atomically."""
        raw = hex_to_bytes(data)
        terms = self._terminators(eot)
        return bytes_to_hex(self._run(raw, self._buffer.maybe_extract_until, terms, "until", timeout)[0])

    def expect(self, pattern, timeout=None):
        """Read until the regular expression ``pattern`` matches.

        The match may span any number of received chunks.  Returns everything
        consumed, from the start of the buffer to the end of the match; later
        bytes stay buffered.
        """
        regex = compile_pattern(pattern, self._text_encoding)
        return self._decode(self._run(None, self._match, regex, "match", timeout)[0])

    def query(self, message, timeout=None):
        """Write ``message`` (plus ``write_termination``) and read one reply up
        to ``read_termination``, atomically."""
        raw = self._encode(message)
        terms = self._terminators(None)
        return self._decode(self._run(raw, self._buffer.maybe_extract_until, terms, "until", timeout)[0], self.rstrip)

    def drain(self):
        """Discard every byte already received (buffered or waiting on the
        socket).  Returns what was discarded (its first ``max_read_size``
        bytes if there was more); logs it if anything."""
        with self.lock:
            count, head = self._drain_all()
            if count:
                log.info("%s: drained %d bytes: %s", self.name, count, format_traffic(head, 64))
            return head
