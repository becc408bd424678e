"""The connection under :class:`~socs_tcp.TCPInterface`: it owns the socket.

Operations
    Connect with backoff (``_ensure_connected``, ``_attempt_connect``),
    close (``_close``), and one operation (``_run``): send all of a message,
    then receive until a reader (:mod:`socs_tcp.core.readers`) finds a
    complete frame in the buffer, all under one
    :class:`~socs_tcp.core.deadline.Deadline`.  ``_round_trip`` is the
    write-then-read-until of ``query`` and ``wrnrd_until``: the common case
    in one frame, handing over to ``_run`` where it leaves that case.  Bulk
    reads go straight into the caller's buffer (``_transfer_into``).

Goals
    * One deadline per operation bounds connect, send, receive and match.
    * Every failure is a :class:`~socs_tcp.errors.LinkError` subclass, and a
      timeout is told apart from a dead link.
    * The common round trip (one write, one read that completes the reply)
      costs as few system calls and Python frames as readable code allows.

Plan
    This is the only module with a fast path; see "Why it is shaped this
    way" below.  :class:`Connection` is a base class, not a separate object,
    so ``TCPInterface`` keeps the SOCS attributes (``comm``, ``timeout``) and
    hooks (``_connect``, ``_reset``) that drivers written for ``socs.tcp``
    override: the connection calls those hooks, and ``TCPInterface``
    implements them with ``_open_socket`` and ``_reconnect_now`` here.
    Callers hold ``self.lock`` around everything below ``_run``.

Why it is shaped this way
    A small round trip on loopback costs a few microseconds of kernel time,
    so each system call and Python call on the path shows in the figures
    (``bench/roundtrip.py``, ``docs/benchmarks.rst``).  The common case is
    one write and one read that completes the reply, and it is written for
    that:

    * ``_round_trip`` does that case in one frame, with the deadline kept
      as a float: on a connected socket whose kernel timeouts already suit
      the operation's budget, with nothing buffered or waiting, one
      terminator, no recorder and no traffic logging, it writes, waits and
      reads itself.  Each layer's call frame costs about as much as a
      system call, and the general path takes about ten of them; this one
      takes none.  At the first step that leaves the case (a short write, a
      timed wait for the chooser below, a reply in pieces, the kernel
      timeout running out) it hands the operation, with its
      :class:`~socs_tcp.core.deadline.Deadline` and the bytes already
      written, to ``_run``, which carries on from there.  So there is one
      way each thing is done, and ``tests/test_round_trip.py`` drives every
      hand-over.

    * The reply is waited for in ``read(2)`` itself, on a blocking
      descriptor whose ``SO_RCVTIMEO`` comes from the operation's deadline:
      one system call per wait, where ``poll(2)`` then ``read(2)`` (and
      CPython's ``recv`` on a socket with a timeout) make two.  The kernel
      timeout is set to 90 % of what is left and reused while it lies between
      half of that and all of it, so operations with the same budget make no
      ``setsockopt`` call; a wait that ends early is made again with what is
      left.  The kernel rounds these timeouts up to clock ticks, so the last
      ``TICK_MARGIN`` (20 ms) before a deadline is waited in ``poll(2)``,
      which keeps the deadline to about a millisecond.  ``SO_SNDTIMEO``
      bounds a send the same way.  Where these options cannot be used
      (Windows), every wait is ``poll(2)``.
    * The first wait after a send may spin first: ``poll(0)`` in a loop for
      up to ``spin_wait`` (50 µs), then the blocking read.  A peer on
      another CPU that answers within microseconds then finds this CPU
      still running, and the reply costs no idle wake-up, which on a virtual
      machine is as dear as the rest of the round trip.  Spinning is wrong
      for a peer on the same CPU, a busy machine or a slow device, so
      :class:`~socs_tcp.core.spin.SpinChooser` decides from this link's own
      measured waits; most waits are not even timed (``_spin_skip``).
    * ``comm`` keeps its Python timeout (``comm.gettimeout() == timeout``, as
      in SOCS): only its descriptor is made blocking, so a driver's own calls
      on ``comm`` still poll with that timeout before each call.  A driver
      that calls ``comm.settimeout()`` itself makes the descriptor
      non-blocking again; the first read that finds nothing notices and
      makes it blocking (``_keep_blocking``), so no wait spins on ``read(2)``.
    * One ``poll(0)`` before each send notices a device that closed the
      connection since the last operation, so a restarted device costs no
      failed operation; it is the only other system call besides the write
      and the read.
    * The deadline is made once per operation and read as a float on the
      path; the readers are bound methods of the buffer called with one
      argument; no closure, cache or alias stands between the call and the
      buffer.
    * What the path checks costs no call where a test does: one identity
      test stands for the whole set-up of a socket (``_ready_sock``: poll
      object, Python timeout, blocking descriptor, all made by
      ``_prepare``); the buffer is tested through its ``bytearray``; the
      lock is taken with ``acquire()`` and ``release()``, because a
      ``with`` block binds ``__enter__`` and ``__exit__`` on each entry,
      which costs as much again as taking the lock.
    * The text layer above (``TCPInterface.query`` and ``wrnrd_until``)
      encodes, picks the terminators and decodes around ``_round_trip``,
      which returns the frame alone.  Parsing an ``eot`` costs about as
      much as a system call, and a driver passes the same literal each
      time, so the link keeps the last ``str`` or ``bytes`` ``eot`` and
      its terminators (``TCPInterface._terminators``).
    * ``recv(n)`` and bulk reads skip the buffer: one ``read(2)`` of up to
      ``n`` bytes is handed over as it is, and ``readinto`` fills the
      caller's memory straight from the socket.
"""

