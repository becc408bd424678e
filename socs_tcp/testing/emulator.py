"""A TCP device emulator with fault injection, for tests.

A superset of ``socs.testing.device_emulator`` for TCP devices:

* ``responses`` maps a command to a reply; a list value is popped in order;
  a callable value (or ``default_response``) computes the reply from the
  command.  ``default_response`` answers unknown commands.
* ``encoding=None`` works with raw bytes.
* ``port=0`` picks a free port; clients may disconnect and reconnect.
* Commands are framed by ``read_termination`` (default ``\\n``), not by
  ``recv`` chunk, so split and merged writes from the client are handled.
  ``read_termination=None`` restores chunk framing.
* Faults on demand: :meth:`DeviceEmulator.set_delay`,
  :meth:`DeviceEmulator.split_replies`, :meth:`DeviceEmulator.merge_replies`,
  :meth:`DeviceEmulator.drop_after`, :meth:`DeviceEmulator.drop_connections`,
  :meth:`DeviceEmulator.refuse_connections`, :meth:`DeviceEmulator.go_silent`,
  :meth:`DeviceEmulator.send_garbage`, :meth:`DeviceEmulator.slow_drip`,
  :meth:`DeviceEmulator.flood`, :meth:`DeviceEmulator.restart`.
* A real instrument's logic with those faults: pass
  :meth:`socs_tcp.simulators.scpi.ScpiInstrument.respond` as
  ``default_response`` (with ``write_termination="\\n"``) to serve the SCPI
  simulator's command set through the emulator.

Use :func:`create_device_emulator` to make a pytest fixture.
"""

import logging
import socket
import threading
import time

from ..core.buffer import ReceiveBuffer
from ..core.checks import check_host, check_port
from ..core.codec import decode_escapes, format_traffic

__all__ = ["DeviceEmulator", "create_device_emulator"]

log = logging.getLogger("socs_tcp.testing")  # the name the docs promise


