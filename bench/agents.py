"""OCS agent benchmark: task round-trip latency and the highest ``acq`` rate.

Runs the real stack natively (:class:`socs_tcp_stack.stack.Stack`: a crossbar
router and ``TCPBusAgent`` instances started with ``ocs-agent-cli``), drives
it with a real ``OCSClient`` and measures, side by side in one run:

1. Task round-trip latency, client call to reply, through crossbar's HTTP
   caller bridge (``OCSClient`` task call = ``start`` + ``wait``):

   ``connect (no-op)``
       The agent's ``connect`` task while the link is already connected:
       it returns at once without touching the device, so it is the OCS
       floor of a task on the same agent.
   ``wrnrd_until``
       ``wrnrd_until(data='PING\\n', eot='\\\\n')`` against the echo device:
       the floor plus one real write-and-read on the device link.

   The two calls alternate (ABAB...), so both see the same conditions; the
   first ``--warmup`` pairs are discarded, then ``--samples`` pairs are
   timed with ``time.perf_counter``.  Reported: median, p99 (nearest rank),
   mean, min, max, and the ratio wrnrd_until / no-op of the medians and of
   the p99s.  The agent-side ``elapsed`` of ``wrnrd_until`` (the device
   transaction alone) is reported too.

2. ``acq`` with 10 query fields against its flat-out rate, in one run: one
   agent per rate, started with ``--acq-query f0=Q0 ... f9=Q9`` (one flag
   followed by ten values: OCS merges repeated flags) and ``--sample-rate
   R``.  For each rate ``acq`` is started, given ``--settle`` seconds, then
   ``cycles``, ``missed_cycles`` and ``lateness_max`` are read from
   ``acq.status().session['data']`` at the start and the end of the
   measuring window; the differences count.  A rate passes when no cycle was
   missed, the process never went degraded and the last values are the
   expected numbers.

   First a probe at a rate far too high to keep up with
   (``--flat-out-rate``, default 10000 Hz) measures the capacity: every cycle
   is late there, and the agent's poller pauses ``BEHIND_PAUSE`` (0.5 ms)
   after each, so one cycle takes about ``1 / achieved - 0.5 ms``.  Then the
   target, ``--target-ratio`` (0.75) times that flat-out rate, is run for
   ``--soak-seconds`` (default 60 s): the headline is whether it passes.
   While the time budget (``--budget``) allows, probes of ``--probe-seconds``
   then climb a ladder of rates above the target until one fails, and the
   highest passing probe is confirmed over the soak too (if it fails there,
   the next passing probe below it).  The target rate is rounded up, so a
   pass there is a pass at the target ratio.

   During every run a separate, unpinned process measures the machine's own
   noise (:class:`NoiseProbe`): how late a 1 ms sleep wakes up (the
   ``sleeper`` columns: p99.9 and max oversleep) and, from the CPU time of a
   fixed unit of work, the *slow windows* in which the machine ran that
   work at least ``SLOW_FACTOR`` (5) times slower than usual (the ``slow``
   columns: how many, and the longest).  It is not pinned: a probe pinned
   to the agent's CPU wakes there a thousand times a second, and in two
   ``shared`` DeviceAgent runs that way the flat-out rate fell to 511 and
   764 cycles/s, from about 930.  ``--machine-seconds`` pins one to each
   CPU.  ``acq.status`` is read every ``STATUS_EVERY``
   (0.5 s) of the measuring window, so each missed cycle is known to that
   precision; ``near slow`` counts those counted in a reading interval that
   a slow window overlaps (or ended at most ``MISS_MARGIN``, 0.15 s, before),
   and the summary gives the share of all intervals that are near a window,
   which is what chance alone would give.  On a shared machine these
   windows, not the agent, can be what misses cycles; so can the CPU the
   echo device runs on (``--placement``, below).

3. The cost of the agent's own code per ``acq`` cycle, without OCS: the
   same ten queries over one :class:`~socs_tcp.TCPInterface`, once in a bare
   loop and once through ``TCPBusAgent``'s poll and the shared
   :class:`~socs_tcp_agents.common.Poller` (with a stand-in for the OCS agent
   whose publish does nothing, and no pause), in alternating rounds of
   ``--overhead-seconds``.  Reported: cycles per second of each, their ratio,
   and the difference per cycle in microseconds.

``--placement`` chooses where the agents and the echo device run:
``unpinned`` (the default: wherever the scheduler puts them, and it moves
them), ``shared`` (both on the first CPU this process may use) or ``split``
(the agent on the first, the device on the second).  Crossbar, this script
and the noise probe are never pinned.  A child inherits the affinity of the
thread that starts it, so the agent is started inside :func:`spawning_on`,
and the device process pins itself before it starts a thread.  Where the
device runs decides the jitter (``docs/benchmarks.rst``).

The echo device is a :class:`socs_tcp.testing.DeviceEmulator` in a separate
process (:class:`EmulatorProcess`: ``python -c``, ports read from its
stdout), so it does not share a GIL with the client: it answers ``Qi`` with
``i + 0.5`` and echoes any other line.  The same class serves the other
benchmarks: several emulators in one process (``bench/links.py``), taken
down and up on command (``bench/recovery.py``).  Only loopback (127.0.0.1)
is used.  Every process started here is stopped before the script exits
(``Stack.stop()``, the emulator by its pid).

``--trace-rate R`` instead times every cycle of one agent from inside its
process (at ``R`` Hz for ``--trace-seconds``): a ``sitecustomize`` module,
put on the agent's ``PYTHONPATH`` for that run only, wraps the poll, each
``publish_to_feed`` and ``stats()`` call and listens to the garbage collector
(``gc.callbacks``); each poll is timed by the wall clock and by the thread's
CPU time, and after every fifth poll the module reads, from ``/proc``, the
CPU that poll ran on and the CPU of the device thread that ran most since
the last look.  The script prints their distributions, the polls split by
where the device ran (on the poll's CPU or on another), and the worst
cycles with what happened around them, including whether a slow window of
the machine covered them.  This is how the sources of the jitter were told
apart (``docs/benchmarks.rst``).

``--machine-seconds S`` instead runs only the probe, one pinned to each
CPU, for ``S`` seconds: the slow windows of the machine alone, how much of
them all CPUs share, their lengths and the gaps between them.

Part 1 alone, for the suite: :func:`run_latency` or :func:`measure_latency`
with :func:`latency_rows`.

Usage::

    python bench/agents.py [--samples N] [--soak-seconds S] [--target-ratio 0.75] [--json out.json]
    python bench/agents.py --placement shared [--agent device]
    python bench/agents.py --trace-rate 700 --trace-seconds 30 [--placement split]
    python bench/agents.py --machine-seconds 60
"""

import argparse
import bisect
import contextlib
import json
import math
import os
import platform
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from benchutil import Row, fmt_ratio, percentile, verdict
from socs_tcp_agents.common import BEHIND_PAUSE

from socs_tcp_stack.stack import Stack

