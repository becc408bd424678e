"""Reconnect policy: when the next connection attempt may be made.  Pure logic.

Exponential backoff with jitter and a cap, so many clients of a device that
just rebooted do not reconnect in lock step, plus an optional cool-down for
devices that refuse a connection made too soon after the previous one closed.
"""

import random
from dataclasses import dataclass, field

__all__ = ["ReconnectPolicy"]


@dataclass
class ReconnectPolicy:
    """How a :class:`~socs_tcp.TCPInterface` spaces its connection attempts.

    After ``k`` consecutive failed attempts the next one waits
    ``min(cap, initial * factor**(k-1))`` seconds, shortened by a random
    fraction of up to ``jitter`` (0 = none, 1 = anywhere down to zero).  The
    first attempt after a working connection drops is made at once (after
    ``cooldown``, if set).

    Args:
        initial: delay after the first failure, seconds.
        factor: growth per further failure.
        cap: the longest delay, seconds.
        jitter: fraction of the delay that is randomised, 0..1.
        max_attempts: consecutive failed attempts after which operations stop
            reconnecting by themselves and raise at once until
            :meth:`~socs_tcp.TCPInterface.reconnect` is called (``None`` =
            never give up).
        cooldown: the least time between closing a connection and opening the
            next one, seconds.
    """

    initial: float = 0.1
    factor: float = 2.0
    cap: float = 0.5
    jitter: float = 0.2
    max_attempts: int = None
    cooldown: float = 0.0
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self):
        for name in ("initial", "cap", "cooldown"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"ReconnectPolicy.{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, (int, float)) or not self.factor >= 1:
            raise ValueError(f"ReconnectPolicy.factor must be a number >= 1, got {self.factor!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, (int, float)) or not 0 <= self.jitter <= 1:
            raise ValueError(f"ReconnectPolicy.jitter must be between 0 and 1, got {self.jitter!r}")
        if self.max_attempts is not None and (
                isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)):
            raise ValueError(f"ReconnectPolicy.max_attempts must be an int or None, got {self.max_attempts!r}")

    @classmethod
    def coerce(cls, value):
        """Accept a policy, a dict of its fields, or ``None`` (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - {"initial", "factor", "cap", "jitter", "max_attempts", "cooldown"}
            if unknown:
                raise ValueError(f"unknown reconnect policy option(s) {sorted(unknown)}")
            return cls(**value)
        raise TypeError(f"reconnect_policy must be a ReconnectPolicy or dict, got {type(value).__name__}: {value!r}")

    def delay(self, failures):
        """Seconds to wait before the next attempt after ``failures`` consecutive failures."""
        if failures <= 0:
            return 0.0
        base = min(self.cap, self.initial * self.factor ** min(failures - 1, 64))
        if self.jitter:
            base *= 1.0 - self.jitter * self.rng.random()
        return base
