"""Helpers shared by the benchmark scripts: statistics, machine description,
process CPU and memory, waiting on a condition, and the summary table.

Only the standard library is used here, so every benchmark script runs in
the project's environment without the ``bench`` extra (matplotlib is needed
only for the plots, in ``plots.py``).
"""

import bisect
import math
import multiprocessing
import os
import platform
import resource
import socket
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass

HOST = "127.0.0.1"

#: percentiles at which latency distributions are kept for the plots
CDF_PERCENTILES = tuple([0.1, 0.5] + list(range(1, 100)) + [99.5, 99.9])


# ----------------------------------------------------------------------
# a loopback server in its own process
def serve_connections(port_pipe, stop, cpu, handler, handler_args):
    """Body of a server process: accept connections on a free loopback port
    (sent through ``port_pipe``) until ``stop`` is set, running
    ``handler(conn, *handler_args)`` in a thread per connection; on the way
    out, shut every connection down and join the threads."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(16)
    listener.settimeout(0.1)
    port_pipe.send(listener.getsockname()[1])
    port_pipe.close()
    conns, threads = [], []
    try:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.setblocking(True)
            thread = threading.Thread(target=handler, args=(conn, *handler_args), daemon=True)
            conns.append(conn)
            threads.append(thread)
            thread.start()
    finally:
        listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(2.0)


class ServerProcess:
    """A :func:`serve_connections` process (spawned, so it does not share the
    client's GIL); a context manager that always stops it.

    Args:
        handler: a module-level function ``handler(conn, *handler_args)``.
        handler_args: its further arguments (picklable).
        cpu: pin the process to this CPU, or ``None``.
        name: the process name, also used in errors.
    """

    def __init__(self, handler, handler_args=(), cpu=None, name="server"):
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=serve_connections, args=(child, self._stop, cpu, handler, handler_args),
                                 name=name)
        self._proc.start()
        child.close()
        if not parent.poll(30):
            self.close()
            raise RuntimeError(f"{name} did not start")
        self.port = parent.recv()
        parent.close()

    @property
    def pid(self):
        return self._proc.pid

    def close(self):
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------
# statistics
def percentile(sorted_values, q):
    """Nearest-rank percentile ``q`` (0..100) of an already sorted sequence.

    Raises:
        ValueError: ``sorted_values`` is empty or ``q`` is outside 0..100.
    """
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q!r}")
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def describe(values, scale=1.0):
    """Median, p99, mean, min, max and count of ``values``, each multiplied by ``scale``."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values to describe")
    return {"n": len(ordered),
            "median": statistics.median(ordered) * scale,
            "p99": percentile(ordered, 99) * scale,
            "mean": statistics.fmean(ordered) * scale,
            "min": ordered[0] * scale,
            "max": ordered[-1] * scale}


class LogHistogram:
    """Counts of positive values in logarithmic bins, mergeable across runs.

    Keeps a latency distribution of any number of samples in a few hundred
    integers, to at most ``1 / per_decade`` decade of resolution.

    Args:
        low (float): lower edge of the first bin (smaller values go into it).
        high (float): upper edge of the last bin (larger values go into it).
        per_decade (int): bins per factor of ten.
    """

    def __init__(self, low=1e-7, high=10.0, per_decade=100):
        if not 0 < low < high:
            raise ValueError(f"need 0 < low < high, got low={low!r}, high={high!r}")
        if isinstance(per_decade, bool) or not isinstance(per_decade, int) or per_decade < 1:
            raise ValueError(f"per_decade must be a positive int, got {per_decade!r}")
        self.low, self.high, self.per_decade = low, high, per_decade
        n = math.ceil(math.log10(high / low) * per_decade)
        self.edges = [low * 10 ** (i / per_decade) for i in range(n + 1)]
        self.counts = [0] * n

    def add(self, values, scale=1.0):
        """Count ``values`` (each multiplied by ``scale`` first)."""
        edges, counts, last = self.edges, self.counts, len(self.counts) - 1
        for value in values:
            i = bisect.bisect_right(edges, value * scale) - 1
            counts[min(max(i, 0), last)] += 1

    def merge(self, other):
        """Add the counts of another histogram with the same bins."""
        if other.edges != self.edges:
            raise ValueError("cannot merge histograms with different bins")
        self.counts = [a + b for a, b in zip(self.counts, other.counts)]

    @property
    def total(self):
        return sum(self.counts)

    def cdf(self):
        """``(upper_edges, cumulative_fractions)`` over the non-empty range."""
        total = self.total
        if not total:
            return [], []
        first = next(i for i, c in enumerate(self.counts) if c)
        last = max(i for i, c in enumerate(self.counts) if c)
        xs, ys, running = [], [], sum(self.counts[:first])
        for i in range(first, last + 1):
            running += self.counts[i]
            xs.append(self.edges[i + 1])
            ys.append(running / total)
        return xs, ys

    def to_dict(self):
        return {"low": self.low, "high": self.high, "per_decade": self.per_decade, "counts": self.counts}

    @classmethod
    def from_dict(cls, data):
        hist = cls(data["low"], data["high"], data["per_decade"])
        if len(data["counts"]) != len(hist.counts):
            raise ValueError(f"histogram has {len(data['counts'])} counts, expected {len(hist.counts)}")
        hist.counts = list(data["counts"])
        return hist


