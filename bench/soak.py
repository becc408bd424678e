"""Chaos soak of the OCS agents: keep both agents busy while their devices and
the router misbehave, then prove from the records that nothing was lost that
could have been kept.

Setup (all native, all on 127.0.0.1):

* two emulated devices (:class:`socs_tcp.testing.DeviceEmulator`, in this
  process so faults can be injected by method call): an echo device for the
  ``TCPBusAgent`` (answers ``READ?`` with ``1.5`` and echoes every other
  line) and a SCPI instrument for the ``ScpiInstrumentAgent`` (the
  simulator's :class:`~socs_tcp.simulators.scpi.ScpiInstrument` logic served
  through the emulator with ``default_response=instrument.respond``, so it
  gets the emulator's faults);
* a real crossbar router and both agents started with ``ocs-agent-cli``
  (:class:`socs_tcp_stack.stack.Stack`), ``acq`` running at ``--rate`` (10 Hz)
  from start-up, device timeout ``--device-timeout`` (1 s);
* a client thread calling tasks through ``OCSClient`` in a loop, alternating
  ``wrnrd_until(data="soak-NNNNNN\\n")`` on the bus agent (the device echoes
  the unique token) and ``query("VOLT v;VOLT?")`` on the SCPI agent (a
  setpoint unique to the request, read back in the same program message);
  every reply is compared with the reply its own request must get;
* a status thread polling ``acq.status()`` of both agents through
  ``OCSClient`` every ``status_interval`` seconds;
* a WAMP subscriber (autobahn, asyncio, in a thread; reconnects by itself)
  recording every sample of both agents' data and ``link_health`` feeds.

Faults, one at a time, the device faults hitting both devices at once: a
warm-up round with one fault of each kind, then the rest in a random order
(``--seed``), spread evenly over ``--duration`` seconds.  After each fault
the soak waits until it is survived: both agent processes alive, ``acq``
running and not degraded with a reading taken after the fault ended, and a
task on each agent answered correctly after it ended.

``restart``
    the devices stop listening and drop their clients for 0.5-1.5 s, then
    listen again on the same port (:meth:`DeviceEmulator.restart`).
``silent``
    the devices read commands but answer nothing for 2.5-4 s.
``garbage``
    the devices send unsolicited bytes without a terminator, once.
``flood``
    the devices send 10 MiB without a terminator (more than the links'
    1 MiB ``max_read_size``), as fast as the agents read.  The fault is
    lifted once the agents have read all of it: the kernel holds no flood
    byte unsent or unread on either side of any device connection
    (:func:`tcp_queued`), since bytes still queued there can meet a reply
    long after the device's last ``send()`` returned.
``crossbar``
    the router is stopped and started again on the same port
    (:meth:`socs_tcp_stack.stack.Crossbar.restart`).
``late`` (none by default, ``--late-replies N``)
    for 2.5-4 s the devices answer every command 1.5 device timeouts late
    (:meth:`DeviceEmulator.set_delay`), so replies arrive after the agent
    gave up waiting for them.

Definitions used by the checks:

cycle
    one pass of an agent's ``acq`` loop.  Every cycle publishes a
    ``link_health`` sample; a cycle whose poll succeeded also publishes a
    data sample with the same timestamp.  A health sample without a data
    sample is a *failed cycle*.
outage
    a maximal run of failed cycles, i.e. a fault long enough that at least
    one poll failed.  Its window runs from the last good cycle before it to
    the end of the first good poll after it (the recovery), i.e. to the
    start of the cycle after the recovery.
router window
    from ``buffer_time`` + 0.5 s before a router restart (a feed sends its
    samples in blocks every ``buffer_time`` = 1 s, and the block being
    filled when the router goes is lost) until the soak saw the fault
    survived.

Checks (each is a line of the report; any failure makes the script exit 1):

* ``agents alive``: both agent processes run at the end, and each ``acq``
  is still the session started at start-up, still running;
* ``no crossed replies``: no task reply and no ``acq`` value is another
  request's answer.  A reply that ends with its own answer but starts with
  bytes the device injected (garbage, flood) is counted as *prefixed*, not
  crossed, and must fall inside a garbage or flood fault;
* ``tasks outside faults``: every task call outside a fault window succeeded;
* ``degraded raised and cleared``: per agent, the number of outages in the
  feeds equals the number of "acq degraded" and of "no longer degraded"
  lines in the agent log; every outage ended in a recovery; the status
  poller saw ``degraded`` true inside every outage long enough to be
  sampled, and false after every fault and at the end; every restart and
  silence caused an outage on each agent; no outage started outside a fault;
* ``feed samples only missing in outages``: every gap of more than 2.5
  cycle periods between consecutive samples of a feed lies inside an outage
  window or a router window;
* ``every fault survived`` within its deadline;
* ``resources bounded``: file descriptors (``/proc/<pid>/fd``), threads and
  ``VmRSS`` of each agent process, measured after the warm-up round and at
  the end, grew by no more than ``max_fd_growth``, ``max_thread_growth``
  and ``max_rss_growth_kib`` + ``rss_per_task_kib`` for every task run on
  that agent in between.  The per-task allowance is there because OCS 0.12
  itself keeps every finished task session alive (``OpSession.__init__``
  calls ``purge_log``, which re-arms itself with ``deferLater`` every 720 s
  forever, so the reactor holds every session): about 3.6 KiB per task run,
  measured the same on OCS's own ``FakeDataAgent``.

Usage::

    python bench/soak.py [--duration 300] [--restarts 20] [--silences 5] [--garbage 5]
                         [--floods 2] [--crossbar-restarts 2] [--seed N] [--json out.json]

``tests/test_soak.py`` runs the same code with small counts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import platform
import random
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

from socs_tcp.simulators.scpi import ScpiInstrument
from socs_tcp.testing import DeviceEmulator
from socs_tcp_stack.stack import Stack

log = logging.getLogger("soak")

HOST = "127.0.0.1"
BUS = "bus"
PSU = "psu"
AGENTS = (BUS, PSU)
FAULT_KINDS = ("restart", "silent", "garbage", "flood", "crossbar", "late")
FAULT_LABELS = {"restart": "device restart", "silent": "device silent", "garbage": "device garbage",
                "flood": "device flood", "crossbar": "crossbar restart", "late": "late replies"}
#: faults that must cause an outage on every agent (a poll fails while they last)
OUTAGE_FAULTS = ("restart", "silent", "late")
#: faults whose bytes may end up at the start of a reply
INJECTING_FAULTS = ("garbage", "flood")

BUS_QUERY = ("value", "READ?", "1.5")     # acq field, command, reply
FEED_BUFFER_TIME = 1.0                     # buffer_time of the agents' feeds, seconds
GAP_PERIODS = 2.5                          # a feed gap longer than this many cycle periods is a missing sample
LOG_DEGRADED = re.compile(r"acq degraded\b")
LOG_RECOVERED = re.compile(r"no longer degraded\b")
_TRAILING_NUMBER = re.compile(r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


# ----------------------------------------------------------------------
# configuration

@dataclasses.dataclass
class SoakConfig:
    """What to inject and how long to run.

    Args:
        duration: seconds over which the faults are spread (the run also
            needs about 20 s to start and stop the stack).
        restarts, silences, garbage, floods, crossbar_restarts,
            late_replies: how many faults of each kind.
        rate: ``acq`` cycles per second of both agents.
        device_timeout: the agents' ``--timeout``, seconds.
        task_interval: pause between two task calls of the client thread.
        status_interval: pause between two status polls.
        restart_down: (min, max) seconds a restarted device stays down.
        silence: (min, max) seconds a silent (or late answering) device stays so.
        device_deadline: seconds a device fault may take to be survived.
        crossbar_deadline: seconds a router restart may take to be survived.
        max_fd_growth, max_thread_growth, max_rss_growth_kib: bounds of the
            resource check.
        rss_per_task_kib: memory allowed on top of ``max_rss_growth_kib`` for
            every task run between the two resource snapshots (what OCS keeps
            of each finished task session).
        seed: seed of the fault order and durations (``None``: random).
        workdir: directory for the stack's files (``None``: a temporary one).
        keep_workdir: keep a temporary workdir (logs) after the run.
    """

    duration: float = 300.0
    restarts: int = 20
    silences: int = 5
    garbage: int = 5
    floods: int = 2
    crossbar_restarts: int = 2
    late_replies: int = 0
    rate: float = 10.0
    device_timeout: float = 1.0
    task_interval: float = 0.05
    status_interval: float = 0.25
    restart_down: tuple = (0.5, 1.5)
    silence: tuple = (2.5, 4.0)
    device_deadline: float = 20.0
    crossbar_deadline: float = 60.0
    max_fd_growth: int = 4
    max_thread_growth: int = 2
    max_rss_growth_kib: int = 8192
    rss_per_task_kib: float = 4.0
    seed: int | None = None
    workdir: str | None = None
    keep_workdir: bool = False

    def counts(self):
        """``{kind: count}`` in :data:`FAULT_KINDS` order."""
        return dict(zip(FAULT_KINDS, (self.restarts, self.silences, self.garbage, self.floods,
                                      self.crossbar_restarts, self.late_replies)))

    def min_duration(self):
        """The least ``duration`` that leaves each fault time to happen and be survived."""
        need = {"restart": self.restart_down[1] + 4.0, "silent": self.silence[1] + 4.0, "garbage": 3.0,
                "flood": 5.0, "crossbar": 15.0, "late": self.silence[1] + 6.0}
        return sum(need[kind] * n for kind, n in self.counts().items())

    def validate(self):
        """Raise ``ValueError``/``TypeError`` naming the first bad setting."""
        for name, value in self.counts().items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"the number of {name} faults must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"the number of {name} faults must be >= 0, got {value}")
        if sum(self.counts().values()) == 0:
            raise ValueError("no faults requested: give at least one fault count > 0")
        for name in ("duration", "rate", "device_timeout", "task_interval", "status_interval", "device_deadline",
                     "crossbar_deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        for name in ("restart_down", "silence"):
            value = getattr(self, name)
            if (not isinstance(value, (tuple, list)) or len(value) != 2
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                    or not 0 < value[0] <= value[1] < math.inf):
                raise ValueError(f"{name} must be (min, max) seconds with 0 < min <= max, got {value!r}")
        if self.silence[0] <= 2 * self.device_timeout:
            raise ValueError(f"silence must last longer than two device timeouts ({2 * self.device_timeout} s) "
                             f"so a poll fails, got {self.silence!r}")
        for name in ("max_fd_growth", "max_thread_growth", "max_rss_growth_kib"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        value = self.rss_per_task_kib
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"rss_per_task_kib must be a finite number >= 0, got {value!r}")
        if self.duration < self.min_duration():
            raise ValueError(f"duration={self.duration} s is too short for the requested faults: they need at "
                             f"least {self.min_duration():.0f} s")
        return self


# ----------------------------------------------------------------------
# records

@dataclasses.dataclass
class Fault:
    """One injected fault and what happened to it (times are UNIX seconds)."""

    kind: str
    index: int
    warmup: bool = False
    hold: float = 0.0               # how long it lasted (restart down time, silence)
    t_inject: float | None = None
    t_lifted: float | None = None   # the device (or router) is back to normal
    t_recovered: float | None = None  # the soak saw both agents healthy again
    survived: bool = False
    detail: str = ""

    def window(self, deadline):
        """``(start, end)`` of the time the fault may affect the agents."""
        end = self.t_recovered if self.t_recovered is not None else (self.t_lifted or self.t_inject) + deadline
        return self.t_inject, end + 0.5


@dataclasses.dataclass
class TaskRecord:
    agent: str
    t0: float
    t1: float
    request: str
    expected: str
    outcome: str        # ok, prefixed, crossed, failed, rejected, unavailable
    reply: str = ""


@dataclasses.dataclass
class StatusSample:
    agent: str
    t0: float
    t1: float
    ok: bool
    status: str = ""
    degraded: bool | None = None
    cycles: int | None = None
    data_time: float | None = None
    start_time: float | None = None
    error: str = ""


@dataclasses.dataclass
class Outage:
    """A run of failed ``acq`` cycles seen in the feeds."""

    agent: str
    last_good: float | None
    first_bad: float
    recovered: float | None
    failed_cycles: int
    raised: float | None = None     # start of the cycle after the first failed one: degraded is set by then
    settled: float | None = None    # start of the cycle after the recovery: the recovering poll is over

    @property
    def window(self):
        """From the last good cycle before to the end of the first good poll after (``inf`` if open)."""
        start = self.last_good if self.last_good is not None else self.first_bad
        if self.recovered is None:
            return start, math.inf
        return start, self.settled if self.settled is not None else self.recovered

    @property
    def duration(self):
        return None if self.recovered is None else self.recovered - self.first_bad

    @property
    def failing(self):
        """``(start, end)`` of the first failed cycle: its poll ran (at least partly) then.

        A cycle that starts just before a fault can still fail because of it
        (its poll waits for a task to release the link, say), so an outage
        belongs to a fault when this interval overlaps the fault's window.
        """
        end = self.raised if self.raised is not None else self.recovered
        return self.first_bad, end if end is not None else self.first_bad


@dataclasses.dataclass
class Check:
    name: str
    passed: bool
    detail: str


# ----------------------------------------------------------------------
# pure analysis (no I/O)

def classify_reply(reply, expected):
    """``'ok'``, ``'prefixed'`` (own answer after injected bytes) or ``'crossed'``."""
    if reply == expected:
        return "ok"
    if isinstance(reply, str) and expected and reply.endswith(expected):
        return "prefixed"
    return "crossed"


def classify_value(value, valid):
    """Classify one ``acq`` feed value: ``valid(float)`` says whether a number is this field's answer."""
    if isinstance(value, bool):
        return "crossed"
    if isinstance(value, (int, float)):
        return "ok" if valid(float(value)) else "crossed"
    if isinstance(value, str):
        m = _TRAILING_NUMBER.search(value.strip())
        if m and valid(float(m.group(1))):
            return "prefixed"
    return "crossed"


