"""The parts every socs_tcp agent shares.

An agent module (``agents/<name>/agent.py``) keeps its class, its op
docstrings, ``make_parser()`` and ``main()`` explicit, in the OCS house style,
and takes the repetitive parts from here:

* **Arguments** -- :func:`add_address_arguments`, :func:`add_device_arguments`
  (address, ``--timeout``, ``--max-read-size``), :func:`add_access_arguments`
  (``--write-privs``), :func:`add_reconnect_arguments`; and the functions that
  turn the parsed values into objects: :func:`device_address`,
  :func:`write_privs`, :func:`reconnect_policy`, :func:`check_positive`.
* **Feeds** -- :func:`register_feeds` (one recorded feed per name, the same
  aggregation everywhere), :func:`as_feed_value`, :func:`health_fields`.
* **The op runner** -- :func:`run_op`: the body of every task that calls the
  device.  Bad input and device failures become ``(False, message)``; the
  result and timing go to ``session.data``.
* **Outage bookkeeping** -- :class:`Outage`: ``session.degraded``, one error
  log line per outage and one info line at recovery.
* **Backoff** -- :class:`Backoff`: when the next reconnect attempt is
  allowed, from :meth:`socs_tcp.ReconnectPolicy.delay` (the same policy a
  :class:`~socs_tcp.TCPInterface` uses for its own reconnects).
* **The polling loop** -- :class:`Poller`: the body of an ``acq``/``monitor``
  process, built on :class:`Outage` and the link's backoff.
* **Logs** -- :func:`start_logging`, :func:`route_library_logs`,
  :func:`log_access_control`.

A link handed to :class:`Poller` is anything with ``stats()`` (a dict with at
least the :data:`HEALTH_FIELDS`) and, optionally, ``next_attempt_in()``
(seconds until a reconnect attempt is allowed, ``None`` while connected): a
:class:`~socs_tcp.TCPInterface`, or a driver such as
:class:`socs_tcp_agents.message_link.drivers.MessageLinkDriver`.
"""

import argparse
import gc
import logging
import math
import os
import sys
import threading
import time

import txaio

from socs_tcp import ConnectFailedError, ReconnectPolicy, TCPInterface
from socs_tcp.core.codec import parse_address

__all__ = [
    "DEFAULT_MAX_READ_SIZE", "DEFAULT_WRITE_PRIVS", "HEALTH_FIELDS", "FEED_AGG_PARAMS",
    "add_address_arguments", "add_device_arguments", "add_access_arguments", "add_reconnect_arguments",
    "device_address", "write_privs", "access_control_enabled", "reconnect_policy", "check_positive",
    "parse_assignments", "register_feeds", "as_feed_value", "health_fields",
    "run_op", "Outage", "Backoff", "Poller", "UPDATE_INTERVAL", "CATCH_UP", "BEHIND_PAUSE", "FAST_SWITCH_INTERVAL",
    "start_logging", "route_library_logs", "log_access_control", "make_link",
]

#: Default of ``--max-read-size``: the default ``max_read_size`` of :class:`socs_tcp.TCPInterface` (1 MiB).
DEFAULT_MAX_READ_SIZE = 1 << 20

#: Default of ``--write-privs``: OCS level 2 ("advanced"), the level OCS recommends for operations that
#: can leave a device in an awkward state, and the level its own example agent requires once an access
#: policy is set.
DEFAULT_WRITE_PRIVS = 2

#: Feed fields of the link health block, taken from :meth:`socs_tcp.TCPInterface.stats`.
HEALTH_FIELDS = ("connected", "latency_last", "latency_p50", "latency_p99", "reconnects", "timeouts",
                 "errors", "consecutive_failures", "bytes_in", "bytes_out", "transactions")

#: Aggregation of every feed registered with :func:`register_feeds` (60 s frames, as the OCS
#: aggregator expects).
FEED_AGG_PARAMS = {"frame_length": 60}


# ====================================================================== arguments


