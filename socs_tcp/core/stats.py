"""Link statistics: counters and latency figures, JSON-safe.  Pure logic."""

import time
from collections import deque

__all__ = ["LinkStats"]


class LinkStats:
    """Counters and timings of one link, for health feeds.

    Latencies of the last ``window`` operations are kept for percentiles; the
    mean runs over every operation since creation.
    """

    def __init__(self, window=1024):
        self.bytes_in = 0
        self.bytes_out = 0
        self.transactions = 0
        self.timeouts = 0
        self.errors = 0
        self.connects = 0
        self.connect_failures = 0
        self.consecutive_failures = 0
        self._last_success = None  # time.monotonic() of the last success
        self._latency_sum = 0.0    # of every success; the mean divides by transactions
        self._latencies = deque(maxlen=window)

    def success(self, latency, now=None):
        """Count a successful operation that took ``latency`` seconds and
        ended at ``now`` (a ``time.monotonic()`` reading; default: now)."""
        self.transactions += 1
        self.consecutive_failures = 0
        self._last_success = time.monotonic() if now is None else now
        self._latency_sum += latency
        self._latencies.append(latency)

    def failure(self, timeout=False):
        self.errors += 1
        self.consecutive_failures += 1
        if timeout:
            self.timeouts += 1

    @property
    def last_latency(self):
        """Seconds the last successful operation took, or ``None``."""
        return self._latencies[-1] if self._latencies else None

    @property
    def last_success(self):
        """Wall-clock time (``time.time()``) of the last success, or ``None``."""
        if self._last_success is None:
            return None
        return time.time() - (time.monotonic() - self._last_success)

    def snapshot(self, connected):
        """A dict of plain floats, ints, bools and ``None``."""
        lat = sorted(self._latencies)

        def pct(p):
            if not lat:
                return None
            return float(lat[min(len(lat) - 1, int(round(p / 100.0 * (len(lat) - 1))))])

        return {
            "connected": bool(connected),
            "bytes_in": int(self.bytes_in),
            "bytes_out": int(self.bytes_out),
            "transactions": int(self.transactions),
            "timeouts": int(self.timeouts),
            "errors": int(self.errors),
            "connects": int(self.connects),
            "reconnects": int(max(0, self.connects - 1)),
            "connect_failures": int(self.connect_failures),
            "consecutive_failures": int(self.consecutive_failures),
            "last_success": self.last_success,
            "latency_last": self.last_latency,
            "latency_mean": (self._latency_sum / self.transactions) if self.transactions else None,
            "latency_p50": pct(50),
            "latency_p95": pct(95),
            "latency_p99": pct(99),
        }