def cycles_from_feeds(health_times, data_times):
    """``[(timestamp, good)]`` in time order: a health sample is a cycle, good if a data sample has its timestamp."""
    good = {round(t, 6) for t in data_times}
    return [(t, round(t, 6) in good) for t in sorted(health_times)]


def find_outages(agent, cycles):
    """The runs of failed cycles in ``cycles`` (from :func:`cycles_from_feeds`)."""
    outages = []
    last_good = None
    current = None
    for t, good in cycles:
        if outages and outages[-1].settled is None:
            outages[-1].settled = t
        if current is not None and current.raised is None:
            current.raised = t
        if good:
            if current is not None:
                current.recovered = t
                outages.append(current)
                current = None
            last_good = t
        elif current is None:
            current = Outage(agent, last_good, t, None, 1)
        else:
            current.failed_cycles += 1
    if current is not None:
        outages.append(current)
    return outages


def find_gaps(times, max_gap):
    """``[(a, b)]``: consecutive timestamps more than ``max_gap`` apart."""
    ordered = sorted(times)
    return [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a > max_gap]


def covered(interval, windows, slack=0.0):
    """True if ``interval`` (a, b) lies inside one of ``windows``, widened by ``slack``."""
    a, b = interval
    return any(w0 - slack <= a and b <= w1 + slack for w0, w1 in windows)


