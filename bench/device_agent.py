"""Device-file agent benchmark: DeviceAgent's ``acq`` against TCPBusAgent's, and
what parsing a reply costs next to a loopback transaction.

1. The highest ``acq`` rate with no missed cycle, for the same ten queries
   through the two agents, side by side in one run on one crossbar router
   (:class:`socs_tcp_stack.stack.Stack`, agents started with ``ocs-agent-cli``):

   ``TCPBusAgent`` (the baseline)
       ``--acq-query f0=Q0 ... f9=Q9``: each reply published as a float.
   ``DeviceAgent``
       ``--device-file`` a ten-query device file written for this run
       (``q0`` .. ``q9``: request ``Qi``, one float field ``fi``, all ten
       polled into feed ``bench``): the same bytes on the wire, plus the
       file's argument checks, transaction steps and typed parsing.

   Both poll the echo device of ``bench/agents.py`` (:class:`EmulatorProcess`:
   a :class:`socs_tcp.testing.DeviceEmulator` in its own process, answering
   ``Qi`` with ``i + 0.5``).  For each rate of a ladder each agent is started
   fresh and probed (``--probe-seconds``, after ``--settle``); the order of
   the two alternates from rung to rung.  A probe passes when no cycle was
   missed, ``acq`` never went degraded and the last values are the expected
   ones.  Each agent climbs until its first failure; its best passing rate
   is then confirmed over ``--soak-seconds`` (the next lower passing rate if
   that fails).  One probe per agent at ``--flat-out-rate`` (far too fast to
   keep up) measures the capacity: every cycle is late there, and the poller
   then pauses 1 ms before the next.  Reported: each agent's best rate and
   capacity, and DeviceAgent / TCPBusAgent of both (target >= 0.9).

2. The agents' own cost per ``acq`` cycle, without OCS (less sensitive to
   the machine's load than part 1): the same ten queries from the same echo
   device, through ``TCPBusAgent``'s poll and through ``DeviceAgent``'s
   (each on its own link, both driven by the shared
   :class:`~socs_tcp_agents.common.Poller` with a stand-in for the OCS agent
   whose publish does nothing, and no pause), in alternating rounds of
   ``--cycle-seconds``.  Reported: cycles per second of each and their
   ratio, DeviceAgent / TCPBusAgent.

3. Parse cost: for each device file measured (the ten-query file, and the
   shipped ``tpg366`` and ``cryomech_cpa``), a :class:`socs_tcp.devices.Device`
   in this process talks to the file's simulator
   (:class:`socs_tcp.devices.simulator.DeviceSimulator`) in another process on
   loopback.  Timed: ``device.call(op)`` (the whole transaction: checks,
   request, every step of the handshake, parse) over ``--calls`` calls, and
   ``device.parse(op, reply)`` of the captured reply bytes over ten times as
   many.  Reported: the medians of blocks of calls, and parse / transaction
   (target < 0.10).

Only loopback (127.0.0.1) is used; every process started here is stopped
before the script exits, even when it fails.

Usage::

    python bench/device_agent.py [--probe-seconds S] [--soak-seconds S] [--json out.json]
    python bench/device_agent.py --no-ocs        # parts 2 and 3 only, about a minute
    python bench/device_agent.py --parse-only
"""

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agents import (
    LADDER,
    EmulatorProcess,
    _Session,
    _StandInAgent,
    acq_session,
    agent_args,
    machine_info,
    nice_between,
    rate_id,
    wait_for,
)
from socs_tcp.devices import Device, load
from socs_tcp_stack.stack import Stack

HOST = "127.0.0.1"
N_FIELDS = 10
RATE_TARGET = 0.9        # DeviceAgent keeps at least this share of TCPBusAgent's highest no-miss rate
PARSE_TARGET = 0.10      # parsing costs less than this share of a loopback transaction
AGENT_START_STOP = 10.0  # rough seconds to start and stop one agent (for the time budget)


