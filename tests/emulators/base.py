"""The TCP server every device emulator in this package runs on.

Each emulator is a real TCP server on loopback (``port=0`` picks a free
port), served by background threads: one accepts clients, one per client
reads requests and answers them.  A subclass supplies the device: how to cut
requests out of the received bytes (:meth:`EmulatorServer.split_requests`),
what to answer (:meth:`EmulatorServer.respond`) and, optionally, what to do
when a client connects (:meth:`EmulatorServer.on_connect`).

Faults common to every device:

* :meth:`EmulatorServer.drop_connections` closes every client connection now
  (the server keeps listening);
* :meth:`EmulatorServer.go_silent` keeps reading and recording requests but
  neither acts on them nor answers;
* :meth:`EmulatorServer.refuse_connections` stops listening so connects are
  refused, and listens again on the same port when turned off;
* :meth:`EmulatorServer.set_delay` waits before each answer;
* :meth:`EmulatorServer.send_unsolicited` writes bytes to every client now
  (stale data, junk after a reconnect).

Requests are recorded in :attr:`EmulatorServer.received` (acted on or not),
so tests can prove that nothing was sent.
"""

import socket
import threading
import time

__all__ = ["EmulatorServer", "Session"]

_POLL = 0.05  # seconds between checks of the stop flag in the server threads


class Session:
    """One client connection: its socket, receive buffer and per-connection state."""

    def __init__(self, sock, peer):
        self.sock = sock
        self.peer = peer
        self.buffer = bytearray()
        #: free-form per-connection state for the device logic
        self.state = {}
        self.closed = False
        self._send_lock = threading.Lock()

    def send(self, data):
        """Write ``data`` in full; returns False if the connection is gone."""
        if not data or self.closed:
            return not self.closed
        with self._send_lock:
            try:
                self.sock.sendall(data)
                return True
            except OSError:
                self.closed = True
                return False

    def close(self):
        """Close the connection now (the peer sees end of stream)."""
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class EmulatorServer:
    """A threaded TCP server on ``host``:``port`` that answers like a device.

    Args:
        host (str): listening address; loopback by default.
        port (int): listening port; 0 picks a free one (see :attr:`port`).
    """

    #: short device name used in thread names and reprs
    device_name = "device"

    def __init__(self, host="127.0.0.1", port=0):
        self.host = host
        self.port = port
        #: every request received, in order, as cut by :meth:`split_requests`
        self.received = []
        #: how many client connections were accepted in total
        self.connections = 0
        #: exceptions raised by the device logic (the connection is closed on one); tests may assert it stays empty
        self.failures = []
        #: device-state lock: :meth:`respond` runs under it
        self.lock = threading.RLock()
        self._sessions = set()
        self._sessions_lock = threading.Lock()
        self._threads = []
        self._listener = None
        self._accept_thread = None
        self._running = False
        self._silent = False
        self._delay = 0.0

    # -- to be supplied by the device ---------------------------------------

    def split_requests(self, session):
        """Cut complete requests from ``session.buffer`` (consuming them) and
        return them as a list.  Incomplete data stays in the buffer."""
        raise NotImplementedError

    def respond(self, session, request):
        """Act on one request; return the bytes to answer (or None/b"")."""
        raise NotImplementedError

    def on_connect(self, session):
        """Called (under :attr:`lock`) when a client connects."""

    # -- lifecycle -------------------------------------------------------------

    def start(self):
        """Listen and serve in the background; returns self."""
        if self._running:
            return self
        self._running = True
        self._listen()
        return self

    def stop(self):
        """Stop listening, close every connection and join every thread."""
        self._running = False
        self._close_listener()
        self.drop_connections()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._threads = [t for t in self._threads if t.is_alive()]

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<{type(self).__name__} {self.address}>"

    @property
    def address(self):
        """``127.0.0.1:PORT`` of the running emulator."""
        return f"{self.host}:{self.port}"

    # -- faults ----------------------------------------------------------------

    def drop_connections(self):
        """Close every client connection now; the server keeps listening."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.close()

    def go_silent(self, silent=True):
        """While silent, requests are read and recorded but neither acted on
        nor answered."""
        self._silent = bool(silent)

    def refuse_connections(self, refuse=True):
        """Stop listening (connects are refused, current clients are dropped);
        ``False`` listens again on the same port."""
        if refuse:
            self._close_listener()
            self.drop_connections()
        elif self._running and self._listener is None:
            self._listen()

    def set_delay(self, seconds):
        """Wait ``seconds`` before each answer (0 turns it off)."""
        self._delay = float(seconds)

    def send_unsolicited(self, data):
        """Write ``data`` to every connected client now."""
        for session in self._live_sessions():
            session.send(data)

    # -- helpers for tests -------------------------------------------------------

    def client_count(self):
        """How many clients are connected now."""
        return len(self._live_sessions())

    def wait_for_clients(self, count=1, timeout=5.0):
        """Wait until ``count`` clients are connected; True if they are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client_count() >= count:
                return True
            time.sleep(0.01)
        return self.client_count() >= count

    def wait_for_requests(self, count, timeout=5.0):
        """Wait until ``count`` requests have been received in total."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return True
            time.sleep(0.01)
        return len(self.received) >= count

    # -- internals ---------------------------------------------------------------

    def _live_sessions(self):
        with self._sessions_lock:
            return [s for s in self._sessions if not s.closed]

    def _listen(self):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(8)
        listener.settimeout(_POLL)
        self.port = listener.getsockname()[1]
        self._listener = listener
        thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                  name=f"{self.device_name}-accept", daemon=True)
        self._accept_thread = thread
        self._threads.append(thread)
        thread.start()

    def _close_listener(self):
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.close()
            except OSError:
                pass
        thread, self._accept_thread = self._accept_thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _accept_loop(self, listener):
        while self._running and self._listener is listener:
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(_POLL)
            session = Session(sock, peer)
            with self._sessions_lock:
                self._sessions.add(session)
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(session,),
                                      name=f"{self.device_name}-client", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            thread.start()

    def _serve(self, session):
        try:
            with self.lock:
                self.on_connect(session)
            while self._running and not session.closed:
                try:
                    data = session.sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    break
                session.buffer += data
                with self.lock:
                    requests = self.split_requests(session)
                for request in requests:
                    self.received.append(request)
                    if self._silent:
                        continue
                    try:
                        with self.lock:
                            reply = self.respond(session, request)
                    except Exception as error:  # a bug in the emulator: record it, drop the client
                        self.failures.append(error)
                        session.close()
                        break
                    if self._delay:
                        time.sleep(self._delay)
                    if reply and not session.send(reply):
                        break
                    if session.closed:
                        break
        finally:
            session.closed = True
            with self._sessions_lock:
                self._sessions.discard(session)
            try:
                session.sock.close()
            except OSError:
                pass


def split_lines(session, terminator, strip=b""):
    """Cut ``terminator``-ended lines from the session buffer; each line has
    ``strip`` bytes removed from both ends."""
    lines = []
    while True:
        index = session.buffer.find(terminator)
        if index < 0:
            return lines
        line = bytes(session.buffer[:index])
        del session.buffer[:index + len(terminator)]
        lines.append(line.strip(strip) if strip else line)
