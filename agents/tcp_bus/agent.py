"""TCPBusAgent: any TCP device, driven with the cmd_tcp bus operations over OCS.

No device code is needed: the agent's tasks are the bus operations
(``write``, ``wrnrd_until``, ``expect``, ...), and its ``acq`` process sends
a fixed list of queries each cycle and publishes the replies.
"""

import argparse

from ocs import ocs_agent, site_config
from ocs.ocs_twisted import TimeoutLock

from socs_tcp.core.codec import decode_escapes

from ..common import (
    Poller,
    add_access_arguments,
    add_device_arguments,
    as_feed_value,
    check_positive,
    log_access_control,
    make_link,
    parse_assignments,
    register_feeds,
    route_library_logs,
    run_op,
    start_logging,
    write_privs,
)


class TCPBusAgent:
    """OCS agent exposing a TCP link's bus operations as tasks.

    Args:
        agent (OCSAgent): from :func:`ocs.ocs_agent.init_site_agent`.
        link (socs_tcp.TCPInterface): the device link (raw: no terminations).
        read_termination (bytes): terminator of the replies to ``acq`` queries.
        write_termination (bytes): appended to each ``acq`` query.
        acq_queries (list): ``(field_name, command)`` pairs polled by ``acq``.
        sample_rate (float): ``acq`` cycles per second.

    Attributes:
        agent (OCSAgent): the OCS agent.
        log (txaio.interfaces.ILogger): the agent log.
        lock (TimeoutLock): only guards the start of ``acq``; the link
            serialises device traffic itself, one whole write-and-read at a
            time, so a task can never read a reply meant for ``acq``.
    """

    def __init__(self, agent, link, read_termination=b"\n", write_termination=b"\n", acq_queries=(),
                 sample_rate=1.0):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.link = link
        self.read_termination = read_termination
        self.write_termination = write_termination
        self.acq_queries = list(acq_queries)
        self._encoded_queries = [(name, command.encode() + write_termination) for name, command in self.acq_queries]
        self.sample_rate = sample_rate
        self.poller = Poller(self, link, self._poll, "tcp_bus", "queries")
        register_feeds(self.agent, "tcp_bus", "link_health")

    # ------------------------------------------------------------------ acq
    def _poll(self):
        # the queries are encoded once (in __init__); the terminator is passed as bytes,
        # which the link's terminator cache takes as is
        wrnrd_until, eot = self.link.wrnrd_until, self.read_termination
        return {name: as_feed_value(wrnrd_until(data, eot)) for name, data in self._encoded_queries}

    @ocs_agent.param("test_mode", default=False, type=bool)
    def acq(self, session, params):
        """acq(test_mode=False)

        **Process** - Send each ``--acq-query`` command every cycle and
        publish the replies to the ``tcp_bus`` feed (block ``queries``, one
        field per query: a float where the reply parses as one, else the
        text) and the link's health to the ``link_health`` feed.

        While the device is unreachable the process keeps running with
        ``session.degraded = True``, reconnecting with the link's backoff; the
        first answer clears it.

        Parameters:
            test_mode (bool): run one cycle and stop (for testing).

        Notes:
            The latest values and the connection state are in session.data::

                >>> response.session['data']
                {'values': {'volt': 1.25, 'idn': 'ACME,PSU,1'},
                 'timestamp': 1700000000.0,
                 'connected': True,
                 'degraded': False,
                 'down_since': None,
                 'last_error': None,
                 'cycles': 42,
                 'missed_cycles': 0,
                 'lateness_max': 0.0003,
                 'stats': {'connected': True, 'latency_last': 0.0004, ...}}

            Above 10 Hz the replies are published in batches and
            session.data is updated ten times a second (see the
            :class:`~socs_tcp_agents.common.Poller`).
        """
        return self.poller.run_exclusive(self.lock, session, self.sample_rate, once=params["test_mode"])

    # ------------------------------------------------------------------ tasks
    def _bus(self, session, op, call):
        # bad input -> "bad parameter", link failures -> "device error (...)"
        return run_op(session, op, call)

    @ocs_agent.param("data", type=str)
    def write(self, session, params):
        """write(data)

        **Task** - Write ``data`` to the device exactly as given (escape
        sequences are not interpreted: send a real newline character).

        Parameters:
            data (str): text to send.

        Notes:
            >>> response.session['data']
            {'response': 6, 'elapsed': 0.0001, 'timestamp': 1700000000.0}

            ``response`` is the number of bytes written.
        """
        return self._bus(session, "write", lambda: self.link.write(params["data"]))

    @ocs_agent.param("data", type=str)
    def write_bin(self, session, params):
        """write_bin(data)

        **Task** - Write binary data given as hex, two digits per byte in
        transmission order (``"0a0d"`` sends LF then CR).

        Parameters:
            data (str): hex digits, even length.

        Notes:
            >>> response.session['data']
            {'response': 2, 'elapsed': 0.0001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "write_bin", lambda: self.link.write_bin(params["data"]))

    @ocs_agent.param("bytes_to_read", type=int, check=lambda n: n >= 0)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def read(self, session, params):
        """read(bytes_to_read, timeout=None)

        **Task** - Read exactly ``bytes_to_read`` bytes as text.

        Parameters:
            bytes_to_read (int): how many bytes.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '+1.0E+00', 'elapsed': 0.002, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "read", lambda: self.link.read(params["bytes_to_read"], params["timeout"]))

    @ocs_agent.param("bytes_to_read", type=int, check=lambda n: n >= 0)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def read_bin(self, session, params):
        """read_bin(bytes_to_read, timeout=None)

        **Task** - Read exactly ``bytes_to_read`` bytes, returned as lowercase hex.

        Parameters:
            bytes_to_read (int): how many bytes.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '0a0d', 'elapsed': 0.002, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "read_bin",
                         lambda: self.link.read_bin(params["bytes_to_read"], params["timeout"]))

    @ocs_agent.param("eot", type=str)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def read_until(self, session, params):
        """read_until(eot, timeout=None)

        **Task** - Read until a terminator of ``eot``, a comma-separated list
        with escapes (``"\\n"``, ``"\\r\\n,\\x03"``).  The terminator is not
        returned.

        Parameters:
            eot (str): the terminator(s), comma-separated, escapes allowed.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': 'READY', 'elapsed': 0.01, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "read_until", lambda: self.link.read_until(params["eot"], params["timeout"]))

    @ocs_agent.param("eot", type=str)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def read_bin_until(self, session, params):
        """read_bin_until(eot, timeout=None)

        **Task** - Like ``read_until``, returning lowercase hex.

        Parameters:
            eot (str): the terminator(s), comma-separated, escapes allowed.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '0102ff', 'elapsed': 0.01, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "read_bin_until",
                         lambda: self.link.read_bin_until(params["eot"], params["timeout"]))

    @ocs_agent.param("data", type=str)
    @ocs_agent.param("bytes_to_read", type=int, check=lambda n: n >= 0)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def wrnrd(self, session, params):
        """wrnrd(data, bytes_to_read, timeout=None)

        **Task** - Write ``data`` then read exactly ``bytes_to_read`` bytes,
        as one transaction.

        Parameters:
            data (str): text to send.
            bytes_to_read (int): how many bytes of reply.
            timeout (float): deadline of the whole transaction in seconds
                (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': 'ACME', 'elapsed': 0.001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "wrnrd", lambda: self.link.wrnrd(
            params["data"], params["bytes_to_read"], params["timeout"]))

    @ocs_agent.param("data", type=str)
    @ocs_agent.param("bytes_to_read", type=int, check=lambda n: n >= 0)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def wrnrd_bin(self, session, params):
        """wrnrd_bin(data, bytes_to_read, timeout=None)

        **Task** - Write hex ``data`` then read ``bytes_to_read`` bytes as hex.

        Parameters:
            data (str): hex digits, even length.
            bytes_to_read (int): how many bytes of reply.
            timeout (float): deadline of the whole transaction in seconds
                (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '0600', 'elapsed': 0.001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "wrnrd_bin", lambda: self.link.wrnrd_bin(
            params["data"], params["bytes_to_read"], params["timeout"]))

    @ocs_agent.param("data", type=str)
    @ocs_agent.param("eot", type=str)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def wrnrd_until(self, session, params):
        """wrnrd_until(data, eot, timeout=None)

        **Task** - Write ``data`` then read until a terminator of ``eot``, as
        one transaction.

        Parameters:
            data (str): text to send.
            eot (str): the reply terminator(s), comma-separated, escapes allowed.
            timeout (float): deadline of the whole transaction in seconds
                (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': 'SOCS-TCP,SIM-PSU1,SN0001,1.0', 'elapsed': 0.0006,
             'timestamp': 1700000000.0}
        """
        return self._bus(session, "wrnrd_until", lambda: self.link.wrnrd_until(
            params["data"], params["eot"], params["timeout"]))

    @ocs_agent.param("data", type=str)
    @ocs_agent.param("eot", type=str)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def wrnrd_bin_until(self, session, params):
        """wrnrd_bin_until(data, eot, timeout=None)

        **Task** - Write hex ``data`` then read until a terminator of ``eot``,
        returned as hex.

        Parameters:
            data (str): hex digits, even length.
            eot (str): the reply terminator(s), comma-separated, escapes allowed.
            timeout (float): deadline of the whole transaction in seconds
                (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '1020', 'elapsed': 0.001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "wrnrd_bin_until", lambda: self.link.wrnrd_bin_until(
            params["data"], params["eot"], params["timeout"]))

    @ocs_agent.param("pattern", type=str)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def expect(self, session, params):
        """expect(pattern, timeout=None)

        **Task** - Read until the regular expression ``pattern`` matches;
        ``response`` is everything consumed up to the end of the match.

        Parameters:
            pattern (str): a Python regular expression.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': 'boot ok\\nREADY>', 'elapsed': 0.2, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "expect", lambda: self.link.expect(params["pattern"], params["timeout"]))

    def connect(self, session, params):
        """connect()

        **Task** - Connect to the device now (cmd_tcp ``config``).

        Parameters:
            None.

        Notes:
            >>> response.session['data']
            {'response': True, 'elapsed': 0.001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "connect", lambda: self.link.connect() or self.link.is_connected)

    def disconnect(self, session, params):
        """disconnect()

        **Task** - Close the connection (cmd_tcp ``inval``); the next
        operation reconnects.

        Parameters:
            None.

        Notes:
            >>> response.session['data']
            {'response': False, 'elapsed': 0.0001, 'timestamp': 1700000000.0}
        """
        return self._bus(session, "disconnect", lambda: self.link.disconnect() or self.link.is_connected)


