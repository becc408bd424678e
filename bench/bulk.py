"""Bulk binary read benchmark: receive a large block from a loopback server
that writes as fast as it can.

Each transfer: the client sends ``N\\n`` and reads exactly ``N`` bytes (by
default 64 MiB); the server answers with ``N`` bytes of a repeating
``00 01 .. ff`` pattern, written with ``sendall`` from a 1 MiB block, as fast
as the socket takes them.  The clients, side by side in one run:

``bare recv_into``
    The baseline of the ratios: ``sock.recv_into(view[pos:])`` in a loop into
    a preallocated ``bytearray``, on a socket with a timeout (as every other
    client has one).
``bare recv_into, no timeout``
    The same on a blocking socket (CPython then skips the ``poll()`` it makes
    before each ``recv_into``).  For information.
``bare recv_into + bytes()``
    The baseline loop, then ``bytes(buffer)``: what a bare loop costs when it
    must hand back an immutable ``bytes``, as ``read_bytes`` does (one more
    copy of the whole block).  For information: the ceiling of ``read_bytes``.
``socs_tcp readinto``
    ``TCPInterface(host, port).readinto(buffer)`` into a preallocated
    ``bytearray``: fills the whole buffer within the deadline, or raises.
``socs_tcp read_bytes``
    ``TCPInterface(host, port, max_read_size=n).read_bytes(n)``, which returns
    a new ``bytes`` (``read_bytes`` is bounded by ``max_read_size``, 1 MiB by
    default; the other settings are the defaults).
``socs_tcp recv loop``
    The SOCS-style loop on ``TCPInterface.recv(1 MiB)``, copying each chunk
    into a preallocated buffer.  For information (what an unmodified SOCS
    driver gets).
``socs.tcp recv loop``
    The same loop on ``socs.tcp.TCPInterface.recv(1 MiB)``.  For information;
    skipped with ``socs not installed: skipped`` when ``socs`` cannot be
    imported (see ``roundtrip.py`` for installing it next to the project).

Each client connects once, makes one untimed warm-up transfer, then
``--reps`` timed transfers (request sent to last byte received, with
``time.perf_counter``); every transfer is checked byte for byte against the
pattern after its timing.  That is repeated for ``--rounds`` rounds, the
client order rotating each round.  The table gives the median throughput
over all timed transfers, the slowest and fastest, the client's CPU time per
GiB, and the ratio of medians against ``bare recv_into``.  Target:
``socs_tcp readinto`` (the bulk-transfer API) >= 0.8x the baseline.
``read_bytes`` is shown for information: it returns a new ``bytes`` built
through the link's bounded receive buffer, for replies, not bulk data.

The server runs in a separate process (``multiprocessing``, spawn), so it
does not share the GIL with the client.  By default (``--placement split``)
client and server are pinned to different CPUs, where the machine has two or
more: a stream keeps both busy at once.  Only loopback (127.0.0.1) is used.

Usage::

    python bench/bulk.py [--mib N] [--reps N] [--rounds N] [--placement split|none]
                         [--socs-path DIR] [--json out.json]
"""

import argparse
import json
import os
import resource
import socket
import statistics
import sys
import time

from benchutil import HOST, Row, ServerProcess, fmt_ratio, machine_info, verdict
from roundtrip import add_socs_path, socs_available

TARGET_RATIO = 0.8
BASELINE = "bare recv_into"
NO_TIMEOUT = "bare recv_into, no timeout"
BARE_COPY = "bare recv_into + bytes()"
SOCS = "socs.tcp recv loop"
TARGET_CLIENTS = ("socs_tcp readinto",)
#: issue 14: a drop-in driver's recv() loop >= 0.9x the same loop on socs.tcp,
#: and read_bytes not 10x slower than readinto
RECV_LOOP = "socs_tcp recv loop"
TARGET_RECV_VS_SOCS = 0.9
TARGET_READ_BYTES_VS_READINTO = 0.1
TIMEOUT = 30.0
BLOCK = 1 << 20          # the server's write block, and the recv size of the recv loops
MIB = 1 << 20


