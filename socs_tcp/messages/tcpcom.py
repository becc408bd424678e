"""Message links in the style of the ``tcpcom`` library: a one-client server and a client.

:class:`TCPServer` and :class:`TCPClient` exchange text messages terminated by
``"\\0"`` and report everything that happens through one callback,
``state_changed(state, msg)``.  They keep the names, states, callback order and
camelCase methods of the ``tcpcom`` library used in teaching and in small lab
set-ups, so scripts written for it run unchanged, and they fix what its Python
ports get wrong:

* framing is done by :class:`~socs_tcp.core.framing.MessageFramer`: several
  messages in one read, a message split across reads and a multi-byte
  character cut between reads all come out as whole messages;
* ``send_message(msg, response_time)`` really returns the reply, exactly once;
* ``connect()`` knows at once whether the server took the connection or is
  occupied (see *Protocol* below) instead of waiting a fixed two seconds;
* a message containing ``"\\0"`` raises :class:`ValueError` and nothing is sent;
* a callback that raises is logged with its traceback and the link goes on;
* no ``print``: everything goes to the ``socs_tcp.tcpcom`` logger;
* threads are named daemon threads, joined with a deadline by ``disconnect()``
  and ``terminate()``; sockets are closed gracefully so the last message sent
  before a disconnect is not lost to a connection reset.

Protocol
    On the wire a message is its UTF-8 text followed by one ``0x00`` byte, as
    in ``tcpcom``.  A server takes one client at a time.  To let a client tell
    "accepted" from "occupied" without guessing from a delay, a
    :class:`TCPServer` sends one reserved frame on each new connection before
    anything else:

    * :data:`HANDSHAKE_ACCEPTED` (``"\\x06tcpcom:accepted"``) to the client it
      takes;
    * :data:`HANDSHAKE_OCCUPIED` (``"\\x15tcpcom:occupied"``) to any other
      client, followed by an orderly close.

    A :class:`TCPClient` reads the first frame before reporting anything:

    ========================================  ===================================
    first thing received after connecting     result of ``connect()``
    ========================================  ===================================
    :data:`HANDSHAKE_ACCEPTED`                ``CONNECTED``, ``True``
    :data:`HANDSHAKE_OCCUPIED`                ``SERVER_OCCUPIED``, ``False``
    an orderly close (end of stream)          ``SERVER_OCCUPIED``, ``False``
                                              (how plain ``tcpcom`` refuses)
    any other message                         ``CONNECTED``, ``True``; the message
                                              is then delivered as ``MESSAGE``
    a connection reset                        ``CONNECTION_FAILED``, ``False``
    nothing within ``handshake_timeout``      ``CONNECTED``, ``True`` (a plain
                                              server that says nothing)
    ========================================  ===================================

    The reserved frames are only interpreted as the first frame of a
    connection; later frames with the same text are ordinary messages.

Interoperability with plain ``tcpcom`` peers
    * A plain ``tcpcom`` client talking to a :class:`TCPServer` receives the
      acceptance frame as its first ``MESSAGE``.  Create the server with
      ``handshake=False`` to send no reserved frame at all; it then behaves on
      the wire exactly like a plain ``tcpcom`` server (a refused client is
      just closed).
    * A :class:`TCPClient` talking to a plain ``tcpcom`` server (or to a
      :class:`TCPServer` with ``handshake=False``) cannot be told "accepted"
      by a frame, so ``connect()`` waits up to ``handshake_timeout`` (2 s by
      default, the delay the original uses) for either a message or the
      close that means "occupied".  A server that accepts and immediately
      closes without sending anything therefore looks occupied.

Replies and the ``MESSAGE`` callback
    Every message received is delivered exactly once.  While
    ``send_message(msg, response_time)`` waits, the next message received is
    its reply: it is returned by that call and is *not* passed to the
    ``MESSAGE`` callback.  Every other message goes to the callback, in the
    order received.  If the wait times out (``None`` is returned), the reply
    is still owed: the next message received within ``late_reply_window``
    seconds is taken as that late reply, passed to the callback and never
    returned to a later request.  Without message ids this is the only safe
    rule; its cost is that a request the server never answers makes the next
    request return ``None`` as well, until ``late_reply_window`` has passed.

Sending when no peer is connected
    ``send_message`` returns ``False`` (``None`` for a request with a
    ``response_time``) and sends nothing; it does not raise, as in
    ``tcpcom``.  A send that fails half-way closes the connection (the peer
    sees the end of the stream and drops the incomplete frame), so a partial
    message is never followed by another one.  Bad input (a non-``str``
    message, ``"\\0"`` in the message, a bad ``response_time``) always raises
    :class:`TypeError` or :class:`ValueError`, connected or not.

Threads and callbacks
    Callbacks run in one thread per object (``tcpcom-...-events``), one at a
    time and in order; ``CONNECTING``, ``CONNECTION_FAILED``,
    ``SERVER_OCCUPIED`` and ``CONNECTED`` of a client, and ``PORT_IN_USE`` of
    a server, are called in the thread that called ``connect()`` or the
    constructor, before it returns.  Because reading the socket happens in
    another thread (``tcpcom-...-io``), a callback may itself call
    ``send_message(msg, response_time)`` and get the reply.  Messages not yet
    delivered when ``disconnect()`` or ``terminate()`` is called are
    discarded (logged at DEBUG).
"""

