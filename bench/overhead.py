"""Python cost of one small round trip, with the socket's data calls stubbed.

Pinned to one CPU, a round trip costs the kernel's work plus each side's
user-space work, so the library's Python per operation shows in full.  This
script measures that part alone: ``os.write`` and ``os.read`` in
``socs_tcp.transport.connection`` are replaced by functions that return at
once (the write "sends" everything, the read returns a whole reply), while
the rest (the ``poll(0)`` before each write on a real connected socket, the
lock, the deadline, the statistics, the text encoding) runs as usual.

It prints, side by side in one run (best of ``--rounds``, µs per call):

``bare loop``
    ``os.write`` then ``os.read`` and ``find`` of the terminator, with the
    same stubs: the floor of any Python client.
``wrnrd_until`` / ``query``
    ``TCPInterface.wrnrd_until(line, "\\n")`` and ``query(message)``: the
    one-frame round trip (``Connection._round_trip``).
``general path``
    ``wrnrd_until(line, "\n")`` with ``Connection._run`` in place of
    ``_round_trip``: the path an operation takes when it leaves the common
    case (and every round trip took before the one-frame path existed).

Usage::

    python bench/overhead.py [--calls 200000] [--rounds 5]

The stubs make this a measure of Python only; ``bench/roundtrip.py`` measures
real round trips.  For a count that does not depend on the machine's load,
run a client under ``valgrind --tool=callgrind`` (see "Small-message round
trips" in ``docs/benchmarks.rst``).
"""

import argparse
import os
import socket
import time
import types

from socs_tcp import TCPInterface
from socs_tcp.transport import connection

LINE = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
REPLY = (LINE + "\n").encode()


def best_of(rounds, calls, op):
    """Best µs per call of ``op`` over ``rounds`` runs of ``calls`` calls."""
    for _ in range(min(calls, 1000)):
        op()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            op()
        best = min(best, (time.perf_counter() - started) / calls * 1e6)
    return best


def measure(calls=200_000, rounds=5):
    """``{name: µs per call}`` for the bare loop and the library's paths."""
    if calls < 1 or rounds < 1:
        raise ValueError(f"calls and rounds must be >= 1, got calls={calls!r} rounds={rounds!r}")
    stub = types.SimpleNamespace(write=lambda fd, data: len(data), read=lambda fd, n: REPLY,
                                 readv=os.readv, set_blocking=os.set_blocking, get_blocking=os.get_blocking)
    with socket.create_server(("127.0.0.1", 0)) as server:
        link = TCPInterface("127.0.0.1", server.getsockname()[1], 2.0, termination="\n", spin_wait=0)
        peer, _ = server.accept()
        real_os = connection.os
        try:
            # the first round trips set the socket up (kernel timeouts), as on a real link
            connection.os = stub
            for op in (lambda: link.wrnrd_until(LINE, "\n"), lambda: link.query(LINE)):
                if op() != LINE:
                    raise RuntimeError(f"wrong reply from the stubbed link: {op()!r}")
            extract = link._buffer.maybe_extract_until

            def general():
                # wrnrd_until(LINE, "\n") with _run in place of _round_trip
                raw, terms = link._encode(LINE), link._terminators("\n")
                return link._decode(link._run(raw, extract, terms, "until", None)[0], link.rstrip)
            if general() != LINE:
                raise RuntimeError("wrong reply from the general path")
            fd = peer.fileno()
            write, read = stub.write, stub.read
            data = REPLY

            def bare():
                write(fd, data)
                reply = read(fd, 4096)
                return reply[:reply.find(b"\n")]
            figures = {
                "bare loop": best_of(rounds, calls, bare),
                "wrnrd_until": best_of(rounds, calls, lambda: link.wrnrd_until(LINE, "\n")),
                "query": best_of(rounds, calls, lambda: link.query(LINE)),
                "general path": best_of(rounds, calls, general),
            }
        finally:
            connection.os = real_os
            link.disconnect()
            peer.close()
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls per round (200000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best is kept (5)")
    args = parser.parse_args(argv)
    try:
        figures = measure(args.calls, args.rounds)
    except ValueError as exc:
        parser.error(str(exc))
    general = figures["general path"]
    print(f"{'path':<14} {'µs per call':>12} {'vs general':>11}")
    for name, value in figures.items():
        print(f"{name:<14} {value:>12.2f} {general / value:>10.2f}x")


if __name__ == "__main__":
    main()
