"""The benchmark suite: every benchmark in one run, one table of figures,
ratios against the baselines, targets and PASS/MISS.

Parts (each is also a script of its own, with more options):

``roundtrip`` (``roundtrip.py``)
    small write-then-read-until-``\\n`` exchanges on loopback: a bare socket
    loop (the floor), ``socs_tcp`` and ``socs.tcp``.  Target: ``socs_tcp``
    >= 0.85x the bare socket's round trips per second.
``bulk`` (``bulk.py``)
    reading 64 MiB from a loopback server that writes as fast as it can:
    ``TCPInterface.readinto`` / ``read_bytes`` against a bare ``recv_into``
    loop into a preallocated buffer.  Target: >= 0.8x.
``tasks`` (``agents.py``, part 1)
    OCS task round trip through a real crossbar of the bus task
    ``wrnrd_until`` against the agent's no-op task.  Target: <= 1.2x (median
    and p99).
``recovery`` (``recovery.py``)
    device back up -> ``degraded`` cleared on the ``acq`` session, default
    agent settings, outages of 0.5, 2 and 5 s.  Target: <= 1 s (every outage).
``links`` (``links.py``)
    one plain Python process driving 100 emulated devices at 1 Hz (a thread
    per link, and one polling loop): CPU % and RSS against the idle process.
    No target: the figures are for sizing.

``--quick`` shortens every part (for development; its figures are rough).
``--out DIR`` writes ``results.json`` (every figure), ``summary.txt`` (the
table), ``summary.inc`` (the table as reStructuredText, included by
``docs/benchmarks.rst``) and the plots (``plots.py``; needs matplotlib, the
``bench`` extra).  The exit status is 1 if a part failed to run, 0
otherwise (a MISS is a result, not a failure).

Usage::

    python bench/suite.py [--quick] [--out docs/_static/bench] [--only PART,...] [--skip PART,...]
                          [--socs-path DIR] [--loglevel LEVEL]
"""

import argparse
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone

import bulk
import links
import recovery
import roundtrip
from benchutil import ERROR, Row, format_table, loadavg, machine_info, make_logger, rst_table

import agents
from socs_tcp_stack.stack import Stack

PARTS = ("roundtrip", "bulk", "tasks", "recovery", "links")
TITLES = {"roundtrip": "round trips", "bulk": "bulk read", "tasks": "OCS task latency", "recovery": "recovery",
          "links": "many links"}

SETTINGS = {
    "full": {
        "roundtrip": {"seconds": 5.0, "rounds": 3, "warmup": 1.0},
        "bulk": {"mib": 64, "reps": 5, "rounds": 3},
        "tasks": {"samples": 300, "warmup": 30},
        "recovery": {"lengths": (0.5, 2.0, 5.0), "repeats": 4},
        "links": {"n_links": 100, "rate": 1.0, "seconds": 30.0, "idle_seconds": 10.0},
    },
    "quick": {
        "roundtrip": {"seconds": 1.0, "rounds": 1, "warmup": 0.2},
        "bulk": {"mib": 16, "reps": 3, "rounds": 1},
        "tasks": {"samples": 50, "warmup": 10},
        "recovery": {"lengths": (0.5, 2.0, 5.0), "repeats": 1},
        "links": {"n_links": 100, "rate": 1.0, "seconds": 5.0, "idle_seconds": 2.0},
    },
}


class _SharedStack:
    """One echo device and one crossbar for the parts that need agents, started on first use."""

    def __init__(self, loglevel, log):
        self.loglevel, self.log = loglevel, log
        self.device = self.stack = None

    def get(self):
        if self.stack is None:
            self.device = agents.EmulatorProcess()
            self.stack = Stack(loglevel=self.loglevel)
            self.stack.start()
            self.log(f"crossbar ready on port {self.stack.port}, echo device on port {self.device.port}")
        return self.stack, self.device

    def close(self):
        try:
            if self.stack is not None:
                self.stack.stop()
        finally:
            if self.device is not None:
                self.device.close()


def run_part(name, settings, shared, log):
    """Run one part with ``settings``; returns ``(report, rows)``."""
    if name == "roundtrip":
        report = roundtrip.run(**settings, log=log)
        return report, roundtrip.summary_rows(report)
    if name == "bulk":
        report = bulk.run(**settings, log=log)
        return report, bulk.summary_rows(report)
    if name == "tasks":
        stack, device = shared.get()
        report = agents.measure_latency(stack, device.port, settings["samples"], settings["warmup"], log)
        return report, agents.latency_rows(report)
    if name == "recovery":
        stack, device = shared.get()
        report = recovery.measure(stack, device, settings["lengths"], settings["repeats"], log=log)
        return report, recovery.summary_rows(report)
    if name == "links":
        report = links.run(**settings, log=log)
        return report, links.summary_rows(report)
    raise ValueError(f"unknown part {name!r}; choose from {', '.join(PARTS)}")


