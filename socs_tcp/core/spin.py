"""Whether to spin briefly before blocking for a reply, chosen by measurement.  Pure logic.

Operations
    :class:`SpinChooser` is told how a reply wait (the first wait after a
    send) went, through :meth:`~SpinChooser.update`: spun or not, and how
    long until data arrived.  It answers whether the next wait spins, and
    sets :attr:`~SpinChooser.skip`: how many waits after that one need not
    be timed or reported (they wait the way chosen).

Goals
    * A reply that a peer on another, idle CPU sends back within tens of
      microseconds is picked up without this CPU's idle wake-up, which on a
      virtual machine costs about as much as the rest of the round trip
      (``docs/benchmarks.rst``, "Wait strategy").
    * Nothing is spent where spinning does not pay: a peer on the same CPU
      (spinning only delays it), a loaded machine, or a device across a
      network whose replies take far longer than the spin window.
    * One stall of the machine (the hypervisor, another process) does not
      decide: the comparison is of medians.

Plan
    Both ways of waiting are measured on the link's own traffic, from the
    start of the wait to the data.  The last ``burst`` waits of each way
    are kept.  Waits use the way chosen; every ``interval`` waits, a burst of
    ``burst`` of them is timed, then a burst of ``burst`` waits tries the
    other way, and the medians of the two bursts decide.  The waits between
    are not timed, so they cost nothing but a counter.  Spinning is chosen only if its median is below ``margin`` times
    the blocking median, since it costs CPU.  Each time a try confirms the
    choice, the next try comes twice as late (up to ``explore_max`` waits;
    back to ``explore`` when the choice changes), so a steady link tries
    the other way for about one wait in two hundred, and a link to a slow
    device spends ``burst`` spin windows every thousand or so waits.  The clock is the caller's: no I/O here.
"""

from collections import deque

__all__ = ["SpinChooser"]


class SpinChooser:
    """Choose between "spin for up to ``window`` seconds, then block" and
    "block at once" for each reply wait of a link.

    Args:
        window: the longest spin, seconds (the caller also stops at the
            operation's deadline).  Replies slower than this gain nothing.
        explore: waits between two tries of the way not chosen, at first and
            whenever the choice changes; doubled each time a try confirms it.
        explore_max: the longest interval between two tries.
        burst: waits per try, and the number of waits of each way kept.
        margin: spin only if its median wait is below ``margin`` x the
            blocking median.

    Attributes:
        spin (bool): the current choice for ordinary waits.
        skip (int): waits after the next one that need not be reported.
    """

    __slots__ = ("window", "spin", "_samples", "_explore", "_explore_max", "_burst", "_margin",
                 "_interval", "_left", "_trying", "skip")

    def __init__(self, window=50e-6, explore=16, explore_max=1024, burst=5, margin=0.8):
        if not window > 0:
            raise ValueError(f"window must be > 0 seconds, got {window!r}")
        if not 1 <= burst <= explore <= explore_max:
            raise ValueError(f"need 1 <= burst <= explore <= explore_max, got burst={burst!r}, "
                             f"explore={explore!r}, explore_max={explore_max!r}")
        if not 0 < margin <= 1:
            raise ValueError(f"margin must be in (0, 1], got {margin!r}")
        self.window = window
        self.spin = False
        self._samples = (deque(maxlen=burst), deque(maxlen=burst))  # (blocking, spinning) waits
        self._explore = explore
        self._explore_max = explore_max
        self._burst = burst
        self._margin = margin
        self._interval = explore
        self._left = burst     # first a burst of blocking waits, then one of spinning
        self._trying = False   # in a burst of the way not chosen
        self.skip = 0

    def medians(self):
        """``(blocking, spinning)``: the median of the waits kept of each
        way, in seconds (``None`` before there are any)."""
        return tuple(sorted(s)[len(s) // 2] if s else None for s in self._samples)

    def update(self, spun, waited):
        """Record that a wait (``spun`` or not) took ``waited`` seconds, and
        return whether the next wait spins.  Then the :attr:`skip` waits
        after the next one wait the same way and are not reported."""
        self.skip = 0
        self._samples[spun].append(waited)
        self._left -= 1
        if self._left > 0:
            return self.spin != self._trying
        if self._trying:                      # a try of the other way just ended: decide
            blocking, spinning = self.medians()
            choice = (blocking is not None and spinning is not None
                      and spinning < blocking * self._margin)
            if choice != self.spin:
                self._interval = self._explore
            else:                             # confirmed: try again later than last time
                self._interval = min(self._interval * 2, self._explore_max)
            self.spin = choice
            self._trying = False
            self._left = self._burst
            self.skip = max(0, self._interval - 2 * self._burst)
        else:                                 # time to try the other way
            self._trying = True
            self._left = self._burst
        return self.spin != self._trying
