"""MessageLinkAgent: a device that speaks JSON lines (the ts_m2com protocol) in OCS.

The device sends telemetry and events whenever it likes and answers commands
with ``ack`` then ``success`` or ``fail`` (``noack`` for a command it does not
know).  The agent holds one :class:`~socs_tcp.jsonlines.AsyncTCPClient`,
running in an asyncio event loop on a thread of its own; OCS operations (which
run in worker threads) hand coroutines to that loop and wait for them.
"""

import argparse
import asyncio
import concurrent.futures
import json
import math
import re
import threading
import time
import zlib

from ocs import ocs_agent, site_config
from ocs.ocs_twisted import TimeoutLock
from twisted.internet import reactor

from socs_tcp.core.policy import ReconnectPolicy
from socs_tcp.errors import LinkTimeoutError
from socs_tcp.jsonlines import AsyncTCPClient, CommandError, CommandTimeoutError, MsgType, classify_id

from ..common import (
    add_access_arguments,
    add_device_arguments,
    device_address,
    health_fields,
    log_access_control,
    route_library_logs,
    start_logging,
    write_privs,
)

#: The task that sends client-supplied commands to the device: registered with
#: ``min_privs`` = ``--write-privs`` when the agent has an access policy.
WRITE_TASKS = ("command",)

#: Feed of each message kind.
FEEDS = {MsgType.TELEMETRY: "telemetry", MsgType.EVENT: "events"}

_NOT_FIELD_CHAR = re.compile(r"[^A-Za-z0-9_]")
_MAX_FIELD_LEN = 255


def _field_name(path):
    """A feed-safe field name from a key path: ``[A-Za-z0-9_]``, starting with a letter."""
    name = _NOT_FIELD_CHAR.sub("_", path)
    stripped = name.lstrip("_")
    if not stripped or not stripped[0].isalpha():
        name = "f_" + name
    if len(name) > _MAX_FIELD_LEN:
        name = f"{name[:_MAX_FIELD_LEN - 9]}_{zlib.crc32(name.encode()):08x}"
    return name


def flatten_fields(details, max_fields=500):
    """Feed fields from the details of a message.

    Nested objects join their keys with ``_`` (``{"a": {"b": 1}}`` -> ``a_b``),
    list items get their index (``{"ring": [1, 2]}`` -> ``ring_0``,
    ``ring_1``), characters outside ``[A-Za-z0-9_]`` become ``_``, and a name
    that would not start with a letter gets ``f_`` in front.  Values stay
    ``bool``, ``int``, ``float`` or ``str``; ``null`` and non-finite numbers
    are left out (a feed cannot store them).  Names that collide after this
    get ``_2``, ``_3``, ... in order of appearance.

    Args:
        details (dict): the message without its ``id``.
        max_fields (int): the most fields kept; the rest are dropped.

    Returns:
        tuple: ``(fields, dropped)`` -- the dict of fields and how many
        values did not fit in ``max_fields``.
    """
    fields = {}
    dropped = 0

    def put(path, value):
        nonlocal dropped
        if len(fields) >= max_fields:
            dropped += 1
            return
        name = _field_name(path)
        if name in fields:
            n = 2
            while f"{name}_{n}" in fields:
                n += 1
            name = f"{name}_{n}"
        fields[name] = value

    def walk(path, value):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{path}_{key}" if path else str(key), item)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(f"{path}_{index}" if path else str(index), item)
        elif value is None:
            return
        elif isinstance(value, (bool, int, str)):
            put(path, value)
        elif isinstance(value, float):
            if math.isfinite(value):
                put(path, value)
        else:
            put(path, str(value))

    walk("", details)
    return fields, dropped


