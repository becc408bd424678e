"""``python -m socs_tcp.record``: the recording proxy from the command line.

::

    python -m socs_tcp.record --device 10.10.10.5:4001 --listen 127.0.0.1:0 --out session.jsonl

The first line on stdout is ``listening on HOST:PORT`` (flushed).  SIGINT or
SIGTERM stops the proxy with exit status 0 and a complete file.  See
:mod:`socs_tcp.testing.proxy` and :mod:`socs_tcp.testing.recording`.
"""

import argparse
import logging
import signal
import sys
import threading

from .core.codec import parse_address
from .testing.proxy import RecordingProxy

__all__ = ["main", "make_parser", "parse_host_port"]


def parse_host_port(text, *, allow_zero=False):
    """``HOST:PORT`` -> ``(host, port)``; ``allow_zero`` accepts port 0 (pick
    a free port).  Raises :class:`argparse.ArgumentTypeError` naming the text."""
    probe = text
    zero = allow_zero and isinstance(text, str) and text.strip().endswith(":0")
    if zero:
        probe = text.strip()[:-1] + "1"
    parsed = parse_address(probe)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"not a HOST:PORT address: {text!r}")
    return parsed["host"], 0 if zero else parsed["port"]


def _run_until_signal(start, stop, announce):
    """Start, print ``listening on ...``, wait for SIGINT/SIGTERM, stop."""
    stopping = threading.Event()

    def handler(signum, frame):
        stopping.set()
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server = start()
        try:
            sys.stdout.write(f"listening on {announce(server)}\n")
            sys.stdout.flush()
            while not stopping.wait(1.0):
                pass
        finally:
            stop(server)
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)
    return server


def make_parser():
    parser = argparse.ArgumentParser(prog="python -m socs_tcp.record",
                                     description="Record a TCP device session through a transparent proxy.")
    parser.add_argument("--device", required=True, type=parse_host_port, metavar="HOST:PORT",
                        help="the device to forward to")
    parser.add_argument("--listen", default=("127.0.0.1", 0), type=lambda t: parse_host_port(t, allow_zero=True),
                        metavar="HOST:PORT", help="where clients connect (port 0 picks a free port; "
                                                  "default 127.0.0.1:0)")
    parser.add_argument("--out", required=True, metavar="FILE", help="the recording file (JSON lines)")
    parser.add_argument("--max-bytes", type=int, default=100 << 20, metavar="N",
                        help="size cap of the file in bytes (default 100 MiB)")
    parser.add_argument("--keep", type=int, default=0, metavar="N",
                        help="rotate at the cap keeping N older files (default 0: stop recording at the cap)")
    parser.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                        help="deadline of each connection to the device (default 5)")
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default INFO)")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        proxy = RecordingProxy(args.device[0], args.device[1], args.out, listen_host=args.listen[0],
                               listen_port=args.listen[1], connect_timeout=args.connect_timeout,
                               max_bytes=args.max_bytes, keep=args.keep)
    except (TypeError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        _run_until_signal(lambda: proxy.start(), lambda p: p.stop(), lambda p: p.address)
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen on {proxy.address}: {exc}\n")
        return 2
    writer = proxy.writer
    sys.stdout.write(f"recorded {proxy.connections} connections, {writer.events} events to {args.out}"
                     f"{' (truncated at the size cap)' if writer.dropped else ''}; "
                     f"{proxy.failed_connects} clients closed because the device was unreachable\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