def parse_parts(text, option):
    """``"bulk,links"`` -> ``["bulk", "links"]``; ``ValueError`` naming an unknown part."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    for p in names:
        if p not in PARTS:
            raise ValueError(f"{option}: unknown part {p!r}; choose from {', '.join(PARTS)}")
    return names


def prepare_out(path):
    """Create ``path`` if needed and check that files can be written there.

    Raises:
        ValueError: ``path`` is not a writable directory; the message names it.
    """
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path!r}: cannot create the directory: {e}") from None
    if not os.path.isdir(path) or not os.access(path, os.W_OK):
        raise ValueError(f"--out {path!r} is not a writable directory")
    return os.path.abspath(path)


def conditions_line(results):
    """One sentence on when, where and under what load the run was made."""
    m = results["machine"]
    start, end = results["loadavg_start"], results["loadavg_end"]
    load = (f"load average (1 min) {start[0]:.2f} at the start and {end[0]:.2f} at the end"
            if start and end else "load average unknown")
    mem = f", {m['mem_total_bytes'] / (1 << 30):.0f} GiB RAM" if m.get("mem_total_bytes") else ""
    return (f"{results['mode']} run of {results['started']} ({results['runtime_s']:.0f} s): "
            f"{m['nproc']} CPUs ({m['cpu_model']}){mem}, Python {m['python']}, {m['platform']}; {load}.")


def write_outputs(results, rows, out, log):
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write("\n".join(format_table(rows)) + "\n\n" + conditions_line(results) + "\n")
    with open(os.path.join(out, "summary.inc"), "w") as f:
        f.write(".. This file is written by bench/suite.py --out; do not edit it by hand.\n\n")
        f.write(rst_table(rows))
        f.write("\n" + conditions_line(results) + "\n")
    log(f"wrote results.json, summary.txt and summary.inc to {out}")
    try:
        import plots
        for path in plots.draw_all(results, out):
            log(f"wrote {path}")
    except ImportError as e:
        log(f"plots skipped: {e} (install the bench extra: pip install -e '.[bench]')")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (rough figures, for development)")
    parser.add_argument("--out", metavar="DIR", help="write results.json, summary.txt, summary.inc and the plots here")
    parser.add_argument("--only", metavar="PARTS", help=f"comma-separated parts to run, of {','.join(PARTS)}")
    parser.add_argument("--skip", metavar="PARTS", help="comma-separated parts to leave out")
    parser.add_argument("--socs-path", metavar="DIR",
                        help="directory holding the socs package (pip install --no-deps --target DIR socs)")
    parser.add_argument("--loglevel", default="info", help="LOGLEVEL of crossbar and the agents (info)")
    args = parser.parse_args(argv)
    try:
        parts = parse_parts(args.only, "--only") if args.only else list(PARTS)
        skip = parse_parts(args.skip, "--skip") if args.skip else []
        parts = [p for p in parts if p not in skip]
        if not parts:
            raise ValueError("no part left to run")
        out = prepare_out(args.out) if args.out else None
    except ValueError as e:
        parser.error(str(e))
    roundtrip.add_socs_path(args.socs_path, parser)

    mode = "quick" if args.quick else "full"
    started = time.monotonic()
    log = make_logger(started)
    results = {"suite": "socs_tcp benchmarks", "mode": mode,
               "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine_info(), "loadavg_start": loadavg(), "settings": {}, "parts": {},
               "part_loadavg": {}, "part_seconds": {}, "errors": {}}
    rows = []
    shared = _SharedStack(args.loglevel, log)
    try:
        for name in parts:
            settings = SETTINGS[mode][name]
            results["settings"][name] = settings
            log(f"== {name}")
            before, t0 = loadavg(), time.monotonic()
            try:
                report, part_rows = run_part(name, settings, shared, log)
            except Exception as e:  # one broken part must not hide the others' figures
                log(f"{name} failed: {type(e).__name__}: {e}")
                results["errors"][name] = traceback.format_exc()
                rows.append(Row(TITLES[name], "did not run", detail=f"{type(e).__name__}: {e}"[:200], result=ERROR))
                continue
            finally:
                results["part_loadavg"][name] = {"start": before, "end": loadavg()}
                results["part_seconds"][name] = time.monotonic() - t0
            results["parts"][name] = report
            rows.extend(part_rows)
    finally:
        shared.close()
    results["loadavg_end"] = loadavg()
    results["runtime_s"] = time.monotonic() - started
    results["rows"] = [r.to_dict() for r in rows]

    print()
    for line in format_table(rows):
        print(line)
    print()
    print(conditions_line(results))
    if out:
        write_outputs(results, rows, out, log)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
