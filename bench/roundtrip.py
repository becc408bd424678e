"""Round-trip benchmark: write one line, read the reply up to ``\\n``, repeat.

Measures round trips per second and per-round-trip latency of a small
write-then-read-until-terminator exchange over loopback, for several clients
against the same echo server, side by side in one run:

``bare socket``
    The floor: ``sendall`` then ``recv`` until the terminator is seen, with
    correct framing (bytes after the terminator are kept for the next read)
    and nothing else.  The socket has ``TCP_NODELAY`` and a timeout set once,
    as every other client here has one (a device client without a timeout
    hangs forever on a dead device).  This is the baseline of the ratios.
``bare socket, no timeout``
    The same loop on a blocking socket with no timeout (CPython then skips
    the ``poll()`` it makes before each ``send``/``recv`` of a socket with a
    timeout).  Shown for information: the absolute floor.
``socs_tcp wrnrd_until``
    ``socs_tcp.TCPInterface(host, port).wrnrd_until(line, "\\n")`` with the
    default settings (str in, str out).
``socs_tcp query``
    ``socs_tcp.TCPInterface(host, port, termination="\\n").query(message)``.
``socs.tcp send+recv``
    ``socs.tcp.TCPInterface(host, port, timeout)``: ``send(line)`` then a
    hand-written read-until-``\\n`` loop on its ``recv()``.  Skipped (with the
    message ``socs not installed: skipped``) when ``socs`` cannot be imported.

Installing ``socs`` for this benchmark: ``socs.tcp`` imports only the
standard library (``selectors``, ``socket``), so the package can be installed
without its heavy dependencies, away from the project's environment::

    python -m pip install --no-deps --target /tmp/bench-socs socs
    python bench/roundtrip.py --socs-path /tmp/bench-socs

(or ``PYTHONPATH=/tmp/bench-socs python bench/roundtrip.py``, or
``pip install --no-deps socs`` into a throwaway venv).

The echo server runs in a separate process (``multiprocessing``, spawn), so it
does not share the GIL with the client under test; it answers every complete
``\\n``-terminated line as soon as it arrives, with ``TCP_NODELAY``.

CPU placement (``--placement``):

``same`` (default)
    client and server pinned to the same CPU.  In a ping-pong only one of
    them runs at a time, so they do not compete, and a round trip is the sum
    of the CPU work of client, kernel and server: the client library's
    overhead shows at full size and run-to-run noise is lowest.
``split``
    client and server pinned to different CPUs.  Each round trip then also
    pays two cross-CPU wake-ups; on a virtual machine with idle vCPUs that
    costs tens of microseconds and varies a lot, which dilutes and blurs the
    differences between clients.
``none``
    no pinning; the scheduler's placement changes from run to run, so the
    figures are bimodal (use only to compare with the other two).

Each client runs for ``--seconds`` after ``--warmup`` seconds of warm-up (the
first reply is checked for correctness).  That is repeated for ``--rounds``
rounds, the client order rotating each round; the table shows the median over
the rounds.  Latency is measured around each round trip with
``time.perf_counter_ns`` (the same small overhead for every client).

Usage::

    python bench/roundtrip.py [--seconds N] [--payload N] [--rounds N] [--warmup N]
                              [--placement same|split|none] [--socs-path DIR] [--json out.json]

Figures from a run, and where the time goes, are in ``docs/benchmarks.rst``.

Only loopback (127.0.0.1) is used.
"""

import argparse
import json
import multiprocessing
import os
import platform
import socket
import statistics
import sys
import threading
import time

HOST = "127.0.0.1"
TARGET_RATIO = 0.85
BASELINE = "bare socket"
TIMEOUT = 10.0


# ----------------------------------------------------------------------
# echo server (runs in its own process)
def _echo_connection(conn):
    conn.setblocking(True)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pending = b""
    with conn:
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            if not data:
                return
            pending = pending + data if pending else data
            end = pending.rfind(b"\n")
            if end >= 0:
                try:
                    conn.sendall(pending[:end + 1])
                except OSError:
                    return
                pending = pending[end + 1:]