def add_address_arguments(parser, default_port=None):
    """Add the device address options to an argparse parser or group.

    ``--address`` (``host:port``, ``[v6]:port``, ``tcp://host:port``,
    ``TCPIP0::host::port::SOCKET`` or ``host=...,port=...``), or ``--host``
    and ``--port``.  Read them back with :func:`device_address`.

    Args:
        parser: an ``argparse.ArgumentParser`` or argument group.
        default_port (int): default of ``--port`` (e.g. 5025 for SCPI).

    Returns:
        the same ``parser``.
    """
    parser.add_argument("--address", help="Device address: host:port, [v6]:port, tcp://host:port, "
                        "TCPIP0::host::port::SOCKET or host=...,port=...")
    parser.add_argument("--host", help="Device host name or IP address (instead of --address).")
    parser.add_argument("--port", type=int, default=default_port, help="Device TCP port (with --host).")
    return parser


def add_device_arguments(parser, default_port=None, default_timeout=5.0):
    """Add the address options (:func:`add_address_arguments`), ``--timeout``
    and ``--max-read-size`` to an argparse parser or group.

    ``--timeout`` (float, seconds) is the deadline of each device operation;
    ``--max-read-size`` (positive int, bytes; default
    :data:`DEFAULT_MAX_READ_SIZE`) bounds what is buffered while waiting for
    one reply.  A bad ``--max-read-size`` is refused by argparse with a
    message naming the value.

    Returns:
        the same ``parser``.
    """
    add_address_arguments(parser, default_port)
    parser.add_argument("--timeout", type=float, default=default_timeout,
                        help="Deadline of each device operation, seconds.")
    parser.add_argument("--max-read-size", type=_positive_int, default=DEFAULT_MAX_READ_SIZE, metavar="BYTES",
                        help="The most bytes buffered while waiting for one reply; a device that sends more "
                        "without completing it gets a ReadOverflowError and a new connection.")
    return parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_access_arguments(parser):
    """Add ``--write-privs`` (1, 2 or 3; default :data:`DEFAULT_WRITE_PRIVS`)
    to an argparse parser or group.  Register the device-writing tasks with
    ``min_privs=write_privs(args)`` (see :func:`write_privs`).

    Returns:
        the same ``parser``.
    """
    parser.add_argument("--write-privs", type=int, choices=(1, 2, 3), default=DEFAULT_WRITE_PRIVS,
                        help="OCS credential level a client needs to start a task that sends data to the device "
                        "(1 basic, 2 advanced, 3 full). Enforced only when the agent has an access policy "
                        "(--access-policy, or access_policy in the site file's hub).")
    return parser


def add_reconnect_arguments(parser, initial=0.2, cap=5.0):
    """Add ``--reconnect-initial`` and ``--reconnect-cap`` (seconds) to an
    argparse parser or group; :func:`reconnect_policy` turns them into a
    :class:`socs_tcp.ReconnectPolicy`.

    Returns:
        the same ``parser``.
    """
    parser.add_argument("--reconnect-initial", type=float, default=initial,
                        help="Delay after the first failed reconnect attempt, seconds (doubles per failure).")
    parser.add_argument("--reconnect-cap", type=float, default=cap, help="Longest delay between reconnect attempts.")
    return parser


def access_control_enabled(args):
    """True when OCS checks client credentials for this agent: its access
    policy (``--access-policy`` or the site file's ``hub: access_policy``)
    is set and is not ``none``."""
    return getattr(args, "access_policy", None) not in (None, "", "none")


def write_privs(args):
    """The ``min_privs`` to register the device-writing tasks with.

    ``--write-privs`` when access control is enabled.  Without an access
    policy OCS gives every client credential level 1, so anything above 1
    would lock every client out of these tasks: they are then registered at
    level 1, and the agent behaves as it does without access control.

    Raises:
        ValueError: ``args.write_privs`` is not 1, 2 or 3 (names the value).
    """
    if not access_control_enabled(args):
        return 1
    level = args.write_privs
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 3:
        raise ValueError(f"--write-privs must be 1, 2 or 3, got {level!r}")
    return level