def bench_device_file(n_fields=N_FIELDS):
    """The text of the ten-query device file (``q{i}``: ``Q{i}`` -> float ``f{i}``)."""
    lines = ["device: bench10", "title: Benchmark echo device", "description: ten float queries for bench/device_agent.py",
             "connection:", "  port: 5000", '  out_terminator: "\\n"', '  in_terminator: "\\n"', "  timeout: 5",
             "queries:"]
    for i in range(n_fields):
        lines.append(f"  q{i}: {{request: Q{i}, reply: {{fields: {{f{i}: {{type: float}}}}}}}}")
    lines += ["polling:", "  feed: bench", "  block: bench", "  rate: 1", "  items:"]
    lines += [f"    - query: q{i}" for i in range(n_fields)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------
# part 1: acq rate of both agents
def instance_args(kind, port, rate, device_file):
    if kind == "tcp_bus":
        return "TCPBusAgent", agent_args(port, rate, [f"f{i}=Q{i}" for i in range(N_FIELDS)])
    return "DeviceAgent", ["--device-file", device_file, "--address", f"{HOST}:{port}", "--timeout", "5",
                           "--sampling-frequency", rate, "--mode", "idle"]


def run_acq(stack, port, kind, rate, seconds, settle, tag, device_file, log):
    """Run acq of a fresh *kind* agent at *rate* for *seconds*; returns a result dict."""
    iid = f"bench-{kind.replace('_', '')}-{tag}-{rate_id(rate)}"
    agent_class, args = instance_args(kind, port, rate, device_file)
    expected = {f"f{i}": i + 0.5 for i in range(N_FIELDS)}
    stack.add_instance(agent_class, iid, args)
    stack.start_agent(iid, timeout=60)
    client = stack.client(iid)
    result = {"agent": kind, "rate_hz": rate, "seconds": seconds, "kind": tag}
    try:
        reply = client.acq.start()
        if reply.status != 0:
            raise RuntimeError(f"{iid}: acq.start failed: {reply}")
        wait_for(lambda: (acq_session(client).get("data") or {}).get("values"), 20, f"{iid}: the first acq values")
        time.sleep(settle)
        first = acq_session(client)
        time.sleep(seconds)
        last = acq_session(client)
        d0, d1 = first["data"], last["data"]
        cycles = d1["cycles"] - d0["cycles"]
        missed = d1["missed_cycles"] - d0["missed_cycles"]
        span = d1["timestamp"] - d0["timestamp"]
        achieved = cycles / span if span > 0 else 0.0
        values_ok = d1.get("values") == expected
        degraded = bool(first.get("degraded") or last.get("degraded") or d1.get("degraded"))
        result.update({"cycles": cycles, "missed_cycles": missed, "achieved_hz": achieved, "values_ok": values_ok,
                       "degraded": degraded, "passed": missed == 0 and cycles > 0 and values_ok and not degraded,
                       "loadavg_1min": os.getloadavg()[0]})
        log(f"acq {kind:8s} {tag:8s} {rate:>6g} Hz for {seconds:>4.0f} s: {cycles} cycles ({achieved:.1f}/s), "
            f"{missed} missed -> {'pass' if result['passed'] else 'FAIL'}")
        return result
    finally:
        try:
            client.acq.stop()
            client.acq.wait(timeout=10)
        except Exception as exc:  # the agent is stopped below anyway
            log(f"acq stop on {iid} failed: {exc}")
        stack.agents[iid].stop()


def compare_rates(stack, port, device_file, args, deadline, log):
    """Ladder both agents side by side; then bisect, confirm and measure each one's capacity."""
    kinds = ["tcp_bus", "device"]
    probes = {k: [] for k in kinds}
    best = {k: None for k in kinds}
    first_fail = {k: None for k in kinds}
    probe_cost = args.probe_seconds + args.settle + AGENT_START_STOP
    soak_cost = args.soak_seconds + args.settle + AGENT_START_STOP
    reserve = 2 * (soak_cost + probe_cost)

    def left():
        return deadline - time.monotonic()

    for step, rate in enumerate(LADDER):
        active = [k for k in kinds if first_fail[k] is None]
        if not active:
            break
        if left() < reserve + len(active) * probe_cost:
            log("time budget: stopping the ladder")
            break
        for kind in (active if step % 2 == 0 else active[::-1]):
            res = run_acq(stack, port, kind, rate, args.probe_seconds, args.settle, "probe", device_file, log)
            probes[kind].append(res)
            if res["passed"]:
                best[kind] = rate
            else:
                first_fail[kind] = rate
    for kind in kinds:
        low, high = best[kind], first_fail[kind]
        for _ in range(args.bisect):
            if low is None or high is None or left() < reserve:
                break
            mid = nice_between(low, high)
            if mid is None or high / low < 1.15:
                break
            res = run_acq(stack, port, kind, mid, args.probe_seconds, args.settle, "probe", device_file, log)
            probes[kind].append(res)
            low, high = (mid, high) if res["passed"] else (low, mid)
    flat = {}
    for kind in kinds:
        if args.flat_out_rate > 0 and left() >= soak_cost + probe_cost:
            res = run_acq(stack, port, kind, args.flat_out_rate, args.probe_seconds, args.settle, "flat-out",
                          device_file, log)
            res["cycle_ms_estimate"] = (1.0 / res["achieved_hz"] - 0.001) * 1e3 if res["achieved_hz"] > 0 else None
            flat[kind] = res
    confirms = {k: [] for k in kinds}
    confirmed = {k: None for k in kinds}
    for kind in kinds:
        for rate in sorted({p["rate_hz"] for p in probes[kind] if p["passed"]}, reverse=True):
            if left() < soak_cost and confirms[kind]:
                log(f"time budget: no further confirmation for {kind}")
                break
            res = run_acq(stack, port, kind, rate, args.soak_seconds, args.settle, "confirm", device_file, log)
            confirms[kind].append(res)
            if res["passed"]:
                confirmed[kind] = rate
                break
    out = {"probes": probes, "confirms": confirms, "flat_out": flat, "best_rate_hz": confirmed}
    base, dev = confirmed["tcp_bus"], confirmed["device"]
    out["rate_ratio"] = dev / base if base and dev else None
    fb, fd = flat.get("tcp_bus"), flat.get("device")
    out["capacity_ratio"] = fd["achieved_hz"] / fb["achieved_hz"] if fb and fd and fb["achieved_hz"] else None
    return out


# ----------------------------------------------------------------------
# part 2: each agent's cost per acq cycle, without OCS
def measure_cycle_cost(port, device_file, seconds=0.5, rounds=12, log=print):
    """TCPBusAgent's and DeviceAgent's acq cycles through the Poller, alternating rounds; cycles per second."""
    import threading

    import socs_tcp_agents.common as common
    from socs_tcp_agents.device.agent import DeviceAgent
    from socs_tcp_agents.tcp_bus.agent import TCPBusAgent

    from socs_tcp import TCPInterface

    bus_link = TCPInterface(HOST, port, 5.0, drain_before_query=True, close_on_timeout=True)
    bus = TCPBusAgent(_StandInAgent(), bus_link, b"\n", b"\n", [(f"f{i}", f"Q{i}") for i in range(N_FIELDS)],
                      sample_rate=1e6)
    device = Device.from_file(load(device_file), f"{HOST}:{port}", timeout=5.0)
    dev = DeviceAgent(_StandInAgent(), device, sample_rate=1e6)
    rates = {"tcp_bus": [], "device": []}
    pause = common.BEHIND_PAUSE
    common.BEHIND_PAUSE = 0.0          # measure the code, not the deliberate pause
    try:
        for i in range(rounds):
            for kind, agent in ((("tcp_bus", bus), ("device", dev)) if i % 2 == 0 else (("device", dev), ("tcp_bus", bus))):
                session = _Session()
                thread = threading.Thread(target=agent.poller.run, args=(session, 1e6), daemon=True)
                thread.start()
                time.sleep(0.1)                # past the start of the run
                c0, t0 = agent.poller.cycles, time.perf_counter()
                time.sleep(seconds)
                c1, t1 = agent.poller.cycles, time.perf_counter()
                agent.poller.stop()
                thread.join(10)
                if session.degraded:
                    raise RuntimeError(f"{kind}: acq went degraded during the measurement: {session.data}")
                rates[kind].append((c1 - c0) / (t1 - t0))
    finally:
        common.BEHIND_PAUSE = pause
        bus_link.close()
        device.close()
    b, d = statistics.median(rates["tcp_bus"]), statistics.median(rates["device"])
    result = {"tcp_bus_hz": b, "device_hz": d, "ratio": d / b, "extra_us_per_cycle": (1 / d - 1 / b) * 1e6,
              "rounds": rates, "seconds": seconds, "passed": d / b >= RATE_TARGET}
    log(f"cycle cost: TCPBusAgent {b:.0f} cycles/s, DeviceAgent {d:.0f} cycles/s ({result['ratio']:.2f}x, "
        f"{result['extra_us_per_cycle']:.0f} us more per cycle)")
    return result


# ----------------------------------------------------------------------
# part 3: parse cost against a loopback transaction
SIMULATOR_CODE = r"""
import sys
from socs_tcp.devices.simulator import DeviceSimulator
sim = DeviceSimulator(sys.argv[1], port=0, seed=1, noise=False).start()
print(sim.port, flush=True)
try:
    sys.stdin.read()          # until the parent closes our stdin
finally:
    sim.stop()
"""


class SimulatorProcess:
    """The simulator of a device file in its own process (so it shares no GIL with the client)."""

    def __init__(self, device_file, timeout=30.0):
        self._proc = subprocess.Popen([sys.executable, "-c", SIMULATOR_CODE, str(device_file)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, start_new_session=True, bufsize=0)
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else b""
        try:
            self.port = int(line)
        except ValueError:
            self.close()
            raise RuntimeError(f"simulator of {device_file} did not report its port (got {line!r})") from None

    def close(self):
        proc = self._proc
        if proc.poll() is None:
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()                      # this one process, by its own handle
                proc.wait(5)
        proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _median_per_call(func, calls, blocks):
    """Median over *blocks* of the mean time of one call within a block of ``calls // blocks``."""
    per_block = max(1, calls // blocks)
    times = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            func()
        times.append((time.perf_counter() - t0) / per_block)
    return statistics.median(times)


def measure_parse(device_file, op_name, calls, log):
    """Transaction and parse time of *op_name* of *device_file*; returns a result dict."""
    spec = load(device_file)
    with SimulatorProcess(device_file) as sim:
        device = Device.from_file(spec, f"{HOST}:{sim.port}", timeout=5)
        try:
            values, exchanges = device.transact(op_name)
            reply = exchanges[-1][1]
            if device.parse(op_name, reply) != values:
                raise RuntimeError(f"{spec.name}.{op_name}: parse of the captured reply {reply!r} gives "
                                   f"{device.parse(op_name, reply)!r}, the call gave {values!r}")
            for _ in range(max(10, calls // 10)):      # warm-up
                device.call(op_name)
            transaction = _median_per_call(lambda: device.call(op_name), calls, 10)
            parse = _median_per_call(lambda: device.parse(op_name, reply), calls * 10, 10)
        finally:
            device.disconnect()
    result = {"device": spec.name, "operation": op_name, "steps": len(exchanges), "reply_bytes": len(reply),
              "transaction_us": transaction * 1e6, "parse_us": parse * 1e6, "ratio": parse / transaction,
              "passed": parse / transaction < PARSE_TARGET}
    log(f"parse {spec.name}.{op_name}: transaction {transaction * 1e6:.1f} us ({len(exchanges)} exchanges), "
        f"parse {parse * 1e6:.2f} us -> {parse / transaction:.1%}")
    return result


# ----------------------------------------------------------------------
def print_report(report):
    info = report["machine"]
    print(f"\nmachine: {info['nproc']} CPUs, Python {info['python']}, {info['platform']}")
    print(f"load average (1 min) at start {info['loadavg_at_start'][0]:.2f}, at end {info['loadavg_at_end'][0]:.2f}")
    acq = report.get("acq")
    if acq:
        print(f"\nacq with {N_FIELDS} query fields, DeviceAgent vs TCPBusAgent")
        print(f"{'agent':<9}{'run':<10}{'rate Hz':>9}{'secs':>6}{'cycles':>9}{'achieved/s':>12}{'missed':>8}"
              f"{'load':>6}  result")
        for kind in ("tcp_bus", "device"):
            runs = acq["probes"][kind] + ([acq["flat_out"][kind]] if kind in acq["flat_out"] else []) \
                + acq["confirms"][kind]
            for r in runs:
                print(f"{kind:<9}{r['kind']:<10}{r['rate_hz']:>9g}{r['seconds']:>6.0f}{r['cycles']:>9}"
                      f"{r['achieved_hz']:>12.1f}{r['missed_cycles']:>8}{r['loadavg_1min']:>6.2f}  "
                      f"{'pass' if r['passed'] else 'FAIL'}")
        best = acq["best_rate_hz"]
        print(f"highest no-miss rate: TCPBusAgent {best['tcp_bus']} Hz, DeviceAgent {best['device']} Hz")
        if acq["rate_ratio"] is not None:
            print(f"DeviceAgent / TCPBusAgent: {acq['rate_ratio']:.2f} (target >= {RATE_TARGET}: "
                  f"{'MET' if acq['rate_ratio'] >= RATE_TARGET else 'NOT MET'})")
        if acq["capacity_ratio"] is not None:
            flat = acq["flat_out"]
            print(f"capacity (flat out): TCPBusAgent {flat['tcp_bus']['achieved_hz']:.0f} cycles/s, DeviceAgent "
                  f"{flat['device']['achieved_hz']:.0f} cycles/s, ratio {acq['capacity_ratio']:.2f}")
    cyc = report.get("cycle")
    if cyc:
        print(f"\nagent code per acq cycle, without OCS ({len(cyc['rounds']['device'])} alternating rounds of "
              f"{cyc['seconds']:g} s): TCPBusAgent {cyc['tcp_bus_hz']:.0f} cycles/s, DeviceAgent "
              f"{cyc['device_hz']:.0f} cycles/s = {cyc['ratio']:.2f}x (target >= {RATE_TARGET}: "
              f"{'MET' if cyc['passed'] else 'NOT MET'}), {cyc['extra_us_per_cycle']:.0f} us more per cycle")
    print("\nparse cost against a loopback transaction (Device in this process, simulator in another)")
    print(f"{'device.operation':<28}{'exchanges':>10}{'bytes':>7}{'transaction us':>16}{'parse us':>10}{'ratio':>8}  "
          f"target < {PARSE_TARGET:.0%}")
    for r in report["parse"]:
        print(f"{r['device'] + '.' + r['operation']:<28}{r['steps']:>10}{r['reply_bytes']:>7}"
              f"{r['transaction_us']:>16.1f}{r['parse_us']:>10.2f}{r['ratio']:>8.1%}  "
              f"{'MET' if r['passed'] else 'NOT MET'}")
    print(f"total run time {report['runtime_s']:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probe-seconds", type=float, default=8.0, help="length of each acq probe (default 8)")
    parser.add_argument("--soak-seconds", type=float, default=30.0, help="length of each confirmation (default 30)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of acq before measuring (default 1)")
    parser.add_argument("--bisect", type=int, default=1, help="extra probes between each agent's best pass and "
                        "first failure (default 1)")
    parser.add_argument("--flat-out-rate", type=float, default=10000.0,
                        help="a rate far too high to keep up with, probed once per agent (default 10000; 0 skips)")
    parser.add_argument("--budget", type=float, default=900.0, help="seconds the acq part should stay within")
    parser.add_argument("--calls", type=int, default=2000, help="timed transactions per device file (default 2000)")
    parser.add_argument("--cycle-seconds", type=float, default=0.5, help="length of each round of part 2 (default 0.5)")
    parser.add_argument("--cycle-rounds", type=int, default=12, help="rounds of each agent in part 2 (default 12)")
    parser.add_argument("--parse-only", action="store_true", help="run only the parse-cost part")
    parser.add_argument("--no-ocs", action="store_true", help="skip part 1 (the agents under OCS)")
    parser.add_argument("--loglevel", default="warn", help="LOGLEVEL of crossbar and the agents (default warn)")
    parser.add_argument("--json", metavar="PATH", help="write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.probe_seconds <= 0 or args.soak_seconds <= 0 or args.calls < 10:
        parser.error("--probe-seconds and --soak-seconds must be positive, --calls at least 10")

    started = time.monotonic()

    def log(msg):
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", flush=True)

    report = {"machine": machine_info(), "settings": {k: v for k, v in vars(args).items() if k != "json"}}
    with tempfile.TemporaryDirectory(prefix="bench-device-") as tmp:
        device_file = Path(tmp) / "bench10.yaml"
        device_file.write_text(bench_device_file())
        load(device_file)                              # a bad file fails here, before anything starts
        report["parse"] = [measure_parse(device_file, "q0", args.calls, log),
                           measure_parse("tpg366", "pressures", args.calls, log),
                           measure_parse("cryomech_cpa", "status", args.calls, log)]
        if not args.parse_only:
            with EmulatorProcess(N_FIELDS) as device:
                log(f"echo device: pid {device.pid}, port {device.port}")
                report["cycle"] = measure_cycle_cost(device.port, device_file, args.cycle_seconds, args.cycle_rounds,
                                                     log)
        if not args.parse_only and not args.no_ocs:
            with EmulatorProcess(N_FIELDS) as device:
                log(f"echo device: pid {device.pid}, port {device.port}")
                stack = Stack(loglevel=args.loglevel)
                try:
                    stack.start()
                    report["acq"] = compare_rates(stack, device.port, str(device_file), args,
                                                  time.monotonic() + args.budget, log)
                finally:
                    stack.stop()
    report["runtime_s"] = time.monotonic() - started
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    print_report(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