def overlaps(t, windows):
    """True if time ``t``, or any part of the interval ``t`` = (a, b), falls inside one of ``windows``."""
    a, b = t if isinstance(t, tuple) else (t, t)
    return any(w0 <= b and a <= w1 for w0, w1 in windows)


def _stat(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "max": max(values), "n": len(values)}


def resource_growth(before, after, bounds):
    """``[(agent, what, growth, bound)]`` of every resource that grew beyond its bound.

    ``before``/``after``: ``{agent: {what: value}}``; ``bounds``: ``{agent: {what: bound}}``.
    """
    over = []
    for agent in sorted(before):
        for key, bound in bounds[agent].items():
            growth = after[agent][key] - before[agent][key]
            if growth > bound:
                over.append((agent, key, growth, bound))
    return over


def proc_resources(pid):
    """``{'fds', 'threads', 'rss_kib'}`` of a live process, from ``/proc``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = rss = None
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return {"fds": fds, "threads": threads, "rss_kib": rss}


def tcp_queued(port):
    """Bytes the kernel holds on established TCP connections to ``port``:
    sent by the server but not yet acknowledged (``tx_queue`` of its side)
    plus received by a client but not yet read (``rx_queue`` of the
    client's side), from ``/proc/net/tcp`` and ``/proc/net/tcp6``."""
    queued = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as fh:
                rows = fh.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) < 5 or fields[3] != "01":        # ESTABLISHED only
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            tx_queue, rx_queue = (int(x, 16) for x in fields[4].split(":"))
            if local_port == port:
                queued += tx_queue
            elif remote_port == port:
                queued += rx_queue
    return queued


# ----------------------------------------------------------------------
# the observers (threads)

class FeedRecorder:
    """Subscribes to feed topics over WAMP and keeps every sample.

    Runs an autobahn asyncio component in a thread of its own; it reconnects
    (every 0.2-1 s) when the router goes away.  ``samples[topic]`` is a list
    of ``(timestamp, {field: value})``; ``joins`` the times it (re)joined.
    """

    def __init__(self, url, realm, topics):
        self.url = url
        self.realm = realm
        self.topics = list(topics)
        self.samples = {topic: [] for topic in self.topics}
        self.joins = []
        self.lock = threading.Lock()
        self._loop = None
        self._thread = None
        self._component = None
        self._joined = threading.Event()

    def start(self, timeout=30.0):
        noise = io.StringIO()
        with contextlib.redirect_stderr(noise):
            # an optional serializer of autobahn (bjdata) prints a NumPy ABI complaint on import
            from autobahn.asyncio.component import Component
        if noise.getvalue():
            log.debug("autobahn import said: %s", noise.getvalue())
        logging.getLogger("autobahn").setLevel(logging.CRITICAL)
        self._loop = asyncio.new_event_loop()
        self._component = Component(realm=self.realm, transports=[{
            "url": self.url, "max_retries": -1, "initial_retry_delay": 0.2, "max_retry_delay": 1.0,
            "retry_delay_growth": 1.5}])
        self._component.on("join", self._on_join)
        self._thread = threading.Thread(target=self._run, name="soak-feeds", daemon=True)
        self._thread.start()
        if not self._joined.wait(timeout):
            self.stop()
            raise RuntimeError(f"feed subscriber could not join {self.url} within {timeout} s")
        return self

    def _run(self):
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            done = self._component.start(loop=loop)
            loop.run_until_complete(done)
        except Exception as exc:  # stopped while reconnecting, or the loop was stopped
            log.debug("feed subscriber ended: %r", exc)
        finally:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    async def _on_join(self, session, details):
        for topic in self.topics:
            await session.subscribe(self._handler(topic), topic)
        with self.lock:
            self.joins.append(time.time())
        self._joined.set()

    def _handler(self, topic):
        def handle(*args, **kwargs):
            # OCS publishes one argument, the pair (blocks, feed description)
            message = args[0] if args else None
            if isinstance(message, (list, tuple)):
                message = message[0] if message else None
            rows = []
            for block in (message or {}).values():
                data = block.get("data", {})
                for i, t in enumerate(block.get("timestamps", [])):
                    rows.append((t, {k: v[i] for k, v in data.items()}))
            with self.lock:
                self.samples[topic].extend(rows)
        return handle

    def joined_since(self, t):
        with self.lock:
            return any(j >= t for j in self.joins)

    def stop(self):
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if thread.is_alive():
            loop.call_soon_threadsafe(self._stop_component)
            thread.join(10)
            if thread.is_alive():
                loop.call_soon_threadsafe(loop.stop)
                thread.join(5)
        self._thread = None

    def _stop_component(self):
        try:
            self._component.stop()
        except Exception as exc:
            log.debug("stopping the feed subscriber: %r", exc)