# ----------------------------------------------------------------------
# the machine and the process
def loadavg():
    """The 1, 5 and 15 minute load averages, or ``None`` where unknown."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def machine_info():
    """A description of the machine and interpreter, for the JSON output."""
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    cpu_model = row.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_total = None
    try:
        with open("/proc/meminfo") as f:
            for row in f:
                if row.startswith("MemTotal:"):
                    mem_total = int(row.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "mem_total_bytes": mem_total,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg": loadavg(),
    }


def cpu_seconds():
    """User plus system CPU time of this process so far, in seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes():
    """Resident set size of this process now, in bytes (``None`` where unknown)."""
    try:
        with open("/proc/self/status") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def process_cpu_seconds(pid):
    """User plus system CPU time of process ``pid`` (Linux ``/proc``), or ``None``."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_for(condition, timeout, what, interval=0.05):
    """Call ``condition()`` until it returns something truthy; return that.

    Raises:
        TimeoutError: ``timeout`` seconds passed first; the message names ``what``.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def make_logger(started=None, stream=None):
    """A ``log(message)`` function that prefixes the seconds since ``started``."""
    started = time.monotonic() if started is None else started

    def log(message):
        print(f"[{time.monotonic() - started:6.1f} s] {message}", file=stream or sys.stdout, flush=True)
    return log


# ----------------------------------------------------------------------
# the summary table
PASS, MISS, INFO, SKIPPED, ERROR = "PASS", "MISS", "", "skipped", "ERROR"


@dataclass
class Row:
    """One line of the summary table.

    Attributes:
        part: the benchmark (``round trips``, ``bulk read``, ...).
        what: the client, task or condition measured.
        figure: the main figures, already formatted (``"31,400 rt/s"``).
        detail: secondary figures (``"median 29.3 µs, p99 64.9 µs"``).
        ratio: the ratio against the part's baseline, formatted, or ``""``.
        target: the target, formatted (``">= 0.85x"``), or ``""``.
        result: ``PASS``, ``MISS``, ``""`` (for information), ``skipped`` or ``ERROR``.
    """

    part: str
    what: str
    figure: str = ""
    detail: str = ""
    ratio: str = ""
    target: str = ""
    result: str = INFO

    def to_dict(self):
        return asdict(self)


def verdict(ok):
    """``PASS`` if ``ok`` else ``MISS``."""
    return PASS if ok else MISS


_RIGHT = ("figure", "ratio")
COLUMNS = (("part", "part"), ("what", "measured"), ("figure", "figure"), ("detail", "detail"),
           ("ratio", "vs baseline"), ("target", "target"), ("result", "result"))


def format_table(rows):
    """The rows as a plain-text table (a list of lines)."""
    rows = [r.to_dict() if isinstance(r, Row) else r for r in rows]
    widths = {key: max([len(title)] + [len(str(r[key])) for r in rows]) for key, title in COLUMNS}
    header = "  ".join(title.rjust(widths[key]) if key in _RIGHT else title.ljust(widths[key])
                       for key, title in COLUMNS).rstrip()
    lines = [header, "-" * len(header)]
    previous = None
    for r in rows:
        cells = []
        for key, _ in COLUMNS:
            text = str(r[key])
            if key == "part" and text == previous:
                text = ""
            cells.append(text.rjust(widths[key]) if key in _RIGHT else text.ljust(widths[key]))
        previous = r["part"]
        lines.append("  ".join(cells).rstrip())
    return lines


def rst_table(rows, title=None):
    """The rows as a reStructuredText ``list-table`` (a string)."""
    rows = [r.to_dict() if isinstance(r, Row) else r for r in rows]

    def cell(text):
        text = str(text).replace("\\", "\\\\").replace("*", "\\*").replace("`", "\\`").replace("|", "\\|")
        if text in (PASS, MISS, ERROR):
            return f"**{text}**"
        return text or "--"
    out = [f".. list-table::{(' ' + title) if title else ''}", "   :header-rows: 1", ""]
    for i, (_, heading) in enumerate(COLUMNS):
        out.append(f"   {'*' if i == 0 else ' '} - {heading}")
    for r in rows:
        for i, (key, _) in enumerate(COLUMNS):
            out.append(f"   {'*' if i == 0 else ' '} - {cell(r[key])}")
    return "\n".join(out) + "\n"


def fmt_rate(value, unit):
    """``31,371 rt/s`` style."""
    return f"{value:,.0f} {unit}"


def fmt_ratio(value):
    return f"{value:.2f}x"