BUS_TASKS = ("write", "write_bin", "read", "read_bin", "read_until", "read_bin_until", "wrnrd", "wrnrd_bin",
             "wrnrd_until", "wrnrd_bin_until", "expect", "connect", "disconnect")

#: The tasks that send client-supplied bytes to the device: registered with
#: ``min_privs`` = ``--write-privs`` when the agent has an access policy.  The
#: others only read what the device sent, or open/close the connection, and
#: stay at OCS's default level 1.
WRITE_TASKS = ("write", "write_bin", "wrnrd", "wrnrd_bin", "wrnrd_until", "wrnrd_bin_until")


def make_parser(parser=None):
    """Build the argument parser (OCS passes its own to extend)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    add_device_arguments(pgroup)
    add_access_arguments(pgroup)
    pgroup.add_argument("--read-termination", default="\\n",
                        help="Terminator of replies to acq queries (escapes such as \\n allowed).")
    pgroup.add_argument("--write-termination", default="\\n",
                        help="Appended to each acq query (escapes allowed).")
    # nargs='+' rather than a repeated option: OCS merges site-file arguments
    # by option name, so a repeated option would keep only its last value
    pgroup.add_argument("--acq-query", action="extend", nargs="+", default=[], metavar="NAME=COMMAND",
                        help="Queries sent by acq each cycle; the reply of each becomes feed field NAME. "
                        "Give several after one --acq-query.")
    pgroup.add_argument("--sample-rate", type=float, default=1.0, help="acq cycles per second.")
    pgroup.add_argument("--mode", choices=["idle", "acq"], default="idle",
                        help="'acq' starts the acq process at startup.")
    return parser


def main(args=None):
    level = start_logging()
    parser = make_parser()
    args = site_config.parse_args(agent_class="TCPBusAgent", parser=parser, args=args)
    try:
        queries = parse_assignments(args.acq_query, "--acq-query")
        read_term = decode_escapes(args.read_termination)
        write_term = decode_escapes(args.write_termination)
        if not read_term:
            raise ValueError("--read-termination must not be empty")
        check_positive(args, "sample_rate", "timeout")
        # a reply that arrives after its deadline must never become the answer
        # to a later write-and-read (plain read tasks still see everything)
        link = make_link(args, drain_before_query=True, close_on_timeout=True)
        privs = write_privs(args)
    except ValueError as e:
        parser.error(str(e))
    agent, runner = ocs_agent.init_site_agent(args)
    route_library_logs(agent.log, level)
    bus = TCPBusAgent(agent, link, read_term, write_term, queries, args.sample_rate)
    agent.register_process("acq", bus.acq, bus.poller.stop_process, startup=args.mode == "acq")
    for name in BUS_TASKS:
        agent.register_task(name, getattr(bus, name), min_privs=privs if name in WRITE_TASKS else 1)
    log_access_control(agent.log, args, WRITE_TASKS)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