def parse_details(value):
    """The ``details`` parameter of ``command``: a dict, or a JSON object as text."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"details must be a JSON object, got {value!r}")
    return value


def _valid_command_name(name):
    return bool(name) and not any(c.isspace() or not c.isprintable() for c in name)


class MessageLinkAgent:
    """OCS agent for a JSON-lines device: commands as a task, telemetry and events as feeds.

    Args:
        agent (OCSAgent): from :func:`ocs.ocs_agent.init_site_agent`.
        host (str): device host.
        port (int): device port.
        timeout (float): deadline of a connection attempt, and of a command
            that gives no ``timeout`` of its own, seconds.
        telemetry_ids (iterable): ids without a ``tel_`` / ``evt_`` prefix
            that are telemetry (the other bare ids are events).
        reconnect_policy (socs_tcp.ReconnectPolicy): spacing of the
            reconnect attempts of ``monitor``.
        update_interval (float): seconds between updates of the ``monitor``
            session data and of the ``link_health`` feed.
        max_fields (int): the most feed fields taken from one message.
        max_message_size (int): the longest message accepted from the
            device, bytes; a longer one drops the connection.

    Attributes:
        agent (OCSAgent): the OCS agent.
        log (txaio.interfaces.ILogger): the agent log.
        lock (TimeoutLock): held by ``monitor`` while it runs.
        client (socs_tcp.jsonlines.AsyncTCPClient): the device link; use it
            only from :attr:`loop`.
        loop (asyncio.AbstractEventLoop): the event loop of the link, run by
            a daemon thread.
    """

    def __init__(self, agent, host, port, timeout=5.0, telemetry_ids=(), reconnect_policy=None,
                 update_interval=1.0, max_fields=500, max_message_size=1 << 20):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.timeout = float(timeout)
        self.telemetry_ids = frozenset(telemetry_ids)
        self.policy = ReconnectPolicy.coerce(reconnect_policy)
        self.update_interval = float(update_interval)
        self.max_fields = int(max_fields)
        self.client = AsyncTCPClient(host, port, self._on_message, name=f"link-{host}:{port}",
                                     check_message_rate=True, timeout=1.0, on_disconnect=self._on_disconnect,
                                     command_timeout=self.timeout, max_message_size=max_message_size)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="message-link-loop", daemon=True)
        self._thread.start()
        self._data_lock = threading.Lock()
        self._latest = {MsgType.TELEMETRY: {}, MsgType.EVENT: {}}
        self._counts = {}
        self._blocks = {}
        self._warned_truncated = set()
        self._publishing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._link_error = None
        agg_params = {"frame_length": 60}
        for feed in ("telemetry", "events", "link_health"):
            self.agent.register_feed(feed, record=True, agg_params=agg_params, buffer_time=1.0)

    # ------------------------------------------------------------------ event loop plumbing
    def _run_loop(self):
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def _call(self, coro, timeout):
        """Run ``coro`` on the link's loop and wait for it (from an OCS worker thread)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except (concurrent.futures.TimeoutError, TimeoutError):
            if future.done():  # the coroutine itself raised a timeout
                raise
            future.cancel()
            raise LinkTimeoutError(f"the link's event loop did not finish within {timeout:g} s") from None

    async def _snapshot(self):
        return self.client.snapshot()

    def _connected(self):
        return self.client.connected

    # ------------------------------------------------------------------ received messages (loop thread)
    def _on_message(self, message):
        kind, name = classify_id(message.get("id"))
        if kind == "reply":
            return  # matched to its command by the client
        if kind is MsgType.COMMAND or not isinstance(name, str) or not name:
            self.log.debug("ignoring message {msg}", msg=message)
            return
        if kind is None:
            kind = MsgType.TELEMETRY if name in self.telemetry_ids else MsgType.EVENT
        now = time.time()
        fields, dropped = flatten_fields({k: v for k, v in message.items() if k != "id"}, self.max_fields)
        if dropped and name not in self._warned_truncated:
            self._warned_truncated.add(name)
            self.log.warn("message {name} has more than {n} values; {d} left out of the feed",
                          name=name, n=self.max_fields, d=dropped)
        key = (kind, name)
        self._counts[key] = self._counts.get(key, 0) + 1
        if not fields:
            fields = {"count": self._counts[key]}
        with self._data_lock:
            self._latest[kind][name] = {"timestamp": now, "values": fields}
        if self._publishing:
            feed = FEEDS[kind]
            # OCS publishes from the reactor thread or its pool threads only; this is the link's thread
            reactor.callFromThread(self.agent.publish_to_feed, feed, {
                "block_name": self._block_name(feed, name, fields), "timestamp": now, "data": fields})

    def _block_name(self, feed, name, fields):
        """One block per message id and set of fields (OCS requires fixed keys per block)."""
        known = self._blocks.setdefault((feed, name), {})
        keys = tuple(sorted(fields))
        block = known.get(keys)
        if block is None:
            base = _field_name(name)
            block = base if not known else f"{base}_{zlib.crc32(','.join(keys).encode()):08x}"
            known[keys] = block
        return block

    def _on_disconnect(self, client, error):
        self._link_error = str(error)
        self._wake.set()

    # ------------------------------------------------------------------ monitor
    def _connect(self, timeout):
        self._call(self.client.connect(timeout=timeout), timeout + 5.0)

    def _monitor_data(self, down_since, last_error):
        stats = self._call(self._snapshot(), 5.0)
        with self._data_lock:
            telemetry = dict(self._latest[MsgType.TELEMETRY])
            events = dict(self._latest[MsgType.EVENT])
        return stats, {
            "connected": bool(stats["connected"]),
            "degraded": down_since is not None,
            "down_since": down_since,
            "last_error": last_error,
            "address": self.client.address,
            "telemetry": telemetry,
            "events": events,
            "messages_received": stats["messages_received"],
            "invalid_messages": stats["invalid_messages"],
            "message_rate": stats["message_rate"],
            "timestamp": time.time(),
            "stats": stats,
        }

    @ocs_agent.param("test_mode", default=False, type=bool)
    def monitor(self, session, params):
        """monitor(test_mode=False)

        **Process** - Keep the link to the device up and publish what it
        sends: telemetry to the ``telemetry`` feed and events to the
        ``events`` feed, one block per message id, with the message flattened
        into fields (``{"ring": [20.1, 20.2]}`` -> ``ring_0``, ``ring_1``);
        and the link's health to the ``link_health`` feed every
        ``--update-interval`` seconds.

        While the device is unreachable the process keeps running with
        ``session.degraded = True`` and reconnects with exponential backoff
        (``--reconnect-initial``, ``--reconnect-cap``); a lost connection is
        retried at once.  The first failed attempt of an outage is logged,
        and so is the recovery, which clears ``degraded``.

        Parameters:
            test_mode (bool): run one cycle and stop (for testing).

        Notes:
            The latest telemetry and events and the link state are in
            session.data::

                >>> response.session['data']
                {'connected': True, 'degraded': False, 'down_since': None,
                 'last_error': None, 'address': '10.0.0.7:50010',
                 'telemetry': {'temperature': {'timestamp': 1700000000.5,
                     'values': {'ring_0': 20.01, 'ring_1': 19.98, 'ring_2': 20.02,
                                'intake': 19.5, 'exhaust': 20.5, 'setpoint': 20.0}}},
                 'events': {'heartbeat': {'timestamp': 1700000000.1,
                     'values': {'counter': 42, 'uptime': 41.0}}},
                 'messages_received': 130, 'invalid_messages': 0,
                 'message_rate': 3.0, 'timestamp': 1700000001.0,
                 'stats': {'connected': True, 'connects': 1, 'latency_last': 0.0011, ...}}
        """
        with self.lock.acquire_timeout(timeout=0, job="monitor") as acquired:
            if not acquired:
                return False, f"monitor is already running (lock held by {self.lock.job})"
            return self._monitor(session, once=params["test_mode"])

    def _monitor(self, session, once):
        self._publishing = True
        failures = 0
        next_attempt = 0.0
        down_since = None
        last_error = None
        next_update = time.monotonic()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                now = time.monotonic()
                if not self._connected() and now >= next_attempt:
                    try:
                        self._connect(self.timeout)
                    except ConnectionError as e:
                        failures += 1
                        next_attempt = time.monotonic() + self.policy.delay(failures)
                        last_error = str(e)
                        if down_since is None:
                            down_since = time.time()
                            reason = f"{self._link_error}; {last_error}" if self._link_error else last_error
                            self.log.error("device link down, monitor degraded: {err}", err=reason)
                        session.degraded = True
                if self._connected():
                    failures = 0
                    next_attempt = 0.0
                    if down_since is not None:
                        self.log.info("device link up again after {t:.1f} s; monitor no longer degraded",
                                      t=time.time() - down_since)
                        down_since = None
                        last_error = None
                    self._link_error = None
                    session.degraded = False
                now = time.monotonic()
                if now >= next_update or once:
                    stats, data = self._monitor_data(down_since, last_error)
                    session.data = data
                    self.agent.publish_to_feed("link_health", {
                        "block_name": "health", "timestamp": time.time(), "data": health_fields(stats)})
                    next_update = now + self.update_interval
                if once:
                    break
                wait = next_update - now
                if not self._connected():
                    wait = min(wait, max(0.0, next_attempt - now))
                self._wake.wait(max(0.001, wait))
        finally:
            self._publishing = False
            self._stop.clear()
        return True, "monitor stopped"

    def stop_monitor(self, session, params):
        """Stop function of ``monitor``."""
        self._stop.set()
        self._wake.set()
        return True, "stopping monitor"

    # ------------------------------------------------------------------ command
    @ocs_agent.param("name", type=str, check=_valid_command_name)
    @ocs_agent.param("details", default=None, cast=parse_details, type=dict)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: 0 < t <= 3600)
    def command(self, session, params):
        """command(name, details=None, timeout=None)

        **Task** - Send command ``name`` (written as ``cmd_<name>`` with the
        next ``sequence_id``) and wait for its final status.  The task
        succeeds when the device answers ``success``, and fails with a
        message naming the command and its ``sequence_id`` on ``noack``,
        ``fail`` (with the device's reason), or no final status within
        ``timeout``.  If the link is down, one connection attempt is made
        first.

        Parameters:
            name (str): the command name, e.g. ``"setTemperature"``.
            details (dict): its parameters, e.g. ``{"value": 25.0}``; a JSON
                object given as a string is accepted too.  Must not contain
                ``id`` or ``sequence_id``.
            timeout (float): deadline for the final status, seconds
                (default: the agent's ``--timeout``).

        Notes:
            >>> response.session['data']
            {'name': 'getStatus', 'sequence_id': 4, 'status': 'success',
             'acked': True, 'reply': {'id': 'success', 'sequence_id': 4,
                                      'setpoint': 25.0, 'temperature': 24.8},
             'elapsed': 0.0012, 'timestamp': 1700000000.0}

            On failure ``status`` is ``'noack'``, ``'fail'`` or
            ``'timeout'`` and ``reply`` the device's reply (``None`` for a
            timeout).
        """
        name = params["name"]
        details = params["details"]
        timeout = params["timeout"] or self.timeout
        started = time.time()
        t0 = time.perf_counter()

        def record(status, sequence_id, reply, acked):
            session.data = {"name": name, "sequence_id": sequence_id, "status": status, "acked": acked,
                            "reply": reply, "elapsed": time.perf_counter() - t0, "timestamp": started}

        if not self._connected():
            try:
                self._connect(min(timeout, self.timeout))
            except ConnectionError as e:
                return False, f"command {name!r}: device unreachable ({type(e).__name__}): {e}"
        try:
            reply = self._call(self.client.send_command(name, details, timeout=timeout), timeout + 5.0)
        except (ValueError, TypeError) as e:
            return False, f"command {name!r}: bad parameter: {e}"
        except CommandError as e:
            record(e.status, e.sequence_id, e.reply, e.status == "fail")
            return False, str(e)
        except CommandTimeoutError as e:
            record("timeout", e.sequence_id, None, e.acked)
            return False, str(e)
        except RuntimeError as e:  # the link dropped between the check and the write
            return False, f"command {name!r}: device unreachable: {e}"
        except ConnectionError as e:
            return False, f"command {name!r}: device error ({type(e).__name__}): {e}"
        record("success", reply.get("sequence_id"), reply, True)
        return True, f"command {name!r} (sequence_id {reply.get('sequence_id')}) succeeded"


