"""The local stack without Docker: crossbar, a simulated SCPI instrument, the
TCPBusAgent and the ScpiInstrumentAgent, a DeviceAgent made from the shipped
Pfeiffer TPG 366 device file against that file's simulator, and a client
printing live values.
When ``influxd`` (InfluxDB 1.x) is installed, also InfluxDB with OCS's
RegistryAgent and InfluxDBAgent, so the feeds land where the Grafana
dashboards read them.

Run it with ``python -m socs_tcp_stack.localstack`` (``./scripts/run-local`` also
installs what it needs).  Ctrl-C stops everything it started.
"""

import argparse
import logging
import shlex
import signal
import sys
import threading
import time

from socs_tcp.devices.simulator import DeviceSimulator
from socs_tcp.testing.simulators.scpi import ScpiSimulator

from .stack import InfluxDB, Stack, influxd_path

log = logging.getLogger("socs_tcp_stack.localstack")

#: InfluxDB database the publisher writes to (as in deploy/default.yaml).
DATABASE = "ocs_feeds"

#: Seconds between the registry's periodic re-publications of every op code
#: (OCS default 30); changes are published at once anyway.
REGISTRY_WAIT_TIME = 5

#: The shipped device file whose DeviceAgent (instance ``tpg366``) runs
#: against the simulator made from the same file.
DEVICE_FILE = "tpg366"


