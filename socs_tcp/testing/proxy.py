"""A transparent recording proxy between a client and a TCP device.

Operations: listen on a local address; for each client, connect to the
device, forward every chunk in both directions as it comes (no framing, no
buffering beyond one ``recv``), and record each chunk, the connect and the
close with :class:`~socs_tcp.testing.recording.RecordingWriter`.

Goals and rules:

* Transparent: a driver pointed at the proxy sees the device's bytes, in
  the device's chunks, and its closes; the device sees the driver's.
* A chunk is recorded before it is forwarded, so a reply is always recorded
  after the request that caused it.
* Successive and simultaneous clients each get a connection id (1, 2, ...,
  in the order their device connections were made).
* Device down: the client's connection is accepted (the kernel completes
  the handshake before the proxy can know) and then **closed at once, with no
  byte sent**; the client sees the end of stream (``PeerClosedError`` in
  :class:`~socs_tcp.TCPInterface`).  Nothing is recorded for it; the proxy
  logs a warning and counts it in :attr:`RecordingProxy.failed_connects`.
* Either side closing (or resetting) closes the other side too; the close
  is recorded with ``by`` = ``client`` or ``device``.  Stopping the proxy
  closes every connection (``by`` = ``proxy``) and finishes the file.
"""

import logging
import selectors
import socket
import threading
import time

from ..core.checks import check_host, check_port, check_seconds, format_host_port
from .recording import RecordingWriter

__all__ = ["RecordingProxy", "linger_close"]

log = logging.getLogger("socs_tcp.testing")


def linger_close(sock, timeout=1.0):
    """Close ``sock`` so the peer sees a clean end of stream: send FIN, then
    discard what the peer still sends until it closes too (or ``timeout``
    seconds pass).  Closing with unread bytes would send a reset instead,
    which the peer reports as a lost connection, not a close."""
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except OSError:
        pass
    finally:
        sock.close()


class RecordingProxy:
    """Forward ``listen`` -> ``device`` and record the traffic.

    Args:
        device_host (str), device_port (int): the device.
        out: the recording file (path) or a :class:`RecordingWriter`.
        listen_host (str): where clients connect (loopback by default).
        listen_port (int): 0 picks a free port.
        connect_timeout (float): deadline of each connection to the device.
        max_bytes, keep: size cap and rotation of the file (see
            :class:`RecordingWriter`).

    Attributes:
        port (int): the listening port once started.
        connections (int): client connections forwarded so far.
        failed_connects (int): clients closed because the device was unreachable.
    """

    def __init__(self, device_host, device_port, out, *, listen_host="127.0.0.1", listen_port=0,
                 connect_timeout=5.0, max_bytes=100 << 20, keep=0):
        self.device_host = check_host(device_host, "device host")
        self.device_port = check_port(device_port, "device port")
        self.listen_host = check_host(listen_host, "listen host")
        self.port = check_port(listen_port, "listen port", lowest=0)
        self.connect_timeout = check_seconds(connect_timeout, "connect_timeout", positive=True)
        self.device_address = format_host_port(self.device_host, self.device_port)
        if isinstance(out, RecordingWriter):
            self.writer = out
        else:
            self.writer = RecordingWriter(out, source="proxy", device=self.device_address,
                                          max_bytes=max_bytes, keep=keep)
        self.connections = 0
        self.failed_connects = 0
        self._lock = threading.Lock()
        self._next_id = 0
        self._listener = None
        self._accept_thread = None
        self._threads = set()
        self._sockets = set()
        self._stopping = threading.Event()

    @property
    def address(self):
        """``host:port`` where clients connect."""
        return format_host_port(self.listen_host, self.port)

    def start(self):
        """Listen and serve clients in the background.  Returns self."""
        family = socket.AF_INET6 if ":" in self.listen_host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind((self.listen_host, self.port))
            listener.listen(16)
        except OSError:
            listener.close()
            self.writer.close()
            raise
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, name=f"proxy-accept-{self.port}",
                                               daemon=True)
        self._accept_thread.start()
        log.info("recording proxy %s -> %s, writing %s", self.address, self.device_address, self.writer.path)
        return self

    def stop(self):
        """Stop listening, close every connection (recorded as closed by the
        proxy) and finish the recording file.  Idempotent."""
        self._stopping.set()
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        with self._lock:
            socks = list(self._sockets)
            threads = list(self._threads)
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(5)
        self.writer.close()

    def __enter__(self):
        if self._listener is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    # ------------------------------------------------------------------
    def _accept_loop(self):
        listener = self._listener
        while not self._stopping.is_set():
            try:
                client, peer = listener.accept()
            except OSError:
                return
            if self._stopping.is_set():
                client.close()
                return
            thread = threading.Thread(target=self._serve, args=(client, peer), name=f"proxy-conn-{self.port}",
                                      daemon=True)
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _serve(self, client, peer):
        try:
            self._forward(client, peer)
        except Exception:  # a bug here must not kill the proxy silently
            log.exception("recording proxy: connection from %s failed", peer)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _forward(self, client, peer):
        peer_text = format_host_port(peer[0], peer[1])
        try:
            device = socket.create_connection((self.device_host, self.device_port), timeout=self.connect_timeout)
        except OSError as exc:
            with self._lock:
                self.failed_connects += 1
            log.warning("recording proxy: device %s unreachable (%s): closing client %s at once",
                        self.device_address, exc, peer_text)
            client.close()
            return
        device.settimeout(None)
        for sock in (client, device):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        with self._lock:
            self._next_id += 1
            conn = self._next_id
            self.connections += 1
            self._sockets.update((client, device))
        if self._stopping.is_set():
            by, reason = "proxy", "proxy stopped"
            self.writer.connect(conn, peer_text)
        else:
            self.writer.connect(conn, peer_text)
            log.info("recording proxy: connection %d from %s", conn, peer_text)
            by, reason = self._pump(conn, client, device)
        self.writer.close_conn(conn, by, reason)
        log.info("recording proxy: connection %d closed by %s (%s)", conn, by, reason)
        with self._lock:
            self._sockets.discard(client)
            self._sockets.discard(device)
        if by == "device":
            device.close()
            linger_close(client)  # the client sees the device's close, not a reset
        else:
            for sock in (client, device):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _pump(self, conn, client, device):
        """Forward until one side closes.  Returns (by, reason)."""
        sides = {client: ("client", "out", device), device: ("device", "in", client)}
        with selectors.DefaultSelector() as sel:
            sel.register(client, selectors.EVENT_READ)
            sel.register(device, selectors.EVENT_READ)
            while True:
                for key, _ in sel.select():
                    sock = key.fileobj
                    name, direction, other = sides[sock]
                    try:
                        data = sock.recv(65536)
                    except OSError as exc:
                        if self._stopping.is_set():
                            return "proxy", "proxy stopped"
                        return name, f"{type(exc).__name__}: {exc}"
                    if not data:
                        if self._stopping.is_set():
                            return "proxy", "proxy stopped"
                        return name, "end of stream"
                    self.writer.data(conn, direction, data)
                    try:
                        other.sendall(data)
                    except OSError as exc:
                        if self._stopping.is_set():
                            return "proxy", "proxy stopped"
                        return sides[other][0], f"{type(exc).__name__}: {exc}"
