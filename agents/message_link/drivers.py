"""Driver of MessageLinkAgent: a JSON-lines device link for blocking callers.

:class:`MessageLinkDriver` owns the device connection, an
:class:`~socs_tcp.jsonlines.AsyncTCPClient`, and the asyncio event loop it
runs in, on a daemon thread of its own.  OCS operations run in worker threads
and call the driver's blocking methods; each hands one coroutine to the loop
and waits for it.  The agent never touches the client, the loop or a socket.

Reconnects are spaced by a :class:`socs_tcp_agents.common.Backoff` (the
:class:`socs_tcp.ReconnectPolicy` backoff every agent uses):
:meth:`~MessageLinkDriver.ensure_connected` refuses at once while the backoff
runs, and :meth:`~MessageLinkDriver.next_attempt_in` says when it ends, as
:class:`socs_tcp.TCPInterface` does, so the shared
:class:`~socs_tcp_agents.common.Poller` drives both the same way.

Every failure of the link raises a :class:`ConnectionError` subclass
(:class:`~socs_tcp.ConnectFailedError`, :class:`~socs_tcp.LinkError`,
:class:`~socs_tcp.jsonlines.CommandTimeoutError`); a command the device
refuses raises :class:`~socs_tcp.jsonlines.CommandError`; bad input raises
``ValueError``/``TypeError`` before anything is sent.
"""

import asyncio
import concurrent.futures
import logging
import threading

from socs_tcp.errors import LinkError, LinkTimeoutError
from socs_tcp.jsonlines import AsyncTCPClient, CommandError

from ..common import Backoff

log = logging.getLogger(__name__)

__all__ = ["MessageLinkDriver"]

#: Extra seconds a blocking call waits for the loop beyond the operation's own deadline.
LOOP_GRACE = 5.0


class MessageLinkDriver:
    """A JSON-lines (``ts_m2com``) device, driven from threads.

    Args:
        host (str): device host.
        port (int): device port.
        on_message (callable): ``on_message(message)`` for every message
            received (telemetry, events, replies), called on the driver's
            loop thread; it must not block.
        timeout (float): deadline of a connection attempt, and of a command
            given no ``timeout`` of its own, seconds.
        reconnect_policy (socs_tcp.ReconnectPolicy): spacing of reconnect
            attempts made through :meth:`ensure_connected`.
        max_message_size (int): the longest message accepted from the
            device, bytes; a longer one drops the connection.
        on_disconnect (callable): ``on_disconnect(error)`` when a working
            connection is lost (on the loop thread).

    Attributes:
        backoff (socs_tcp_agents.common.Backoff): the reconnect spacing.
        disconnect_reason (str): why the last connection ended, until the
            next connection succeeds.
    """

    def __init__(self, host, port, on_message, *, timeout=5.0, reconnect_policy=None, max_message_size=1 << 20,
                 on_disconnect=None):
        self.timeout = float(timeout)
        self._on_disconnect_hook = on_disconnect
        self.client = AsyncTCPClient(host, port, on_message, name=f"link-{host}:{port}", check_message_rate=True,
                                     timeout=1.0, on_disconnect=self._lost, command_timeout=self.timeout,
                                     max_message_size=max_message_size)
        self.backoff = Backoff(reconnect_policy, name=self.client.name)
        self.disconnect_reason = None
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="message-link-loop", daemon=True)
        self._thread.start()

    def __repr__(self):
        return f"<{type(self).__name__} {self.address} {'connected' if self.connected else 'not connected'}>"

    # ------------------------------------------------------------------ the loop
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro, timeout):
        """Run ``coro`` on the loop and wait at most ``timeout`` seconds for it."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):
            if future.done():  # the coroutine itself raised a timeout
                raise
            future.cancel()
            raise LinkTimeoutError(f"{self.client.name}: the link's event loop did not finish within "
                                   f"{timeout:g} s") from None

    def _lost(self, client, error):
        self.disconnect_reason = str(error)
        self.backoff.lost()
        if self._on_disconnect_hook is not None:
            self._on_disconnect_hook(error)

    # ------------------------------------------------------------------ state
    @property
    def address(self):
        """``"host:port"`` of the device."""
        return self.client.address

    @property
    def connected(self):
        """True while the connection is open."""
        return self.client.connected

    def next_attempt_in(self):
        """Seconds until the backoff allows a reconnect attempt: ``None`` while
        connected (or when ``max_attempts`` is used up), ``0.0`` when allowed now."""
        if self.connected:
            return None
        return self.backoff.wait()

    def stats(self):
        """The link's counters (:meth:`AsyncTCPClient.snapshot`: ``connected``,
        ``latency_*``, ``bytes_in``, ``messages_received``, ...)."""
        async def snapshot():
            return self.client.snapshot()
        return self._call(snapshot(), LOOP_GRACE)

    # ------------------------------------------------------------------ connecting
    def connect(self, timeout=None):
        """Make one connection attempt now (whatever the backoff says); the
        result is recorded in :attr:`backoff`.

        Raises:
            ConnectFailedError: refused, unreachable or not connected in
                ``timeout`` (default: :attr:`timeout`); the message names the
                address, and the previous connection's end if it just dropped.
        """
        timeout = self.timeout if timeout is None else timeout
        if self.connected:
            return
        try:
            self._call(self.client.connect(timeout=timeout), timeout + LOOP_GRACE)
        except ConnectionError as e:
            self.backoff.failed(e)
            if self.disconnect_reason and self.backoff.failures == 1:
                raise type(e)(f"{self.disconnect_reason}; {e}") from e
            raise
        self.backoff.succeeded()
        self.disconnect_reason = None

    def ensure_connected(self):
        """Connect if needed, as the backoff allows.

        Returns at once while connected.  Otherwise one attempt is made if
        the backoff allows one now; if not, this raises at once.

        Raises:
            ConnectFailedError: not connected, and the attempt failed or was
                not allowed yet (the message says when the next one is).
        """
        if self.connected:
            return
        self.backoff.check()
        self.connect()

    def command(self, name, details=None, timeout=None):
        """Send command ``name`` and wait for its final status (connecting first if needed: one attempt).

        Args:
            name (str): the command name (written as ``cmd_<name>``).
            details (dict): its parameters.
            timeout (float): deadline for the final status, seconds (default: :attr:`timeout`).

        Returns:
            dict: the device's ``success`` reply.

        Raises:
            CommandError: the device answered ``noack`` or ``fail``.
            CommandTimeoutError: no final status within ``timeout``.
            ConnectFailedError: the device is unreachable.
            LinkError: the connection dropped before or while waiting.
            ValueError, TypeError: bad ``name`` or ``details`` (nothing sent).
        """
        timeout = self.timeout if timeout is None else timeout
        if not self.connected:
            self.connect(min(timeout, self.timeout))
        try:
            return self._call(self.client.send_command(name, details, timeout=timeout), timeout + LOOP_GRACE)
        except CommandError:
            raise
        except RuntimeError as e:
            if "not connected" not in str(e):
                raise
            # the link dropped between the check and the write
            raise LinkError(str(e)) from e

    def close(self):
        """Close the connection and stop the loop thread (the driver cannot be used afterwards)."""
        if not self.loop.is_running():
            return
        try:
            self._call(self.client.close(), LOOP_GRACE)
        except ConnectionError as e:
            log.warning("%s: close: %s", self.client.name, e)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(LOOP_GRACE)