class _Worker(threading.Thread):
    def __init__(self, name):
        super().__init__(name=name, daemon=True)
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.crash = None

    def run(self):
        try:
            self.body()
        except BaseException as exc:  # reported as a failed check, never silent
            self.crash = repr(exc)
            log.exception("%s crashed", self.name)

    def stop(self, timeout=30.0):
        self.halt.set()
        if self.is_alive():
            self.join(timeout)


class StatusWatcher(_Worker):
    """Polls ``acq.status()`` of each agent through ``OCSClient``."""

    def __init__(self, clients, interval):
        super().__init__("soak-status")
        self.clients = clients
        self.interval = interval
        self.samples = []
        self.latest = {}

    def body(self):
        while not self.halt.is_set():
            for agent, client in self.clients.items():
                t0 = time.time()
                try:
                    session = client.acq.status().session
                    sample = StatusSample(agent, t0, time.time(), True, session.get("status", ""),
                                          session.get("degraded"), (session.get("data") or {}).get("cycles"),
                                          (session.get("data") or {}).get("timestamp"), session.get("start_time"))
                except Exception as exc:  # router down, agent rejoining
                    sample = StatusSample(agent, t0, time.time(), False, error=f"{type(exc).__name__}: {exc}"[:200])
                with self.lock:
                    self.samples.append(sample)
                    self.latest[agent] = sample
            self.halt.wait(self.interval)

    def latest_for(self, agent):
        with self.lock:
            return self.latest.get(agent)


class TaskClient(_Worker):
    """Calls write-and-read tasks in a loop and checks every reply against its own request."""

    def __init__(self, clients, interval, timeout):
        super().__init__("soak-tasks")
        self.clients = clients
        self.interval = interval
        self.timeout = timeout
        self.records = []
        self.last_ok = {}
        self._reference = ScpiInstrument(noise=0)   # computes the answer each SCPI request must get
        self._n = 0

    def next_request(self, agent):
        """``(call kwargs, expected reply)`` of the next request to ``agent``."""
        self._n += 1
        if agent == BUS:
            token = f"soak-{self._n:06d}"
            return {"data": token + "\n", "eot": "\\n", "timeout": self.timeout}, token
        volts = (self._n % 29999 + 1) / 1000     # unique over 29999 requests, never 0
        query = f"VOLT {volts:.3f};VOLT?"
        return {"query": query, "timeout": self.timeout}, self._reference.respond(query)

    def call(self, agent):
        kwargs, expected = self.next_request(agent)
        client = self.clients[agent]
        op = client.wrnrd_until if agent == BUS else client.query
        request = kwargs.get("data", kwargs.get("query")).strip()
        t0 = time.time()
        try:
            reply = op(**kwargs)
        except Exception as exc:  # router down or agent rejoining
            return TaskRecord(agent, t0, time.time(), request, expected, "unavailable",
                              f"{type(exc).__name__}: {exc}"[:200])
        t1 = time.time()
        if reply.status != 0:
            return TaskRecord(agent, t0, t1, request, expected, "rejected", str(reply.msg)[:200])
        session = reply.session or {}
        if not session.get("success"):
            text = " ".join(str(m[1]) for m in session.get("messages", [])[-2:])
            return TaskRecord(agent, t0, t1, request, expected, "failed", text[:200])
        response = (session.get("data") or {}).get("response")
        return TaskRecord(agent, t0, t1, request, expected, classify_reply(response, expected), str(response)[:200])

    def body(self):
        while not self.halt.is_set():
            for agent in AGENTS:
                record = self.call(agent)
                with self.lock:
                    self.records.append(record)
                    if record.outcome == "ok":
                        self.last_ok[agent] = record.t0
                if record.outcome == "crossed":
                    log.error("crossed reply on %s: sent %r, expected %r, got %r", agent, record.request,
                              record.expected, record.reply)
                elif record.outcome == "unavailable":
                    self.halt.wait(0.25)    # the router is away: do not spin
            self.halt.wait(self.interval)

    def ok_since(self, agent, t):
        with self.lock:
            return self.last_ok.get(agent, 0.0) > t


# ----------------------------------------------------------------------
# the soak

def _value_checks():
    """Per agent, per data field: which numbers are that field's answer."""
    return {
        BUS: {BUS_QUERY[0]: lambda v: v == float(BUS_QUERY[2])},
        # the simulated supply's output stays off: 0 V and 0 A exactly (noise 0);
        # the temperature follows 25 +- 0.5 C
        PSU: {"voltage": lambda v: v == 0.0, "current": lambda v: v == 0.0,
              "temperature": lambda v: 24.4 <= v <= 25.6},
    }


