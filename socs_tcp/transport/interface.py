"""``TCPInterface``: one robust TCP link to a device.

A drop-in replacement for ``socs.tcp.TCPInterface`` (same constructor,
attributes, ``send``/``recv`` and private hooks) that adds framing, the
``cmd_tcp`` bus operations, deadlines, reconnect policy, statistics and
distinct exceptions.  All methods are blocking and thread-safe: OCS operations
run in threads, and a write-and-read holds the link's lock from the first byte
written to the last byte read.

This module holds what a user sees: argument checks, the SOCS hooks and
primitives, and the bus operations, each one line over
:class:`~socs_tcp.transport.connection.Connection`, which owns the socket
and the deadline (and is the only home of the fast path).  The logger is
``socs_tcp.interface``.
"""

import socket
import time

from ..core.checks import check_seconds
from ..core.codec import bytes_to_hex, decode_escapes, format_traffic, hex_to_bytes, parse_address, parse_conf_string
from ..core.policy import ReconnectPolicy
from ..core.readers import check_count, compile_pattern, extract_match, terminators
from ..errors import ConnectFailedError, LinkError
from .connection import Connection, log

__all__ = ["TCPInterface"]


class _Unset:
    def __repr__(self):
        return "<unset>"


_UNSET = _Unset()
_FAMILIES = {
    None: socket.AF_UNSPEC, "AUTO": socket.AF_UNSPEC, "UNSPEC": socket.AF_UNSPEC,
    "INET": socket.AF_INET, "IPV4": socket.AF_INET, "AF_INET": socket.AF_INET,
    "INET6": socket.AF_INET6, "IPV6": socket.AF_INET6, "AF_INET6": socket.AF_INET6,
}