import logging
import math
import os
import select
import socket
import struct
import sys
import threading
import time

from ..core.buffer import ReceiveBuffer
from ..core.checks import format_host_port
from ..core.codec import format_traffic
from ..core.deadline import Deadline
from ..core.readers import describe
from ..core.spin import SpinChooser
from ..core.stats import LinkStats
from ..errors import ConnectFailedError, LinkError, LinkTimeoutError, PeerClosedError, ReadOverflowError

__all__ = ["Connection"]

log = logging.getLogger("socs_tcp.interface")  # one logger for the link, the name the docs promise

_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
#: wait for replies in a blocking read(2) bounded by SO_RCVTIMEO (see the
#: header); elsewhere (Windows takes a DWORD there), wait in poll(2)
BLOCKING_WAIT = sys.platform.startswith(("linux", "darwin", "freebsd"))
_TIMEVAL = struct.Struct("@ll")
#: the kernel rounds SO_RCVTIMEO up to whole clock ticks (up to 10 ms): the
#: last TICK_MARGIN seconds before a deadline are waited in poll(2), whose
#: millisecond timeout keeps the deadline to within about a millisecond
TICK_MARGIN = 0.02


class Connection:
    """Socket ownership, connect policy and the operation skeleton of a link.

    A base class of :class:`~socs_tcp.TCPInterface`, which sets the
    attributes read here (``ip_address``, ``port``, ``timeout``,
    ``connect_timeout``, ``family``, ``keepalive``, ``nodelay``,
    ``reconnect_policy``, ``drain_before_query``, ``close_on_timeout``,
    ``max_read_size``, ``buffer_size``, ``spin_wait``, ``name``) and the hooks
    ``_connect(address)`` and ``_reset()``, then calls
    :meth:`_init_connection`.

    Those attributes and the connection's own state are slots.  CPython
    (3.11) keeps an instance's ``__dict__`` in its compact shared-key form
    for up to 30 attributes; past that, every ``self.method()`` call looks
    the method up in dictionaries, about 0.3 µs per round trip, a tenth of
    its Python.  So the subclass's ``__dict__`` holds only the text layer's
    few attributes and whatever a driver adds (about twenty more keep the
    compact form), as it would on ``socs.tcp``.
    """

    __slots__ = (
        # set by the subclass, read here
        "ip_address", "port", "timeout", "connect_timeout", "family", "keepalive", "nodelay",
        "reconnect_policy", "drain_before_query", "close_on_timeout", "max_read_size", "buffer_size",
        "spin_wait", "name",
        # the connection's own state (see _init_connection)
        "comm", "lock", "_buffer", "_stats", "_failures", "_next_attempt", "_last_connect_error", "_warned",
        "_ready_sock", "_poll", "_timeout_value", "_debug", "_op_deadline", "_blocking_wait", "_rcv_timeo",
        "_snd_timeo", "_spin", "_spin_next", "_spin_skip", "_sent", "_recorder", "_connect_recorded",
    )

    def _init_connection(self):
        # in-process recorder (TCPInterface(record=...)); None: nothing recorded, one check per chunk
        self._recorder = None
        # set by a _connect hook that talked to the device (a device file's
        # init sequence) and recorded the connect event and that traffic itself
        self._connect_recorded = False
        self.lock = threading.RLock()
        self._buffer = ReceiveBuffer(self.max_read_size)
        self._stats = LinkStats()
        self._failures = 0            # consecutive failed connection attempts
        self._next_attempt = 0.0      # monotonic time before which no attempt is made
        self._last_connect_error = None
        self._warned = False          # a failure streak has been logged at WARNING
        self._ready_sock = None       # the socket _prepare set up: self._poll watches it ...
        self._poll = None
        self._timeout_value = None    # ... and its timeout is this
        self._debug = False           # traffic logging on, decided once per operation
        self._op_deadline = None      # the Deadline of the operation in progress (under the lock)
        self._blocking_wait = BLOCKING_WAIT
        self._rcv_timeo = None        # SO_RCVTIMEO / SO_SNDTIMEO of _ready_sock, seconds (math.inf:
        self._snd_timeo = None        # none; None: unknown, and always None with the poll wait)
        self._spin = SpinChooser(self.spin_wait) if self.spin_wait else None
        self._spin_next = False       # the next reply wait spins first (the chooser's answer) ...
        self._spin_skip = 0           # ... and this many after it are not timed
        self._sent = False            # a send since the last wait: the next wait is a reply wait

    # ------------------------------------------------------------------
    # connecting (with the policy's backoff) and closing
    def _connect_limit(self):
        """How long one connection attempt may take: ``connect_timeout``,
        cut to what is left of the current operation's deadline."""
        deadline = self._op_deadline
        return self.connect_timeout if deadline is None else deadline.bound(self.connect_timeout)

    def _open_socket(self, address):
        """Open a socket to ``address`` (``(host, port)``) within
        :meth:`_connect_limit`: the body of the SOCS hook ``_connect``.

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
        if self._recorder is not None:
            if self._connect_recorded:      # the _connect hook recorded it, with its own traffic
                self._connect_recorded = False
            else:
                self._recorder.on_connect(format_host_port(self.ip_address, self.port))
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
        if self._recorder is not None:
            self._recorder.on_close(reason or "closed")
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

    def _reconnect_now(self):
        """Close the connection and make one new attempt at once: the body
        of the SOCS hook ``_reset``.  Honours the policy's cool-down by
        waiting for it, if the operation's deadline leaves time.
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

    # ------------------------------------------------------------------
    # one operation: send, then receive until a reader finds a frame
    def _link_failed(self, error):
        """Count a failed operation and log the start of a failure streak."""
        self._stats.failure(timeout=isinstance(error, LinkTimeoutError))
        log.log(logging.DEBUG if self._warned else logging.WARNING, "%s", error)
        self._warned = True

    def _run(self, send, extract, arg, what, timeout, deadline=None, written=0):
        """Optionally send ``send``, then receive until ``extract(arg)``
        returns something other than ``None``, and return that.  ``what``
        names the kind of read for error messages (see
        :func:`~socs_tcp.core.readers.describe`).

        :meth:`_round_trip` hands an operation over part-way with its
        ``deadline`` and the number of bytes of ``send`` it ``written``
        already (all of them: only the reply is still to come)."""
        with self.lock:
            if deadline is None:
                deadline = Deadline.start(timeout, self.timeout)  # the one check of the per-call timeout
            self._op_deadline = deadline
            self._debug = log.isEnabledFor(logging.DEBUG)
            try:
                if send is not None and written < len(send):
                    if self.drain_before_query and extract is not None and not written:
                        self._discard_stale()
                    self._send_bytes(send, deadline, written)
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

    def _round_trip(self, data, terms, timeout):
        """Write ``data``, then read up to the earliest of ``terms``; returns
        the frame, as ``_run(data, maybe_extract_until, terms, "until",
        timeout)[0]`` does.

        This is the common round trip in one frame (see the header): a
        connected, set-up socket, nothing buffered or waiting, one
        terminator, one ``write(2)`` that takes all of ``data`` and one
        untimed reply wait whose ``read(2)`` holds the terminator.  At the
        first step that leaves that case, the operation goes on in
        :meth:`_run` from where it is, under the same deadline, so both
        paths behave the same.
        """
        lock = self.lock
        lock.acquire()    # not "with": acquire() and release() are half the cost here
        try:
            t = self.timeout if timeout is None else Deadline.budget(timeout, None)  # the one check
            started = time.monotonic()
            sock = self.comm
            budget = -1.0 if t is None else t - TICK_MARGIN
            snd = self._snd_timeo
            rcv = self._rcv_timeo
            if (sock is None or sock is not self._ready_sock or self._timeout_value != self.timeout
                    or snd is None or not budget * 0.5 <= snd <= budget
                    or rcv is None or not budget * 0.5 <= rcv <= budget
                    or len(terms) != 1 or self._buffer.data or self._recorder is not None
                    or self._poll.poll(0) or log.isEnabledFor(logging.DEBUG)):
                return self._hand_over(data, terms, t, started, 0)
            fd = sock.fileno()
            try:
                sent = os.write(fd, data)
            except OSError:
                sent = 0    # nothing was written; _run writes again and handles the error
            if sent != len(data):
                return self._hand_over(data, terms, t, started, sent)
            self._stats.bytes_out += sent
            self._sent = False
            if self._spin is not None:
                if not self._spin_skip:
                    # a timed wait, for the chooser: _fill times it
                    self._sent = True
                    return self._hand_over(data, terms, t, started, sent)
                self._spin_skip -= 1
                if self._spin_next:
                    self._spin_for(started + t)
            term = terms[0]
            size = self.buffer_size
            limit = self.max_read_size
            try:
                reply = os.read(fd, size if size < limit else limit)
            except (BlockingIOError, InterruptedError):
                self._keep_blocking(fd)
                reply = b""
                pos = -1
            except OSError as e:
                error = self._receive_failed(e, "until", terms)
                self._link_failed(error)
                raise error from e
            else:
                if not reply:
                    error = self._peer_closed("until", terms)
                    self._link_failed(error)
                    raise error
                self._stats.bytes_in += len(reply)
                pos = reply.find(term)
            if pos < 0:
                # no reply yet (SO_RCVTIMEO ran out) or only part of it
                if reply:
                    self._buffer.feed(reply)
                return self._hand_over(data, terms, t, started, sent)
            end = pos + len(term)
            if end != len(reply):
                self._buffer.feed(reply[end:])  # bytes after the terminator stay buffered
            now = time.monotonic()
            self._stats.success(now - started, now)
            self._warned = False
            return reply[:pos]
        finally:
            lock.release()

    def _hand_over(self, data, terms, timeout, started, written):
        """Carry a round trip on in :meth:`_run`, under the deadline it began
        with (``timeout`` already checked, from ``started``), with
        ``written`` bytes of ``data`` already sent; returns the frame."""
        return self._run(data, self._buffer.maybe_extract_until, terms, "until", None,
                         Deadline(timeout, started=started), written)[0]

    def _spin_for(self, end):
        """Spin on ``poll(0)`` until input is waiting, for up to the spin
        window or until ``end`` (a ``time.monotonic()`` reading, or
        ``None``), whichever is sooner."""
        stop = time.monotonic() + self._spin.window
        if end is not None and stop > end:
            stop = end
        poll = self._poll.poll
        while not poll(0) and time.monotonic() < stop:
            pass

    def _fill(self, deadline, what, arg=None, into=None, size=0):
        """Receive more bytes, waiting until ``deadline``: into the buffer,
        straight into the writable memoryview ``into`` (returns the count in
        both cases), or, with ``size``, up to ``size`` bytes returned as
        ``bytes`` past the buffer (``0`` after a wake-up without data)."""
        sock = self.comm or self._ensure_connected()
        room = self.max_read_size - len(self._buffer)
        if into is None and room <= 0 and not size:
            self._overflow()
        if sock is not self._ready_sock or self._timeout_value != self.timeout:
            self._prepare(sock)
        end = deadline.end
        left = math.inf
        if end is not None:
            left = end - time.monotonic()
            if left <= 0:
                # past the deadline (or timeout=0): take what is already
                # waiting on the socket, but do not wait for more
                before = len(self._buffer)
                self._pull_pending()
                if len(self._buffer) > before:
                    return 0
                raise self._timeout(what, arg)
        timed = self._sent
        if timed:
            # the first wait after a send: maybe spin first, maybe time the
            # wait for the chooser (see the header)
            self._sent = False
            spin = self._spin_next
            if self._spin_skip:
                self._spin_skip -= 1
                timed = False
            else:
                started = time.monotonic()
            if spin:
                self._spin_for(end)
        budget = left - TICK_MARGIN
        if self._blocking_wait and budget > 0:
            # wait in read(2) itself, bounded by SO_RCVTIMEO (see the header)
            timeo = self._rcv_timeo
            if timeo is None or timeo > budget or timeo < budget * 0.5:
                self._rcv_timeo = self._set_timeo(sock, socket.SO_RCVTIMEO, budget)
        else:
            if not self._poll.poll(-1 if end is None else math.ceil(left * 1000)):
                raise self._timeout(what, arg)
        try:
            if into is None:
                data = os.read(sock.fileno(), size or min(self.buffer_size, room))
            else:
                count = os.readv(sock.fileno(), (into,))
                data = into[:count]
        except (BlockingIOError, InterruptedError):
            # SO_RCVTIMEO ran out, or a spurious wake-up: the caller checks
            # the buffer and calls again, which checks the deadline
            self._keep_blocking(sock.fileno())
            return 0
        except OSError as e:
            raise self._receive_failed(e, what, arg) from e
        if not data:
            raise self._peer_closed(what, arg)
        if timed:
            chooser = self._spin
            self._spin_next = chooser.update(spin, time.monotonic() - started)
            self._spin_skip = chooser.skip
        self._stats.bytes_in += len(data)
        if self._recorder is not None:
            self._recorder.on_recv(bytes(data))
        if self._debug:
            log.debug("%s < %s", self.name, format_traffic(bytes(data[:256])))
        if size:
            return data
        if into is None:
            self._buffer.feed(data)
        return len(data)

    def _keep_blocking(self, fd):
        """After a read that found nothing: if a driver's own
        ``comm.settimeout()`` or ``comm.setblocking()`` made the descriptor
        non-blocking, make it blocking again (its Python timeout stays as
        the driver set it); otherwise every reply wait would spin on
        ``read(2)`` until the reply came."""
        if self._blocking_wait and not os.get_blocking(fd):
            os.set_blocking(fd, True)

    def _receive_failed(self, error, what, arg):
        """Close the connection after a failed ``read(2)``; returns the error to raise."""
        self._close(f"receive failed: {error}")
        return LinkError(f"{self.name}: connection lost while waiting for {describe(what, arg)}: {error}")

    def _peer_closed(self, what, arg):
        """Close the connection the device closed; returns the error to
        raise, with the incomplete reply (which stays buffered)."""
        partial = self._buffer.peek()
        self._close("device closed the connection")
        return PeerClosedError(
            f"{self.name}: device closed the connection while waiting for {describe(what, arg)}"
            + (f" ({len(partial)} bytes of an incomplete reply: {format_traffic(partial, 64)})"
               if partial else ""), partial)

    def _prepare(self, sock):
        """Set ``sock`` up for this link's waits, once per socket and again
        after ``timeout`` changes.

        * ``self._poll`` watches it for input (data, end of stream or an
          error): one poll object per socket, so a wait costs one system
          call.
        * It gets the link's timeout, so drivers that use ``comm`` directly
          see the SOCS behaviour (``comm.gettimeout() == timeout``).
        * For the blocking wait its descriptor is made blocking again under
          Python's back: Python's own calls on ``comm`` still poll with that
          timeout first, and ours block in the kernel, bounded by
          SO_RCVTIMEO / SO_SNDTIMEO, which are set again at the next wait.
        """
        poll = select.poll()
        poll.register(sock, select.POLLIN)
        sock.settimeout(self.timeout)
        if self._blocking_wait:
            os.set_blocking(sock.fileno(), True)
        self._poll = poll
        self._rcv_timeo = self._snd_timeo = None
        self._ready_sock = sock
        self._timeout_value = self.timeout

    def _readable(self, sock, wait):
        """Wait up to ``wait`` seconds (``None``: forever) for ``sock`` to be readable."""
        if sock is not self._ready_sock or self._timeout_value != self.timeout:
            self._prepare(sock)
        return bool(self._poll.poll(-1 if wait is None else math.ceil(wait * 1000)))

    @staticmethod
    def _set_timeo(sock, option, budget):
        """Set the kernel timeout ``option`` of ``sock`` for a wait of at
        most ``budget`` seconds (``math.inf``: no limit); returns the value
        set: 90 % of ``budget``, so that the next operations, which have
        about the same budget, can keep it (a wait that ends early is simply
        made again with what is left)."""
        if budget == math.inf:
            value, packed = math.inf, _TIMEVAL.pack(0, 0)  # 0 means no limit to the kernel
        else:
            value = budget * 0.9
            usec = max(1, int(value * 1e6))  # never 0, which would mean no limit
            packed = _TIMEVAL.pack(usec // 1_000_000, usec % 1_000_000)
        sock.setsockopt(socket.SOL_SOCKET, option, packed)
        return value

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
            if self._recorder is not None:
                self._recorder.on_recv(data)
            if self._debug:
                log.debug("%s < %s", self.name, format_traffic(data))
            self._buffer.feed(data)

    def _send_bytes(self, data, deadline, written=0):
        """Send all of ``data`` before ``deadline``, of which the first
        ``written`` bytes are already on this connection; on a dead
        connection reconnect once and resend all of it."""
        sock = self.comm
        if written:
            pass    # the connection was checked before the first bytes went
        elif sock is None or sock is not self._ready_sock or self._poll.poll(0):
            # something is waiting (stale bytes or end of stream): take it
            # first, so a device that closed the connection is noticed now
            self._pull_pending()
            sock = self._ensure_connected()
        try:
            self._sendall(sock, data, deadline, written)
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

    def _sendall(self, sock, data, deadline, written=0):
        """Write all of ``data`` before ``deadline``, one write(2) in the
        common case; the first ``written`` bytes are already written.

        Raises:
            TimeoutError: the device stopped reading before all was sent.
            OSError: the connection is broken.
        """
        if written:
            self._write_rest(sock, memoryview(data)[written:], deadline)
            self._sent_all(data)
            return
        if sock is not self._ready_sock or self._timeout_value != self.timeout:
            self._prepare(sock)
        if self._debug:
            log.debug("%s > %s", self.name, format_traffic(data))
        blocking = self._blocking_wait
        if blocking:
            # a blocking write(2) takes all of a message that fits at once;
            # SO_SNDTIMEO bounds it when the device stops reading
            budget = deadline.end
            budget = math.inf if budget is None else budget - time.monotonic() - TICK_MARGIN
            if budget > 0:
                timeo = self._snd_timeo
                if timeo is None or timeo > budget or timeo < budget * 0.5:
                    self._snd_timeo = self._set_timeo(sock, socket.SO_SNDTIMEO, budget)
            else:
                blocking = False  # too close to the deadline: MSG_DONTWAIT, then poll
        try:
            # without the blocking wait the descriptor is non-blocking when
            # the socket has a timeout; without one, MSG_DONTWAIT does the same
            sent = (os.write(sock.fileno(), data) if blocking or (self.timeout is not None and not self._blocking_wait)
                    else sock.send(data, _DONTWAIT))
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent != len(data):
            self._write_rest(sock, memoryview(data)[sent:], deadline)
        self._sent_all(data)

    def _sent_all(self, data):
        """Account for ``data``, all written: count it, record it, and make
        the next wait a reply wait."""
        self._stats.bytes_out += len(data)
        self._sent = self._spin is not None
        if self._recorder is not None:
            self._recorder.on_send(bytes(data))

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
    # discarding what arrived
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

    # ------------------------------------------------------------------
    # past the buffer: recv() and bulk transfers
    def _receive_some(self, n, timeout):
        """Up to ``n`` bytes: buffered ones first, else one read(2) of up to
        ``n`` bytes (not ``buffer_size``), handed over without going through
        the buffer, as a driver's ``recv()`` loop expects."""
        with self.lock:
            deadline = Deadline.start(timeout, self.timeout)
            self._op_deadline = deadline
            self._debug = log.isEnabledFor(logging.DEBUG)
            buffer = self._buffer
            try:
                data = None
                while not data:
                    data = buffer.extract_some(n) if buffer else self._fill(deadline, "data", None, size=n)
            except LinkError as e:
                self._link_failed(e)
                raise
            finally:
                self._op_deadline = None
            self._stats.success(deadline.elapsed())
            self._warned = False
            return data

    def _transfer_into(self, view, timeout):
        """Fill all of the writable byte memoryview ``view`` before the
        deadline of ``timeout``: bytes already buffered first, then straight
        from the socket.  Returns its length."""
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
