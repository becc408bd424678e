"""One deadline per operation: the time budget of connect, send and receive.

Operations
    ``Deadline.start(timeout, default)`` is made once, when an operation
    begins, from the per-call ``timeout`` (checked here, once) or the link's
    ``default``.  Every phase of the operation then asks the same object:
    ``remaining()`` (seconds left, ``None`` for no limit), ``expired``,
    ``bound(x)`` (``min(x, remaining)``, for a phase that has its own limit
    such as ``connect_timeout``), ``poll_ms()`` (the wait for ``poll()``) and
    ``check(what)`` (raise :class:`~socs_tcp.errors.LinkTimeoutError` once
    the time is up).

Goals
    * The per-call timeout bounds the whole operation: a slow connect leaves
      less time for the send, and a stalled send less for the receive.
    * The timeout is validated once per call, here, with the shared check
      (:func:`socs_tcp.core.checks.check_seconds`).
    * No I/O: the clock is a parameter, so the logic is testable without
      sleeping.
"""

import math
import time

from ..errors import LinkTimeoutError
from .checks import check_seconds

__all__ = ["Deadline"]


class Deadline:
    """The end of an operation's time budget.

    Args:
        timeout: seconds from ``started``, already checked, or ``None`` for
            no limit.
        clock: a monotonic clock returning seconds (default
            :func:`time.monotonic`).
        started: the clock reading when the operation began (default: now),
            for an operation that began before its deadline was made.

    Attributes:
        timeout: the budget in seconds (``None``: no limit).
        started: the clock reading when the operation began.
        end: the clock reading at which the budget is spent (``None``: never).
    """

    __slots__ = ("timeout", "started", "end", "_clock")

    def __init__(self, timeout, clock=time.monotonic, started=None):
        self._clock = clock
        self.timeout = timeout
        self.started = clock() if started is None else started
        self.end = None if timeout is None else self.started + timeout

    @classmethod
    def start(cls, timeout, default, clock=time.monotonic, what="timeout"):
        """The deadline of an operation that begins now.

        Args:
            timeout: the per-call timeout in seconds, or ``None`` to use
                ``default``.  Checked here: a bool or non-number raises
                :class:`TypeError`, a negative, NaN or infinite value
                :class:`ValueError`; both name the value.
            default: the link's timeout (already checked), or ``None`` for no
                limit.
        """
        return cls(cls.budget(timeout, default, what), clock)

    @staticmethod
    def budget(timeout, default, what="timeout"):
        """The checked time budget of an operation: the per-call ``timeout``
        (checked as in :meth:`start`), or ``default`` when it is ``None``.
        For a caller that makes its :class:`Deadline` later, or not at all."""
        if timeout is None:
            return default
        return check_seconds(timeout, what, allow_none=True)

    def remaining(self):
        """Seconds left (never negative), or ``None`` when there is no limit."""
        if self.end is None:
            return None
        left = self.end - self._clock()
        return left if left > 0 else 0.0

    @property
    def expired(self):
        """``True`` once the budget is spent (never without a limit)."""
        return self.end is not None and self._clock() >= self.end

    def bound(self, limit):
        """``min(limit, remaining())``, where ``None`` means no limit for either."""
        left = self.remaining()
        if left is None:
            return limit
        if limit is None:
            return left
        return limit if limit < left else left

    def poll_ms(self):
        """The remaining time as a ``poll()`` argument: whole milliseconds,
        rounded up so a wait never ends before the deadline; ``-1`` for no
        limit."""
        left = self.remaining()
        return -1 if left is None else math.ceil(left * 1000)

    def elapsed(self):
        """Seconds since the operation began."""
        return self._clock() - self.started

    def check(self, what):
        """Raise :class:`~socs_tcp.errors.LinkTimeoutError` if the budget is
        spent; ``what`` says what the operation was doing (a str, or a
        callable returning one, called only when raising)."""
        if self.expired:
            raise self.timeout_error(what)

    def timeout_error(self, what):
        """The :class:`~socs_tcp.errors.LinkTimeoutError` to raise for
        ``what`` (a str or a callable returning one)."""
        text = what() if callable(what) else what
        return LinkTimeoutError(f"{text}: the operation's timeout of {self.timeout} s ran out")

    def __repr__(self):
        left = self.remaining()
        return f"<Deadline timeout={self.timeout} remaining={'unlimited' if left is None else f'{left:.3f} s'}>"