HOST = "127.0.0.1"
N_FIELDS = 10
LADDER = (10, 20, 50, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000)
AGENT_START_STOP = 10.0  # rough seconds to start and stop one agent (for the time budget)
LATENCY_TARGET = 1.2     # a bus task may cost at most this times the no-op task
ACQ_TARGET_RATIO = 0.75  # the no-miss acq rate should reach this fraction of the flat-out rate
STATUS_EVERY = 0.5       # seconds between the acq.status readings of a measuring window
MISS_MARGIN = 0.15       # a miss counted this long after a machine slow window is put down to it
SLOW_FACTOR = 5.0        # a 10 ms stretch is a machine slow window when the probe's work costs this much more
SLOW_BIN = 0.010         # the stretch, seconds

NOISE_CODE = r"""
import json, os, sys, threading, time
if len(sys.argv) > 1:
    os.sched_setaffinity(0, {int(sys.argv[1])})
late, units = [], []    # oversleeps; (start, CPU time) of each unit of work
stop = threading.Event()
def watch():
    sys.stdin.read()
    stop.set()
threading.Thread(target=watch, daemon=True).start()
def unit():
    s = 0
    for i in range(200):
        s += i * i
    return s
clock, cpu = time.monotonic, time.thread_time
while not stop.is_set():
    t0 = clock()
    c0 = cpu()
    unit()
    units.append((t0, cpu() - c0))
    t1 = clock()
    time.sleep(0.001)
    late.append(clock() - t1 - 0.001)
json.dump({"late": late, "units": units}, sys.stdout)
sys.stdout.flush()
"""

EMULATOR_CODE = r"""
import json
import os
import sys
import time
if len(sys.argv) > 3:   # before any thread exists, so every thread inherits it
    os.sched_setaffinity(0, {int(c) for c in sys.argv[3].split(",")})
from socs_tcp.testing import DeviceEmulator
n, count = int(sys.argv[1]), int(sys.argv[2])
responses = {f"Q{i}": f"{i + 0.5}" for i in range(n)}
devices = []
try:
    for _ in range(count):
        devices.append(DeviceEmulator(dict(responses), write_termination="\n", default_response=lambda cmd: cmd,
                                      host="127.0.0.1", port=0).start())
    print(json.dumps([d.port for d in devices]), flush=True)
    # runs until the parent closes our stdin; 'down' and 'up' refuse and
    # accept connections again, and answer with the time they took effect
    for line in sys.stdin:
        command = line.strip()
        if command in ("down", "up"):
            for d in devices:
                d.refuse_connections(command == "down")
            print(json.dumps({"done": command, "time": time.time()}), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)
finally:
    for d in devices:
        d.shutdown()
"""


# ----------------------------------------------------------------------
# the echo device(s), in their own process
class EmulatorProcess:
    """:class:`DeviceEmulator` instances in a subprocess; it stops when its stdin closes.

    Each emulator answers ``Q0`` ... ``Q{n_fields-1}`` with ``0.5``, ``1.5``,
    ... and echoes any other line.

    Args:
        n_fields (int): how many ``Qi`` queries are known.
        count (int): how many emulators (each on its own port).
        timeout (float): seconds to wait for the process to report its ports.
        cpus (set): the CPUs the process (all its threads) may run on;
            ``None``: wherever the scheduler puts it.

    Attributes:
        ports (list): the emulators' ports; ``port`` is the first.
    """

    def __init__(self, n_fields=N_FIELDS, count=1, timeout=30.0, cpus=None):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be an int >= 1, got {count!r}")
        pin = [] if cpus is None else [",".join(str(c) for c in sorted(cpus))]
        self._proc = subprocess.Popen([sys.executable, "-c", EMULATOR_CODE, str(n_fields), str(count)] + pin,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, bufsize=0)
        line = b""
        try:
            line = self._readline(timeout)
            self.ports = [int(p) for p in json.loads(line)]
            self.port = self.ports[0]
        except BaseException:
            self.close()
            raise RuntimeError(f"emulator did not report its ports (got {line!r})") from None

    def _readline(self, timeout):
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        return self._proc.stdout.readline() if ready else b""

    @property
    def pid(self):
        return self._proc.pid

    def command(self, command, timeout=10.0):
        """Send ``down`` (refuse connections, drop clients) or ``up`` (listen
        again on the same ports).  Returns the UNIX time it took effect.

        Raises:
            ValueError: an unknown command (nothing is sent).
            RuntimeError: the process did not confirm within ``timeout`` s.
        """
        if command not in ("down", "up"):
            raise ValueError(f"emulator command must be 'down' or 'up', got {command!r}")
        if self._proc.poll() is not None:
            raise RuntimeError(f"emulator process {self.pid} has exited ({self._proc.returncode})")
        self._proc.stdin.write(command.encode() + b"\n")
        self._proc.stdin.flush()
        line = self._readline(timeout)
        try:
            reply = json.loads(line)
            if reply.get("done") != command:
                raise ValueError(reply)
        except ValueError:
            raise RuntimeError(f"emulator did not confirm {command!r} (got {line!r})") from None
        return reply["time"]

    def close(self):
        proc = self._proc
        if proc.poll() is None:
            try:
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # its own group: only this process
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Where the agent and the echo device run (``--placement``): anywhere (the scheduler decides,
#: and moves them), both on one CPU, or each on a CPU of its own.
PLACEMENTS = ("unpinned", "shared", "split")


def placement_cpus(name, cpus=None):
    """``(agent_cpus, device_cpus)`` of placement *name* (see :data:`PLACEMENTS`)
    over *cpus* (default: the CPUs this process may use); ``None`` is unpinned.

    Raises:
        ValueError: an unknown name, or ``split`` with fewer than two CPUs.
    """
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if name == "unpinned":
        return None, None
    if name == "shared":
        return {cpus[0]}, {cpus[0]}
    if name == "split":
        if len(cpus) < 2:
            raise ValueError(f"placement 'split' needs two CPUs, this process may use only {cpus}")
        return {cpus[0]}, {cpus[1]}
    raise ValueError(f"unknown placement {name!r}: choose one of {', '.join(PLACEMENTS)}")


@contextlib.contextmanager
def spawning_on(cpus):
    """Processes started inside the block run on *cpus* (``None``: no change):
    a child inherits the affinity of the thread that starts it, so this
    thread's is set for the block and restored after it."""
    if cpus is None:
        yield
        return
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, saved)


class NoiseProbe:
    """The machine's own noise while a run lasts, measured by a separate
    process in a loop: a fixed unit of pure-Python work (about 20 µs), then a
    1 ms sleep.

    Two things are measured.  How late each wake-up is shows scheduling
    delays (``n``, ``p50_ms``, ``p99_ms``, ``p999_ms``, ``max_ms`` of the
    oversleep).  The CPU time (``time.thread_time``) of each unit shows how
    fast the CPU runs the probe *while it is on it*, so another process
    taking its turn does not count: ``unit_us`` is the run's median, and a
    10 ms stretch whose median unit costs more than :data:`SLOW_FACTOR` times
    that is slow.  Adjacent slow stretches form the ``slow_windows``
    (``[start, length]`` in seconds of ``time.monotonic()``, the clock of
    this process too), summed up in ``slow_count``, ``slow_longest_ms`` and
    ``slow_fraction`` (of the run).  On a virtual machine these windows are
    the host running the guest slower, on every vCPU at once
    (``docs/benchmarks.rst``).  :meth:`stop` returns the dict."""

    def __init__(self, cpu=None):
        argv = [sys.executable, "-c", NOISE_CODE] + ([] if cpu is None else [str(cpu)])
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def stop(self):
        try:
            out, _ = self._proc.communicate(b"", timeout=30)
            raw = json.loads(out)
            return analyse_probe(raw["late"], raw["units"])
        except (subprocess.TimeoutExpired, ValueError, KeyError):
            os.killpg(self._proc.pid, signal.SIGKILL)   # its own group: only this process
            self._proc.wait(5)
            return None