def device_address(args):
    """``(host, port)`` from the options of :func:`add_address_arguments`.

    Raises:
        ValueError: the address does not parse, or none is given (names the value).
    """
    if args.address:
        if "=" in args.address:
            from socs_tcp.core.codec import parse_conf_string
            conf = parse_conf_string(args.address)
            return conf["host"], conf["port"]
        parsed = parse_address(args.address)
        if parsed is None:
            raise ValueError(f"--address {args.address!r} is not a TCP address (e.g. 10.0.0.5:5025)")
        return parsed["host"], parsed["port"]
    if args.host and args.port:
        return args.host, args.port
    raise ValueError("give the device as --address HOST:PORT, or --host and --port")


def check_positive(args, *options):
    """Check that each named option of ``args`` is a finite number > 0.

    Args:
        args: the parsed arguments.
        *options: attribute names, e.g. ``"sample_rate"``, ``"timeout"``.

    Raises:
        ValueError: ``--sample-rate must be > 0, got 0.0`` (the first bad one).
    """
    for option in options:
        value = getattr(args, option)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"--{option.replace('_', '-')} must be > 0, got {value!r}")


def reconnect_policy(args):
    """A :class:`socs_tcp.ReconnectPolicy` from :func:`add_reconnect_arguments`' options.

    Raises:
        ValueError: a delay is negative or not finite (names the option and value).
    """
    for option in ("reconnect_initial", "reconnect_cap"):
        value = getattr(args, option)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"--{option.replace('_', '-')} must be a number >= 0, got {value!r}")
    return ReconnectPolicy(initial=args.reconnect_initial, cap=args.reconnect_cap)


def parse_assignments(items, option):
    """``['NAME=VALUE', ...]`` -> ordered list of (name, value); names must be feed-safe.

    Raises:
        ValueError: an item is not ``NAME=VALUE``, a name is not feed-safe or
            is given twice (names the item and ``option``).
    """
    out = []
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value:
            raise ValueError(f"{option} {item!r} is not NAME=COMMAND")
        if not (name[0].isalpha() and all(c.isalnum() or c == "_" for c in name)):
            raise ValueError(f"{option} name {name!r} must start with a letter and use only letters, digits and _")
        if name in dict(out):
            raise ValueError(f"{option} name {name!r} is given twice")
        out.append((name, value))
    return out


# ====================================================================== feeds


def register_feeds(agent, *feeds, buffer_time=1.0):
    """Register each feed name with ``agent`` (an ``OCSAgent``), recorded,
    with :data:`FEED_AGG_PARAMS`: call it from the agent's ``__init__``, as
    OCS does, e.g. ``register_feeds(agent, "tcp_bus", "link_health")``."""
    for feed in feeds:
        agent.register_feed(feed, record=True, agg_params=dict(FEED_AGG_PARAMS), buffer_time=buffer_time)