class DeviceEmulator:
    """An emulated TCP device.

    Args:
        responses (dict or None): command -> reply (str, bytes, list of those,
            callable taking the command, or ``None`` for no reply).
        encoding (str or None): commands are decoded and replies encoded with
            it; ``None`` keeps both as bytes.
        read_termination (str or bytes or None): command terminator (escapes
            allowed).  ``None`` treats each received chunk as one command.
        write_termination (str or bytes): appended to every reply.
        strip (bool): strip surrounding whitespace from each command.
        host (str): listening address (loopback by default).
        port (int): listening port; 0 picks a free one.
    """

    def __init__(self, responses=None, encoding="utf-8", *, read_termination="\n", write_termination="",
                 strip=True, host="127.0.0.1", port=0, default_response=None):
        self.responses = {} if responses is None else responses
        self.default_response = default_response
        self.encoding = encoding
        text_enc = encoding or "latin-1"
        self.read_termination = None if read_termination is None else decode_escapes(read_termination, text_enc)
        self.write_termination = decode_escapes(write_termination, text_enc)
        self.strip = strip
        self.host = check_host(host)
        self.port = check_port(port, lowest=0)
        #: every command received, in order (decoded if ``encoding`` is set)
        self.received = []
        #: how many connections were accepted
        self.connections = 0
        self._lock = threading.Lock()
        self._conns = set()
        self._listener = None
        self._accept_thread = None
        self._running = False
        self._refusing = False
        # fault settings
        self.delay = 0.0
        self.silent = False
        self._split = None
        self._merge = 0
        self._merge_pending = []
        self._drip = None
        self._drop_after = None

    # ------------------------------------------------------------------
    # life cycle
    def start(self):
        """Listen (on a free port if ``port`` is 0) and accept clients in the background."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(8)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._running = True
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                               name=f"emulator-accept-{self.port}", daemon=True)
        self._accept_thread.start()
        log.info("device emulator listening on %s:%d", self.host, self.port)
        return self

    @classmethod
    def from_recording(cls, path, **options):
        """An emulator that replays the recording at ``path``: a
        :class:`~socs_tcp.testing.replay.ReplayServer` (a subclass, with the
        same fault methods), not started.  ``options`` are those of
        :class:`~socs_tcp.testing.replay.ReplayServer` (``match``, ``timing``,
        ``at_end``, ``on_unexpected``, ``error_reply``, ``host``, ``port``)."""
        from .replay import ReplayServer
        return ReplayServer(path, **options)

    # compatibility with socs.testing: create_tcp_relay(port)
    def create_tcp_relay(self, port=0):
        """Start listening on ``port`` (SOCS emulator name for :meth:`start`)."""
        self.port = port
        return self.start()

    def define_responses(self, responses, default_response=None):
        """Replace the responses (and the default response)."""
        with self._lock:
            self.responses = responses
            self.default_response = default_response

    def shutdown(self):
        """Stop listening and close every connection."""
        self._running = False
        listener, self._listener = self._listener, None
        if listener is not None:
            _close_listener(listener)
        if self._accept_thread is not None:
            self._accept_thread.join(5)
            self._accept_thread = None
        self.drop_connections()

    stop = shutdown

    def restart(self, down_for=0.0):
        """Simulate a device reboot: close everything, stay down ``down_for``
        seconds, then listen again on the same port."""
        self.shutdown()
        if down_for:
            time.sleep(down_for)
        self.start()

    def __enter__(self):
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        return False

    @property
    def address(self):
        """``host:port`` of the emulator."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # ------------------------------------------------------------------
    # faults
    def set_delay(self, seconds):
        """Wait ``seconds`` before each reply."""
        self.delay = float(seconds)

    def go_silent(self, silent=True):
        """Accept and read commands but never answer (until called with False)."""
        self.silent = silent

    def split_replies(self, chunk_size=None, gap=0.01):
        """Send each reply in pieces of ``chunk_size`` bytes, ``gap`` seconds
        apart (``chunk_size=None`` turns it off)."""
        self._split = None if chunk_size is None else (int(chunk_size), float(gap))

    def slow_drip(self, interval=0.005):
        """Send replies one byte at a time (``interval=None`` turns it off)."""
        self._drip = interval

    def merge_replies(self, count=2):
        """Hold replies until ``count`` are pending, then send them in one write
        (``count=0`` turns it off)."""
        self._merge = int(count)

    def drop_after(self, count=1):
        """Close the connection right after receiving the next ``count``
        commands, without answering the last one (``None`` turns it off)."""
        self._drop_after = count

    def drop_connections(self):
        """Close every client connection now (the emulator keeps listening)."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def refuse_connections(self, refuse=True):
        """Stop listening, so connects are refused (``False`` listens again on
        the same port).  Existing connections are dropped."""
        if refuse and not self._refusing:
            self._refusing = True
            self.shutdown()
        elif not refuse and self._refusing:
            self._refusing = False
            self.start()

    def send_garbage(self, data=b"\x00\xff garbage \xfe"):
        """Send unsolicited bytes to every connected client now."""
        self._broadcast(data if isinstance(data, bytes) else data.encode(self.encoding or "latin-1"))

    def flood(self, total=10 << 20, chunk=65536, byte=b"x"):
        """Send ``total`` bytes without any terminator to every client, in the
        background.  Returns the thread; it stops early if clients go away."""
        def run():
            block = byte * chunk
            sent = 0
            while sent < total and self._running:
                with self._lock:
                    conns = list(self._conns)
                if not conns:
                    return
                for conn in conns:
                    try:
                        conn.sendall(block[:total - sent])
                    except OSError:
                        with self._lock:
                            self._conns.discard(conn)
                sent += chunk
        thread = threading.Thread(target=run, name=f"emulator-flood-{self.port}", daemon=True)
        thread.start()
        return thread

    def wait_for_clients(self, count=1, timeout=5.0):
        """Wait until ``count`` clients are connected.  Returns True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self._conns) >= count:
                    return True
            time.sleep(0.005)
        return False

    @property
    def client_count(self):
        with self._lock:
            return len(self._conns)

    # ------------------------------------------------------------------
    # internals
    def _accept_loop(self, listener):
        while self._running:
            try:
                conn, peer = listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.add(conn)
                self.connections += 1
            log.debug("emulator %d: client %s connected", self.port, peer)
            threading.Thread(target=self._serve, args=(conn,), name=f"emulator-conn-{self.port}",
                             daemon=True).start()

    def _serve(self, conn):
        buffer = ReceiveBuffer(1 << 24)
        terms = (self.read_termination,) if self.read_termination else None
        try:
            while self._running:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if terms is None:
                    self._handle(conn, data)
                    continue
                buffer.feed(data)
                while True:
                    found = buffer.maybe_extract_until(terms)
                    if found is None:
                        break
                    if not self._handle(conn, found[0]):
                        return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _handle(self, conn, raw):
        """Answer one command.  Returns False when the connection was dropped."""
        command = raw.strip() if self.strip else raw
        if self.encoding is not None:
            command = command.decode(self.encoding, "replace")
        with self._lock:
            self.received.append(command)
        log.debug("emulator %d: command %r", self.port, command)
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                with self._lock:
                    self._conns.discard(conn)
                conn.close()
                return False
        reply = self._response_for(command)
        if reply is None or self.silent:
            return True
        if isinstance(reply, str):
            reply = reply.encode(self.encoding or "latin-1")
        reply = bytes(reply) + self.write_termination
        if self.delay:
            time.sleep(self.delay)
        try:
            self._write(conn, reply)
        except OSError:
            return False
        return True

    def _response_for(self, command):
        with self._lock:
            responses = self.responses
            value = responses.get(command) if responses is not None else None
            if value is None:
                value = self.default_response
            if isinstance(value, list):
                if not value:
                    log.info("emulator %d: no responses left for %r", self.port, command)
                    return None
                value = value.pop(0)
        if callable(value):
            value = value(command)
        return value

    def _write(self, conn, reply):
        if self._merge > 1:
            with self._lock:
                self._merge_pending.append(reply)
                if len(self._merge_pending) < self._merge:
                    return
                reply = b"".join(self._merge_pending)
                self._merge_pending = []
        if log.isEnabledFor(logging.DEBUG):
            log.debug("emulator %d: reply %s", self.port, format_traffic(reply))
        drip, split = self._drip, self._split  # read once: a test may change the faults meanwhile
        if drip is not None:
            for i in range(len(reply)):
                conn.sendall(reply[i:i + 1])
                time.sleep(drip)
        elif split is not None:
            size, gap = split
            for i in range(0, len(reply), size):
                conn.sendall(reply[i:i + size])
                time.sleep(gap)
        else:
            conn.sendall(reply)

    def _broadcast(self, data):
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.sendall(data)
            except OSError:
                pass


def _close_listener(listener):
    # shutdown() wakes a thread blocked in accept() on Linux
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    listener.close()


def create_device_emulator(responses=None, port=0, encoding="utf-8", **kwargs):
    """Make a pytest fixture that yields a started :class:`DeviceEmulator`.

    Example::

        emulator = create_device_emulator({"*IDN?": "ACME,1"}, write_termination="\\n")

        def test_idn(emulator):
            dev = TCPInterface("127.0.0.1", emulator.port, 2, read_termination="\\n")
            ...

    The fixture shuts the emulator down after the test, even on failure.
    Each test gets a fresh copy of ``responses`` (lists are copied, so popped
    replies do not leak between tests).
    """
    import pytest

    @pytest.fixture
    def fixture():
        fresh = None if responses is None else {k: (list(v) if isinstance(v, list) else v)
                                                for k, v in responses.items()}
        device = DeviceEmulator(fresh, encoding, port=port, **kwargs).start()
        try:
            yield device
        finally:
            device.shutdown()
    return fixture