import errno
import logging
import queue
import selectors
import socket
import threading
import time
from collections import deque
from importlib.metadata import PackageNotFoundError, version

from ..core.checks import check_bool, check_host, check_port, check_seconds, format_host_port
from ..core.codec import format_traffic
from ..core.deadline import Deadline
from ..core.framing import FrameDecodeError, MessageFramer
from ..errors import ReadOverflowError

__all__ = ["TCPServer", "TCPClient", "HANDSHAKE_ACCEPTED", "HANDSHAKE_OCCUPIED"]

log = logging.getLogger("socs_tcp.tcpcom")  # the name the docs promise

#: First frame a :class:`TCPServer` sends to the client it accepts.
HANDSHAKE_ACCEPTED = "\x06tcpcom:accepted"
#: First (and only) frame a :class:`TCPServer` sends to a client it refuses.
HANDSHAKE_OCCUPIED = "\x15tcpcom:occupied"

_TERMINATOR = "\0"
_RECV_SIZE = 65536
# How long disconnect()/terminate() wait for a thread, beyond the linger time.
_JOIN_DEADLINE = 5.0


def _library_version():
    try:
        return version("socs_tcp")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0+unknown"


# ----------------------------------------------------------------------------
# argument checks


def _pick(name, value, alias, alias_value, default):
    """Merge a snake_case argument with its camelCase alias."""
    if value is not None and alias_value is not None:
        raise TypeError(f"give either {name} or {alias}, not both")
    if value is not None:
        return value
    if alias_value is not None:
        return alias_value
    return default


def _check_callback(callback):
    if callback is not None and not callable(callback):
        raise TypeError(f"state_changed must be a callable taking (state, msg) or None, "
                        f"got {type(callback).__name__}: {callback!r}")
    return callback


# ----------------------------------------------------------------------------
# shared plumbing


class _Link:
    """One connected socket with its framer.

    Only the thread that reads the socket closes it; other threads may send
    (serialised by ``send_lock``) and shut it down.  ``local_close`` marks a
    connection that this side is closing: nothing more is sent or delivered.
    """

    __slots__ = ("sock", "framer", "peer", "name", "eof", "ended", "send_lock", "_fd_lock", "closed", "local_close",
                 "first")

    def __init__(self, sock, framer, peer, name, eof):
        self.sock = sock
        self.framer = framer
        self.peer = peer
        self.name = name
        # why the connection ended when the peer closes it, and why it ended (None while open)
        self.eof = eof
        self.ended = None
        self.send_lock = threading.Lock()
        self._fd_lock = threading.Lock()
        self.closed = threading.Event()
        self.local_close = False
        # a client checks the first frame for a handshake it did not wait for
        self.first = False

    def send(self, data, timeout=None):
        """Send one encoded frame; ``False`` if the link is closing or the send failed.

        ``timeout`` bounds the whole send (waiting for another sender
        included) when it is shorter than the socket's own send timeout: a
        request gives what is left of its ``response_time``.
        """
        if not self.send_lock.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("%s: another send to %s kept the connection busy for %.3g s; not sent", self.name, self.peer,
                        timeout)
            return False
        try:
            if self.local_close or self.closed.is_set():
                return False
            default = None
            try:
                if timeout is not None:
                    default = self.sock.gettimeout()
                    if default is None or timeout < default:
                        self.sock.settimeout(max(timeout, 1e-3))
                    else:
                        default = None
                self.sock.sendall(data)
            except OSError as exc:
                log.warning("%s: sending to %s failed (%s); closing the connection", self.name, self.peer, exc)
                self.shutdown(socket.SHUT_RDWR)
                return False
            finally:
                if default is not None:
                    try:
                        self.sock.settimeout(default)
                    except OSError:
                        pass
        finally:
            self.send_lock.release()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: sent to %s: %s", self.name, self.peer, format_traffic(data))
        return True

    def receive(self):
        """Read the socket once and frame what came: the one receive step of servers and clients.

        Returns:
            ``(messages, ended)``: the messages completed by this read (bad
            frames are logged and skipped), and ``None`` while the connection
            is open or the reason it ended (the peer closed it, it broke, or
            the peer sent a message longer than ``max_message_size``).
            Nothing to read yet (a socket timeout, a non-blocking socket) is
            ``([], None)``.
        """
        if self.ended is not None:
            return [], self.ended
        try:
            data = self.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return [], None
        except OSError as exc:
            self.ended = f"connection error: {exc}"
            return [], self.ended
        if not data:
            self.ended = self.eof
            return [], self.ended
        if self.local_close:
            log.debug("%s: discarded %d bytes from %s received after the disconnect", self.name, len(data), self.peer)
            return [], None
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s: received from %s: %s", self.name, self.peer, format_traffic(data))
        try:
            self.framer.feed(data)
        except ReadOverflowError as exc:
            log.error("%s: %s: %s; closing the connection", self.name, self.peer, exc)
            self.ended = "message too long"
        return self.messages(), self.ended

    def messages(self):
        """The complete messages buffered so far; frames that are not valid text are logged and skipped."""
        framer = self.framer
        out = []
        while True:
            try:
                msg = framer.next_message()
            except FrameDecodeError as exc:
                self.first = False
                log.warning("%s: dropped a frame from %s: %s", self.name, self.peer, exc)
                continue
            if msg is None:
                return out
            out.append(msg)

    def shutdown(self, how):
        with self._fd_lock:
            if self.closed.is_set():
                return
            try:
                self.sock.shutdown(how)
            except OSError:  # not connected any more
                pass

    def close(self):
        # shutting down first wakes a sender blocked in sendall, so the lock is free soon
        self.shutdown(socket.SHUT_RDWR)
        with self.send_lock, self._fd_lock:
            if not self.closed.is_set():
                self.sock.close()
                self.closed.set()