class Soak:
    """One soak run; :meth:`run` returns the report (a JSON-safe dict)."""

    def __init__(self, config):
        self.cfg = config.validate()
        # a random run still gets a seed, reported, so it can be repeated with --seed
        self.seed = config.seed if config.seed is not None else random.SystemRandom().randrange(1 << 31)
        self.rng = random.Random(self.seed)
        self.faults = []
        self.devices = {}
        self.instrument = None
        self.stack = None
        self.clients = {}
        self.recorder = None
        self.status = None
        self.tasks = None
        self.resources = {}
        self.start_times = {}
        self.t_begin = None
        self.t_end = None
        self.aborted = ""
        self.logs = {}

    # ---------------------------------------------------------------- setup
    def plan(self):
        """The fault order: one of each kind (warm-up round), then the rest shuffled."""
        counts = self.cfg.counts()
        warm = [kind for kind in FAULT_KINDS if counts[kind] > 0]
        rest = [kind for kind in FAULT_KINDS for _ in range(counts[kind] - (1 if counts[kind] else 0))]
        self.rng.shuffle(rest)
        return [Fault(kind, i, warmup=i < len(warm)) for i, kind in enumerate(warm + rest)]

    def _start(self):
        cfg = self.cfg
        self.instrument = ScpiInstrument(noise=0)
        self.devices[BUS] = DeviceEmulator({BUS_QUERY[1]: BUS_QUERY[2]}, write_termination="\n",
                                           default_response=lambda cmd: cmd, host=HOST).start()
        self.devices[PSU] = DeviceEmulator(default_response=self.instrument.respond, write_termination="\n",
                                           host=HOST).start()
        stack = self.stack = Stack(workdir=cfg.workdir, keep_workdir=cfg.keep_workdir)
        common = ["--timeout", cfg.device_timeout, "--sample-rate", cfg.rate]
        stack.add_instance("TCPBusAgent", BUS, ["--address", f"{HOST}:{self.devices[BUS].port}", *common,
                                                "--acq-query", f"{BUS_QUERY[0]}={BUS_QUERY[1]}", "--mode", "acq"])
        stack.add_instance("ScpiInstrumentAgent", PSU, ["--address", f"{HOST}:{self.devices[PSU].port}", *common,
                                                        "--mode", "acq"])
        stack.start()
        topics = [f"{stack.address_root}.{BUS}.feeds.tcp_bus", f"{stack.address_root}.{BUS}.feeds.link_health",
                  f"{stack.address_root}.{PSU}.feeds.scpi", f"{stack.address_root}.{PSU}.feeds.link_health"]
        self.recorder = FeedRecorder(stack.crossbar.url, stack.realm, topics).start()
        for agent in AGENTS:
            stack.start_agent(agent)
            self.clients[agent] = stack.agents[agent].wait_ready(lambda a=agent: stack.client(a))
        self.status = StatusWatcher({a: stack.client(a) for a in AGENTS}, cfg.status_interval)
        self.tasks = TaskClient(self.clients, cfg.task_interval, cfg.device_timeout)
        self.status.start()
        self.tasks.start()
        # both acq processes running (started by --mode acq), with data, before the first fault
        self._wait(lambda: all(self._healthy(a, 0.0) for a in AGENTS), 60.0, "both agents to be healthy")
        for agent in AGENTS:
            self.start_times[agent] = self.status.latest_for(agent).start_time
        self.t_begin = time.time()

    def _stop(self):
        """Stop everything started, each step even if an earlier one failed."""
        steps = [worker.stop for worker in (self.tasks, self.status) if worker is not None]
        if self.recorder is not None:
            steps.append(self.recorder.stop)
        if self.stack is not None:
            steps.append(self._save_logs)
            steps.append(self.stack.stop)
        steps.extend(device.shutdown for device in self.devices.values())
        for step in steps:
            try:
                step()
            except Exception:
                log.exception("clean-up step %r failed", step)

    def _save_logs(self):
        for agent, proc in self.stack.agents.items():
            self.logs[agent] = proc.log_text()

    # ---------------------------------------------------------------- waiting
    def _wait(self, condition, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return time.time()
            if time.monotonic() >= deadline:
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.05)

    def _healthy(self, agent, since):
        """The agent runs, its acq runs undegraded with a reading newer than ``since``, and a task came back right."""
        proc = self.stack.agents.get(agent)
        if proc is None or not proc.alive():
            return False
        sample = self.status.latest_for(agent)
        if sample is None or not sample.ok or sample.t0 <= since:
            return False
        if sample.status != "running" or sample.degraded or (sample.data_time or 0) <= since:
            return False
        return self.tasks.ok_since(agent, since)

    def _snapshot(self):
        """Resources of each agent process: per field, the median of 5 readings 0.2 s apart."""
        readings = {agent: [] for agent in AGENTS}
        for _ in range(5):
            for agent in AGENTS:
                readings[agent].append(proc_resources(self.stack.agents[agent].pid))
            time.sleep(0.2)
        return {agent: {key: int(statistics.median(r[key] for r in rows)) for key in rows[0]}
                for agent, rows in readings.items()}

    # ---------------------------------------------------------------- faults
    def _inject(self, fault):
        cfg = self.cfg
        devices = list(self.devices.values())
        fault.t_inject = time.time()
        if fault.kind == "restart":
            fault.hold = self.rng.uniform(*cfg.restart_down)
            for device in devices:
                device.shutdown()
            time.sleep(fault.hold)      # the injected fault's length, not a wait for a condition
            for device in devices:
                device.start()
        elif fault.kind == "silent":
            fault.hold = self.rng.uniform(*cfg.silence)
            for device in devices:
                device.go_silent(True)
            time.sleep(fault.hold)
            for device in devices:
                device.go_silent(False)
        elif fault.kind == "garbage":
            for device in devices:
                device.send_garbage()
        elif fault.kind == "flood":
            threads = [device.flood() for device in devices]
            for thread in threads:
                thread.join(cfg.device_deadline)
            if any(thread.is_alive() for thread in threads):
                fault.detail = "flood still running at its deadline"
            else:
                # the last send() returning is not the end of the flood: up to a
                # socket buffer of it can still be queued on each side
                try:
                    self._wait(lambda: not any(tcp_queued(d.port) for d in devices), cfg.device_deadline,
                               "the agents to read all of the flood")
                except RuntimeError as exc:
                    fault.detail = str(exc)
        elif fault.kind == "crossbar":
            self.stack.crossbar.restart()
        elif fault.kind == "late":
            fault.hold = self.rng.uniform(*cfg.silence)
            for device in devices:
                device.set_delay(1.5 * cfg.device_timeout)
            time.sleep(fault.hold)
            for device in devices:
                device.set_delay(0)
        fault.t_lifted = time.time()
        fault.hold = fault.hold or fault.t_lifted - fault.t_inject

    def _survive(self, fault):
        deadline = self.cfg.crossbar_deadline if fault.kind == "crossbar" else self.cfg.device_deadline
        since = fault.t_lifted

        def recovered():
            if fault.kind == "crossbar" and not self.recorder.joined_since(fault.t_inject):
                return False
            return all(self._healthy(agent, since) for agent in AGENTS)
        try:
            fault.t_recovered = self._wait(recovered, deadline, f"recovery from {fault.kind}")
            fault.survived = True
        except RuntimeError as exc:
            fault.detail = (fault.detail + "; " if fault.detail else "") + str(exc)
            log.error("fault %d (%s) not survived: %s", fault.index, fault.kind, exc)

    def run(self):
        """Set up, inject every fault, tear down, analyse.  Returns the report dict."""
        started = time.time()
        self.faults = self.plan()
        n_warm = sum(f.warmup for f in self.faults)
        try:
            self._start()
            slot = self.cfg.duration / len(self.faults)
            t0 = time.monotonic()
            for i, fault in enumerate(self.faults):
                wait = t0 + i * slot - time.monotonic()
                if wait > 0:
                    time.sleep(wait)    # the schedule spreads the faults over the duration
                log.info("fault %d/%d: %s", i + 1, len(self.faults), fault.kind)
                self._inject(fault)
                self._survive(fault)
                dead = [a for a in AGENTS if not self.stack.agents[a].alive()]
                if dead:
                    self.aborted = f"agent(s) {dead} exited after fault {i} ({fault.kind})"
                    break
                if i == n_warm - 1:
                    self.resources["warmup"] = self._snapshot()
                    self.resources["warmup_time"] = time.time()
            if not self.aborted:
                rest = t0 + self.cfg.duration - time.monotonic()
                if rest > 0:
                    time.sleep(rest)
                self.resources["end"] = self._snapshot()
                self.resources["end_time"] = time.time()
            self.t_end = time.time()
        except Exception as exc:
            self.aborted = f"{type(exc).__name__}: {exc}"
            log.exception("soak aborted")
            self.t_end = time.time()
        finally:
            alive_at_end = {a: bool(self.stack and a in self.stack.agents and self.stack.agents[a].alive())
                            for a in AGENTS}
            self._stop()
        return self.analyse(alive_at_end, time.time() - started)

    # ---------------------------------------------------------------- analysis
    def analyse(self, alive_at_end, elapsed):
        cfg = self.cfg
        period = 1.0 / cfg.rate
        checks = []
        fault_windows = {kind: [f.window(cfg.crossbar_deadline if kind == "crossbar" else cfg.device_deadline)
                                for f in self.faults if f.kind == kind and f.t_inject is not None]
                         for kind in FAULT_KINDS}
        device_windows = [w for kind in FAULT_KINDS if kind != "crossbar" for w in fault_windows[kind]]
        router_windows = [(f.t_inject - FEED_BUFFER_TIME - 0.5, f.window(cfg.crossbar_deadline)[1])
                          for f in self.faults if f.kind == "crossbar" and f.t_inject is not None]
        # Injected bytes can still be on their way, or waiting in a socket, when the
        # fault counts as over; the transaction that meets them may end up to two
        # device timeouts and a task interval later on a loaded machine.
        linger = 2 * cfg.device_timeout + cfg.task_interval
        injecting_windows = [(w[0], w[1] + linger) for kind in INJECTING_FAULTS for w in fault_windows[kind]]
        all_windows = [w for ws in fault_windows.values() for w in ws]
        t_from, t_to = self.t_begin or 0.0, self.t_end or time.time()

        # -- feeds: cycles, outages, gaps, values
        data_topic = {BUS: "tcp_bus", PSU: "scpi"}
        value_checks = _value_checks()
        per_agent = {}
        for agent in AGENTS:
            root = self.stack.address_root if self.stack else "observatory"
            health = sorted(s for s in self.recorder.samples.get(f"{root}.{agent}.feeds.link_health", [])
                            if t_from <= s[0] <= t_to) if self.recorder else []
            data = sorted(s for s in self.recorder.samples.get(f"{root}.{agent}.feeds.{data_topic[agent]}", [])
                          if t_from <= s[0] <= t_to) if self.recorder else []
            if health and data:
                # the two feeds flush separately: ignore the tail one of them has not sent yet
                end = min(health[-1][0], data[-1][0])
                health = [s for s in health if s[0] <= end]
                data = [s for s in data if s[0] <= end]
            # in a router window a feed block can be lost from one feed and not the other,
            # so cycles there say nothing about the device
            cycles = [c for c in cycles_from_feeds([t for t, _ in health], [t for t, _ in data])
                      if not overlaps(c[0], router_windows)]
            outages = find_outages(agent, cycles)
            gaps = {"link_health": find_gaps([t for t, _ in health], GAP_PERIODS * period),
                    "data": find_gaps([t for t, _ in data], GAP_PERIODS * period)}
            values = {"ok": 0, "prefixed": 0, "crossed": 0}
            bad_values = []
            for t, fields in data:
                for name, valid in value_checks[agent].items():
                    kind = classify_value(fields.get(name), valid)
                    values[kind] += 1
                    if kind != "ok":
                        bad_values.append((t, name, kind, fields.get(name)))
            per_agent[agent] = {"health": health, "data": data, "cycles": cycles, "outages": outages, "gaps": gaps,
                                "values": values, "bad_values": bad_values}

        # -- agents alive
        same_session = {}
        for agent in AGENTS:
            last = [s for s in (self.status.samples if self.status else []) if s.agent == agent and s.ok]
            started = self.start_times.get(agent)
            same_session[agent] = (started is not None and bool(last) and last[-1].start_time == started
                                   and last[-1].status == "running")
        crashed = [w.name + ": " + w.crash for w in (self.tasks, self.status) if w is not None and w.crash]
        checks.append(Check(
            "agents alive", all(alive_at_end.values()) and all(same_session.values()) and not crashed
            and not self.aborted,
            f"alive at end {alive_at_end}; acq still the start-up session and running {same_session}"
            + (f"; aborted: {self.aborted}" if self.aborted else "") + (f"; crashed: {crashed}" if crashed else "")))

        # -- crossed replies (tasks and acq values)
        records = list(self.tasks.records) if self.tasks else []
        outcomes = {}
        for r in records:
            outcomes.setdefault(r.agent, {}).setdefault(r.outcome, 0)
            outcomes[r.agent][r.outcome] += 1
        crossed = [r for r in records if r.outcome == "crossed"]
        crossed_values = [(a, v) for a in AGENTS for v in per_agent[a]["bad_values"] if v[2] == "crossed"]
        stray_prefixed = ([r for r in records if r.outcome == "prefixed"
                           and not overlaps((r.t0, r.t1), injecting_windows)]
                          + [v for a in AGENTS for v in per_agent[a]["bad_values"]
                             if v[2] == "prefixed" and not overlaps(v[0], injecting_windows)])
        n_prefixed = sum(o.get("prefixed", 0) for o in outcomes.values())
        checks.append(Check(
            "no crossed replies", not crossed and not crossed_values and not stray_prefixed and bool(records),
            f"{len(records)} task replies checked, {len(crossed)} crossed; "
            f"{sum(per_agent[a]['values']['ok'] + per_agent[a]['values']['crossed'] for a in AGENTS)} acq values "
            f"checked, {len(crossed_values)} crossed; prefixed by injected bytes: {n_prefixed} replies, "
            f"{sum(per_agent[a]['values']['prefixed'] for a in AGENTS)} values, "
            f"{len(stray_prefixed)} outside garbage/flood faults"
            + (f"; first crossed: {crossed[0]}" if crossed else "")
            + (f"; first crossed value: {crossed_values[0]}" if crossed_values else "")))

        # -- tasks outside fault windows
        outside = [r for r in records if not overlaps((r.t0, r.t1), all_windows)]
        outside_bad = [r for r in outside if r.outcome != "ok"]
        outside_total = len(outside)
        checks.append(Check(
            "tasks outside faults", not outside_bad,
            f"{outside_total} task calls outside fault windows, {len(outside_bad)} did not succeed"
            + (f"; first: {outside_bad[0]}" if outside_bad else "")))

        # -- degraded raised and cleared
        problems = []
        status_samples = list(self.status.samples) if self.status else []
        log_counts = {}
        for agent in AGENTS:
            outages = per_agent[agent]["outages"]
            text = self.logs.get(agent, "")
            raised = len(LOG_DEGRADED.findall(text))
            cleared = len(LOG_RECOVERED.findall(text))
            log_counts[agent] = {"raised": raised, "cleared": cleared}
            if not raised == cleared == len(outages):
                problems.append(f"{agent}: {len(outages)} outages in the feeds, log says degraded {raised} times "
                                f"and recovered {cleared} times")
            for o in outages:
                if o.recovered is None:
                    problems.append(f"{agent}: outage from {o.first_bad:.1f} never recovered")
                    continue
                if not overlaps(o.failing, device_windows):
                    problems.append(f"{agent}: outage at {o.first_bad:.1f} outside every device fault")
                # degraded is set when the first failed poll ends, at the latest when the next cycle starts
                if o.raised is not None and o.recovered - o.raised >= 2 * cfg.status_interval + 1.0:
                    seen = any(s.agent == agent and s.ok and s.degraded and o.raised <= s.t0 and s.t1 <= o.recovered
                               for s in status_samples)
                    if not seen:
                        problems.append(f"{agent}: status never showed degraded in the "
                                        f"{o.recovered - o.raised:.1f} s it was up during the outage at "
                                        f"{o.first_bad:.1f}")
            for f in self.faults:
                if f.kind in OUTAGE_FAULTS and f.t_inject is not None:
                    w0, w1 = f.window(cfg.device_deadline)
                    if not any(overlaps(o.failing, [(w0, w1)]) for o in outages):
                        problems.append(f"{agent}: {f.kind} fault {f.index} caused no outage")
                if f.t_recovered is not None and not any(
                        s.agent == agent and s.ok and s.degraded is False and s.t0 > f.t_lifted
                        and s.t1 <= f.t_recovered + 1e-3 for s in status_samples):
                    problems.append(f"{agent}: status never showed degraded cleared after fault {f.index}")
            last = [s for s in status_samples if s.agent == agent and s.ok]
            if not last or last[-1].degraded is not False:
                problems.append(f"{agent}: last status sample is not 'not degraded'")
        n_outages = {a: len(per_agent[a]["outages"]) for a in AGENTS}
        checks.append(Check(
            "degraded raised and cleared", not problems,
            f"outages (feeds) {n_outages}, log raised/cleared {log_counts}"
            + (f"; problems: {problems[:5]}" if problems else "")))

        # -- feed samples missing only inside outage windows
        missing = []
        gap_counts = {}
        for agent in AGENTS:
            # a task waiting out its deadline on a late-answering device holds
            # the link, so acq may skip a beat there without failing a cycle
            windows = [o.window for o in per_agent[agent]["outages"]] + router_windows + fault_windows["late"]
            for feed, gaps in per_agent[agent]["gaps"].items():
                gap_counts[f"{agent}.{feed}"] = len(gaps)
                for gap in gaps:
                    if not covered(gap, windows, slack=period / 2):
                        missing.append(f"{agent}.{feed} {gap[1] - gap[0]:.2f} s gap at {gap[0]:.2f}")
            if not per_agent[agent]["health"]:
                missing.append(f"{agent}: no link_health samples recorded")
        samples = {a: {"health": len(per_agent[a]["health"]), "data": len(per_agent[a]["data"]),
                       "failed_cycles": sum(1 for _, good in per_agent[a]["cycles"] if not good)} for a in AGENTS}
        checks.append(Check(
            "feed samples only missing in outages", not missing,
            f"samples {samples}; gaps > {GAP_PERIODS} periods {gap_counts}, outside outage/router windows: "
            f"{len(missing)}" + (f"; first: {missing[:3]}" if missing else "")))

        # -- faults survived
        lost = [f"{f.index}:{f.kind} {f.detail}" for f in self.faults if not f.survived]
        checks.append(Check("every fault survived", not lost,
                            f"{sum(f.survived for f in self.faults)}/{len(self.faults)} survived"
                            + (f"; not: {lost[:5]}" if lost else "")))

        # -- resources
        if "warmup" in self.resources and "end" in self.resources:
            t0, t1 = self.resources["warmup_time"], self.resources["end_time"]
            runs = {a: sum(1 for r in records if r.agent == a and t0 <= r.t0 <= t1
                           and r.outcome not in ("unavailable", "rejected")) for a in AGENTS}
            bounds = {a: {"fds": cfg.max_fd_growth, "threads": cfg.max_thread_growth,
                          "rss_kib": int(cfg.max_rss_growth_kib + cfg.rss_per_task_kib * runs[a])} for a in AGENTS}
            over = resource_growth(self.resources["warmup"], self.resources["end"], bounds)
            growth = {a: {k: self.resources["end"][a][k] - self.resources["warmup"][a][k] for k in bounds[a]}
                      for a in AGENTS}
            checks.append(Check("resources bounded", not over,
                                f"growth warm-up -> end {growth}; bounds {bounds} ({cfg.max_rss_growth_kib} KiB + "
                                f"{cfg.rss_per_task_kib:g} KiB x task runs {runs})"
                                + (f"; over: {over}" if over else "")))
        else:
            checks.append(Check("resources bounded", False, "no warm-up and end snapshots (run aborted?)"))

        return self.report(checks, per_agent, outcomes, log_counts, elapsed)

    def report(self, checks, per_agent, outcomes, log_counts, elapsed):
        cfg = self.cfg
        summary = []
        for kind in FAULT_KINDS:
            faults = [f for f in self.faults if f.kind == kind and f.t_inject is not None]
            if not faults and not cfg.counts()[kind]:
                continue
            outages = {a: [] for a in AGENTS}
            back = []   # fault lifted -> first good cycle of each outage it caused
            for f in faults:
                for a in AGENTS:
                    for o in per_agent[a]["outages"]:
                        if overlaps(o.failing, [f.window(cfg.device_deadline)]) and o not in outages[a]:
                            outages[a].append(o)
                            if o.recovered is not None:
                                back.append(max(0.0, o.recovered - f.t_lifted))
            summary.append({
                "fault": kind, "label": FAULT_LABELS[kind], "requested": cfg.counts()[kind],
                "injected": len(faults), "survived": sum(f.survived for f in faults),
                "outages": {a: len(outages[a]) for a in AGENTS},
                "outage_s": _stat([o.duration for a in AGENTS for o in outages[a]]),
                "back_after_s": _stat(back),
                "confirmed_after_s": _stat([f.t_recovered - f.t_lifted for f in faults if f.t_recovered]),
                "hold_s": _stat([f.hold for f in faults]),
            })
        return {
            "passed": all(c.passed for c in checks),
            "checks": [dataclasses.asdict(c) for c in checks],
            "summary": summary,
            "faults": [dataclasses.asdict(f) for f in self.faults],
            "tasks": outcomes,
            "log_counts": log_counts,
            "resources": self.resources,
            "feeds": {a: {"cycles": len(per_agent[a]["cycles"]), "data_samples": len(per_agent[a]["data"]),
                          "outages": len(per_agent[a]["outages"]), "values": per_agent[a]["values"]}
                      for a in AGENTS},
            "config": dict(dataclasses.asdict(cfg), seed=self.seed),
            "elapsed_s": elapsed,
            "soak_s": (self.t_end or 0) - (self.t_begin or 0),
            "aborted": self.aborted,
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()},
        }


