"""Pieces shared by the socs_tcp agents: device arguments, log routing, and
the polling loop that turns a lost device into ``session.degraded``."""

import argparse
import logging
import threading
import time

import txaio

from socs_tcp import TCPInterface
from socs_tcp.core.codec import parse_address

#: Default of ``--max-read-size``: the default ``max_read_size`` of :class:`socs_tcp.TCPInterface` (1 MiB).
DEFAULT_MAX_READ_SIZE = 1 << 20

#: Default of ``--write-privs``: OCS level 2 ("advanced"), the level OCS recommends for operations that
#: can leave a device in an awkward state, and the level its own example agent requires once an access
#: policy is set.
DEFAULT_WRITE_PRIVS = 2

#: Feed fields of the link health block, taken from :meth:`socs_tcp.TCPInterface.stats`.
HEALTH_FIELDS = ("connected", "latency_last", "latency_p50", "latency_p99", "reconnects", "timeouts",
                 "errors", "consecutive_failures", "bytes_in", "bytes_out", "transactions")


def add_device_arguments(parser, default_port=None):
    """Add ``--address``, ``--host``, ``--port``, ``--timeout`` and ``--max-read-size`` to an argparse group."""
    parser.add_argument("--address", help="Device address: host:port, [v6]:port, tcp://host:port, "
                        "TCPIP0::host::port::SOCKET or host=...,port=...")
    parser.add_argument("--host", help="Device host name or IP address (instead of --address).")
    parser.add_argument("--port", type=int, default=default_port, help="Device TCP port (with --host).")
    parser.add_argument("--timeout", type=float, default=5.0, help="Deadline of each device operation, seconds.")
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
    """Add ``--write-privs`` (see :func:`write_privs`) to an argparse group."""
    parser.add_argument("--write-privs", type=int, choices=(1, 2, 3), default=DEFAULT_WRITE_PRIVS,
                        help="OCS credential level a client needs to start a task that sends data to the device "
                        "(1 basic, 2 advanced, 3 full). Enforced only when the agent has an access policy "
                        "(--access-policy, or access_policy in the site file's hub).")
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
    """
    if not access_control_enabled(args):
        return 1
    level = args.write_privs
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 3:
        raise ValueError(f"--write-privs must be 1, 2 or 3, got {level!r}")
    return level


def device_address(args):
    """``(host, port)`` from parsed arguments; ``ValueError`` naming the bad value."""
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


def parse_assignments(items, option):
    """``['NAME=VALUE', ...]`` -> ordered list of (name, value); names must be feed-safe."""
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


def as_feed_value(text):
    """A reply as a feed value: float where it parses as one, else the stripped string."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return str(text).strip()
    if value != value or value in (float("inf"), float("-inf")):
        return str(text).strip()
    return value


def health_fields(stats):
    """The health feed block from a stats dict: plain numbers, no None."""
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
    """Send records of the ``socs_tcp`` loggers to the agent log, once."""
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
    import os
    level = os.environ.get("LOGLEVEL", "info")
    txaio.use_twisted()
    txaio.start_logging(level=level)
    return level


def make_link(args, **kwargs):
    """A lazily connecting :class:`socs_tcp.TCPInterface` for the device in ``args``."""
    host, port = device_address(args)
    kwargs.setdefault("encoding_errors", "backslashreplace")
    kwargs.setdefault("max_read_size", args.max_read_size)
    return TCPInterface(host, port, args.timeout, connect=False, **kwargs)


class Poller:
    """The body of an ``acq`` process: call ``poll()`` at a fixed rate until
    stopped, turning ``ConnectionError`` into ``session.degraded``.

    ``poll()`` returns a dict of feed fields, or raises ``ConnectionError``.
    The first failure of an outage is logged at error level, the recovery at
    info level; the cycles in between stay quiet.  The link's own backoff
    decides when a reconnect is attempted, so a dead device costs nothing
    per cycle but a fast-failing call.  While the link is down the poller
    also runs an extra cycle as soon as the backoff allows the next attempt
    (``link.next_attempt_in()``), so a device that comes back is seen within
    the backoff delay, not a whole period later; the regular schedule is kept.
    """

    def __init__(self, agent_obj, link, poll, data_feed, data_block, health_feed="link_health"):
        self.a = agent_obj
        self.link = link
        self.poll = poll
        self.data_feed = data_feed
        self.data_block = data_block
        self.health_feed = health_feed
        self._stop = threading.Event()
        self.cycles = 0
        self.missed = 0

    def stop(self):
        self._stop.set()

    def stop_process(self, session, params):
        """The ``acq`` stop function an agent registers with OCS."""
        self.stop()
        return True, "stopping acq"

    def run_exclusive(self, lock, session, rate, once=False):
        """:meth:`run` while holding ``lock`` (the agent's ``TimeoutLock``);
        refuse at once if another ``acq`` holds it."""
        with lock.acquire_timeout(timeout=0, job="acq") as acquired:
            if not acquired:
                return False, f"acq is already running (lock held by {lock.job})"
            return self.run(session, rate, once)

    def run(self, session, rate, once=False):
        """Poll until :meth:`stop` (or after one cycle with ``once``).

        ``cycles`` and ``missed_cycles`` count from the start of this run.
        A cycle that ends after the next one was due counts the cycles it
        overran as missed; the schedule then restarts from that moment.
        """
        self.cycles = 0
        self.missed = 0
        period = 1.0 / rate
        log = self.a.log
        down_since = None
        last_error = None
        next_cycle = time.monotonic()
        while not self._stop.is_set():
            now = time.time()
            try:
                values = self.poll()
            except ConnectionError as e:
                values = None
                last_error = str(e)
                if down_since is None:
                    down_since = now
                    log.error("device unreachable, acq degraded: {err}", err=last_error)
                session.degraded = True
            else:
                if down_since is not None:
                    log.info("device answering again after {t:.1f} s; acq no longer degraded",
                             t=now - down_since)
                    down_since = None
                    last_error = None
                session.degraded = False
                self.a.agent.publish_to_feed(self.data_feed, {
                    "block_name": self.data_block, "timestamp": now, "data": values})
            stats = self.link.stats()
            self.a.agent.publish_to_feed(self.health_feed, {
                "block_name": "health", "timestamp": now, "data": health_fields(stats)})
            self.cycles += 1
            ended = time.monotonic()
            if ended >= next_cycle:  # a scheduled cycle (an early retry ends before its slot)
                next_cycle += period
            wait = next_cycle - ended
            if wait < 0:
                # behind schedule: count the missed cycles and restart the
                # schedule, still yielding a moment so waiting tasks get the link
                self.missed += int(-wait // period) + 1
                wait = 0.001
                next_cycle = ended + wait
            if values is None:
                retry = getattr(self.link, "next_attempt_in", lambda: None)()
                if retry is not None and retry + 0.005 < wait:
                    wait = retry + 0.005
            data = dict(session.data or {})
            if values is not None:
                data["values"] = values
                data["timestamp"] = now
            data.update({"connected": bool(stats["connected"]), "degraded": down_since is not None,
                         "last_error": last_error, "cycles": self.cycles, "missed_cycles": self.missed,
                         "stats": stats})
            session.data = data
            if once:
                break
            self._stop.wait(wait)
        # cleared on the way out, so a stop that arrives before the loop starts is not lost
        self._stop.clear()
        return True, "acq stopped"