def _serve(port_pipe, stop, cpu):
    """Accept connections until ``stop`` is set; one thread per connection."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(16)
    listener.settimeout(0.1)
    port_pipe.send(listener.getsockname()[1])
    port_pipe.close()
    conns, threads = [], []
    try:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=_echo_connection, args=(conn,), daemon=True)
            conns.append(conn)
            threads.append(thread)
            thread.start()
    finally:
        listener.close()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in threads:
            thread.join(2.0)


class EchoServer:
    """The echo server process; a context manager that always stops it."""

    def __init__(self, cpu=None):
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_serve, args=(child, self._stop, cpu), name="echo-server")
        self._proc.start()
        child.close()
        if not parent.poll(30):
            self.close()
            raise RuntimeError("echo server did not start")
        self.port = parent.recv()
        parent.close()

    def close(self):
        self._stop.set()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------
# clients: each factory returns (round_trip, expected_reply, close)
def _read_line_loop(recv, buf):
    """Return the bytes before the first ``\\n``, receiving with ``recv()``
    as needed; bytes after it stay in ``buf``."""
    while True:
        end = buf.find(b"\n")
        if end >= 0:
            line = bytes(buf[:end])
            del buf[:end + 1]
            return line
        chunk = recv()
        if not chunk:
            raise ConnectionError("echo server closed the connection")
        buf += chunk


def make_bare(port, line, timeout=TIMEOUT):
    sock = socket.create_connection((HOST, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    sendall, recv = sock.sendall, sock.recv

    def round_trip():
        sendall(line)
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                reply = bytes(buf[:end])
                del buf[:end + 1]
                return reply
            chunk = recv(4096)
            if not chunk:
                raise ConnectionError("echo server closed the connection")
            buf.extend(chunk)
    return round_trip, line[:-1], sock.close


def make_bare_blocking(port, line):
    round_trip, expected, close = make_bare(port, line, timeout=None)
    return round_trip, expected, close


def make_socs_tcp_wrnrd_until(port, line):
    import socs_tcp
    link = socs_tcp.TCPInterface(HOST, port)
    text = line.decode("ascii")

    def round_trip():
        return link.wrnrd_until(text, "\n")
    return round_trip, text[:-1], link.close


def make_socs_tcp_query(port, line):
    import socs_tcp
    link = socs_tcp.TCPInterface(HOST, port, termination="\n")
    message = line[:-1].decode("ascii")

    def round_trip():
        return link.query(message)
    return round_trip, message, link.close


def make_socs(port, line):
    from socs.tcp import TCPInterface
    link = TCPInterface(HOST, port, TIMEOUT)
    if link.comm is None:
        raise ConnectionError("socs.tcp.TCPInterface could not connect")
    buf = bytearray()
    send, recv = link.send, link.recv

    def round_trip():
        send(line)
        while True:
            end = buf.find(b"\n")
            if end >= 0:
                reply = bytes(buf[:end])
                del buf[:end + 1]
                return reply
            chunk = recv(4096)
            if not chunk:
                raise ConnectionError("echo server closed the connection")
            buf.extend(chunk)

    def close():
        if link.comm is not None:
            link.comm.close()
            link.comm = None
    return round_trip, line[:-1], close


def socs_available():
    try:
        import socs.tcp  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------
# measurement
def percentile(sorted_values, p):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100.0 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def run_client(round_trip, expected, seconds, warmup):
    """Warm up, then run round trips for ``seconds``.  Returns figures."""
    reply = round_trip()
    if reply != expected:
        raise AssertionError(f"wrong reply: {reply!r}, expected {expected!r}")
    perf = time.perf_counter_ns
    end = perf() + int(warmup * 1e9)
    while perf() < end:
        round_trip()
    latencies = []
    append = latencies.append
    start = perf()
    end = start + int(seconds * 1e9)
    now = start
    while now < end:
        t0 = perf()
        round_trip()
        now = perf()
        append(now - t0)
    elapsed = (now - start) / 1e9
    latencies.sort()
    return {
        "round_trips": len(latencies),
        "seconds": elapsed,
        "rate": len(latencies) / elapsed,
        "latency_median_us": statistics.median(latencies) / 1e3,
        "latency_p99_us": percentile(latencies, 99) / 1e3,
    }


def machine_info():
    cpu_model = None
    try:
        with open("/proc/cpuinfo") as f:
            for row in f:
                if row.startswith("model name"):
                    cpu_model = row.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured duration per client per round (5)")
    parser.add_argument("--payload", type=int, default=32,
                        help="bytes per request line, before the \\n terminator (32)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, client order rotated each round (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per client per round (1)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    parser.add_argument("--socs-path", metavar="DIR",
                        help="directory holding the socs package (e.g. from pip install --no-deps --target DIR socs)")
    parser.add_argument("--placement", choices=("same", "split", "none"), default="same",
                        help="pin client and server to the same CPU (default), to different CPUs, or not at all")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.rounds < 1 or args.payload < 1:
        parser.error("--seconds and --payload must be > 0, --warmup >= 0, --rounds >= 1")
    if args.socs_path:
        sys.path.append(os.path.abspath(args.socs_path))

    line = (b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ" * (args.payload // 36 + 1))[:args.payload] + b"\n"
    clients = [
        (BASELINE, make_bare),
        ("bare socket, no timeout", make_bare_blocking),
        ("socs_tcp wrnrd_until", make_socs_tcp_wrnrd_until),
        ("socs_tcp query", make_socs_tcp_query),
    ]
    have_socs = socs_available()
    if have_socs:
        clients.append(("socs.tcp send+recv", make_socs))
    else:
        print("socs not installed: skipped")

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    placement = args.placement
    if not cpus or (placement == "split" and len(cpus) < 2):
        placement = "none"
    client_cpu = server_cpu = None
    if placement != "none":
        client_cpu = cpus[0]
        server_cpu = cpus[1] if placement == "split" else cpus[0]
    info = machine_info()
    print(f"python {info['python']} on {info['platform']}, {info['nproc']} CPUs ({info['cpu_model']})")
    print(f"payload {args.payload} B + '\\n', {args.rounds} rounds x {args.seconds:g} s per client "
          f"(+{args.warmup:g} s warm-up), "
          + (f"client on CPU {client_cpu}, server on CPU {server_cpu}" if placement != "none" else "no CPU pinning"))

    results = {name: [] for name, _ in clients}
    with EchoServer(cpu=server_cpu) as server:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        try:
            for r in range(args.rounds):
                order = clients[r % len(clients):] + clients[:r % len(clients)]
                for name, factory in order:
                    round_trip, expected, close = factory(server.port, line)
                    try:
                        figures = run_client(round_trip, expected, args.seconds, args.warmup)
                    finally:
                        close()
                    results[name].append(figures)
                    print(f"  round {r + 1}/{args.rounds}  {name:<24} {figures['rate']:>9,.0f} rt/s", flush=True)
        finally:
            if client_cpu is not None:
                os.sched_setaffinity(0, set(cpus))

    summary = {}
    for name, _ in clients:
        rounds = results[name]
        summary[name] = {
            "rate": statistics.median(f["rate"] for f in rounds),
            "rate_min": min(f["rate"] for f in rounds),
            "rate_max": max(f["rate"] for f in rounds),
            "latency_median_us": statistics.median(f["latency_median_us"] for f in rounds),
            "latency_p99_us": statistics.median(f["latency_p99_us"] for f in rounds),
        }
    base = summary[BASELINE]["rate"]
    floor = summary["bare socket, no timeout"]["rate"]
    base_latency = summary[BASELINE]["latency_median_us"]
    for name, row in summary.items():
        row["ratio_vs_bare"] = row["rate"] / base
        # the same comparison on median latencies: insensitive to the rare long
        # stalls (other processes, hypervisor) that weigh on the mean rate
        row["ratio_vs_bare_by_median_latency"] = base_latency / row["latency_median_us"]
        row["ratio_vs_bare_no_timeout"] = row["rate"] / floor
        # per-round (paired) ratios: less sensitive to drift between rounds
        row["ratio_vs_bare_per_round"] = [f["rate"] / b["rate"] for f, b in zip(results[name], results[BASELINE])]

    print()
    header = (f"{'client':<26}{'round trips/s':>14}{'min-max':>17}{'median µs':>11}{'p99 µs':>9}"
              f"{'vs bare':>9}{'(median)':>10}")
    print(header)
    print("-" * len(header))
    for name, row in summary.items():
        spread = f"{row['rate_min']:,.0f}-{row['rate_max']:,.0f}"
        print(f"{name:<26}{row['rate']:>14,.0f}{spread:>17}{row['latency_median_us']:>11.1f}"
              f"{row['latency_p99_us']:>9.1f}{row['ratio_vs_bare']:>8.2f}x{row['ratio_vs_bare_by_median_latency']:>9.2f}x")
    if not have_socs:
        print(f"{'socs.tcp send+recv':<26}  socs not installed: skipped")
    print("vs bare: ratio of round trips/s to 'bare socket'; (median): the same ratio computed from median latencies")
    print()

    verdicts = {}
    for name in ("socs_tcp wrnrd_until", "socs_tcp query"):
        ratio = summary[name]["ratio_vs_bare"]
        verdicts[name] = ratio >= TARGET_RATIO
        print(f"target socs_tcp >= {TARGET_RATIO}x bare: {name} = {ratio:.2f}x bare -> "
              + ("MET" if verdicts[name] else "NOT MET")
              + f" (by median latency {summary[name]['ratio_vs_bare_by_median_latency']:.2f}x; "
              f"{summary[name]['ratio_vs_bare_no_timeout']:.2f}x bare without timeout)")

    if args.json:
        out = {
            "benchmark": "write-then-read-until-\\n round trips on loopback",
            "machine": info,
            "parameters": {"seconds": args.seconds, "warmup": args.warmup, "rounds": args.rounds,
                           "payload_bytes": args.payload, "placement": placement, "client_cpu": client_cpu,
                           "server_cpu": server_cpu, "baseline": BASELINE, "target_ratio": TARGET_RATIO},
            "socs_installed": have_socs,
            "summary": summary,
            "rounds": results,
            "target_met": verdicts,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