def run_soak(config):
    """Run one soak with ``config`` (a :class:`SoakConfig`); returns the report dict."""
    return Soak(config).run()


# ----------------------------------------------------------------------
# output

def _fmt_stat(stat):
    return "-" if not stat else f"{stat['median']:.2f} / {stat['max']:.2f}"


def format_report(report):
    """The fault table, then one line per check."""
    rows = [("fault", "injected", "survived", "outages bus/psu", "outage s med/max", "back after s med/max",
             "confirmed s med/max")]
    for s in report["summary"]:
        rows.append((s["label"], f"{s['injected']}/{s['requested']}", str(s["survived"]),
                     f"{s['outages'][BUS]}/{s['outages'][PSU]}", _fmt_stat(s["outage_s"]),
                     _fmt_stat(s["back_after_s"]), _fmt_stat(s["confirmed_after_s"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("")
    tasks = ", ".join(f"{a}: " + " ".join(f"{k}={v}" for k, v in sorted(o.items()))
                      for a, o in sorted(report["tasks"].items()))
    lines.append(f"task calls: {tasks}")
    lines.append(f"seed {report['config']['seed']}, soak {report['soak_s']:.0f} s, total {report['elapsed_s']:.0f} s, "
                 f"{report['machine']['cpus']} CPUs, Python {report['machine']['python']}")
    lines.append("")
    for c in report["checks"]:
        lines.append(f"[{'PASS' if c['passed'] else 'FAIL'}] {c['name']}: {c['detail']}")
    lines.append("")
    lines.append("soak PASSED" if report["passed"] else "soak FAILED")
    return "\n".join(lines)


def make_parser():
    d = SoakConfig()
    p = argparse.ArgumentParser(description="Chaos soak of the TCPBusAgent and ScpiInstrumentAgent "
                                "(native stack on loopback).")
    p.add_argument("--duration", type=float, default=d.duration, help=f"seconds to spread the faults over "
                   f"(default {d.duration:.0f})")
    p.add_argument("--restarts", type=int, default=d.restarts, help=f"device restarts (default {d.restarts})")
    p.add_argument("--silences", type=int, default=d.silences, help=f"device silences (default {d.silences})")
    p.add_argument("--garbage", type=int, default=d.garbage, help=f"garbage bursts (default {d.garbage})")
    p.add_argument("--floods", type=int, default=d.floods, help=f"floods without terminator (default {d.floods})")
    p.add_argument("--crossbar-restarts", type=int, default=d.crossbar_restarts,
                   help=f"router restarts (default {d.crossbar_restarts})")
    p.add_argument("--late-replies", type=int, default=d.late_replies,
                   help=f"periods of replies later than the device timeout (default {d.late_replies})")
    p.add_argument("--rate", type=float, default=d.rate, help=f"acq rate, Hz (default {d.rate:g})")
    p.add_argument("--device-timeout", type=float, default=d.device_timeout,
                   help=f"agents' --timeout, s (default {d.device_timeout:g})")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault order and durations")
    p.add_argument("--workdir", help="keep the stack's files (logs, site file) in this directory")
    p.add_argument("--json", metavar="PATH", help="also write the full report as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    """Command line entry point.  Returns the exit code (0 passed, 1 a check failed)."""
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = SoakConfig(duration=args.duration, restarts=args.restarts, silences=args.silences,
                            garbage=args.garbage, floods=args.floods, crossbar_restarts=args.crossbar_restarts,
                            late_replies=args.late_replies, rate=args.rate, device_timeout=args.device_timeout,
                            seed=args.seed, workdir=args.workdir).validate()
    except (TypeError, ValueError) as exc:
        make_parser().error(str(exc))
    previous = None
    if threading.current_thread() is threading.main_thread():
        # a SIGTERM stops the soak like Ctrl-C: through the clean-up that stops every process
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run_soak(config)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
