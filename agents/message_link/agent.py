"""MessageLinkAgent: a device that speaks JSON lines (the ts_m2com protocol) in OCS.

The device sends telemetry and events whenever it likes and answers commands
with ``ack`` then ``success`` or ``fail`` (``noack`` for a command it does not
know).  The agent owns a
:class:`~socs_tcp_agents.message_link.drivers.MessageLinkDriver`, which holds
the connection and its event loop; the agent's operations call the driver's
blocking methods and never touch the link itself.
"""

import argparse
import json
import math
import re
import threading
import time
import zlib

from ocs import ocs_agent, site_config
from ocs.ocs_twisted import TimeoutLock
from twisted.internet import reactor

from socs_tcp.jsonlines import CommandError, CommandTimeoutError, MsgType, classify_id

from ..common import (
    Outage,
    Poller,
    add_access_arguments,
    add_device_arguments,
    add_reconnect_arguments,
    check_positive,
    device_address,
    log_access_control,
    reconnect_policy,
    register_feeds,
    route_library_logs,
    run_op,
    start_logging,
    write_privs,
)
from .drivers import MessageLinkDriver

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
        driver (socs_tcp_agents.message_link.drivers.MessageLinkDriver): the
            device link.
        poller (socs_tcp_agents.common.Poller): the body of ``monitor``.
    """

    def __init__(self, agent, host, port, timeout=5.0, telemetry_ids=(), reconnect_policy=None,
                 update_interval=1.0, max_fields=500, max_message_size=1 << 20):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.timeout = float(timeout)
        self.telemetry_ids = frozenset(telemetry_ids)
        self.update_interval = float(update_interval)
        self.max_fields = int(max_fields)
        self._data_lock = threading.Lock()
        self._latest = {MsgType.TELEMETRY: {}, MsgType.EVENT: {}}
        self._counts = {}
        self._blocks = {}
        self._warned_truncated = set()
        self._publishing = False
        self.driver = MessageLinkDriver(host, port, self._on_message, timeout=self.timeout,
                                        reconnect_policy=reconnect_policy, max_message_size=max_message_size,
                                        on_disconnect=self._on_disconnect)
        self.poller = Poller(self, self.driver, self.driver.ensure_connected, None, None, process="monitor",
                             outage=Outage(self.log, "monitor", down="device link down", up="device link up again"),
                             session_data=self._session_data)
        register_feeds(self.agent, "telemetry", "events", "link_health")

    # ------------------------------------------------------------------ received messages (driver's thread)
    def _on_message(self, message):
        kind, name = classify_id(message.get("id"))
        if kind == "reply":
            return  # matched to its command by the driver
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
            # OCS publishes from the reactor thread or its pool threads only; this is the driver's thread
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

    def _on_disconnect(self, error):
        self.poller.wake()   # retry at once: the backoff allows an immediate attempt after a loss

    # ------------------------------------------------------------------ monitor
    def _session_data(self, stats):
        with self._data_lock:
            telemetry = dict(self._latest[MsgType.TELEMETRY])
            events = dict(self._latest[MsgType.EVENT])
        return {
            "address": self.driver.address,
            "telemetry": telemetry,
            "events": events,
            "messages_received": stats["messages_received"],
            "invalid_messages": stats["invalid_messages"],
            "message_rate": stats["message_rate"],
            "timestamp": time.time(),
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
                 'cycles': 5, 'missed_cycles': 0, 'lateness_max': 0.0004,
                 'stats': {'connected': True, 'connects': 1, 'latency_last': 0.0011, ...}}
        """
        self._publishing = True
        try:
            return self.poller.run_exclusive(self.lock, session, 1.0 / self.update_interval,
                                             once=params["test_mode"])
        finally:
            self._publishing = False

    def stop_monitor(self, session, params):
        """Stop function of ``monitor``."""
        return self.poller.stop_process(session, params)

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
        timeout = params["timeout"] or self.timeout
        what = f"command {name!r}"
        started = time.time()
        t0 = time.perf_counter()

        def record(status, sequence_id, reply, acked):
            return {"name": name, "sequence_id": sequence_id, "status": status, "acked": acked,
                    "reply": reply, "elapsed": time.perf_counter() - t0, "timestamp": started}

        def on_error(e):
            if isinstance(e, CommandError):
                session.data = record(e.status, e.sequence_id, e.reply, e.status == "fail")
                return str(e)
            if isinstance(e, CommandTimeoutError):
                session.data = record("timeout", e.sequence_id, None, e.acked)
                return str(e)
            if isinstance(e, ConnectionError) and not self.driver.connected:
                return f"{what}: device unreachable ({type(e).__name__}): {e}"
            return None

        return run_op(session, what, lambda: self.driver.command(name, params["details"], timeout),
                      device_errors=(CommandError,), on_error=on_error,
                      data=lambda reply, elapsed, _: record("success", reply.get("sequence_id"), reply, True),
                      done=lambda reply, _: f"{what} (sequence_id {reply.get('sequence_id')}) succeeded")


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
    add_reconnect_arguments(pgroup, initial=0.2, cap=5.0)
    pgroup.add_argument("--mode", choices=["idle", "monitor"], default="monitor",
                        help="'monitor' starts the monitor process at startup.")
    return parser


def main(args=None):
    level = start_logging()
    parser = make_parser()
    args = site_config.parse_args(agent_class="MessageLinkAgent", parser=parser, args=args)
    try:
        host, port = device_address(args)
        check_positive(args, "timeout", "update_interval")
        policy = reconnect_policy(args)
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