def pattern(n):
    """The ``n`` bytes the server sends for one request: ``00 01 .. ff 00 01 ..``."""
    block = bytes(range(256)) * (BLOCK // 256)
    return (block * (n // BLOCK + 1))[:n]


# ----------------------------------------------------------------------
# the server (runs in its own process)
def _stream_connection(conn, block):
    view = memoryview(block)
    pending = b""
    with conn:
        while True:
            try:
                data = conn.recv(256)
            except OSError:
                return
            if not data:
                return
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                try:
                    remaining = int(line)
                except ValueError:
                    return          # not a request: hang up
                try:
                    while remaining > 0:
                        chunk = view[:min(remaining, len(view))]
                        conn.sendall(chunk)
                        remaining -= len(chunk)
                except OSError:
                    return


class StreamServer(ServerProcess):
    """The bulk server process; a context manager that always stops it."""

    def __init__(self, cpu=None):
        super().__init__(_stream_connection, (bytes(range(256)) * (BLOCK // 256),), cpu=cpu, name="bulk-server")


# ----------------------------------------------------------------------
# clients: each factory returns (transfer, close); transfer() returns the received bytes-like
def _request(n):
    return b"%d\n" % n


def make_bare(port, n, timeout=TIMEOUT):
    sock = socket.create_connection((HOST, port), timeout=timeout)
    buf = bytearray(n)
    view = memoryview(buf)
    request = _request(n)

    def transfer():
        sock.sendall(request)
        pos = 0
        while pos < n:
            got = sock.recv_into(view[pos:])
            if not got:
                raise ConnectionError(f"bulk server closed the connection after {pos} of {n} bytes")
            pos += got
        return buf

    def close():
        view.release()
        sock.close()
    return transfer, close


def make_bare_blocking(port, n):
    return make_bare(port, n, timeout=None)


def make_bare_copy(port, n):
    transfer, close = make_bare(port, n)
    return (lambda: bytes(transfer())), close


def make_socs_tcp_readinto(port, n):
    from socs_tcp import TCPInterface
    link = TCPInterface(HOST, port)
    buf = bytearray(n)
    request = _request(n)

    def transfer():
        link.write(request)
        got = link.readinto(buf)
        if got != n:
            raise RuntimeError(f"readinto returned {got}, expected {n}")
        return buf
    return transfer, link.close


def make_socs_tcp_read_bytes(port, n):
    from socs_tcp import TCPInterface
    # read_bytes returns one bytes object, bounded by max_read_size (1 MiB by default)
    link = TCPInterface(HOST, port, max_read_size=max(n, 1 << 20))
    request = _request(n)

    def transfer():
        link.write(request)
        return link.read_bytes(n)
    return transfer, link.close


def _recv_loop(send, recv, n):
    buf = bytearray(n)
    request = _request(n)

    def transfer():
        send(request)
        pos = 0
        while pos < n:
            chunk = recv(min(BLOCK, n - pos))
            if not chunk:
                raise ConnectionError(f"bulk server closed the connection after {pos} of {n} bytes")
            buf[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        return buf
    return transfer


def make_socs_tcp_recv(port, n):
    from socs_tcp import TCPInterface
    link = TCPInterface(HOST, port)
    return _recv_loop(link.send, link.recv, n), link.close


def make_socs(port, n):
    from socs.tcp import TCPInterface
    link = TCPInterface(HOST, port, TIMEOUT)
    if link.comm is None:
        raise ConnectionError("socs.tcp.TCPInterface could not connect")

    def close():
        if link.comm is not None:
            link.comm.close()
            link.comm = None
    return _recv_loop(link.send, link.recv, n), close


def clients(socs=True):
    """The ``(name, factory)`` pairs measured; the socs.tcp one only if asked and importable."""
    out = [
        (BASELINE, make_bare),
        (NO_TIMEOUT, make_bare_blocking),
        (BARE_COPY, make_bare_copy),
        ("socs_tcp readinto", make_socs_tcp_readinto),
        ("socs_tcp read_bytes", make_socs_tcp_read_bytes),
        ("socs_tcp recv loop", make_socs_tcp_recv),
    ]
    if socs and socs_available():
        out.append((SOCS, make_socs))
    return out


# ----------------------------------------------------------------------
# measurement
def _thread_cpu():
    usage = resource.getrusage(getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF))
    return usage.ru_utime + usage.ru_stime


def first_difference(a, b):
    """Index of the first byte where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    n = min(len(a), len(b))
    step = 1 << 16
    for start in range(0, n, step):
        end = min(start + step, n)
        if a[start:end] != b[start:end]:
            return next(i for i in range(start, end) if a[i] != b[i])
    return n if len(a) != len(b) else None


def check_parameters(mib, reps, rounds, placement):
    """Raise ``ValueError`` naming the first bad parameter of :func:`run`."""
    if not (isinstance(mib, (int, float)) and not isinstance(mib, bool) and 0 < mib <= 4096):
        raise ValueError(f"mib must be a number in (0, 4096], got {mib!r}")
    for name, value in (("reps", reps), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if placement not in ("split", "none"):
        raise ValueError(f"placement must be 'split' or 'none', got {placement!r}")


def run_client(transfer, expected, reps):
    """One warm-up transfer, then ``reps`` timed ones, each checked after its timing.

    Returns a list of ``{"seconds", "cpu_seconds", "mib_per_s"}``, one per timed transfer.

    Raises:
        RuntimeError: a transfer returned the wrong bytes.
    """
    n = len(expected)

    def check(data, which):
        if len(data) != n or data != expected:
            raise RuntimeError(f"{which} transfer: received {len(data)} bytes, expected {n}; "
                               f"first difference at byte {first_difference(data, expected)}")
    check(transfer(), "warm-up")
    out = []
    for i in range(reps):
        c0 = _thread_cpu()
        t0 = time.perf_counter()
        data = transfer()
        t1 = time.perf_counter()
        c1 = _thread_cpu()
        check(data, f"timed #{i + 1}")
        del data
        out.append({"seconds": t1 - t0, "cpu_seconds": c1 - c0, "mib_per_s": n / MIB / (t1 - t0)})
    return out


def run(mib=64, reps=5, rounds=3, placement="split", log=print):
    """Run every client against one bulk server, side by side.

    Args:
        mib (float): MiB per transfer.
        reps (int): timed transfers per client per round.
        rounds (int): rounds; the client order rotates each round.
        placement (str): ``split`` (client and server on different CPUs) or ``none``.
        log: called with one progress line at a time.

    Returns:
        dict: ``parameters``, ``socs_installed``, ``summary`` (per client),
        ``transfers`` (per client, every timed transfer) and ``target_met``.

    Raises:
        ValueError: a parameter is out of range; the message names it.
    """
    check_parameters(mib, reps, rounds, placement)
    n = int(mib * MIB)
    expected = pattern(n)
    chosen = clients()
    have_socs = any(name == SOCS for name, _ in chosen)
    if not have_socs:
        log("socs not installed: skipped")
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        placement = "none"
    client_cpu = cpus[0] if placement == "split" else None
    server_cpu = cpus[1] if placement == "split" else None
    log(f"{n / MIB:g} MiB per transfer, {rounds} rounds x {reps} transfers per client (+1 warm-up), "
        + (f"client on CPU {client_cpu}, server on CPU {server_cpu}" if placement == "split" else "no CPU pinning"))

    transfers = {name: [] for name, _ in chosen}
    with StreamServer(cpu=server_cpu) as server:
        if client_cpu is not None:
            os.sched_setaffinity(0, {client_cpu})
        try:
            for r in range(rounds):
                order = chosen[r % len(chosen):] + chosen[:r % len(chosen)]
                for name, factory in order:
                    transfer, close = factory(server.port, n)
                    try:
                        figures = run_client(transfer, expected, reps)
                    finally:
                        close()
                    transfers[name].extend(figures)
                    rates = [f["mib_per_s"] for f in figures]
                    log(f"  round {r + 1}/{rounds}  {name:<28} {statistics.median(rates):>9,.0f} MiB/s")
        finally:
            if client_cpu is not None:
                os.sched_setaffinity(0, set(cpus))

    summary = {}
    for name, _ in chosen:
        rates = [f["mib_per_s"] for f in transfers[name]]
        cpu = sum(f["cpu_seconds"] for f in transfers[name])
        summary[name] = {"mib_per_s": statistics.median(rates), "mib_per_s_min": min(rates),
                         "mib_per_s_max": max(rates), "transfers": len(rates),
                         "cpu_s_per_gib": cpu / (len(rates) * n / (1 << 30))}
    base = summary[BASELINE]["mib_per_s"]
    for row in summary.values():
        row["ratio_vs_bare"] = row["mib_per_s"] / base
    extra = {"read_bytes_vs_readinto": summary["socs_tcp read_bytes"]["mib_per_s"]
             / summary["socs_tcp readinto"]["mib_per_s"]}
    if SOCS in summary:
        extra["recv_loop_vs_socs"] = summary[RECV_LOOP]["mib_per_s"] / summary[SOCS]["mib_per_s"]
    return {
        "benchmark": "bulk binary read from a loopback server writing as fast as it can",
        "parameters": {"bytes": n, "reps": reps, "rounds": rounds, "placement": placement,
                       "client_cpu": client_cpu, "server_cpu": server_cpu, "baseline": BASELINE,
                       "target_ratio": TARGET_RATIO},
        "socs_installed": have_socs,
        "summary": summary,
        "transfers": transfers,
        "target_met": {name: summary[name]["ratio_vs_bare"] >= TARGET_RATIO for name in TARGET_CLIENTS},
        "ratios": extra,
    }


def summary_rows(report):
    """The suite's table rows for a :func:`run` report."""
    part = "bulk read"
    size = report["parameters"]["bytes"] / MIB
    rows = []
    for name, row in report["summary"].items():
        is_target = name in TARGET_CLIENTS
        rows.append(Row(
            part, f"{name} ({size:g} MiB)" if name == BASELINE else name, f"{row['mib_per_s']:,.0f} MiB/s",
            f"{row['mib_per_s_min']:,.0f}-{row['mib_per_s_max']:,.0f} MiB/s, CPU {row['cpu_s_per_gib']:.2f} s/GiB",
            "baseline" if name == BASELINE else fmt_ratio(row["ratio_vs_bare"]),
            f">= {TARGET_RATIO}x" if is_target else "",
            verdict(row["ratio_vs_bare"] >= TARGET_RATIO) if is_target else ""))
    if not report["socs_installed"]:
        rows.append(Row(part, SOCS, result="skipped", detail="socs not installed (see --socs-path)"))
    return rows


def print_report(report):
    print()
    header = f"{'client':<30}{'MiB/s':>9}{'min-max':>17}{'CPU s/GiB':>11}{'vs bare':>9}"
    print(header)
    print("-" * len(header))
    for name, row in report["summary"].items():
        spread = f"{row['mib_per_s_min']:,.0f}-{row['mib_per_s_max']:,.0f}"
        print(f"{name:<30}{row['mib_per_s']:>9,.0f}{spread:>17}{row['cpu_s_per_gib']:>11.2f}"
              f"{row['ratio_vs_bare']:>8.2f}x")
    if not report["socs_installed"]:
        print(f"{SOCS:<30}  socs not installed: skipped")
    print()
    for name in TARGET_CLIENTS:
        ratio = report["summary"][name]["ratio_vs_bare"]
        print(f"target >= {TARGET_RATIO}x {BASELINE}: {name} = {ratio:.2f}x -> "
              + ("MET" if report["target_met"][name] else "NOT MET"))
    ratios = report.get("ratios", {})
    if "read_bytes_vs_readinto" in ratios:
        ratio = ratios["read_bytes_vs_readinto"]
        print(f"target read_bytes >= {TARGET_READ_BYTES_VS_READINTO}x readinto (not 10x slower): {ratio:.2f}x -> "
              + ("MET" if ratio >= TARGET_READ_BYTES_VS_READINTO else "NOT MET"))
    if "recv_loop_vs_socs" in ratios:
        ratio = ratios["recv_loop_vs_socs"]
        print(f"target {RECV_LOOP} >= {TARGET_RECV_VS_SOCS}x {SOCS}: {ratio:.2f}x -> "
              + ("MET" if ratio >= TARGET_RECV_VS_SOCS else "NOT MET"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=64, help="MiB per transfer (64)")
    parser.add_argument("--reps", type=int, default=5, help="timed transfers per client per round (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, client order rotated each round (3)")
    parser.add_argument("--placement", choices=("split", "none"), default="split",
                        help="client and server on different CPUs (default) or no pinning")
    parser.add_argument("--socs-path", metavar="DIR", help="directory holding the socs package")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE")
    args = parser.parse_args(argv)
    add_socs_path(args.socs_path, parser)
    try:
        check_parameters(args.mib, args.reps, args.rounds, args.placement)
    except ValueError as e:
        parser.error(str(e))
    report = run(args.mib, args.reps, args.rounds, args.placement, log=lambda msg: print(msg, flush=True))
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