class TCPInterface(Connection):
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
        buffer_size (int): the most bytes taken from the socket per read while
            waiting for a reply (``recv(n)`` reads up to ``n``; bulk reads
            fill their buffer).
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
        spin_wait (float or None): the longest time, in seconds, a reply
            wait may spin (poll without sleeping) before it blocks; default
            50 µs.  Each link measures, on its own traffic, whether spinning
            first makes its replies arrive sooner than blocking at once, and
            spins only while it does (a device simulator on the same host, on
            an idle machine); for a device across a network it almost never
            spins.  ``0`` or ``None``: always block at once.  See "Wait
            strategy" in the benchmarks page.
        connect (bool): connect in the constructor, as SOCS does (default).
            A failure is logged, not raised, and leaves ``comm`` as ``None``.
        name (str): label used in log messages (default ``host:port``).
        record: a :class:`socs_tcp.testing.Recorder` (or any object with
            ``on_connect(addr)``, ``on_send(data)``, ``on_recv(data)`` and
            ``on_close(reason)``) that records the traffic in-process;
            ``None`` (default) records nothing.

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
                 close_on_timeout=False, spin_wait=50e-6, connect=True, name=None, record=None):
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
        self.spin_wait = check_seconds(spin_wait, "spin_wait", allow_none=True) or None
        if self.spin_wait is not None and self.spin_wait > 0.01:
            raise ValueError(f"spin_wait must be at most 0.01 s (a spin burns CPU for all of it), got {spin_wait!r}")
        self.name = name or f"{self.ip_address}:{self.port}"

        self._init_connection()
        self._scratch = None          # read_bytes' buffer for blocks over buffer_size
        self._last_eot = (_UNSET, None)  # (eot, terminators) of the last str or bytes eot given
        if record is not None:
            hooks = ("on_connect", "on_send", "on_recv", "on_close")
            if not all(callable(getattr(record, hook, None)) for hook in hooks):
                raise TypeError(f"record must be a socs_tcp.testing.Recorder (an object with {', '.join(hooks)}) "
                                f"or None, got {type(record).__name__}: {record!r}")
            self._recorder = record
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
    # connection management: the SOCS hooks, then the public calls
    def _connect(self, address):
        """Open a socket to ``address`` (``(host, port)``) (SOCS hook).

        Returns the connected socket, or ``None`` after logging why not.  An
        attempt lasts at most ``connect_timeout``, cut to what is left of the
        current operation's deadline.
        """
        return self._open_socket(address)

    def _reset(self):
        """Close the connection and make one new attempt at once (SOCS hook).

        Honours the policy's cool-down by waiting for it, when the current
        operation's deadline leaves time for that.
        """
        self._reconnect_now()

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
    # input checking (before anything touches the socket)
    def _encode(self, data, terminate=True):
        if isinstance(data, str):
            encoding = self.encoding
            if encoding is None:
                raise TypeError(f"{self.name}: this link has encoding=None, so data must be bytes, got str {data!r}")
            if encoding == "utf-8" and self.encoding_errors == "strict":
                raw = data.encode()   # Python's default codec: no codec name to look up on each call
            else:
                raw = data.encode(encoding, self.encoding_errors)
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        else:
            raise TypeError(f"data must be str or bytes, got {type(data).__name__}: {data!r}")
        return raw + self.write_termination if terminate else raw

    def _decode(self, frame, strip=False):
        if strip:
            frame = frame.rstrip()
        encoding = self.encoding
        if encoding is None:
            return frame
        if encoding == "utf-8" and self.encoding_errors == "strict":
            return frame.decode()     # as in _encode
        return frame.decode(encoding, self.encoding_errors)

    def _terminators(self, eot):
        if eot is None:
            terms = self.read_termination
            if terms is None:
                raise ValueError(f"{self.name}: no eot given and the link has no read_termination")
            # read_termination may have been assigned in any eot form
            return terms if type(terms) is tuple else terminators(terms, self._text_encoding)
        last = self._last_eot
        if eot is last[0]:
            # a driver passes the same literal each time; only str and bytes,
            # which cannot change, are remembered (with their terminators, in
            # one attribute, so that threads always see a matching pair)
            return last[1]
        terms = terminators(eot, self._text_encoding)
        kind = type(eot)
        if kind is str or kind is bytes:
            self._last_eot = (eot, terms)
        return terms

    # ------------------------------------------------------------------
    # readers (see socs_tcp.core.readers), called by Connection._run
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
            return self._receive_some(bufsize, None)
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
        A block larger than ``buffer_size`` is received into a scratch
        buffer that the link keeps for the next one (at most
        ``max_read_size`` bytes).
        """
        n = check_count(bytes_to_read, self.max_read_size)
        if n <= self.buffer_size:
            return self._run(None, self._buffer.maybe_extract_exact, n, "exact", timeout)
        # a large block goes straight from the socket into a scratch buffer
        # kept for the next one (fresh memory costs a page fault per page),
        # then into the bytes returned; timed out, what arrived is put back
        # in the link's buffer, in order
        with self.lock:
            scratch = self._scratch
            if scratch is None or len(scratch) < n:
                scratch = self._scratch = bytearray(n)
            view = memoryview(scratch)[:n]
            try:
                self._transfer_into(view, timeout)
                return view.tobytes()
            finally:
                view.release()

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
        return self._transfer_into(view.cast("B"), timeout)

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
        return self._decode(self._round_trip(raw, terms, timeout), self.rstrip)

    def wrnrd_bin_until(self, data, eot, timeout=None):
        """Write hex ``data`` then read up to a terminator of ``eot``, as hex, atomically."""
        raw = hex_to_bytes(data)
        terms = self._terminators(eot)
        return bytes_to_hex(self._round_trip(raw, terms, timeout))

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
        return self._decode(self._round_trip(raw, terms, timeout), self.rstrip)

    def drain(self):
        """Discard every byte already received (buffered or waiting on the
        socket).  Returns what was discarded (its first ``max_read_size``
        bytes if there was more); logs it if anything."""
        with self.lock:
            count, head = self._drain_all()
            if count:
                log.info("%s: drained %d bytes: %s", self.name, count, format_traffic(head, 64))
            return head
