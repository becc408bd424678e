"""Many-links benchmark: one process driving 100 simulated devices at 1 Hz.

What it costs to keep many links busy at a slow rate, as an agent that
polls many small devices would: CPU and resident memory of one Python
process holding ``--links`` :class:`socs_tcp.TCPInterface` instances (100 by
default), each against its own emulated device on its own loopback port,
each sending one query (``Q0``, answered ``0.5``) per period (1 Hz by
default).

No agent drives 100 links, so the driver is a plain Python process (started
with ``python bench/links.py --worker``, so nothing else shares it), in one
of two shapes:

``threads``
    one thread per link, each on its own schedule (the start times spread
    evenly over one period), as an agent with one ``acq`` loop per link
    would run;
``loop``
    one thread that queries every link in turn once per period.

The worker measures three phases one after the other, each over a window of
wall-clock time, from its own ``getrusage`` (user + system CPU) and
``/proc/self/status`` (``VmRSS``):

``idle``
    the interpreter with ``socs_tcp`` imported, doing nothing: the baseline;
``connected``
    every link connected (and checked with one query), nothing sent;
``polling``
    the queries running, after one period of settling.

The per-link cost is (polling - idle) / links.  The table also reports the
query latency (median, p99), queries made against those due, late cycles
(a query that started more than a period after it was due) and errors.

The devices are :class:`socs_tcp.testing.DeviceEmulator` instances, all in
one separate process (``agents.EmulatorProcess``).  Only loopback is used;
both processes are stopped before the script exits.

Usage::

    python bench/links.py [--links N] [--rate HZ] [--seconds S] [--idle-seconds S]
                          [--mode threads|loop|both] [--json out.json]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

from benchutil import HOST, Row, cpu_seconds, describe, machine_info, process_cpu_seconds, rss_bytes

MODES = ("threads", "loop")
MIB = 1 << 20


# ----------------------------------------------------------------------
# the worker (runs in its own process)
def _window(seconds):
    """CPU % and RSS of this process over ``seconds`` of doing nothing in this thread."""
    c0, t0 = cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(), time.monotonic()
    return {"cpu_percent": 100.0 * (c1 - c0) / (t1 - t0), "rss_bytes": rss_bytes(), "seconds": t1 - t0}


class _Driver:
    """Queries ``links`` at ``rate``, in threads or in one loop, recording each query."""

    def __init__(self, links, rate, mode):
        self.links, self.period, self.mode = links, 1.0 / rate, mode
        self.stop = threading.Event()
        self.record = False
        self.latencies, self.late, self.errors, self.due = [], 0, [], 0
        self._lock = threading.Lock()

    def _query(self, link, due):
        start = time.monotonic()
        t0 = time.perf_counter()
        try:
            reply = link.query("Q0")
            ok = reply == "0.5"
            error = None if ok else f"unexpected reply {reply!r}"
        except ConnectionError as e:
            error = f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - t0
        if self.record:
            with self._lock:
                self.due += 1
                if error:
                    self.errors.append(error)
                else:
                    self.latencies.append(elapsed)
                if start - due > self.period:
                    self.late += 1

    def _one_link(self, link, offset):
        due = self.t0 + offset
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            self._query(link, due)
            due += self.period

    def _all_links(self):
        due = self.t0
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            for link in self.links:
                self._query(link, due)
            due += self.period

    def start(self):
        self.t0 = time.monotonic() + 0.05
        if self.mode == "threads":
            n = len(self.links)
            self.threads = [threading.Thread(target=self._one_link, args=(link, i * self.period / n), daemon=True)
                            for i, link in enumerate(self.links)]
        else:
            self.threads = [threading.Thread(target=self._all_links, daemon=True)]
        for thread in self.threads:
            thread.start()

    def join(self):
        self.stop.set()
        for thread in self.threads:
            thread.join(self.period + 10)


def worker(ports, rate, seconds, idle_seconds, mode):
    """The measurement, in the worker process.  Returns the result dict."""
    from socs_tcp import TCPInterface

    result = {"mode": mode, "links": len(ports), "rate_hz": rate, "pid": os.getpid()}
    result["idle"] = _window(idle_seconds)
    links = [TCPInterface(HOST, port, 5.0, termination="\n") for port in ports]
    try:
        down = [link.name for link in links if not link.is_connected]
        if down:
            raise ConnectionError(f"{len(down)} of {len(links)} links could not connect, e.g. {down[0]}")
        for link in links:
            if link.query("Q0") != "0.5":
                raise RuntimeError(f"{link.name}: wrong answer to Q0")
        result["connected"] = _window(idle_seconds)
        driver = _Driver(links, rate, mode)
        driver.start()
        try:
            time.sleep(driver.period + 0.1)          # every link has run at least once
            driver.record = True
            result["polling"] = _window(seconds)
            driver.record = False
            result["threads"] = threading.active_count()
        finally:
            driver.join()
        polling = result["polling"]
        polling.update({"queries": len(driver.latencies), "due": driver.due, "late": driver.late,
                        "errors": len(driver.errors), "first_errors": driver.errors[:3],
                        "latency_ms": describe(driver.latencies, 1e3) if driver.latencies else None})
    finally:
        for link in links:
            link.close()
    return result


# ----------------------------------------------------------------------
# the parent: start the devices and a worker per mode
def check_parameters(n_links, rate, seconds, idle_seconds, modes):
    """Raise ``ValueError`` naming the first bad parameter of :func:`run`."""
    if isinstance(n_links, bool) or not isinstance(n_links, int) or not 1 <= n_links <= 2000:
        raise ValueError(f"links must be an int in 1..2000, got {n_links!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1000:
        raise ValueError(f"rate must be a number of Hz in (0, 1000], got {rate!r}")
    for name, value in (("seconds", seconds), ("idle_seconds", idle_seconds)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise ValueError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")
    if not modes or any(mode not in MODES for mode in modes):
        raise ValueError(f"modes must be a non-empty list of {MODES}, got {modes!r}")


def run_worker(ports, rate, seconds, idle_seconds, mode, timeout=None):
    """Run :func:`worker` in a fresh interpreter and return its result.

    Raises:
        RuntimeError: the worker failed; the message holds its error output.
    """
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--mode", mode, "--rate", str(rate),
           "--seconds", str(seconds), "--idle-seconds", str(idle_seconds), "--ports", ",".join(map(str, ports))]
    timeout = timeout or 2 * idle_seconds + seconds + 2 / rate + 60
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"links worker ({mode}) did not finish within {timeout:.0f} s: {err.decode()[-2000:]}") \
            from None
    if proc.returncode != 0:
        raise RuntimeError(f"links worker ({mode}) failed with exit code {proc.returncode}: {err.decode()[-2000:]}")
    return json.loads(out)


def run(n_links=100, rate=1.0, seconds=30.0, idle_seconds=10.0, modes=MODES, log=print):
    """Start ``n_links`` emulated devices and measure one worker per mode.

    Returns:
        dict: ``parameters``, ``modes`` (one :func:`worker` result per mode,
        with ``per_link`` costs) and ``emulator_cpu_percent``.
    """
    check_parameters(n_links, rate, seconds, idle_seconds, modes)
    # imported here, so the worker process (which imports this module) stays lean
    from agents import EmulatorProcess

    report = {"benchmark": f"one process driving {n_links} links at {rate:g} Hz",
              "parameters": {"links": n_links, "rate_hz": rate, "seconds": seconds, "idle_seconds": idle_seconds},
              "modes": {}}
    with EmulatorProcess(n_fields=1, count=n_links) as devices:
        log(f"{n_links} emulated devices in process {devices.pid}")
        for mode in modes:
            e0, t0 = process_cpu_seconds(devices.pid), time.monotonic()
            result = run_worker(devices.ports, rate, seconds, idle_seconds, mode)
            e1, t1 = process_cpu_seconds(devices.pid), time.monotonic()
            idle, connected, polling = result["idle"], result["connected"], result["polling"]
            result["per_link"] = {
                "cpu_percent": (polling["cpu_percent"] - idle["cpu_percent"]) / n_links,
                "rss_bytes_polling": (polling["rss_bytes"] - idle["rss_bytes"]) / n_links,
                "rss_bytes_connected": (connected["rss_bytes"] - idle["rss_bytes"]) / n_links,
            }
            if e0 is not None and e1 is not None:
                result["emulator_cpu_percent_whole_run"] = 100.0 * (e1 - e0) / (t1 - t0)
            report["modes"][mode] = result
            log(f"  {mode}: idle {idle['cpu_percent']:.2f} % CPU, {idle['rss_bytes'] / MIB:.1f} MiB; "
                f"polling {polling['cpu_percent']:.2f} % CPU, {polling['rss_bytes'] / MIB:.1f} MiB, "
                f"{polling['queries']}/{polling['due']} queries, {polling['late']} late, {polling['errors']} errors")
    return report


def summary_rows(report):
    """The suite's table rows for a :func:`run` report."""
    part = "many links"
    p = report["parameters"]
    rows = []
    first = next(iter(report["modes"].values()))
    idle = first["idle"]
    rows.append(Row(part, "idle process (socs_tcp imported)", f"{idle['cpu_percent']:.2f} % CPU",
                    f"RSS {idle['rss_bytes'] / MIB:.1f} MiB", "baseline"))
    conn = first["connected"]
    rows.append(Row(part, f"{p['links']} links connected, no traffic", f"{conn['cpu_percent']:.2f} % CPU",
                    f"RSS {conn['rss_bytes'] / MIB:.1f} MiB "
                    f"(+{first['per_link']['rss_bytes_connected'] / 1024:.0f} KiB per link)"))
    for mode, result in report["modes"].items():
        pol, per = result["polling"], result["per_link"]
        shape = "a thread per link" if mode == "threads" else "one polling loop"
        rows.append(Row(part, f"{p['links']} links at {p['rate_hz']:g} Hz, {shape}", f"{pol['cpu_percent']:.2f} % CPU",
                        f"RSS {pol['rss_bytes'] / MIB:.1f} MiB; per link {per['cpu_percent']:.3f} % CPU, "
                        f"{per['rss_bytes_polling'] / 1024:.0f} KiB; {pol['queries']}/{pol['due']} answered, "
                        f"{pol['late']} late"))
    return rows