class _Dispatcher:
    """A thread that calls ``owner._notify(state, msg)`` for queued events, in order."""

    def __init__(self, owner, name):
        self._owner = owner
        self._queue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def put(self, state, msg, link=None):
        self._queue.put((state, msg, link))

    def stop(self):
        self._queue.put(None)

    def _run(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            state, msg, link = item
            if link is not None and link.local_close:
                log.debug("%s: discarded message %.200r received before the disconnect", link.name, msg)
                continue
            self._owner._notify(state, msg)


def _join(thread, timeout, what):
    if thread is None or thread is threading.current_thread() or thread.ident is None:
        return
    thread.join(timeout)
    if thread.is_alive():
        log.warning("%s: thread %s still running after %.1f s", what, thread.name, timeout)


def _notify(self, state, msg):
    """Log a state change of ``self`` (a server or client) and call its callback."""
    if state == "MESSAGE":
        log.debug("%s: MESSAGE %.200r", self._name, msg)
    else:
        log.log(self._level, "%s: %s %s", self._name, state, msg)
    callback = self._state_changed
    if callback is None:
        return
    try:
        callback(state, msg)
    except Exception:
        log.exception("%s: state_changed(%r, %.200r) raised; the link goes on", self._name, state, msg)


def _get_version():
    """Return the version of this implementation (the ``socs_tcp`` version), as a string.

    Also available as ``getVersion()``, on the class or an instance.
    """
    return _library_version()


# ----------------------------------------------------------------------------
# server


class TCPServer:
    """A server that takes one client at a time and exchanges ``"\\0"``-terminated text messages.

    The server listens as soon as it is constructed; it accepts, reads and
    calls back in its own threads, so the constructor returns at once.

    ``state_changed(state, msg)`` is called with:

    ================  =================================================
    ``PORT_IN_USE``   the port (as a string): another socket holds it;
                      nothing is running and :meth:`is_terminated` is
                      ``True``.  Called before the constructor returns.
    ``LISTENING``     ``""``: waiting for a client (at start, and after
                      a client left or was dropped).
    ``CONNECTED``     the client's IP address.
    ``MESSAGE``       a message from the client (``str``).
    ``TERMINATED``    ``""``: :meth:`terminate` finished.
    ================  =================================================

    A second client is refused while one is connected; with ``handshake``
    it is told so (its :class:`TCPClient` reports ``SERVER_OCCUPIED``).

    Args:
        port: the TCP port to listen on; ``0`` picks a free one (see
            :attr:`port`).
        state_changed: the callback, or ``None``.
        is_verbose: log state changes at INFO instead of DEBUG (traffic is
            always logged at DEBUG).
        host: the address to listen on; loopback unless given
            (``"0.0.0.0"`` or ``""`` listens on every interface).
        handshake: send the reserved acceptance / occupied frames described
            in the module documentation.  ``False`` gives the plain
            ``tcpcom`` wire behaviour.
        send_timeout: how long :meth:`send_message` may block on a client
            that does not read, in seconds, before the connection is closed.
        linger: how long a dropped connection waits for the client to close
            its side (so the client reads everything sent), in seconds.
        encoding: the text encoding (ASCII-compatible).
        max_message_size: the longest message accepted, in bytes.  A client
            that sends more without a terminator is disconnected.
        backlog: the listen backlog.
        stateChanged: the ``tcpcom`` spelling of ``state_changed``.
        isVerbose: the ``tcpcom`` spelling of ``is_verbose``.

    Raises:
        TypeError: an argument of the wrong type, named in the message.
        ValueError: a bad value (port out of range, negative time,
            unknown host...), named in the message.
        OSError: the port cannot be bound for a reason other than being in
            use (for example a privileged port).
    """

    PORT_IN_USE = "PORT_IN_USE"
    LISTENING = "LISTENING"
    CONNECTED = "CONNECTED"
    MESSAGE = "MESSAGE"
    TERMINATED = "TERMINATED"

    def __init__(self, port=None, state_changed=None, is_verbose=None, *, host="127.0.0.1", handshake=True,
                 send_timeout=10.0, linger=1.0, encoding="utf-8", max_message_size=1 << 20, backlog=8,
                 stateChanged=None, isVerbose=None):
        if port is None:
            raise TypeError("TCPServer needs a port")
        self._port = check_port(port, lowest=0)
        self._state_changed = _check_callback(_pick("state_changed", state_changed, "stateChanged", stateChanged, None))
        verbose = check_bool(_pick("is_verbose", is_verbose, "isVerbose", isVerbose, False), "is_verbose")
        self._level = logging.INFO if verbose else logging.DEBUG
        if not isinstance(host, str):
            raise TypeError(f"host must be a str, got {type(host).__name__}: {host!r}")
        self._host = host.strip()[1:-1] if host.strip().startswith("[") else host.strip()
        self._handshake = check_bool(handshake, "handshake")
        self._send_timeout = check_seconds(send_timeout, "send_timeout", positive=True)
        self._linger = check_seconds(linger, "linger")
        if isinstance(backlog, bool) or not isinstance(backlog, int) or backlog < 1:
            raise ValueError(f"backlog must be an int >= 1, got {backlog!r}")
        self._framer_args = (_TERMINATOR, encoding, max_message_size)
        self._encoder = MessageFramer(*self._framer_args)  # validates encoding and size; used to encode only
        self._accepted = self._encoder.encode(HANDSHAKE_ACCEPTED)
        self._occupied = self._encoder.encode(HANDSHAKE_OCCUPIED)
        self._name = f"TCPServer[{format_host_port(self._host or '*', port)}]"

        self._lock = threading.Lock()
        self._current = None
        self._drops = []
        self._terminating = False
        self._io = None
        self._dispatcher = None
        self._listener = None

        try:
            infos = socket.getaddrinfo(self._host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except (socket.gaierror, UnicodeError) as exc:
            raise ValueError(f"cannot listen on host {host!r}: {exc}") from None
        family, kind, proto, _, sockaddr = infos[0]
        listener = socket.socket(family, kind, proto)
        try:
            # lets a new server bind the port at once after terminate(), despite TIME_WAIT
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(sockaddr)
            listener.listen(backlog)
            listener.setblocking(False)
        except OSError as exc:
            listener.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            self._terminating = True
            log.warning("%s: port %d is in use", self._name, port)
            self._notify(self.PORT_IN_USE, str(port))
            return
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._name = f"TCPServer[{format_host_port(self._host or '*', self._port)}]"
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._dispatcher = _Dispatcher(self, f"tcpcom-server-events[{self._port}]")
        self._io = threading.Thread(target=self._serve, name=f"tcpcom-server-io[{self._port}]", daemon=True)
        self._dispatcher.thread.start()
        self._io.start()

    def __repr__(self):
        if self.is_terminated():
            state = "terminated"
        else:
            state = "connected" if self.is_connected() else "listening"
        return f"<{self._name} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.terminate()

    @property
    def port(self):
        """The port listened on (the one picked by the system when created with ``port=0``)."""
        return self._port

    @property
    def host(self):
        """The address listened on."""
        return self._host

    # -- public API ----------------------------------------------------------

    def is_connected(self):
        """``True`` while a client is connected."""
        link = self._current
        return link is not None and not link.local_close

    def is_terminated(self):
        """``True`` once :meth:`terminate` was called, or if the port was in use."""
        return self._terminating

    def send_message(self, msg):
        """Send one message to the connected client; ``"\\0"`` is added.

        Returns:
            bool: ``True`` if the message was handed to the connection,
            ``False`` if no client is connected (nothing is sent) or the
            send failed (the connection is then closed).

        Raises:
            TypeError: ``msg`` is not a ``str``.
            ValueError: ``msg`` contains ``"\\0"``, cannot be encoded, or is
                longer than ``max_message_size``.  Nothing is sent.
        """
        data = self._encoder.encode(msg)
        link = self._current
        if link is None:
            log.debug("%s: no client connected; message not sent: %.200r", self._name, msg)
            return False
        return link.send(data)

    def disconnect(self):
        """Drop the connected client and go back to ``LISTENING``.

        The client is closed gracefully: everything sent before is delivered,
        then the server waits up to ``linger`` seconds for the client to close
        its side.  Messages received but not yet passed to the callback are
        discarded.  Does nothing if no client is connected.
        """
        with self._lock:
            link = self._current
            if link is None:
                return
            self._current = None
            link.local_close = True
            self._drops.append(link)
            self._dispatcher.put(self.LISTENING, "")
        log.log(self._level, "%s: disconnecting client %s", self._name, link.peer)
        link.shutdown(socket.SHUT_WR)
        self._wake()
        if not link.closed.wait(self._linger + _JOIN_DEADLINE):
            log.warning("%s: connection to %s not closed after %.1f s", self._name, link.peer,
                        self._linger + _JOIN_DEADLINE)

    def terminate(self):
        """Close the client connection and the listening socket, and stop the threads.

        The port is free when this returns: a new server can bind it at once.
        ``TERMINATED`` is the last callback.  Calling it again does nothing.
        Called from a callback, it returns before ``TERMINATED`` is delivered
        (the callback thread cannot wait for itself).
        """
        if self._io is None:
            return
        with self._lock:
            first = not self._terminating
            self._terminating = True
            # the I/O thread closes it; from now on nothing more is delivered
            if self._current is not None:
                self._current.local_close = True
        if first:
            log.log(self._level, "%s: terminating", self._name)
            self._wake()
        _join(self._io, self._linger + _JOIN_DEADLINE, self._name)
        _join(self._dispatcher.thread, _JOIN_DEADLINE, self._name)

    _notify = _notify
    get_version = staticmethod(_get_version)

    # tcpcom spellings
    sendMessage = send_message
    isConnected = is_connected
    isTerminated = is_terminated
    getVersion = get_version

    # -- the I/O thread --------------------------------------------------------

    def _wake(self):
        try:
            self._wake_w.send(b"\1")
        except OSError:  # already woken (buffer full) or already closed
            pass

    def _serve(self):
        sel = selectors.DefaultSelector()
        lingering = {}
        try:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            self._dispatcher.put(self.LISTENING, "")
            while True:
                with self._lock:
                    stop = self._terminating
                    drops, self._drops = self._drops, []
                now = time.monotonic()
                for link in drops:
                    if not link.closed.is_set():
                        lingering[link] = now + self._linger
                if stop:
                    break
                for link, deadline in list(lingering.items()):
                    if deadline <= now:
                        log.debug("%s: %s did not close within linger=%.1f s", self._name, link.peer, self._linger)
                        self._close(link, sel, lingering)
                timeout = max(0.0, min(lingering.values()) - now) if lingering else None
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept(sel, lingering)
                    elif key.fileobj is self._wake_r:
                        self._drain_wake()
                    else:
                        self._readable(key.data, sel, lingering)
        except Exception:
            log.exception("%s: the server thread failed; terminating", self._name)
        finally:
            self._shutdown(sel, lingering)

    def _drain_wake(self):
        try:
            while self._wake_r.recv(256):
                pass
        except OSError:
            pass

    def _accept(self, sel, lingering):
        try:
            sock, addr = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.error("%s: accept failed: %s", self._name, exc)
            return
        sock.settimeout(self._send_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        link = _Link(sock, MessageFramer(*self._framer_args), addr[0], self._name, "closed by the client")
        with self._lock:
            refuse = self._current is not None or self._terminating
            if not refuse:
                # hold the link until the acceptance frame is out, so it is the first frame
                link.send_lock.acquire()
                self._current = link
                self._dispatcher.put(self.CONNECTED, link.peer)
        sel.register(sock, selectors.EVENT_READ, link)
        if refuse:
            log.log(self._level, "%s: refused %s: a client is already connected", self._name, link.peer)
            if self._handshake:
                link.send(self._occupied)
            link.local_close = True
            link.shutdown(socket.SHUT_WR)
            lingering[link] = time.monotonic() + self._linger
            return
        try:
            if self._handshake:
                sock.sendall(self._accepted)
        except OSError as exc:  # the client is already gone; the read side sees it
            log.debug("%s: could not send the acceptance to %s: %s", self._name, link.peer, exc)
        finally:
            link.send_lock.release()

    def _readable(self, link, sel, lingering):
        messages, ended = link.receive()
        for msg in messages:
            self._dispatcher.put(self.MESSAGE, msg, link)
        if ended is not None:
            self._close(link, sel, lingering, ended)

    def _close(self, link, sel, lingering, reason=None):
        try:
            sel.unregister(link.sock)
        except (KeyError, ValueError):
            pass
        lingering.pop(link, None)
        pending = link.framer.pending
        if pending and not link.local_close:
            log.warning("%s: %s closed with an incomplete message; %d bytes discarded", self._name, link.peer, pending)
        link.close()
        with self._lock:
            if self._current is link:
                self._current = None
                log.log(self._level, "%s: client %s left (%s)", self._name, link.peer, reason)
                self._dispatcher.put(self.LISTENING, "")

    def _shutdown(self, sel, lingering):
        try:
            self._close_all(sel, lingering)
        except Exception:
            log.exception("%s: error while terminating", self._name)
        finally:
            self._dispatcher.put(self.TERMINATED, "")
            self._dispatcher.stop()

    def _close_all(self, sel, lingering):
        try:
            sel.unregister(self._listener)
        except (KeyError, ValueError):
            pass
        self._listener.close()  # frees the port
        with self._lock:
            self._terminating = True
            link, self._current = self._current, None
            drops, self._drops = self._drops, []
        now = time.monotonic()
        for other in ([link] if link is not None else []) + drops:
            other.local_close = True
            other.shutdown(socket.SHUT_WR)
            lingering[other] = now + self._linger
        # give clients a moment to read what was sent and close their side
        deadline = now + self._linger
        while lingering:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                if key.fileobj is self._wake_r:
                    self._drain_wake()
                else:
                    self._readable(key.data, sel, lingering)
        for other in list(lingering):
            self._close(other, sel, lingering)
        sel.close()
        self._wake_r.close()
        self._wake_w.close()


# ----------------------------------------------------------------------------
# client


class _Waiter:
    __slots__ = ("link", "reply", "event")

    def __init__(self, link):
        self.link = link
        self.reply = None
        self.event = threading.Event()


class TCPClient:
    """A client for a :class:`TCPServer` (or any ``tcpcom`` server).

    ``state_changed(state, msg)`` is called with:

    =====================  ==================================================
    ``CONNECTING``         ``"host:port"`` of the server: :meth:`connect`
                           started.
    ``CONNECTION_FAILED``  ``"host:port"``: refused, unreachable, timed out.
    ``SERVER_OCCUPIED``    ``"host:port"``: the server has another client.
    ``CONNECTED``          ``"host:port"``: the server took the connection.
    ``MESSAGE``            a message from the server (``str``) that is not
                           the reply to a waiting :meth:`send_message`.
    ``DISCONNECTED``       ``""``: the connection ended (either side closed
                           it, or it broke).
    =====================  ==================================================

    Args:
        ip_address: host name or IP address of the server.
        port: the server's TCP port.
        state_changed: the callback, or ``None``.
        is_verbose: log state changes at INFO instead of DEBUG (traffic is
            always logged at DEBUG).
        handshake_timeout: the longest :meth:`connect` waits, after the TCP
            connection is made, for the server's first frame (see the module
            documentation); it only matters with servers that do not send the
            acceptance frame.  ``0`` reports ``CONNECTED`` as soon as the TCP
            connection is made.
        late_reply_window: how long a reply that missed its ``response_time``
            is still expected, in seconds (``0``: not at all).
        send_timeout: how long a send may block on a server that does not
            read, in seconds, before the connection is closed.
        linger: how long :meth:`disconnect` waits for the server to close
            its side, in seconds.
        encoding: the text encoding (ASCII-compatible).
        max_message_size: the longest message accepted, in bytes.  A server
            that sends more without a terminator is disconnected.
        ipAddress: the ``tcpcom`` spelling of ``ip_address``.
        stateChanged: the ``tcpcom`` spelling of ``state_changed``.
        isVerbose: the ``tcpcom`` spelling of ``is_verbose``.

    Raises:
        TypeError: an argument of the wrong type, named in the message.
        ValueError: a bad value (port out of range, negative time...),
            named in the message.
    """

    CONNECTING = "CONNECTING"
    CONNECTION_FAILED = "CONNECTION_FAILED"
    SERVER_OCCUPIED = "SERVER_OCCUPIED"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    MESSAGE = "MESSAGE"

    def __init__(self, ip_address=None, port=None, state_changed=None, is_verbose=None, *, handshake_timeout=2.0,
                 late_reply_window=10.0, send_timeout=10.0, linger=1.0, encoding="utf-8", max_message_size=1 << 20,
                 ipAddress=None, stateChanged=None, isVerbose=None):
        address = _pick("ip_address", ip_address, "ipAddress", ipAddress, None)
        if address is None:
            raise TypeError("TCPClient needs the server's ip_address")
        if port is None:
            raise TypeError("TCPClient needs the server's port")
        self._host = check_host(address, "ip_address")
        self._port = check_port(port)
        self._state_changed = _check_callback(_pick("state_changed", state_changed, "stateChanged", stateChanged, None))
        verbose = check_bool(_pick("is_verbose", is_verbose, "isVerbose", isVerbose, False), "is_verbose")
        self._level = logging.INFO if verbose else logging.DEBUG
        self._handshake_timeout = check_seconds(handshake_timeout, "handshake_timeout")
        self._late_window = check_seconds(late_reply_window, "late_reply_window")
        self._send_timeout = check_seconds(send_timeout, "send_timeout", positive=True)
        self._linger = check_seconds(linger, "linger")
        self._framer_args = (_TERMINATOR, encoding, max_message_size)
        self._encoder = MessageFramer(*self._framer_args)
        self._address = format_host_port(self._host, self._port)
        self._name = f"TCPClient[{self._address}]"

        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._request_lock = threading.Lock()
        self._link = None
        self._connected = False
        self._connecting = False
        self._abort = False
        self._pending_sock = None
        self._receiver = None
        self._receiver_link = None
        self._dispatcher = None
        self._waiter = None
        self._owed = deque()

    def __repr__(self):
        state = "connected" if self._connected else ("connecting" if self._connecting else "disconnected")
        return f"<{self._name} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.disconnect()

    @property
    def address(self):
        """The server address, ``"host:port"``, as passed to the callbacks."""
        return self._address

    # -- public API ----------------------------------------------------------

    def is_connected(self):
        """``True`` while connected to the server."""
        return self._connected

    def is_connecting(self):
        """``True`` while :meth:`connect` is trying to connect."""
        return self._connecting

    def connect(self, timeout=10.0):
        """Connect to the server, blocking until the outcome is known.

        Reports ``CONNECTING`` and then one of ``CONNECTED``,
        ``CONNECTION_FAILED`` or ``SERVER_OCCUPIED``.  Returns at once with
        ``True`` (and no callback) if already connected.

        Args:
            timeout: the longest the whole attempt may take, in seconds
                (TCP connect plus the server's first frame).  ``None`` or
                ``0`` sets no limit of its own, as in ``tcpcom``: the
                system's connect timeout applies.

        Returns:
            bool: ``True`` if connected, ``False`` otherwise.

        Raises:
            TypeError: ``timeout`` is not a number.
            ValueError: ``timeout`` is negative or not finite.
        """
        timeout = check_seconds(timeout, "timeout", allow_none=True)
        if timeout == 0:
            timeout = None
        with self._connect_lock:
            with self._lock:
                if self._connected:
                    log.debug("%s: connect(): already connected", self._name)
                    return True
                self._abort = False
                self._connecting = True
            try:
                self._reap()
                return self._connect(timeout)
            finally:
                with self._lock:
                    self._connecting = False
                    self._pending_sock = None

    def disconnect(self):
        """Close the connection to the server; ``DISCONNECTED`` follows.

        Everything sent before is delivered: the client closes its sending
        side and waits up to ``linger`` seconds for the server to close.  A
        request waiting in :meth:`send_message` returns ``None``; messages
        not yet passed to the callback are discarded.  Returns once
        ``DISCONNECTED`` has been delivered, except when called from a
        callback (it is then delivered after that callback returns).  Does
        nothing if not connected; called during :meth:`connect`, makes it
        fail.
        """
        with self._lock:
            if self._connecting:
                self._abort = True
                if self._pending_sock is not None:
                    try:
                        self._pending_sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            link = self._link
            if link is not None and not link.local_close:
                link.local_close = True
                self._connected = False
                if self._waiter is not None:
                    self._waiter.event.set()
                log.log(self._level, "%s: disconnecting", self._name)
            receiver, receiver_link, dispatcher = self._receiver, self._receiver_link, self._dispatcher
        if link is not None:
            link.shutdown(socket.SHUT_WR)
        if receiver is not None and receiver is not threading.current_thread() and receiver.ident is not None:
            receiver.join(self._linger)
            if receiver.is_alive():
                # the server did not close its side: stop reading
                receiver_link.shutdown(socket.SHUT_RD)
                _join(receiver, _JOIN_DEADLINE, self._name)
        if dispatcher is not None:
            _join(dispatcher.thread, _JOIN_DEADLINE, self._name)

    def send_message(self, msg, response_time=0, *, responseTime=None):
        """Send one message to the server; ``"\\0"`` is added.

        Args:
            msg: the message, a ``str`` without ``"\\0"``.
            response_time: if ``> 0``, wait up to this many seconds for the
                server's next message and return it (it is then not passed to
                the ``MESSAGE`` callback; see the module documentation).  It
                is the deadline of the whole request: waiting for another
                request, sending (at most ``send_timeout``) and the reply.
            responseTime: the ``tcpcom`` spelling of ``response_time``.

        Returns:
            With ``response_time == 0``: ``True`` if the message was handed to
            the connection, ``False`` if not connected (nothing sent) or the
            send failed (the connection is then closed).  With
            ``response_time > 0``: the reply (``str``), or ``None`` if none
            came in time, the client is not connected, or the connection
            ended while waiting.

        Raises:
            TypeError: ``msg`` is not a ``str`` or ``response_time`` is not a
                number.
            ValueError: ``msg`` contains ``"\\0"``, cannot be encoded or is
                too long, or ``response_time`` is negative.  Nothing is sent.
        """
        if responseTime is not None:
            if response_time is None or isinstance(response_time, bool) or response_time != 0:
                raise TypeError("give either response_time or responseTime, not both")
            response_time = responseTime
        wait = check_seconds(response_time, "response_time")
        data = self._encoder.encode(msg)
        if wait == 0:
            link = self._link if self._connected else None
            if link is None:
                log.debug("%s: not connected; message not sent: %.200r", self._name, msg)
                return False
            return link.send(data)
        return self._request(data, msg, wait)

    _notify = _notify
    get_version = staticmethod(_get_version)

    # tcpcom spellings
    sendMessage = send_message
    isConnected = is_connected
    isConnecting = is_connecting
    getVersion = get_version

    # -- connecting ------------------------------------------------------------

    def _reap(self):
        """Wait for the threads of a previous connection (they are ending or ended)."""
        _join(self._receiver, _JOIN_DEADLINE, self._name)
        if self._dispatcher is not None:
            _join(self._dispatcher.thread, _JOIN_DEADLINE, self._name)

    def _fail(self, state, reason, sock=None):
        if sock is not None:
            with self._lock:
                self._pending_sock = None
            sock.close()
        log.log(self._level, "%s: %s", self._name, reason)
        with self._lock:
            self._connecting = False
        self._notify(state, self._address)
        return False

    def _connect(self, timeout):
        deadline = Deadline(timeout)
        self._notify(self.CONNECTING, self._address)
        try:
            sock = socket.create_connection((self._host, self._port), deadline.remaining())
        except OSError as exc:
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout} s"
            else:
                reason = exc.strerror or str(exc)
            return self._fail(self.CONNECTION_FAILED, f"cannot connect: {reason}")
        with self._lock:
            aborted = self._abort
            self._pending_sock = sock
        if aborted:
            return self._fail(self.CONNECTION_FAILED, "connect() interrupted by disconnect()", sock)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        link = _Link(sock, MessageFramer(*self._framer_args), self._address, self._name, "closed by the server")
        outcome, first = self._handshake(link, deadline)
        with self._lock:
            aborted = self._abort
        if aborted:
            return self._fail(self.CONNECTION_FAILED, "connect() interrupted by disconnect()", sock)
        if outcome == "occupied":
            return self._fail(self.SERVER_OCCUPIED, "the server is occupied by another client", sock)
        if outcome == "closed":
            return self._fail(self.SERVER_OCCUPIED, "the server closed the connection at once (occupied)", sock)
        if outcome == "failed":
            return self._fail(self.CONNECTION_FAILED, f"connection failed while waiting for the server: {first}", sock)

        sock.settimeout(self._send_timeout)
        link.first = outcome == "silent"
        dispatcher = _Dispatcher(self, f"tcpcom-client-events[{self._address}]")
        receiver = threading.Thread(target=self._receive, args=(link, first, dispatcher),
                                    name=f"tcpcom-client-io[{self._address}]", daemon=True)
        with self._lock:
            self._pending_sock = None
            self._link = link
            self._connected = True
            self._connecting = False
            self._waiter = None
            self._owed.clear()
            self._receiver, self._receiver_link, self._dispatcher = receiver, link, dispatcher
        receiver.start()
        if outcome == "silent":
            log.log(self._level, "%s: connected (the server sent nothing within handshake_timeout=%.1f s)",
                    self._name, self._handshake_timeout)
        self._notify(self.CONNECTED, self._address)
        # MESSAGE and DISCONNECTED callbacks start only after CONNECTED has returned
        dispatcher.thread.start()
        return True

    def _handshake(self, link, deadline):
        """Read the server's first frame, within ``handshake_timeout`` and the connect deadline.

        Returns:
            ``(outcome, messages or reason)``: ``"accepted"``, ``"occupied"``,
            ``"data"`` (the first frame was a message), ``"silent"``,
            ``"closed"`` or ``"failed"``, with the messages received so far
            (to deliver) or the reason of the failure.
        """
        limit = deadline.bound(self._handshake_timeout)
        until = Deadline(limit)
        while True:
            remaining = until.remaining()
            if remaining <= 0:
                return "silent", []
            link.sock.settimeout(remaining)
            messages, ended = link.receive()
            if ended is not None and ended != link.eof:
                return "failed", ended
            if messages:
                first = messages[0]
                if first == HANDSHAKE_ACCEPTED:
                    return "accepted", messages[1:]
                if first == HANDSHAKE_OCCUPIED:
                    return "occupied", []
                return "data", messages  # an end of stream after them is seen by the receiving thread
            if ended is not None:
                return "closed", []

    # -- receiving -------------------------------------------------------------

    def _receive(self, link, first, dispatcher):
        reason = "closed by the server"
        try:
            for msg in first:
                self._route(link, msg, dispatcher)
            while True:
                messages, ended = link.receive()
                for msg in messages:
                    self._take(link, msg, dispatcher)
                if ended is not None:
                    reason = ended
                    break
        except Exception:
            log.exception("%s: the receiving thread failed", self._name)
            reason = "internal error"
        finally:
            pending = link.framer.pending
            with self._lock:
                local = link.local_close
                if self._link is link:
                    self._link = None
                    self._connected = False
                if self._waiter is not None and self._waiter.link is link:
                    self._waiter.event.set()
            if pending and not local:
                log.warning("%s: connection ended with an incomplete message; %d bytes discarded", self._name, pending)
            if not local:
                log.log(self._level, "%s: connection ended (%s)", self._name, reason)
            link.close()
            dispatcher.put(self.DISCONNECTED, "")
            dispatcher.stop()

    def _take(self, link, msg, dispatcher):
        """One received message: a late handshake frame is not a message; the rest are routed."""
        if link.first:
            # connect() did not wait for the handshake frame; do not report it as a message
            link.first = False
            if msg == HANDSHAKE_ACCEPTED:
                log.debug("%s: acceptance frame arrived after CONNECTED", self._name)
                return
            if msg == HANDSHAKE_OCCUPIED:
                log.warning("%s: the server is occupied by another client; it will close this connection", self._name)
                return
        self._route(link, msg, dispatcher)

    def _route(self, link, msg, dispatcher):
        """Give ``msg`` to the waiting request, or to the MESSAGE callback."""
        with self._lock:
            if link.local_close:
                return
            owed = self._owed
            now = time.monotonic()
            while owed and owed[0] <= now:
                owed.popleft()
                log.debug("%s: stopped expecting a late reply", self._name)
            late = bool(owed)
            if late:
                owed.popleft()
            else:
                waiter = self._waiter
                if waiter is not None and waiter.link is link:
                    waiter.reply = msg
                    self._waiter = None
                    waiter.event.set()
                    return
        if late:
            log.info("%s: late reply to an earlier request passed to the callback: %.200r", self._name, msg)
        dispatcher.put(self.MESSAGE, msg, link)

    def _request(self, data, msg, wait):
        # one deadline for the whole request: waiting for the link, sending, and the reply
        deadline = Deadline(wait)
        if not self._request_lock.acquire(timeout=wait):
            log.log(self._level, "%s: another request kept the link busy for response_time=%s s; not sent: %.200r",
                    self._name, wait, msg)
            return None
        try:
            with self._lock:
                link = self._link if self._connected else None
                if link is None:
                    log.debug("%s: not connected; request not sent: %.200r", self._name, msg)
                    return None
                waiter = self._waiter = _Waiter(link)
            if not link.send(data, deadline.remaining()):
                with self._lock:
                    if self._waiter is waiter:
                        self._waiter = None
                return None
            waiter.event.wait(deadline.remaining())
            with self._lock:
                if waiter.reply is not None:
                    return waiter.reply
                if self._waiter is waiter:
                    self._waiter = None
                owes = self._link is link and not link.local_close
                if owes and self._late_window > 0:
                    self._owed.append(time.monotonic() + self._late_window)
            if owes:
                log.log(self._level, "%s: no reply within response_time=%s s to %.200r", self._name, wait, msg)
            return None
        finally:
            self._request_lock.release()