def as_feed_value(text):
    """A reply as a feed value: float where it parses as one (and is finite), else the stripped string."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text).strip()
    if value != value or value in (math.inf, -math.inf):
        return str(text).strip()
    return value


def health_fields(stats):
    """The ``link_health`` feed block from a stats dict: the :data:`HEALTH_FIELDS`, plain numbers, no None."""
    out = {}
    for key in HEALTH_FIELDS:
        value = stats.get(key)
        if key == "connected":
            out[key] = int(bool(value))
        elif value is None:
            out[key] = 0.0
        else:
            out[key] = float(value) if isinstance(value, float) else int(value)
    return out


# ====================================================================== the op runner


def run_op(session, what, call, *, device_errors=(), data=None, done=None, on_error=None):
    """Run the body of a task that calls the device; return the op's ``(ok, message)``.

    ``call()`` does the work and returns its result.  On success
    ``session.data`` becomes ``{'response': result, 'elapsed': seconds,
    'timestamp': start time}`` (or ``data(result, elapsed, started)``) and the
    message ``"<what> done in N ms"`` (or ``done(result, elapsed)``).

    Failures never escape as exceptions (OCS would log a traceback and the
    client would learn little); each becomes ``(False, message)`` naming
    ``what``:

    ========================================  =======================================================
    raised by ``call()``                      message
    ========================================  =======================================================
    one of ``device_errors``                  ``"<what>: <error>"`` (the device said no, e.g. ScpiError)
    ``ValueError``, ``TypeError``             ``"<what>: bad parameter: <error>"`` (nothing was sent)
    ``ConnectionError`` (every link failure)  ``"<what>: device error (<ErrorClass>): <error>"``
    ========================================  =======================================================

    Args:
        session (OpSession): the op's session.
        what (str): the op as named in messages, e.g. ``"wrnrd_until"``.
        call (callable): no arguments; the device work.
        device_errors (tuple): exception classes meaning "the device refused".
        data (callable): ``data(result, elapsed, started) -> dict`` for session.data.
        done (callable): ``done(result, elapsed) -> str``, the success message.
        on_error (callable): ``on_error(exc)``, called for every handled
            failure before the message is made; it may set ``session.data``
            and may return a message to use instead of the default one.

    Returns:
        tuple: ``(True, message)`` or ``(False, message)``.
    """
    started = time.time()
    t0 = time.perf_counter()
    try:
        result = call()
    except Exception as e:
        if device_errors and isinstance(e, device_errors):
            default = f"{what}: {e}"
        elif isinstance(e, (ValueError, TypeError)):
            default = f"{what}: bad parameter: {e}"
        elif isinstance(e, ConnectionError):
            default = f"{what}: device error ({type(e).__name__}): {e}"
        else:
            raise
        text = on_error(e) if on_error is not None else None
        return False, text or default
    elapsed = time.perf_counter() - t0
    session.data = (data(result, elapsed, started) if data is not None
                    else {"response": result, "elapsed": elapsed, "timestamp": started})
    return True, (done(result, elapsed) if done is not None else f"{what} done in {elapsed * 1000:.1f} ms")


# ====================================================================== outage bookkeeping and backoff


class Outage:
    """Whether a process currently sees the device, and since when not.

    A process calls :meth:`failed` for each failed attempt and
    :meth:`recovered` for each good one.  The first failure of an outage is
    logged at error level (``"<down>, <process> degraded: <error>"``), the
    recovery at info level (``"<up> after N s; <process> no longer
    degraded"``), the failures in between stay quiet; both set
    ``session.degraded``.

    Args:
        log (txaio.interfaces.ILogger): the agent log.
        process (str): the process name in the log lines (``"acq"``).
        down (str): how the loss is described.
        up (str): how the recovery is described.

    Attributes:
        down_since (float): wall-clock start of the current outage, or ``None``.
        last_error (str): the latest failure of the current outage, or ``None``.
        failures (int): failed attempts in the current outage.
    """

    def __init__(self, log, process="acq", down="device unreachable", up="device answering again"):
        self.log = log
        self.process = process
        self.down = down
        self.up = up
        self.down_since = None
        self.last_error = None
        self.failures = 0

    @property
    def degraded(self):
        """True during an outage."""
        return self.down_since is not None

    def failed(self, session, error):
        """Record a failed attempt; returns True when it starts an outage (and was logged)."""
        self.last_error = str(error)
        self.failures += 1
        first = self.down_since is None
        if first:
            self.down_since = time.time()
            self.log.error("{down}, {process} degraded: {err}", down=self.down, process=self.process,
                           err=self.last_error)
        if session is not None:
            session.degraded = True
        return first

    def recovered(self, session):
        """Record a good attempt; returns True when it ends an outage (and was logged)."""
        was_down = self.down_since is not None
        if was_down:
            self.log.info("{up} after {t:.1f} s; {process} no longer degraded", up=self.up,
                          t=time.time() - self.down_since, process=self.process)
            self.down_since = None
            self.last_error = None
            self.failures = 0
        if session is not None:
            session.degraded = False
        return was_down

    def data(self):
        """``{'degraded', 'down_since', 'last_error'}`` for session.data."""
        return {"degraded": self.down_since is not None, "down_since": self.down_since,
                "last_error": self.last_error}


class Backoff:
    """When the next reconnect attempt is allowed, for a link that keeps no
    backoff of its own.

    After ``k`` consecutive failed attempts the next one waits
    ``policy.delay(k)`` (exponential, with jitter and a cap: see
    :class:`socs_tcp.ReconnectPolicy`); after a working connection is lost the
    next attempt is allowed at once (after ``policy.cooldown``).
    :class:`~socs_tcp.TCPInterface` applies the same policy internally, so
    every agent spaces its reconnects the same way.  Thread-safe.

    Args:
        policy (socs_tcp.ReconnectPolicy or dict or None): the spacing.
        name (str): named in the errors of :meth:`check`.
    """

    def __init__(self, policy=None, name="link"):
        self.policy = ReconnectPolicy.coerce(policy)
        self.name = name
        self.failures = 0
        self.last_error = None
        self._next = 0.0
        self._lock = threading.Lock()

    def failed(self, error):
        """Record a failed attempt and schedule the next."""
        with self._lock:
            self.failures += 1
            self.last_error = str(error)
            self._next = time.monotonic() + self.policy.delay(self.failures)

    def succeeded(self):
        """Record a working connection."""
        with self._lock:
            self.failures = 0
            self.last_error = None
            self._next = 0.0

    def lost(self):
        """A working connection ended: the next attempt may come at once (after the cool-down)."""
        with self._lock:
            self.failures = 0
            self._next = time.monotonic() + self.policy.cooldown

    def wait(self):
        """Seconds until an attempt is allowed (``0.0`` = now); ``None`` when
        ``policy.max_attempts`` is used up."""
        with self._lock:
            limit = self.policy.max_attempts
            if limit is not None and 0 < limit <= self.failures:
                return None
            return max(0.0, self._next - time.monotonic())

    def check(self):
        """Raise :class:`~socs_tcp.ConnectFailedError` unless an attempt is allowed now."""
        wait = self.wait()
        if wait is None:
            raise ConnectFailedError(f"{self.name}: not connected; gave up after {self.failures} failed attempt(s) "
                                     f"(reconnect_policy.max_attempts={self.policy.max_attempts}): {self.last_error}")
        if wait > 0:
            reason = self.last_error or "cool-down after the last connection"
            raise ConnectFailedError(f"{self.name}: not connected ({reason}); next attempt allowed in {wait:.2f} s "
                                     f"after {self.failures} failed attempt(s)")


# ====================================================================== the polling loop

#: Above this many cycles per second (a period shorter than this), ``session.data``, the
#: ``link_health`` block and the data feed are updated every ``UPDATE_INTERVAL`` seconds instead of
#: every cycle; the data feed still carries every sample, published in batches.
UPDATE_INTERVAL = 0.1

#: How late a scheduled cycle may still run, seconds, when that is longer than one period: after a
#: stall (the machine busy elsewhere, a slow reply), the slots due within this window are run at
#: once, one after the other, and only older ones are skipped as ``missed_cycles``.
CATCH_UP = 0.025

#: Pause after each cycle once the loop has been behind schedule for longer than ``CATCH_UP``
#: (it cannot keep up), so a task waiting for the link still gets it, seconds.  While it is
#: catching up within the window it runs the late cycles back to back.
BEHIND_PAUSE = 0.0005

#: The interpreter's thread switch interval while a fast ``acq`` runs, seconds (Python's default is
#: 5 ms).  A reply that arrives while the reactor thread holds the GIL (publishing a feed, serving a
#: client) would otherwise wait up to 5 ms before the ``acq`` thread may read it.
FAST_SWITCH_INTERVAL = 0.0005


class _FastRuns:
    """The process-wide tuning of fast runs, counted, so that overlapping runs
    (several pollers in one process) restore it only when the last one ends."""

    def __init__(self):
        self._lock = threading.Lock()
        self._count = 0
        self._saved = None

    def enter(self):
        with self._lock:
            self._count += 1
            if self._count == 1:
                gc.collect()
                gc.freeze()
                self._saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self._saved, FAST_SWITCH_INTERVAL))

    def leave(self):
        with self._lock:
            self._count -= 1
            if self._count == 0:
                sys.setswitchinterval(self._saved)
                gc.unfreeze()


_fast_runs = _FastRuns()


class Poller:
    """The body of an ``acq`` (or ``monitor``) process: one cycle at a fixed
    rate until stopped, a lost device turned into ``session.degraded``.

    Each cycle calls ``poll()``, which returns a dict of feed fields (or
    ``None``: nothing to publish) or raises ``ConnectionError``.  The fields
    go to ``data_feed`` (block ``data_block``; skipped when ``data_feed`` is
    ``None``) and the link's :func:`health_fields` to ``health_feed``.  The
    :class:`Outage` (:attr:`outage`) logs the first failure and the recovery.

    **Schedule.** Cycle ``k`` is due at ``start + k * period`` (absolute
    deadlines: the jitter of one cycle does not shift the next).  A cycle that
    ends after the next one was due makes the next one run at once: late, but
    taken.  A slot is skipped, and counted in
    ``missed_cycles``, only when it is more than ``max(period, CATCH_UP)``
    late.  So a hiccup shorter than that costs no sample (the late samples
    keep the time they were really taken), while a device slower than the
    rate costs ``missed_cycles``, not an endless burst of catch-up cycles:
    once the loop has been behind for longer than :data:`CATCH_UP` it pauses
    :data:`BEHIND_PAUSE` after each cycle, so tasks still get the link.
    ``lateness_max`` in session.data is the latest any cycle started.

    **Updates.** Up to ``1 / UPDATE_INTERVAL`` cycles per second, every cycle
    publishes its sample and the link health and updates ``session.data``.
    Above that, the samples are published in batches (OCS's multi-sample
    block format, so the feed keeps every sample and its timestamp) and the
    health and ``session.data`` are updated every :data:`UPDATE_INTERVAL`
    seconds, and at once when the device is lost or back.  (OCS records feeds
    in 1 s frames anyway; per-cycle publishing at hundreds of hertz only
    costs the cycle time.)  While a fast run lasts, the objects that exist at
    its start are frozen out of the garbage collector (:func:`gc.freeze`) and
    the thread switch interval is :data:`FAST_SWITCH_INTERVAL`.

    **Outages.** The link's own backoff decides when a reconnect is
    attempted, so a dead device costs nothing per cycle but a fast-failing
    call.  While the link is down the poller also runs an extra cycle as soon
    as the backoff allows the next attempt (``link.next_attempt_in()``), and
    at once after :meth:`wake` (e.g. from a disconnect callback), so a device
    that comes back is seen within the backoff delay, not a whole period
    later; the regular schedule is kept.

    Args:
        agent_obj: the agent object (its ``agent`` and ``log`` are used).
        link: see the module docstring (``stats()``, ``next_attempt_in()``).
        poll (callable): one cycle's device work.
        data_feed (str): feed of the polled fields, or ``None``.
        data_block (str): block name of the polled fields.
        health_feed (str): feed of the link health.
        process (str): the process name in log lines.
        outage (Outage): the bookkeeping to use (default: a new one for ``process``).
        session_data (callable): ``session_data(stats) -> dict``, merged into
            session.data at each update (an agent's extra fields).
    """

    def __init__(self, agent_obj, link, poll, data_feed, data_block, health_feed="link_health", *,
                 process="acq", outage=None, session_data=None):
        self.a = agent_obj
        self.link = link
        self.poll = poll
        self.data_feed = data_feed
        self.data_block = data_block
        self.health_feed = health_feed
        self.process = process
        self.outage = outage if outage is not None else Outage(agent_obj.log, process)
        self.session_data = session_data
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.cycles = 0
        self.missed = 0
        self.lateness_max = 0.0

    def stop(self):
        """Make :meth:`run` return after the current cycle."""
        self._stop.set()
        self._wake.set()

    def wake(self):
        """Run the next cycle now (thread-safe; e.g. from a disconnect callback)."""
        self._wake.set()

    def stop_process(self, session, params):
        """The stop function an agent registers with OCS for the process."""
        self.stop()
        return True, f"stopping {self.process}"

    def run_exclusive(self, lock, session, rate, once=False):
        """:meth:`run` while holding ``lock`` (the agent's ``TimeoutLock``);
        refuse at once (``(False, message)``) if another run holds it."""
        with lock.acquire_timeout(timeout=0, job=self.process) as acquired:
            if not acquired:
                return False, f"{self.process} is already running (lock held by {lock.job})"
            return self.run(session, rate, once)

    def run(self, session, rate, once=False):
        """Poll until :meth:`stop` (or after one cycle with ``once``); returns ``(True, message)``.

        ``cycles``, ``missed_cycles`` and ``lateness_max`` (the latest start
        of a scheduled cycle after its due time, seconds) count from the start
        of this run.
        """
        period = 1.0 / rate
        fast = period < UPDATE_INTERVAL
        tuned = fast and not once
        if tuned:
            _fast_runs.enter()
        try:
            return self._loop(session, period, fast, once)
        finally:
            if tuned:
                _fast_runs.leave()

    def _loop(self, session, period, fast, once):
        self.cycles = 0
        self.missed = 0
        self.lateness_max = 0.0
        outage = self.outage
        publish = self.a.agent.publish_to_feed
        next_attempt_in = getattr(self.link, "next_attempt_in", None)
        data_feed = self.data_feed
        pending = {"batch": [], "values": None, "time": None}   # not yet published / shown

        def update(now):
            batch = pending["batch"]
            if batch:
                self._publish_batch(publish, data_feed, self.data_block, batch)
                pending["batch"] = []
            stats = self.link.stats()
            publish(self.health_feed, {"block_name": "health", "timestamp": now, "data": health_fields(stats)})
            data = dict(session.data or {})
            if pending["values"] is not None:
                if data_feed is not None:
                    data["values"] = pending["values"]
                data["timestamp"] = pending["time"]
                pending["values"] = None
            data.update(outage.data())
            data.update({"connected": bool(stats["connected"]), "cycles": self.cycles, "missed_cycles": self.missed,
                         "lateness_max": self.lateness_max, "stats": stats})
            if self.session_data is not None:
                data.update(self.session_data(stats))
            session.data = data

        window = max(period, CATCH_UP)        # the latest a slot may still run
        start = time.monotonic()
        slot = 0                              # the next scheduled cycle is due at start + slot * period
        next_update = start
        behind_since = None                   # when the loop last fell behind schedule
        was_down = outage.degraded
        updated = True
        while True:
            if self._stop.is_set():
                if not updated:               # samples of the last cycles still unpublished
                    update(time.time())
                break
            self._wake.clear()
            began = time.monotonic()
            due = start + slot * period
            if began >= due - 0.0002:         # a scheduled cycle (else an early retry, or a wake)
                lateness = began - due
                if lateness > self.lateness_max:
                    self.lateness_max = lateness
                slot += 1
            now = time.time()
            try:
                values = self.poll()
            except ConnectionError as e:
                values = None
                outage.failed(session, e)
            else:
                outage.recovered(session)
                if values is not None:
                    pending["values"], pending["time"] = values, now
                    if data_feed is not None:
                        pending["batch"].append((now, values))
            self.cycles += 1
            down = outage.degraded
            ended = time.monotonic()
            updated = not fast or once or down != was_down or ended >= next_update
            if updated:
                was_down = down
                next_update = max(next_update + UPDATE_INTERVAL, ended) if fast else ended
                update(now)
            if once:
                break
            due = start + slot * period
            if ended > due + window:
                # too far behind: skip the slots older than the catch-up window
                skip = int((ended - window - due) // period) + 1
                self.missed += skip
                slot += skip
                due += skip * period
            wait = due - ended
            if down and next_attempt_in is not None:
                retry = next_attempt_in()
                if retry is not None and retry + 0.005 < wait:
                    wait = retry + 0.005
            if wait > 0:
                behind_since = None
                self._wake.wait(wait)
            elif behind_since is None:
                behind_since = ended          # catch up: the next cycle at once
            elif ended - behind_since > CATCH_UP and BEHIND_PAUSE > 0:
                # cannot keep up: yield a moment after each cycle, so a task waiting for the link gets it
                time.sleep(BEHIND_PAUSE)
        # cleared on the way out, so a stop that arrives before the loop starts is not lost
        self._stop.clear()
        return True, f"{self.process} stopped"

    @staticmethod
    def _publish_batch(publish, feed, block, batch):
        """Publish ``[(timestamp, values), ...]``: one sample as is, several as
        OCS multi-sample blocks (one per run of samples with the same fields)."""
        if len(batch) == 1:
            timestamp, values = batch[0]
            publish(feed, {"block_name": block, "timestamp": timestamp, "data": values})
            return
        i = 0
        while i < len(batch):
            keys = batch[i][1].keys()
            j = i + 1
            while j < len(batch) and batch[j][1].keys() == keys:
                j += 1
            run = batch[i:j]
            publish(feed, {"block_name": block, "timestamps": [t for t, _ in run],
                           "data": {k: [v[k] for _, v in run] for k in keys}})
            i = j


# ====================================================================== logs


class _TxaioHandler(logging.Handler):
    """Forwards the library's ``logging`` records into the agent's txaio log."""

    formatter_for_tracebacks = logging.Formatter()

    def __init__(self, logger):
        super().__init__()
        self._log = logger

    def emit(self, record):
        try:
            text = f"[{record.name}] {record.getMessage()}"
            if record.exc_info:
                text += "\n" + self.formatter_for_tracebacks.formatException(record.exc_info)
            if record.levelno >= logging.ERROR:
                self._log.error("{text}", text=text)
            elif record.levelno >= logging.WARNING:
                self._log.warn("{text}", text=text)
            elif record.levelno >= logging.INFO:
                self._log.info("{text}", text=text)
            else:
                self._log.debug("{text}", text=text)
        except Exception:  # a log handler must never raise into the caller
            self.handleError(record)


def route_library_logs(txaio_logger, level):
    """Send records of the ``socs_tcp`` loggers to the agent log, once (call it again to replace the target)."""
    lib = logging.getLogger("socs_tcp")
    for handler in list(lib.handlers):
        if isinstance(handler, _TxaioHandler):
            lib.removeHandler(handler)
    lib.addHandler(_TxaioHandler(txaio_logger))
    lib.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    lib.propagate = False


def log_access_control(log, args, write_tasks):
    """Say once, at start-up, who may use the tasks that write to the device."""
    if access_control_enabled(args):
        # (txaio reserves the keyword "level")
        log.info("access policy {policy}: tasks {tasks} need credential level {privs}",
                 policy=args.access_policy, tasks=", ".join(write_tasks), privs=write_privs(args))
    else:
        log.info("no access policy: every client may use every task (--write-privs applies only with one)")


def start_logging():
    """Start txaio logging at ``$LOGLEVEL`` (as OCS agents do) and return the level."""
    level = os.environ.get("LOGLEVEL", "info")
    txaio.use_twisted()
    txaio.start_logging(level=level)
    return level


def make_link(args, **kwargs):
    """A lazily connecting :class:`socs_tcp.TCPInterface` for the device in ``args``
    (:func:`add_device_arguments`' options); ``kwargs`` go to the interface."""
    host, port = device_address(args)
    kwargs.setdefault("encoding_errors", "backslashreplace")
    kwargs.setdefault("max_read_size", args.max_read_size)
    return TCPInterface(host, port, args.timeout, connect=False, **kwargs)