class LocalStack:
    """What :func:`build_stack` started.

    Attributes:
        stack (socs_tcp_stack.stack.Stack): crossbar, the site file and the agents.
        simulator (socs_tcp.simulators.scpi.ScpiSimulator): the instrument.
        device_simulator (socs_tcp.devices.simulator.DeviceSimulator or None):
            the simulator of :data:`DEVICE_FILE`, served to the ``tpg366``
            DeviceAgent.
        influxdb (socs_tcp_stack.stack.InfluxDB or None): the InfluxDB server, or
            ``None`` when it was not started.
    """

    def __init__(self, stack, simulator, influxdb=None, device_simulator=None):
        self.stack = stack
        self.simulator = simulator
        self.influxdb = influxdb
        self.device_simulator = device_simulator

    def stop(self):
        """Stop the agents (in parallel: each needs a few seconds), crossbar, InfluxDB and the simulator."""
        try:
            threads = [threading.Thread(target=agent.stop) for agent in self.stack.agents.values()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if self.influxdb is not None:
                self.influxdb.stop()     # before the stack removes a temporary workdir holding its data
        finally:
            try:
                self.stack.stop()
            finally:
                self.simulator.stop()
                if self.device_simulator is not None:
                    self.device_simulator.stop()


def build_stack(workdir=None, sample_rate=2.0, influxdb=None, influxdb_port=None,
                registry_wait_time=REGISTRY_WAIT_TIME, agent_args=None):
    """Start the simulators, crossbar and the agents, and optionally InfluxDB with the registry and publisher.

    The agents are ``scpi-psu`` (ScpiInstrumentAgent) and ``tcp-bus``
    (TCPBusAgent) on the SCPI simulator, and ``tpg366`` (DeviceAgent with the
    shipped ``tpg366`` device file) on that file's simulator.

    Args:
        workdir: keep the configuration and logs there (default: a temporary
            directory, removed by :meth:`LocalStack.stop`).
        sample_rate: ``acq`` rate of the SCPI and bus agents, Hz (the device
            agent polls at its file's rate).
        influxdb: ``True`` to start InfluxDB, the ``RegistryAgent``
            (``registry``) and the ``InfluxDBAgent`` (``influxdb-publisher``,
            database :data:`DATABASE`); ``False`` not to; ``None`` to start
            them when ``influxd`` is on PATH.
        influxdb_port: HTTP port of InfluxDB (default: a free one).
        registry_wait_time: the registry's ``--wait-time``, seconds.
        agent_args: extra site-file arguments per instance id, e.g.
            ``{"scpi-psu": ["--timeout", "1"]}``.

    Returns:
        LocalStack: the running components.

    Raises:
        FileNotFoundError: *influxdb* is ``True`` but ``influxd`` is not installed.
    """
    if influxdb is None:
        influxdb = influxd_path() is not None
    elif influxdb and influxd_path() is None:
        raise FileNotFoundError("influxdb=True but 'influxd' (InfluxDB 1.x) is not on PATH; "
                                "on Debian: apt-get install influxdb")
    extra = dict(agent_args or {})
    simulator = ScpiSimulator(port=0).start()
    sim_address = f"127.0.0.1:{simulator.port}"
    try:
        stack = Stack(workdir=workdir, keep_workdir=workdir is not None)
    except BaseException:
        simulator.stop()
        raise
    local = LocalStack(stack, simulator)
    try:
        local.device_simulator = DeviceSimulator(DEVICE_FILE).start()
    except BaseException:
        local.stop()
        raise
    try:
        order = []
        if influxdb:
            influx = local.influxdb = InfluxDB(stack.workdir / "influxdb", http_port=influxdb_port,
                                               databases=[DATABASE])
            influx.start()
            stack.add_instance("InfluxDBAgent", "influxdb-publisher", [
                "--initial-state", "record", *influx.publisher_args, "--protocol", "line",
                *extra.get("influxdb-publisher", [])])
            stack.add_instance("RegistryAgent", "registry", [
                "--wait-time", str(registry_wait_time), *extra.get("registry", [])])
            order += ["influxdb-publisher", "registry"]
        stack.add_instance("ScpiInstrumentAgent", "scpi-psu", [
            "--address", sim_address, "--mode", "acq", "--sample-rate", str(sample_rate),
            *extra.get("scpi-psu", [])])
        stack.add_instance("TCPBusAgent", "tcp-bus", [
            "--address", sim_address, "--mode", "acq", "--sample-rate", str(sample_rate),
            "--acq-query", "output_voltage=MEAS:VOLT?", "idn=*IDN?", *extra.get("tcp-bus", [])])
        stack.add_instance("DeviceAgent", "tpg366", [
            "--device-file", DEVICE_FILE, "--address", f"127.0.0.1:{local.device_simulator.port}",
            "--mode", "acq", *extra.get("tpg366", [])])
        order += ["scpi-psu", "tcp-bus", "tpg366"]
        stack.start()
        for instance_id in order:          # start them all, then wait for each
            stack.start_agent(instance_id, wait=False)
        for instance_id in order:
            stack.agents[instance_id].wait_ready(timeout=60)
    except BaseException:
        local.stop()
        raise
    return local


def influxdb_help(influx, address_root="observatory"):
    """Lines telling where the feeds go and how to look at them (InfluxQL, Grafana)."""
    example = f'SELECT last("voltage") FROM "{address_root}.scpi-psu"'
    curl = (f"curl -sG {influx.url}/query --data-urlencode db={DATABASE} "
            f"--data-urlencode {shlex.quote('q=' + example)}")
    return [
        f"InfluxDB: {influx.url}   database: {DATABASE}   (written by the influxdb-publisher agent; "
        f"data and log in {influx.workdir})",
        f"  measurements are agent addresses ({address_root}.scpi-psu, ...), tag 'feed' the feed name",
        f"  example query: {curl}",
        f"  Grafana: add an InfluxDB data source (query language InfluxQL, uid ocs-influxdb) with URL {influx.url}",
        f"  and database {DATABASE}, then import deploy/grafana/dashboards/*.json (see docs/grafana.rst)",
    ]


def wait_for_feeds(influx, timeout=20.0, address_root="observatory"):
    """Poll InfluxDB until the SCPI agent's feed has landed.

    Returns the latest ``(time, voltage)``, or ``None`` if nothing came within *timeout* seconds.
    """
    query = f'SELECT last("voltage") FROM "{address_root}.scpi-psu" WHERE "feed" = \'scpi\''
    deadline = time.monotonic() + timeout
    while True:
        try:
            series = influx.query(query, db=DATABASE)
        except (OSError, ValueError) as exc:
            log.debug("InfluxDB not answering yet: %s", exc)
            series = []
        if series and series[0].get("values"):
            return tuple(series[0]["values"][-1][:2])
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def demo_tasks(stack, out):
    """Trigger a few tasks the way an operator's OCSClient script would."""
    scpi = stack.client("scpi-psu")
    bus = stack.client("tcp-bus")
    reply = scpi.init()
    out(f"scpi-psu init          -> {reply.session['data']['response']['idn']}")
    for command in ("VOLT 2.5", "CURR 0.5", "OUTP ON"):
        reply = scpi.command(command=command)
        out(f"scpi-psu command {command!r:12} -> {reply.session['success'] and 'ok' or reply.session['messages']}")
    reply = scpi.command(command="VOLT 99")
    reason = [text for _, text in reply.session["messages"] if "rejected" in text]
    out(f"scpi-psu command 'VOLT 99'    -> refused: {reason[0] if reason else reply.session['messages']}")
    reply = bus.wrnrd_until(data="MEAS:CURR?\n", eot="\\n")
    out(f"tcp-bus wrnrd_until MEAS:CURR? -> {reply.session['data']['response']}")
    return scpi, bus


def watch(scpi, bus, out, stop, period=1.0, device=None):
    """Print the acq processes' latest values until ``stop`` is set."""
    out("live values (Ctrl-C to stop):")
    while not stop.is_set():
        s = scpi.acq.status().session
        b = bus.acq.status().session
        sv = (s.get("data") or {}).get("values", {})
        bv = (b.get("data") or {}).get("values", {})
        tpg = ""
        if device is not None:
            d = device.acq.status().session
            dv = (d.get("data") or {}).get("values", d.get("data") or {})
            p1 = dv.get("pressure_ch1")
            p1 = f"{p1:.4e}" if isinstance(p1, (int, float)) else "?"
            tpg = f"  tpg366 p1={p1} mbar degraded={d.get('degraded', False)}"
        stats = (s.get("data") or {}).get("stats", {})
        latency = stats.get("latency_last")
        out(f"{time.strftime('%H:%M:%S')}  V={sv.get('voltage', float('nan')):8.4f}  "
            f"I={sv.get('current', float('nan')):7.4f}  T={sv.get('temperature', float('nan')):7.3f}  "
            f"bus V={bv.get('output_voltage', float('nan')):8.4f}  "
            f"degraded={s.get('degraded', False)}/{b.get('degraded', False)}  "
            f"latency={latency * 1000 if latency else 0:.2f} ms{tpg}")
        stop.wait(period)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep configs and logs here (default: a temporary directory)")
    parser.add_argument("--sample-rate", type=float, default=2.0, help="acq rate of the SCPI and bus agents, Hz")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--no-influxdb", action="store_true",
                        help="do not start InfluxDB, the registry and the publisher even if influxd is installed")
    parser.add_argument("--influxdb-port", type=int, default=None,
                        help="HTTP port of InfluxDB on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def out(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    with_influx = not args.no_influxdb and influxd_path() is not None
    if with_influx:
        out("starting InfluxDB, crossbar, the SCPI and TPG 366 simulators, RegistryAgent, InfluxDBAgent, "
            "ScpiInstrumentAgent, TCPBusAgent and DeviceAgent (tpg366) ...")
    else:
        reason = "--no-influxdb given" if args.no_influxdb else "influxd (InfluxDB 1.x) is not installed"
        out(f"without InfluxDB ({reason}): the feeds are not stored, the Grafana dashboards stay empty")
        out("starting crossbar, the SCPI and TPG 366 simulators, ScpiInstrumentAgent, TCPBusAgent "
            "and DeviceAgent (tpg366) ...")
    local = build_stack(args.workdir, args.sample_rate, influxdb=with_influx, influxdb_port=args.influxdb_port)
    stack, simulator = local.stack, local.simulator
    try:
        out(f"crossbar: {stack.crossbar.url}   SCPI simulator: 127.0.0.1:{simulator.port}   "
            f"TPG 366 simulator: 127.0.0.1:{local.device_simulator.port}")
        out(f"site file: {stack.site_file}   agent logs: {stack.workdir / 'logs'}")
        out(f"try: ocs-client-cli --site-file {stack.site_file} --site-host {stack.site_host} ...")
        if local.influxdb is not None:
            for line in influxdb_help(local.influxdb, stack.address_root):
                out(line)
        scpi, bus = demo_tasks(stack, out)
        if local.influxdb is not None:
            first = wait_for_feeds(local.influxdb, address_root=stack.address_root)
            if first is None:
                out("InfluxDB has no scpi feed data yet; see logs/influxdb-publisher.log")
            else:
                out(f"InfluxDB is receiving the feeds: last voltage {first[1]} at {first[0]}")
        if args.duration:
            timer = threading.Timer(args.duration, stop.set)
            timer.daemon = True
            timer.start()
        watch(scpi, bus, out, stop, device=stack.client("tpg366"))
    except KeyboardInterrupt:
        pass
    finally:
        out("stopping ...")
        local.stop()
        out("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