def print_report(report):
    print()
    p = report["parameters"]
    print(f"{p['links']} links at {p['rate_hz']:g} Hz, windows: idle/connected {p['idle_seconds']:g} s, "
          f"polling {p['seconds']:g} s")
    print(f"{'mode':<9}{'phase':<11}{'CPU %':>8}{'RSS MiB':>9}{'queries':>9}{'late':>6}{'errors':>8}"
          f"{'median ms':>11}{'p99 ms':>8}")
    for mode, result in report["modes"].items():
        for phase in ("idle", "connected", "polling"):
            r = result[phase]
            extra = ""
            if phase == "polling":
                lat = r["latency_ms"] or {"median": float("nan"), "p99": float("nan")}
                extra = f"{r['queries']:>9}{r['late']:>6}{r['errors']:>8}{lat['median']:>11.2f}{lat['p99']:>8.2f}"
            print(f"{mode:<9}{phase:<11}{r['cpu_percent']:>8.2f}{r['rss_bytes'] / MIB:>9.1f}{extra}")
        per = result["per_link"]
        print(f"{mode:<9}{'per link':<11}{per['cpu_percent']:>8.3f}{per['rss_bytes_polling'] / 1024:>8.0f}K")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--links", type=int, default=100, help="links (and emulated devices) (100)")
    parser.add_argument("--rate", type=float, default=1.0, help="queries per second per link (1)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring window while polling (30)")
    parser.add_argument("--idle-seconds", type=float, default=10.0, help="idle and connected windows (10)")
    parser.add_argument("--mode", choices=MODES + ("both",), default="both", help="driver shape (both)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ports", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (args.mode,)
    if args.worker:
        if args.mode == "both" or not args.ports:
            parser.error("--worker needs one --mode and --ports")
        ports = [int(p) for p in args.ports.split(",")]
        json.dump(worker(ports, args.rate, args.seconds, args.idle_seconds, args.mode), sys.stdout)
        return 0
    try:
        check_parameters(args.links, args.rate, args.seconds, args.idle_seconds, modes)
    except ValueError as e:
        parser.error(str(e))
    report = run(args.links, args.rate, args.seconds, args.idle_seconds, modes, log=lambda m: print(m, flush=True))
    report["machine"] = machine_info()
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
