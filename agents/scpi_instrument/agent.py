"""ScpiInstrumentAgent: a SCPI power supply or multimeter over TCP, in OCS."""

import argparse

from ocs import ocs_agent, site_config
from ocs.ocs_twisted import TimeoutLock

from ..common import (
    Poller,
    add_access_arguments,
    add_device_arguments,
    as_feed_value,
    check_positive,
    device_address,
    log_access_control,
    parse_assignments,
    register_feeds,
    route_library_logs,
    run_op,
    start_logging,
    write_privs,
)
from .drivers import ScpiError, ScpiInstrument

DEFAULT_MEASUREMENTS = ["voltage=MEAS:VOLT?", "current=MEAS:CURR?", "temperature=MEAS:TEMP?"]

#: Tasks registered with ``min_privs`` = ``--write-privs`` when the agent has
#: an access policy: all of them send text to the instrument.  ``query`` is
#: among them because its text is the client's: a compound query such as
#: ``"VOLT 30;:MEAS:VOLT?"`` changes a setting, and some queries (``*TST?``)
#: act on the instrument.  ``acq`` stays at level 1: its queries come from
#: the site file, not from the client.
WRITE_TASKS = ("init", "command", "query")


class ScpiInstrumentAgent:
    """OCS agent for a SCPI instrument.

    Args:
        agent (OCSAgent): from :func:`ocs.ocs_agent.init_site_agent`.
        instrument (socs_tcp_agents.scpi_instrument.drivers.ScpiInstrument): the
            driver (connects lazily).
        measurements (list): ``(field_name, query)`` pairs polled by ``acq``.
        sample_rate (float): ``acq`` cycles per second.
    """

    def __init__(self, agent, instrument, measurements, sample_rate=1.0):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.instrument = instrument
        self.measurements = list(measurements)
        self.sample_rate = sample_rate
        self.identity = None
        self.poller = Poller(self, instrument, self._poll, "scpi", "measurements")
        register_feeds(self.agent, "scpi", "link_health")

    def _poll(self):
        try:
            replies = self.instrument.measure(self.measurements)
        except ScpiError as e:
            # a rejected measurement query leaves acq without data, like an
            # outage: the Poller reports it once and marks acq degraded
            raise ConnectionError(str(e)) from e
        return {name: as_feed_value(reply) for name, reply in replies.items()}

    def _run(self, session, what, call):
        # an instrument error is the instrument's answer: "<what>: instrument rejected ..."
        return run_op(session, what, call, device_errors=(ScpiError,))

    def init(self, session, params):
        """init()

        **Task** - Identify the instrument (``*IDN?``) and clear its error queue.

        Parameters:
            None.

        Notes:
            >>> response.session['data']
            {'response': {'idn': 'SOCS-TCP,SIM-PSU1,SN0001,1.0', 'manufacturer': 'SOCS-TCP',
                          'model': 'SIM-PSU1', 'serial': 'SN0001', 'firmware': '1.0'},
             'timestamp': 1700000000.0, 'elapsed': 0.001}
        """
        def identify():
            self.instrument.clear()
            self.identity = self.instrument.identify()
            self.log.info("instrument: {idn}", idn=self.identity["idn"])
            return self.identity
        return self._run(session, "init", identify)

    @ocs_agent.param("command", type=str, check=lambda c: bool(c.strip()) and "\n" not in c)
    def command(self, session, params):
        """command(command)

        **Task** - Send a SCPI command (no reply expected) and check the
        error queue; the task fails with the instrument's error if it was
        rejected.

        Parameters:
            command (str): e.g. ``"VOLT 2.5"`` or ``"OUTP ON"``.

        Notes:
            >>> response.session['data']
            {'response': None, 'timestamp': 1700000000.0, 'elapsed': 0.001}
        """
        return self._run(session, "command", lambda: self.instrument.command(params["command"]))

    @ocs_agent.param("query", type=str, check=lambda c: bool(c.strip()) and "\n" not in c)
    @ocs_agent.param("timeout", default=None, type=float, check=lambda t: t >= 0)
    def query(self, session, params):
        """query(query, timeout=None)

        **Task** - Send a SCPI query and return its reply.

        Parameters:
            query (str): e.g. ``"MEAS:VOLT?"``.
            timeout (float): deadline in seconds (default: the link's).

        Notes:
            >>> response.session['data']
            {'response': '+2.500012E+00', 'timestamp': 1700000000.0, 'elapsed': 0.001}
        """
        return self._run(session, "query", lambda: self.instrument.ask(params["query"], params["timeout"]))

    @ocs_agent.param("test_mode", default=False, type=bool)
    def acq(self, session, params):
        """acq(test_mode=False)

        **Process** - Poll the ``--measure`` queries each cycle and publish
        them to the ``scpi`` feed (block ``measurements``), and the link
        health to the ``link_health`` feed.  A lost instrument sets
        ``session.degraded``; the first good reading clears it.

        Parameters:
            test_mode (bool): run one cycle and stop (for testing).

        Notes:
            >>> response.session['data']
            {'values': {'voltage': 2.5, 'current': 0.05, 'temperature': 25.1},
             'timestamp': 1700000000.0, 'connected': True, 'degraded': False,
             'down_since': None, 'last_error': None, 'cycles': 12, 'missed_cycles': 0,
             'lateness_max': 0.0002,
             'stats': {'connected': True, 'latency_last': 0.0005, ...}}
        """
        return self.poller.run_exclusive(self.lock, session, self.sample_rate, once=params["test_mode"])


def make_parser(parser=None):
    """Build the argument parser (OCS passes its own to extend)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    add_device_arguments(pgroup, default_port=5025)
    add_access_arguments(pgroup)
    # nargs='+' rather than a repeated option: OCS merges site-file arguments by option name
    pgroup.add_argument("--measure", action="extend", nargs="+", default=None, metavar="NAME=QUERY",
                        help="Queries polled by acq; the reply of each becomes feed field NAME. "
                        "Give several after one --measure. "
                        f"Default: {' '.join(DEFAULT_MEASUREMENTS)}")
    pgroup.add_argument("--sample-rate", type=float, default=1.0, help="acq cycles per second.")
    pgroup.add_argument("--mode", choices=["idle", "init", "acq"], default="acq",
                        help="'init' identifies the instrument at startup, 'acq' also starts acq.")
    return parser


def main(args=None):
    level = start_logging()
    parser = make_parser()
    args = site_config.parse_args(agent_class="ScpiInstrumentAgent", parser=parser, args=args)
    try:
        measurements = parse_assignments(args.measure or DEFAULT_MEASUREMENTS, "--measure")
        check_positive(args, "sample_rate", "timeout")
        host, port = device_address(args)
        instrument = ScpiInstrument(host, port, args.timeout, connect=False, max_read_size=args.max_read_size)
        privs = write_privs(args)
    except ValueError as e:
        parser.error(str(e))
    agent, runner = ocs_agent.init_site_agent(args)
    route_library_logs(agent.log, level)
    scpi = ScpiInstrumentAgent(agent, instrument, measurements, args.sample_rate)
    # start-up runs of init are not refused: OCS starts them with its own super-user credential
    agent.register_task("init", scpi.init, startup=args.mode in ("init", "acq"), min_privs=privs)
    agent.register_task("command", scpi.command, min_privs=privs)
    agent.register_task("query", scpi.query, min_privs=privs)
    agent.register_process("acq", scpi.acq, scpi.poller.stop_process, startup=args.mode == "acq")
    log_access_control(agent.log, args, WRITE_TASKS)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