def make_parser(parser=None):
    """Build the argument parser (OCS passes its own to extend)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    add_device_arguments(pgroup)
    add_access_arguments(pgroup)
    # nargs='+' rather than a repeated option: OCS merges site-file arguments by option name
    pgroup.add_argument("--telemetry-ids", action="extend", nargs="+", default=[], metavar="ID",
                        help="Message ids without a tel_/evt_ prefix that are telemetry; other bare ids are events.")
    pgroup.add_argument("--update-interval", type=float, default=1.0,
                        help="Seconds between updates of the monitor session data and the link_health feed.")
    pgroup.add_argument("--reconnect-initial", type=float, default=0.2,
                        help="Delay after the first failed reconnect attempt, seconds (doubles per failure).")
    pgroup.add_argument("--reconnect-cap", type=float, default=5.0, help="Longest delay between reconnect attempts.")
    pgroup.add_argument("--mode", choices=["idle", "monitor"], default="monitor",
                        help="'monitor' starts the monitor process at startup.")
    return parser


def main(args=None):
    level = start_logging()
    parser = make_parser()
    args = site_config.parse_args(agent_class="MessageLinkAgent", parser=parser, args=args)
    try:
        host, port = device_address(args)
        for option in ("timeout", "update_interval"):
            value = getattr(args, option)
            if not 0 < value < math.inf:
                raise ValueError(f"--{option.replace('_', '-')} must be > 0, got {value}")
        policy = ReconnectPolicy(initial=args.reconnect_initial, cap=args.reconnect_cap)
        for ident in args.telemetry_ids:
            if not ident or any(c.isspace() for c in ident):
                raise ValueError(f"--telemetry-ids {ident!r} is not a message id")
        if not args.max_read_size > 0:
            raise ValueError(f"--max-read-size must be > 0, got {args.max_read_size}")
        privs = write_privs(args)
    except ValueError as e:
        parser.error(str(e))
    agent, runner = ocs_agent.init_site_agent(args)
    route_library_logs(agent.log, level)
    link = MessageLinkAgent(agent, host, port, timeout=args.timeout, telemetry_ids=args.telemetry_ids,
                            reconnect_policy=policy, update_interval=args.update_interval,
                            max_message_size=args.max_read_size)
    agent.register_task("command", link.command, min_privs=privs)
    agent.register_process("monitor", link.monitor, link.stop_monitor, startup=args.mode == "monitor")
    log_access_control(agent.log, args, WRITE_TASKS)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
