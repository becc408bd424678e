"""``python -m socs_tcp.replay``: serve a recording as a device.

::

    python -m socs_tcp.replay session.jsonl --port 0 --timing fast --match queues

The first line on stdout is ``listening on HOST:PORT`` (flushed).  SIGINT or
SIGTERM stops it with exit status 0 (1 with ``--fail-on-unexpected`` when
an unexpected request came); the last line is the summary,
``replay summary: ... unexpected=N ...``.  See :mod:`socs_tcp.testing.replay`.
"""

import argparse
import logging
import sys

from .core.checks import listen_port_argument
from .core.codec import decode_escapes
from .record import _run_until_signal
from .testing.recording import RecordingError
from .testing.replay import ReplayServer

__all__ = ["main", "make_parser"]


def make_parser():
    parser = argparse.ArgumentParser(prog="python -m socs_tcp.replay", description="Serve a recording as a device.")
    parser.add_argument("file", metavar="FILE", help="the recording (JSON lines)")
    parser.add_argument("--port", type=listen_port_argument, required=True, help="listening port (0 picks a free port)")
    parser.add_argument("--host", default="127.0.0.1", help="listening address (default 127.0.0.1)")
    parser.add_argument("--match", choices=("strict", "queues"), default="strict",
                        help="strict recorded order (default) or one queue of answers per distinct request")
    parser.add_argument("--timing", default="recorded", metavar="recorded|fast|FACTOR",
                        help="recorded delays (default), none, or the delays times FACTOR")
    parser.add_argument("--at-end", choices=("close", "loop"), default="close",
                        help="when the recording runs out: close the connection (default) or start again")
    parser.add_argument("--on-unexpected", choices=("close", "ignore", "reply"), default="close",
                        help="an unexpected request closes the connection (default), is ignored, "
                             "or gets --error-reply")
    parser.add_argument("--error-reply", default="", metavar="TEXT",
                        help="reply to an unexpected request with --on-unexpected reply (escapes such as \\r\\n allowed)")
    parser.add_argument("--request-end", default=None, metavar="TEXT",
                        help="what ends a request, to size unexpected ones (default: \\n or \\r when every "
                             "recorded request ends so)")
    parser.add_argument("--context", type=int, default=0, metavar="N",
                        help="with --match queues: a request's answers may depend on the N requests before it "
                             "(default 0)")
    parser.add_argument("--fail-on-unexpected", action="store_true",
                        help="exit with status 1 if any unexpected request came")
    parser.add_argument("--log-level", default="INFO", help="logging level on stderr (default INFO)")
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = ReplayServer(args.file, match=args.match, timing=args.timing, at_end=args.at_end,
                              on_unexpected=args.on_unexpected, error_reply=decode_escapes(args.error_reply),
                              request_end=None if args.request_end is None else decode_escapes(args.request_end),
                              context=args.context, host=args.host, port=args.port)
    except (RecordingError, TypeError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    try:
        _run_until_signal(lambda: server.start(), lambda s: s.shutdown(), lambda s: s.address)
    except OSError as exc:
        sys.stderr.write(f"error: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 2
    sys.stdout.write(server.summary_line() + "\n")
    sys.stdout.flush()
    return 1 if args.fail_on_unexpected and server.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
