"""The local stack without Docker: crossbar, a simulated SCPI instrument, the
TCPBusAgent and the ScpiInstrumentAgent, and a client printing live values.

Run it with ``python -m socs_tcp.localstack`` (``./scripts/run-local`` also
installs what it needs).  Ctrl-C stops everything it started.
"""

import argparse
import logging
import signal
import sys
import threading
import time

from .simulators.scpi import ScpiSimulator
from .stack import Stack

log = logging.getLogger("socs_tcp.localstack")


def build_stack(workdir=None, sample_rate=2.0):
    """Start the simulator, crossbar and both agents.  Returns ``(stack, simulator)``."""
    simulator = ScpiSimulator(port=0).start()
    sim_address = f"127.0.0.1:{simulator.port}"
    stack = Stack(workdir=workdir, keep_workdir=workdir is not None)
    try:
        stack.add_instance("ScpiInstrumentAgent", "scpi-psu", [
            "--address", sim_address, "--mode", "acq", "--sample-rate", str(sample_rate)])
        stack.add_instance("TCPBusAgent", "tcp-bus", [
            "--address", sim_address, "--mode", "acq", "--sample-rate", str(sample_rate),
            "--acq-query", "output_voltage=MEAS:VOLT?", "idn=*IDN?"])
        stack.start()
        stack.start_agent("scpi-psu")
        stack.start_agent("tcp-bus")
    except BaseException:
        stack.stop()
        simulator.stop()
        raise
    return stack, simulator


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


def watch(scpi, bus, out, stop, period=1.0):
    """Print the acq processes' latest values until ``stop`` is set."""
    out("live values (Ctrl-C to stop):")
    while not stop.is_set():
        s = scpi.acq.status().session
        b = bus.acq.status().session
        sv = (s.get("data") or {}).get("values", {})
        bv = (b.get("data") or {}).get("values", {})
        stats = (s.get("data") or {}).get("stats", {})
        latency = stats.get("latency_last")
        out(f"{time.strftime('%H:%M:%S')}  V={sv.get('voltage', float('nan')):8.4f}  "
            f"I={sv.get('current', float('nan')):7.4f}  T={sv.get('temperature', float('nan')):7.3f}  "
            f"bus V={bv.get('output_voltage', float('nan')):8.4f}  "
            f"degraded={s.get('degraded', False)}/{b.get('degraded', False)}  "
            f"latency={latency * 1000 if latency else 0:.2f} ms")
        stop.wait(period)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="keep configs and logs here (default: a temporary directory)")
    parser.add_argument("--sample-rate", type=float, default=2.0, help="acq rate of both agents, Hz")
    parser.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def out(text):
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    out("starting crossbar, SCPI simulator, ScpiInstrumentAgent and TCPBusAgent ...")
    stack, simulator = build_stack(args.workdir, args.sample_rate)
    try:
        out(f"crossbar: {stack.crossbar.url}   simulator: 127.0.0.1:{simulator.port}")
        out(f"site file: {stack.site_file}   agent logs: {stack.workdir / 'logs'}")
        out(f"try: ocs-client-cli --site-file {stack.site_file} --site-host {stack.site_host} ...")
        scpi, bus = demo_tasks(stack, out)
        if args.duration:
            threading.Timer(args.duration, stop.set).start()
        watch(scpi, bus, out, stop)
    except KeyboardInterrupt:
        pass
    finally:
        out("stopping ...")
        stack.stop()
        simulator.stop()
        out("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
