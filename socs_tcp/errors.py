"""Exceptions raised by :mod:`socs_tcp`.

Every failure of the link itself derives from the built-in
:class:`ConnectionError`, so an agent's ``except ConnectionError`` catches all
of them.  The subclasses let code tell the cases apart:

* :class:`ConnectFailedError` -- the device could not be reached.
* :class:`LinkTimeoutError` -- the device is connected but did not answer in
  time.  It is also a :class:`TimeoutError`.
* :class:`PeerClosedError` -- the device closed the connection.
* :class:`ReadOverflowError` -- the device sent more than ``max_read_size``
  bytes without completing a reply.
* :class:`LinkClosedError` -- this side closed the link while the operation
  was waiting (a message link's ``close()``).

Bad input (wrong types, malformed hex, unknown link ids, bad addresses) is
never a :class:`ConnectionError`: it raises :class:`TypeError` or
:class:`ValueError` before anything touches the socket.
"""


class LinkError(ConnectionError):
    """Base class of every transport failure raised by :mod:`socs_tcp`."""


class ConnectFailedError(LinkError):
    """Connecting to the device failed (refused, unreachable, timed out, or
    a reconnect is held back by the backoff policy)."""


class LinkTimeoutError(LinkError, TimeoutError):
    """An operation did not complete before its deadline.

    The link is still up: a timeout means the device is slow or silent, not
    that the connection is gone.  Bytes that arrived before the deadline stay
    buffered for the next read.
    """


class PeerClosedError(LinkError):
    """The device closed the connection (end of stream)."""

    def __init__(self, message, partial=b""):
        super().__init__(message)
        #: Bytes of an incomplete reply received before the close.
        self.partial = partial


class ReadOverflowError(LinkError):
    """More than ``max_read_size`` bytes arrived without completing a read.

    The buffered bytes are discarded (and logged) so that memory stays
    bounded, and the connection is closed so the rest of the runaway reply is
    not taken as the start of the next one; the next operation reconnects.
    """


class LinkClosedError(LinkError):
    """The link was closed by this side (``close()``) while the operation
    waited, for example a write blocked on a device that stopped reading.

    What the operation was sending may not have reached the device.
    """