def slow_windows(units, factor=SLOW_FACTOR, step=SLOW_BIN):
    """The stretches in which the probe's work ran *factor* times slower.

    *units* are ``(start, cpu_seconds)`` of the probe's units of work.  The
    time is cut into *step*-second bins; a bin with at least two units is
    slow when its median unit costs more than *factor* times the median
    unit of all of *units*.  Adjacent slow bins are merged.  Returns
    ``(typical, windows)``: that overall median, seconds, and the windows as
    ``[start, length]`` in seconds, in order."""
    if not units:
        return 0.0, []
    costs = sorted(c for _, c in units)
    typical = costs[len(costs) // 2]
    bins = {}
    for start, cost in units:
        bins.setdefault(math.floor(start / step), []).append(cost)
    slow = sorted(k for k, c in bins.items() if len(c) >= 2 and sorted(c)[len(c) // 2] > factor * typical)
    merged = []
    for k in slow:
        if merged and k == merged[-1][1]:
            merged[-1][1] = k + 1
        else:
            merged.append([k, k + 1])
    return typical, [[a * step, (b - a) * step] for a, b in merged]


def analyse_probe(late, units):
    """The :class:`NoiseProbe` result from its raw oversleeps and units of work."""
    ordered = sorted(late)
    n = len(ordered)

    def pick(q):
        return ordered[min(n - 1, int(q * (n - 1)))] * 1e3 if n else 0.0

    typical, windows = slow_windows(units)
    span = units[-1][0] - units[0][0] if len(units) > 1 else 0.0
    return {"n": n, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "p999_ms": pick(0.999),
            "max_ms": ordered[-1] * 1e3 if n else 0.0, "unit_us": typical * 1e6,
            "slow_windows": windows, "slow_count": len(windows),
            "slow_longest_ms": max((length for _, length in windows), default=0.0) * 1e3,
            "slow_fraction": min(1.0, sum(length for _, length in windows) / span) if span > 0 else 0.0}


# ----------------------------------------------------------------------
# statistics
def summary(samples):
    """Latency summary in milliseconds."""
    ordered = sorted(samples)
    return {"n": len(ordered),
            "median_ms": statistics.median(ordered) * 1e3,
            "p99_ms": percentile(ordered, 99) * 1e3,
            "mean_ms": statistics.fmean(ordered) * 1e3,
            "min_ms": ordered[0] * 1e3,
            "max_ms": ordered[-1] * 1e3}


# ----------------------------------------------------------------------
# helpers
def check_ok(reply, what):
    if reply.status != 0 or not reply.session.get("success"):
        raise RuntimeError(f"{what} failed: {reply}")
    return reply.session["data"]


def agent_args(port, rate=1.0, queries=()):
    args = ["--address", f"{HOST}:{port}", "--timeout", "5", "--sample-rate", rate, "--mode", "idle"]
    if queries:
        args += ["--acq-query", *queries]
    return args


def rate_id(rate):
    return f"{rate:g}".replace(".", "p")


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# ----------------------------------------------------------------------
# part 1: task latency
def measure_latency(stack, port, samples, warmup, log, agent_cpus=None):
    stack.add_instance("TCPBusAgent", "bench-lat", agent_args(port))
    with spawning_on(agent_cpus):
        stack.start_agent("bench-lat")
    client = stack.client("bench-lat")
    try:
        if check_ok(client.connect(), "connect")["response"] is not True:
            raise RuntimeError("connect did not report a connected link")
        noop, wrnrd, device = [], [], []
        for i in range(warmup + samples):
            t0 = time.perf_counter()
            reply = client.connect()
            t1 = time.perf_counter()
            data = check_ok(reply, "connect")
            if data["response"] is not True:
                raise RuntimeError(f"connect: link not connected ({data})")
            t2 = time.perf_counter()
            reply = client.wrnrd_until(data="PING\n", eot="\\n")
            t3 = time.perf_counter()
            data = check_ok(reply, "wrnrd_until")
            if data["response"] != "PING":
                raise RuntimeError(f"wrnrd_until: unexpected reply {data['response']!r}")
            if i >= warmup:
                noop.append(t1 - t0)
                wrnrd.append(t3 - t2)
                device.append(data["elapsed"])
        result = {"noop": summary(noop), "wrnrd_until": summary(wrnrd), "device_elapsed": summary(device),
                  "samples_s": {"noop": noop, "wrnrd_until": wrnrd, "device_elapsed": device}}
        result["ratio_median"] = result["wrnrd_until"]["median_ms"] / result["noop"]["median_ms"]
        result["ratio_p99"] = result["wrnrd_until"]["p99_ms"] / result["noop"]["p99_ms"]
        result["target_ratio"] = LATENCY_TARGET
        result["target_met"] = {"median": result["ratio_median"] <= LATENCY_TARGET,
                                "p99": result["ratio_p99"] <= LATENCY_TARGET}
        log(f"latency: no-op median {result['noop']['median_ms']:.2f} ms, "
            f"wrnrd_until median {result['wrnrd_until']['median_ms']:.2f} ms")
        return result
    finally:
        stack.agents["bench-lat"].stop()


def run_latency(samples=300, warmup=30, loglevel="info", log=print):
    """Part 1 on its own: start an echo device and a stack, measure, stop them.

    Returns the :func:`measure_latency` result.
    """
    with EmulatorProcess() as device:
        stack = Stack(loglevel=loglevel)
        try:
            stack.start()
            log(f"crossbar ready on port {stack.port}")
            return measure_latency(stack, device.port, samples, warmup, log)
        finally:
            stack.stop()


def latency_rows(result):
    """The suite's table rows for a :func:`measure_latency` result."""
    part = "OCS task latency"
    noop, wrnrd, device = result["noop"], result["wrnrd_until"], result["device_elapsed"]
    target = f"<= {LATENCY_TARGET}x"
    return [
        Row(part, "connect (no-op floor)", f"{noop['median_ms']:.2f} ms", f"p99 {noop['p99_ms']:.2f} ms, "
            f"n={noop['n']}", "baseline"),
        Row(part, "wrnrd_until, median", f"{wrnrd['median_ms']:.2f} ms",
            f"device part {device['median_ms']:.2f} ms", fmt_ratio(result["ratio_median"]), target,
            verdict(result["target_met"]["median"])),
        Row(part, "wrnrd_until, p99", f"{wrnrd['p99_ms']:.2f} ms", f"device part {device['p99_ms']:.2f} ms",
            fmt_ratio(result["ratio_p99"]), target, verdict(result["target_met"]["p99"])),
    ]


# ----------------------------------------------------------------------
# part 2: acq rate
def acq_session(client):
    reply = client.acq.status()
    if reply.status != 0:
        raise RuntimeError(f"acq.status failed: {reply}")
    return reply.session


def acq_instance(port, rate, device_file=None):
    """``(agent class, arguments)`` of the agent whose acq is measured:
    ``TCPBusAgent`` with ten ``--acq-query`` fields, or, given the ten-query
    *device_file*, ``DeviceAgent`` (the same bytes on the wire)."""
    if device_file is None:
        return "TCPBusAgent", agent_args(port, rate, [f"f{i}=Q{i}" for i in range(N_FIELDS)])
    return "DeviceAgent", ["--device-file", str(device_file), "--address", f"{HOST}:{port}", "--timeout", "5",
                           "--sampling-frequency", rate, "--mode", "idle"]


def run_acq(stack, port, rate, seconds, settle, tag, log, device_file=None, agent_cpus=None):
    """Run acq at *rate* for *seconds* on a fresh agent (``DeviceAgent`` if
    *device_file* is given; on *agent_cpus* if given); returns a result dict."""
    iid = f"bench-acq-{tag}-{rate_id(rate)}"
    expected = {f"f{i}": i + 0.5 for i in range(N_FIELDS)}
    agent_class, agent_argv = acq_instance(port, rate, device_file)
    stack.add_instance(agent_class, iid, agent_argv)
    with spawning_on(agent_cpus):
        stack.start_agent(iid)
    client = stack.client(iid)
    result = {"rate_hz": rate, "seconds": seconds, "kind": tag}
    try:
        reply = client.acq.start()
        if reply.status != 0:
            raise RuntimeError(f"acq.start failed: {reply}")
        wait_for(lambda: (acq_session(client).get("data") or {}).get("values"), 15, "the first acq values")
        time.sleep(settle)
        noise = NoiseProbe()   # unpinned: one pinned to the agent's CPU would compete with it
        try:
            first = acq_session(client)
            t0 = time.monotonic()
            readings = [(t0, first["data"]["missed_cycles"])]   # when the misses happened, to STATUS_EVERY
            end = t0 + seconds
            while True:
                time.sleep(max(0.0, min(STATUS_EVERY, end - time.monotonic())))
                last = acq_session(client)
                readings.append((time.monotonic(), last["data"]["missed_cycles"]))
                if readings[-1][0] >= end:
                    break
            wall = time.monotonic() - t0
        finally:
            result["noise"] = noise.stop()
        d0, d1 = first["data"], last["data"]
        cycles = d1["cycles"] - d0["cycles"]
        missed = d1["missed_cycles"] - d0["missed_cycles"]
        span = d1["timestamp"] - d0["timestamp"]
        achieved = cycles / span if span > 0 else 0.0
        values_ok = d1.get("values") == expected
        degraded = bool(first.get("degraded") or last.get("degraded") or d1.get("degraded"))
        result.update({
            "cycles": cycles, "missed_cycles": missed, "achieved_hz": achieved, "wall_s": wall,
            "cycles_total": d1["cycles"], "missed_total": d1["missed_cycles"],
            # since the start of the run (settle included): the latest any scheduled cycle started
            "lateness_max_ms": d1.get("lateness_max", 0.0) * 1e3,
            "values_ok": values_ok, "degraded": degraded,
            "device_latency_p50_ms": (d1.get("stats") or {}).get("latency_p50", 0) * 1e3,
            "device_latency_p99_ms": (d1.get("stats") or {}).get("latency_p99", 0) * 1e3,
            "passed": missed == 0 and cycles > 0 and values_ok and not degraded,
            "misses_near_slow": missed_near(readings, (result["noise"] or {}).get("slow_windows")),
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        })
        machine = result["noise"] or {}
        near = result["misses_near_slow"] or {}
        log(f"acq {tag:8s} {rate:>6g} Hz for {seconds:>4.0f} s: {cycles} cycles ({achieved:.1f}/s), "
            f"{missed} missed ({near.get('missed', '?')} near a machine slow window), "
            f"latest start {result['lateness_max_ms']:.1f} ms late; machine: sleeper max "
            f"{machine.get('max_ms', float('nan')):.1f} ms, {machine.get('slow_count', 0)} slow windows, "
            f"longest {machine.get('slow_longest_ms', 0.0):.0f} ms -> {'pass' if result['passed'] else 'FAIL'}")
        return result
    finally:
        try:
            client.acq.stop()
            client.acq.wait(timeout=10)
        except Exception as exc:  # the agent is stopped below anyway
            log(f"acq stop on {iid} failed: {exc}")
        stack.agents[iid].stop()


def missed_near(readings, windows, margin=MISS_MARGIN):
    """Put the missed cycles down to machine slow windows, where the timing allows.

    *readings* are successive ``(time, missed_cycles)`` readings and
    *windows* the probe's ``[start, length]`` slow windows (the same
    monotonic clock).  A reading interval is *near* a window when the
    window overlaps it, or ended at most *margin* seconds before it began.
    Returns ``{'missed', 'intervals', 'intervals_near', 'chance'}``: the
    missed cycles counted in near intervals, how many intervals counted
    misses and how many of those were near, and the share of all intervals
    that were near (what chance alone would give); ``None`` without
    windows data."""
    if windows is None:
        return None
    missed = intervals = intervals_near = near_any = 0
    for (t_a, m_a), (t_b, m_b) in zip(readings, readings[1:]):
        near = any(start < t_b and start + length > t_a - margin for start, length in windows)
        near_any += near
        if m_b > m_a:
            intervals += 1
            if near:
                intervals_near += 1
                missed += m_b - m_a
    total = len(readings) - 1
    return {"missed": missed, "intervals": intervals, "intervals_near": intervals_near,
            "chance": near_any / total if total > 0 else 0.0}


def nice_between(low, high):
    """A round rate between *low* and *high* (geometric middle), or None."""
    mid = math.sqrt(low * high)
    step = 10 ** math.floor(math.log10(mid))
    for unit in (step / 2, step / 4, step / 10):
        candidate = round(mid / unit) * unit
        if low < candidate < high:
            return float(f"{candidate:g}")
    return None


def find_rate(stack, port, args, deadline, log):
    """Flat-out probe, the target rate over the soak, then higher ladder rates while the budget allows."""
    probes, confirms = [], []

    def time_left():
        return deadline - time.monotonic()

    def acq(rate, seconds, kind):
        return run_acq(stack, port, rate, seconds, args.settle, kind, log, args.device_file, args.agent_cpus)

    probe_cost = args.probe_seconds + args.settle + AGENT_START_STOP
    soak_cost = args.soak_seconds + args.settle + AGENT_START_STOP
    flat_out = acq(args.flat_out_rate, args.probe_seconds, "flat-out")
    # every cycle is late at this rate, and the Poller then pauses BEHIND_PAUSE before the next one
    flat_out["cycle_ms_estimate"] = (1.0 / flat_out["achieved_hz"] - BEHIND_PAUSE) * 1e3 \
        if flat_out["achieved_hz"] > 0 else None
    # rounded up, so that a pass at this rate is a pass at the target ratio
    target = float(math.ceil(args.target_ratio * flat_out["achieved_hz"]))
    best = None
    if target > 0:
        res = acq(target, args.soak_seconds, "target")
        confirms.append(res)
        if res["passed"]:
            best = target
    # then climb, if there is time: probes above the best confirmed rate (or below a failed target)
    ladder = [r for r in LADDER if r > target] if best is not None else [r for r in LADDER if r < target][::-1]
    for rate in ladder:
        if time_left() < probe_cost + soak_cost:
            log("time budget: stopping the ladder")
            break
        res = acq(rate, args.probe_seconds, "probe")
        probes.append(res)
        if res["passed"] != (best is not None):
            break  # climbing: the first failure; descending: the first pass
    # confirm the best passing probe over the soak; if it fails, the next
    # passing probe below it, while the budget allows
    candidates = sorted((p["rate_hz"] for p in probes if p["passed"]
                         and (best is None or p["rate_hz"] > best)), reverse=True)
    for rate in candidates:
        if time_left() < soak_cost:
            log("time budget: no further confirmation")
            break
        res = acq(rate, args.soak_seconds, "confirm")
        confirms.append(res)
        if res["passed"]:
            best = rate
            break
    ratio = best / flat_out["achieved_hz"] if best and flat_out["achieved_hz"] > 0 else None
    return {"probes": probes, "confirms": confirms, "flat_out": flat_out, "target_rate_hz": target,
            "target_ratio": args.target_ratio, "best_rate_hz": best, "best_vs_flat_out": ratio,
            "target_met": bool(ratio is not None and ratio >= args.target_ratio),
            "first_failed_probe_hz": min((p["rate_hz"] for p in probes if not p["passed"]), default=None)}


# ----------------------------------------------------------------------
# part 3: the agent's own cost per cycle, without OCS
class _StandInAgent:
    """Just enough of an OCSAgent for TCPBusAgent and the Poller: feeds are accepted and dropped."""

    class _Log:
        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    def __init__(self):
        self.log = self._Log()

    def register_feed(self, *args, **kwargs):
        pass

    def publish_to_feed(self, *args, **kwargs):
        pass


class _Session:
    data = None
    degraded = False


def measure_overhead(port, seconds=0.5, rounds=12, log=print):
    """Bare query loop vs TCPBusAgent's acq cycle on the same link, alternating rounds."""
    import threading

    import socs_tcp_agents.common as common
    from socs_tcp_agents.tcp_bus.agent import TCPBusAgent

    from socs_tcp import TCPInterface

    link = TCPInterface(HOST, port, 5.0)
    queries = [(f"f{i}", f"Q{i}") for i in range(N_FIELDS)]
    bus = TCPBusAgent(_StandInAgent(), link, b"\n", b"\n", queries, sample_rate=1e6)
    encoded = [(f"Q{i}\n").encode() for i in range(N_FIELDS)]
    rates = {"bare": [], "poller": []}
    pause = common.BEHIND_PAUSE
    common.BEHIND_PAUSE = 0.0          # measure the code, not the deliberate pause
    try:
        for _ in range(rounds):
            n = 0
            t0 = time.perf_counter()
            end = t0 + seconds
            while time.perf_counter() < end:
                for data in encoded:
                    link.wrnrd_until(data, b"\n")
                n += 1
            rates["bare"].append(n / (time.perf_counter() - t0))
            session = _Session()
            thread = threading.Thread(target=bus.poller.run, args=(session, 1e6), daemon=True)
            thread.start()
            time.sleep(0.1)                # past the start of the run (its one gc.collect)
            c0, t0 = bus.poller.cycles, time.perf_counter()
            time.sleep(seconds)
            c1, t1 = bus.poller.cycles, time.perf_counter()
            bus.poller.stop()
            thread.join(10)
            rates["poller"].append((c1 - c0) / (t1 - t0))
    finally:
        common.BEHIND_PAUSE = pause
        link.close()
    bare, poller = statistics.median(rates["bare"]), statistics.median(rates["poller"])
    result = {"bare_hz": bare, "poller_hz": poller, "ratio": poller / bare,
              "overhead_us_per_cycle": (1 / poller - 1 / bare) * 1e6, "rounds": rates, "seconds": seconds}
    log(f"overhead: bare {bare:.0f} cycles/s, poller {poller:.0f} cycles/s "
        f"({result['ratio']:.2f}x, {result['overhead_us_per_cycle']:.0f} us per cycle)")
    return result


# ----------------------------------------------------------------------
# --trace-rate: every cycle of one agent, timed from inside its process
TRACE_SITECUSTOMIZE = r"""
# loaded by the agent process of bench/agents.py --trace-rate only (PYTHONPATH)
import builtins, gc, json, os, sys, threading, time
OUT = os.environ.get("SOCS_TCP_ACQ_TRACE")
DEVICE = os.environ.get("SOCS_TCP_ACQ_TRACE_DEVICE")   # the echo device's pid
if OUT:
    rec = {"poll": [], "pub": [], "stats": [], "gc": [], "where": []}
    ticks = {}   # device thread -> its CPU ticks at the last look
    def cpu_of(stat):
        # (CPU last run on, user + system ticks) from a /proc/.../stat line
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[36]), int(fields[11]) + int(fields[12])
    def where():
        # the CPU of this thread and of the device thread that ran most since the last look
        with open(f"/proc/self/task/{threading.get_native_id()}/stat") as fh:
            mine = cpu_of(fh.read())[0]
        best, busiest = -1, None
        for tid in os.listdir(f"/proc/{DEVICE}/task"):
            try:
                with open(f"/proc/{DEVICE}/task/{tid}/stat") as fh:
                    cpu, used = cpu_of(fh.read())
            except OSError:
                continue
            if used - ticks.get(tid, 0) > best:
                best, busiest = used - ticks.get(tid, 0), cpu
            ticks[tid] = used
        return mine, busiest
    def traced_poll(poll):
        count = [0]
        def wrapper():
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return poll()
            finally:
                rec["poll"].append((t0, time.perf_counter() - t0, time.thread_time() - c0))
                count[0] += 1
                if DEVICE and count[0] % 5 == 0:
                    rec["where"].append((t0,) + where())
        return wrapper
    started = [0.0]
    def on_gc(phase, info):
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            rec["gc"].append((started[0], time.perf_counter() - started[0], info["generation"]))
    gc.callbacks.append(on_gc)
    def timed(fn, key):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                rec[key].append((t0, time.perf_counter() - t0))
        return wrapper
    real_import = builtins.__import__
    def importer(name, *args, **kwargs):
        module = real_import(name, *args, **kwargs)
        common = sys.modules.get("socs_tcp_agents.common")
        if common is not None and hasattr(common, "Poller") and not hasattr(common.Poller, "_traced"):
            poller = common.Poller
            init, run = poller.__init__, poller.run
            def traced_init(self, agent_obj, link, poll, *a, **k):
                link.stats = timed(link.stats, "stats")
                init(self, agent_obj, link, traced_poll(poll), *a, **k)
                agent_obj.agent.publish_to_feed = timed(agent_obj.agent.publish_to_feed, "pub")
            def traced_run(self, *a, **k):
                try:
                    return run(self, *a, **k)
                finally:
                    with open(OUT, "w") as fh:
                        json.dump(rec, fh)
            poller.__init__, poller.run, poller._traced = traced_init, traced_run, True
            builtins.__import__ = real_import
        return module
    builtins.__import__ = importer
"""


def trace_acq(rate, seconds, loglevel="info", log=print, agent_cpus=None, device_cpus=None):
    """Run one agent's acq at *rate* for *seconds* with the trace module
    loaded (the agent on *agent_cpus*, the device on *device_cpus*, if given);
    return the analysis."""
    with tempfile.TemporaryDirectory(prefix="socs_tcp-acq-trace-") as tmp, \
            EmulatorProcess(cpus=device_cpus) as device:
        with open(os.path.join(tmp, "sitecustomize.py"), "w") as fh:
            fh.write(TRACE_SITECUSTOMIZE)
        out = os.path.join(tmp, "trace.json")
        path = os.pathsep.join(p for p in (tmp, os.environ.get("PYTHONPATH")) if p)
        stack = Stack(loglevel=loglevel)
        try:
            stack.start()
            queries = [f"f{i}=Q{i}" for i in range(N_FIELDS)]
            stack.add_instance("TCPBusAgent", "bench-trace", agent_args(device.port, rate, queries))
            env = {"PYTHONPATH": path, "SOCS_TCP_ACQ_TRACE": out, "SOCS_TCP_ACQ_TRACE_DEVICE": str(device.pid)}
            with spawning_on(agent_cpus):
                stack.start_agent("bench-trace", extra_env=env)
            client = stack.client("bench-trace")
            if client.acq.start().status != 0:
                raise RuntimeError("acq.start failed")
            wait_for(lambda: (acq_session(client).get("data") or {}).get("values"), 15, "the first acq values")
            noise = NoiseProbe()
            time.sleep(seconds)
            noise = noise.stop()
            client.acq.stop()
            client.acq.wait(timeout=10)
            wait_for(lambda: os.path.exists(out), 10, "the trace file")
            time.sleep(0.2)
            with open(out) as fh:
                rec = json.load(fh)
        finally:
            stack.stop()
    return analyse_trace(rec, rate, noise)


def analyse_trace(rec, rate, noise=None):
    """Distributions of the traced pieces, and the worst cycles with what surrounded them."""
    def dist(values_s):
        ms = sorted(v * 1e3 for v in values_s)
        if not ms:
            return None
        return {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                "p999_ms": percentile(ms, 99.9), "max_ms": ms[-1]}
    starts = [p[0] for p in rec["poll"]]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    result = {"rate_hz": rate, "noise": noise, "poll": dist([p[1] for p in rec["poll"]]), "cycle": dist(gaps),
              "poll_cpu": dist([p[2] for p in rec["poll"]]),
              "publish": dist([d for _, d in rec["pub"]]), "stats": dist([d for _, d in rec["stats"]])}
    # every fifth poll: was the device on this poll's CPU, or on another one?
    by_start = {p[0]: p for p in rec["poll"]}
    side = {"same": [], "other": []}
    for t0, mine, device_cpu in rec.get("where", []):
        if device_cpu is not None and t0 in by_start:
            side["same" if device_cpu == mine else "other"].append(by_start[t0])
    result["placement"] = {k: {"polls": len(v), "wall": dist([p[1] for p in v]), "cpu": dist([p[2] for p in v])}
                           for k, v in side.items()}
    where_at = [(t0, mine == device_cpu) for t0, mine, device_cpu in rec.get("where", []) if device_cpu is not None]
    where_t = [t for t, _ in where_at]
    if starts:
        inside = [g for g in rec["gc"] if starts[0] <= g[0] <= starts[-1]]
        result["gc"] = {f"gen{gen}": dist([d for _, d, g in inside if g == gen]) for gen in (0, 1, 2)}
        result["span_s"] = starts[-1] - starts[0]
    pubs = sorted(t for t, _ in rec["pub"])
    windows = (noise or {}).get("slow_windows")   # time.monotonic(): the same clock as perf_counter on Linux
    worst = []
    for i in sorted(range(len(gaps)), key=lambda i: -gaps[i])[:8]:
        a, b = starts[i], starts[i + 1]
        k = bisect.bisect_right(pubs, a) - 1
        w = bisect.bisect_right(where_t, a) - 1
        worst.append({"cycle_ms": gaps[i] * 1e3, "poll_ms": rec["poll"][i][1] * 1e3,
                      "device_same_cpu": where_at[w][1] if w >= 0 and a - where_t[w] < 0.05 else None,
                      "since_publish_ms": (a - pubs[k]) * 1e3 if k >= 0 else None,
                      "phase_s": (a - starts[0]) % 1.0,
                      "gc_ms": [d * 1e3 for t, d, _ in rec["gc"] if a <= t <= b],
                      "in_slow_window": None if windows is None else
                      any(start < b and start + length > a for start, length in windows)})
    result["worst"] = worst
    return result


def print_trace(result):
    print(f"\nacq trace at {result['rate_hz']:g} Hz, {result.get('span_s', 0):.0f} s (times in ms)")
    print(f"{'piece':<16}{'n':>8}{'p50':>9}{'p99':>9}{'p99.9':>9}{'max':>9}")
    rows = [("poll (10 queries)", result["poll"]), ("  its CPU time", result.get("poll_cpu")),
            ("cycle to cycle", result["cycle"]),
            ("publish_to_feed", result["publish"]), ("stats()", result["stats"])]
    rows += [(f"gc {k}", v) for k, v in (result.get("gc") or {}).items()]
    for name, d in rows:
        if d:
            print(f"{name:<16}{d['n']:>8}{d['p50_ms']:>9.3f}{d['p99_ms']:>9.3f}{d['p999_ms']:>9.3f}{d['max_ms']:>9.3f}")
    noise = result.get("noise") or {}
    if noise:
        print(f"machine noise (1 ms sleeper): p99.9 {noise['p999_ms']:.1f} ms, max {noise['max_ms']:.1f} ms")
        if "slow_count" in noise:
            print(f"machine slow windows (probe work >= {SLOW_FACTOR:g}x slower): {noise['slow_count']}, "
                  f"{noise['slow_fraction'] * 100:.1f} % of the time, longest {noise['slow_longest_ms']:.0f} ms")
    placement = result.get("placement") or {}
    sampled = sum(v["polls"] for v in placement.values())
    if sampled:
        print("polls by where the device ran (every fifth poll), ms:")
        for key, label in (("same", "device on the poll's CPU"), ("other", "device on another CPU")):
            v = placement[key]
            if v["polls"]:
                print(f"  {label:<26}{v['polls'] / sampled * 100:5.0f} % of polls; wall p50 {v['wall']['p50_ms']:.3f} "
                      f"p99 {v['wall']['p99_ms']:.3f}, CPU time p50 {v['cpu']['p50_ms']:.3f}")
    print("worst cycles: cycle ms, poll ms, ms since the last publish, phase in the second, "
          "in a machine slow window, device on the same CPU, gc pauses")
    yes_no = {None: "-", True: "yes", False: "no"}
    for w in result["worst"]:
        since = "-" if w["since_publish_ms"] is None else f"{w['since_publish_ms']:.1f}"
        print(f"  {w['cycle_ms']:8.2f} {w['poll_ms']:8.2f} {since:>8} {w['phase_s']:6.3f} "
              f"{yes_no[w.get('in_slow_window')]:>4} {yes_no[w.get('device_same_cpu')]:>4}  "
              f"{', '.join(f'{g:.2f}' for g in w['gc_ms']) or '-'}")


# ----------------------------------------------------------------------
# --machine-seconds: the machine alone, one probe pinned to each CPU
def probe_machine(seconds):
    """Run a :class:`NoiseProbe` pinned to each CPU for *seconds*, nothing
    else; returns ``{'cpus': {cpu: probe result}, 'both_ms', 'either_ms',
    'lengths_ms', 'gaps_s'}``: the time slow on both CPUs at once and on
    either, the lengths of the windows of either CPU (merged) and the gaps
    between their starts."""
    cpus = sorted(os.sched_getaffinity(0))
    probes = {cpu: NoiseProbe(cpu) for cpu in cpus}
    time.sleep(seconds)   # the measuring window itself: nothing to wait for
    results = {cpu: probe.stop() for cpu, probe in probes.items()}
    if any(r is None for r in results.values()):
        raise RuntimeError("a machine probe did not report")
    bins = [{round(start / SLOW_BIN) + k for start, length in r["slow_windows"] for k in range(round(length / SLOW_BIN))}
            for r in results.values()]
    both = set.intersection(*bins)
    merged = []
    for b in sorted(set.union(*bins)):
        if merged and b == merged[-1][1]:
            merged[-1][1] = b + 1
        else:
            merged.append([b, b + 1])
    ms = SLOW_BIN * 1e3
    return {"seconds": seconds, "cpus": results, "both_ms": len(both) * ms, "either_ms": len(set.union(*bins)) * ms,
            "lengths_ms": [(b - a) * ms for a, b in merged],
            "gaps_s": [round((b[0] - a[0]) * SLOW_BIN, 2) for a, b in zip(merged, merged[1:])]}


def print_machine(result):
    print(f"\nthe machine alone, {result['seconds']:g} s, a probe pinned to each CPU "
          f"(a ~20 us unit of work, then a 1 ms sleep)")
    print(f"{'cpu':>4}{'unit us':>9}{'sleeper p99.9 ms':>18}{'max ms':>8}{'slow windows':>14}{'longest ms':>12}"
          f"{'% of time':>11}")
    for cpu, r in result["cpus"].items():
        print(f"{cpu:>4}{r['unit_us']:>9.1f}{r['p999_ms']:>18.1f}{r['max_ms']:>8.1f}{r['slow_count']:>14}"
              f"{r['slow_longest_ms']:>12.0f}{r['slow_fraction'] * 100:>11.1f}")
    either = result["either_ms"]
    share = f"{result['both_ms'] / either * 100:.0f} %" if either else "-"
    print(f"slow on any CPU {either:.0f} ms, on all of them at once {result['both_ms']:.0f} ms ({share})")
    lengths = sorted(result["lengths_ms"])
    if lengths:
        print(f"window lengths, ms: median {lengths[len(lengths) // 2]:.0f}, longest {lengths[-1]:.0f}; "
              f"gaps between starts, s: {' '.join(f'{g:g}' for g in result['gaps_s'][:24])}")


# ----------------------------------------------------------------------
def machine_info():
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "processor": platform.processor(),
            "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def print_report(report):
    info = report["machine"]
    print()
    print(f"machine: {info['nproc']} CPUs, Python {info['python']}, {info['platform']}")
    if info.get("loadavg_at_start") and info.get("loadavg_at_end"):
        print(f"load average (1 min) at start {info['loadavg_at_start'][0]:.2f}, "
              f"at end {info['loadavg_at_end'][0]:.2f}")
    settings = report["settings"]
    cpus = settings.get("cpus") or {}
    where = ", ".join(f"{who} on CPU {','.join(map(str, c))}" for who, c in cpus.items() if c) or "none pinned"
    print(f"placement: {settings.get('placement', 'unpinned')} (agents and echo device: {where})")
    lat = report["latency"]
    print(f"\nOCS task round trip (OCSClient -> crossbar -> TCPBusAgent), {lat['noop']['n']} samples each")
    print(f"{'task':<28}{'median ms':>11}{'p99 ms':>10}{'mean ms':>10}{'min ms':>9}{'max ms':>9}")
    for key, label in (("noop", "connect (no-op floor)"), ("wrnrd_until", "wrnrd_until PING"),
                       ("device_elapsed", "  of which device (agent)")):
        s = lat[key]
        print(f"{label:<28}{s['median_ms']:>11.2f}{s['p99_ms']:>10.2f}{s['mean_ms']:>10.2f}"
              f"{s['min_ms']:>9.2f}{s['max_ms']:>9.2f}")
    print(f"ratio wrnrd_until / no-op: {lat['ratio_median']:.2f} (median), {lat['ratio_p99']:.2f} (p99); "
          f"target <= {LATENCY_TARGET}: " + ", ".join(f"{k} {'MET' if ok else 'NOT MET'}"
                                                    for k, ok in lat["target_met"].items()))
    acq = report["acq"]
    agent = "DeviceAgent (device file)" if report["settings"].get("agent") == "device" else "TCPBusAgent"
    print(f"\nacq with {N_FIELDS} query fields, {agent}")
    print(f"{'run':<9}{'rate Hz':>9}{'secs':>6}{'cycles':>9}{'achieved/s':>12}{'missed':>8}{'near slow':>10}"
          f"{'late ms':>9}{'dev p99 ms':>12}{'sleeper p99.9/max ms':>22}{'slow n/longest ms':>19}{'load':>6}  result")
    runs = ([acq["flat_out"]] if acq["flat_out"] else []) + acq["confirms"][:1] + acq["probes"] + acq["confirms"][1:]
    for res in runs:
        noise = res.get("noise") or {}
        noise_text = f"{noise.get('p999_ms', float('nan')):.1f}/{noise.get('max_ms', float('nan')):.1f}"
        slow_text = f"{noise.get('slow_count', '-')}/{noise.get('slow_longest_ms', float('nan')):.0f}"
        near = (res.get("misses_near_slow") or {}).get("missed")
        print(f"{res['kind']:<9}{res['rate_hz']:>9g}{res['seconds']:>6.0f}{res['cycles']:>9}"
              f"{res['achieved_hz']:>12.1f}{res['missed_cycles']:>8}{'-' if near is None else near:>10}"
              f"{res.get('lateness_max_ms', 0):>9.1f}{res['device_latency_p99_ms']:>12.2f}{noise_text:>22}"
              f"{slow_text:>19}{res['loadavg_1min'] or 0:>6.2f}  {'pass' if res['passed'] else 'FAIL'}")
    flat = acq["flat_out"]
    if flat and flat.get("cycle_ms_estimate"):
        print(f"flat-out: {flat['achieved_hz']:.0f} cycles/s with a {BEHIND_PAUSE * 1e3:g} ms pause after each late "
              f"cycle, so one {N_FIELDS}-query cycle takes about {flat['cycle_ms_estimate']:.2f} ms")
    best = acq["best_rate_hz"]
    soak = report["settings"]["soak_seconds"]
    target_run = acq["confirms"][0] if acq["confirms"] else None
    if target_run and target_run["missed_cycles"]:
        near, machine = target_run.get("misses_near_slow"), target_run.get("noise") or {}
        if near is not None:
            print(f"target run: {near['missed']} of its {target_run['missed_cycles']} missed cycles, in "
                  f"{near['intervals_near']} of the {near['intervals']} {STATUS_EVERY:g} s reading intervals "
                  f"that counted misses, came near a machine slow window (chance alone: "
                  f"{near['chance'] * 100:.0f} % of the intervals); the probe's work ran >= {SLOW_FACTOR:g}x "
                  f"slower in {machine.get('slow_count', 0)} windows, {machine.get('slow_fraction', 0.0) * 100:.1f} % "
                  f"of the time, the longest {machine.get('slow_longest_ms', 0.0):.0f} ms")
    if best is None:
        print(f"\nno rate kept up for {soak:g} s with zero missed cycles "
              f"(target {acq['target_rate_hz']:g} Hz = {acq['target_ratio']:g}x flat-out): NOT MET")
    else:
        print(f"\nhighest acq rate with zero missed cycles over {soak:g} s: {best:g} Hz "
              f"({N_FIELDS} fields, {best * N_FIELDS:g} queries/s) = {acq['best_vs_flat_out']:.2f}x flat-out; "
              f"target >= {acq['target_ratio']:g}x: {'MET' if acq['target_met'] else 'NOT MET'}")
        cycle_ms = acq["flat_out"].get("cycle_ms_estimate")
        if cycle_ms:
            print(f"against the cycle time without the pauses ({cycle_ms:.2f} ms, {1e3 / cycle_ms:.0f} cycles/s): "
                  f"{best * cycle_ms / 1e3:.2f}x")
    over = report.get("overhead")
    if over:
        print(f"\nagent code per acq cycle, without OCS ({len(over['rounds']['bare'])} alternating rounds of "
              f"{over['seconds']:g} s): bare loop {over['bare_hz']:.0f} cycles/s, TCPBusAgent poll + Poller "
              f"{over['poller_hz']:.0f} cycles/s = {over['ratio']:.2f}x, "
              f"{over['overhead_us_per_cycle']:.0f} us per cycle")
    print(f"total run time {report['runtime_s']:.0f} s")


def write_json(path, figures):
    with open(path, "w") as fh:
        json.dump(figures, fh, indent=2)
        fh.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=300, help="timed task calls of each kind (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="untimed call pairs first (default 30)")
    parser.add_argument("--soak-seconds", type=float, default=60.0,
                        help="length of the acq confirmation run (default 60)")
    parser.add_argument("--probe-seconds", type=float, default=10.0,
                        help="length of each acq probe (default 10)")
    parser.add_argument("--flat-out-rate", type=float, default=10000.0,
                        help="a rate far too high to keep up with, probed first to measure the capacity "
                        "(default 10000)")
    parser.add_argument("--target-ratio", type=float, default=ACQ_TARGET_RATIO,
                        help=f"the rate run over the soak, as a fraction of the flat-out rate (default {ACQ_TARGET_RATIO})")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds of acq before the measuring window (default 1)")
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds the whole run should stay within (default 450)")
    parser.add_argument("--overhead-seconds", type=float, default=0.5,
                        help="length of each of the 12 rounds of the agent-code overhead part (default 0.5; 0 skips it)")
    parser.add_argument("--loglevel", default="info", help="LOGLEVEL of crossbar and the agents (default info)")
    parser.add_argument("--trace-rate", type=float, default=0.0, metavar="HZ",
                        help="instead of the benchmark: time every cycle of one agent's acq at this rate")
    parser.add_argument("--trace-seconds", type=float, default=30.0, help="length of the trace (default 30)")
    parser.add_argument("--machine-seconds", type=float, default=0.0, metavar="S",
                        help="instead of the benchmark: probe the machine alone for S seconds, one probe per CPU")
    parser.add_argument("--agent", choices=("tcp_bus", "device"), default="tcp_bus",
                        help="whose acq is measured: TCPBusAgent with ten --acq-query fields (default), or "
                             "DeviceAgent with a ten-query device file")
    parser.add_argument("--placement", choices=PLACEMENTS, default="unpinned",
                        help="where the agents and the echo device run: wherever the scheduler puts them "
                             "(default), both on the first CPU (shared), or the agent on the first and the "
                             "device on the second (split); crossbar and this script are never pinned")
    parser.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    try:
        args.agent_cpus, args.device_cpus = placement_cpus(args.placement)
    except ValueError as exc:
        parser.error(str(exc))
    if args.trace_rate:
        if not args.trace_rate > 0 or not args.trace_seconds > 0:
            parser.error(f"--trace-rate and --trace-seconds must be > 0, got {args.trace_rate}, {args.trace_seconds}")
        result = trace_acq(args.trace_rate, args.trace_seconds, args.loglevel, agent_cpus=args.agent_cpus,
                           device_cpus=args.device_cpus)
        print_trace(result)
        if args.json:
            write_json(args.json, result)
        return 0
    if args.machine_seconds:
        if not args.machine_seconds > 0:
            parser.error(f"--machine-seconds must be > 0, got {args.machine_seconds}")
        result = probe_machine(args.machine_seconds)
        print_machine(result)
        if args.json:
            write_json(args.json, result)
        return 0
    if args.samples < 1 or args.soak_seconds <= 0 or args.probe_seconds <= 0:
        parser.error("--samples, --soak-seconds and --probe-seconds must be positive")
    if not 0 < args.target_ratio <= 1 or not args.flat_out_rate > 0:
        parser.error(f"--target-ratio must be in (0, 1] and --flat-out-rate > 0, got {args.target_ratio}, "
                     f"{args.flat_out_rate}")

    started = time.monotonic()
    deadline = started + args.budget

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", flush=True)

    tmp = None
    args.device_file = None
    if args.agent == "device":
        from device_agent import bench_device_file  # the same ten-query file as bench/device_agent.py
        tmp = tempfile.TemporaryDirectory(prefix="bench-agents-")
        args.device_file = os.path.join(tmp.name, "bench10.yaml")
        with open(args.device_file, "w") as fh:
            fh.write(bench_device_file(N_FIELDS))
    try:
        return _run(args, log, started, deadline)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(args, log, started, deadline):
    report = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items()
                                                      if k not in ("json", "agent_cpus", "device_cpus")}}
    report["settings"]["fields"] = N_FIELDS
    report["settings"]["cpus"] = {"agent": sorted(args.agent_cpus or ()), "device": sorted(args.device_cpus or ())}
    with EmulatorProcess(cpus=args.device_cpus) as device:
        log(f"echo device: pid {device.pid}, port {device.port}")
        stack = Stack(loglevel=args.loglevel)
        try:
            stack.start()
            log(f"crossbar ready on port {stack.port}")
            report["latency"] = measure_latency(stack, device.port, args.samples, args.warmup, log, args.agent_cpus)
            report["acq"] = find_rate(stack, device.port, args, deadline, log)
        finally:
            stack.stop()
        if args.overhead_seconds > 0:
            report["overhead"] = measure_overhead(device.port, args.overhead_seconds, log=log)
    report["runtime_s"] = time.monotonic() - started
    report["machine"]["loadavg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_report(report)
    if args.json:
        write_json(args.json, report)
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
