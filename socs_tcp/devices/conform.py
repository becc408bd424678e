"""Conformance: check a device file against real traffic.

``python -m socs_tcp.devices conform NAME_OR_PATH (--recording FILE | --address HOST:PORT) [--allow-writes]``

Operations: load the device file; for each of its read-only queries
(``writes`` false), make the request the file describes and parse the reply
as the file says, against a recording (replayed in-process by
:class:`~socs_tcp.testing.replay.ReplayServer`) or a live device; report
each query as one of:

``parsed``
    the reply parsed into the file's fields, with values of the declared types;
``mismatched``
    the exchange did not go as the file says: the request is not in the
    recording (the replay reports it unexpected), no reply came in time, the
    link failed, the device reported an error, or the parsed values lack a
    field or have the wrong type;
``unparsable``
    a reply came but the file cannot parse it (the offending bytes are shown);
``skipped``
    not run: it changes the device (without ``allow_writes``) or it needs an
    argument conformance cannot choose.

Arguments: those of the file's polling items for the operation, else each
argument's default, else its lowest allowed value (``min``, the first enum
choice, ``False``).  Each operation runs on a fresh connection, so one
failure cannot leave bytes that spoil the next.

A recording is replayed with ``match='queues'`` and ``context=1`` (each
request's recorded answers in order, an answer that depends on the request
before it kept with it), fast timing, and unexpected requests closed at once
so a mismatch is reported at once rather than after a timeout.

The exit status of the command is 0 when every query that ran parsed, 1 on
any mismatched or unparsable query (or when nothing ran), 2 when the device
file or the recording cannot be read.
"""

import dataclasses
import logging
import sys

from ..core.codec import format_traffic, parse_address
from ..errors import LinkError, LinkTimeoutError
from .errors import DeviceError, DeviceFileError, DeviceReplyError
from .spec import load

__all__ = ["QueryResult", "ConformReport", "conform", "choose_args", "add_cli"]

log = logging.getLogger("socs_tcp.devices.conform")

PARSED, MISMATCHED, UNPARSABLE, SKIPPED = "parsed", "mismatched", "unparsable", "skipped"
_TYPES = {"float": (float, int), "int": (int,), "str": (str,), "bool": (bool,)}


@dataclasses.dataclass
class QueryResult:
    """The outcome of one operation.

    Attributes:
        name (str): the operation.
        args (dict): the arguments it was run with.
        status (str): ``'parsed'``, ``'mismatched'``, ``'unparsable'`` or ``'skipped'``.
        values (dict): the parsed values (when parsed).
        detail (str): why, for anything but parsed.
        offending (bytes or None): the bytes at fault: the unparsable reply or
            the request the recording does not have.
        exchanges (list): ``(sent, received)`` byte pairs, when known.
    """

    name: str
    args: dict
    status: str
    values: dict = dataclasses.field(default_factory=dict)
    detail: str = ""
    offending: bytes = None
    exchanges: list = dataclasses.field(default_factory=list)

    @property
    def label(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        return f"{self.name}({inner})" if inner else self.name

    def line(self):
        """One line for the report."""
        if self.status == PARSED:
            return f"{self.status:<11} {self.label}  {self.values}"
        text = f"{self.status:<11} {self.label}  {self.detail}"
        if self.offending is not None and format_traffic(self.offending, 128) not in self.detail:
            text += f"; bytes {format_traffic(self.offending, 128)}"
        return text


@dataclasses.dataclass
class ConformReport:
    """All results for one device file and one target."""

    device: str
    target: str
    results: list

    def count(self, status):
        return sum(1 for r in self.results if r.status == status)

    @property
    def ok(self):
        """Every query that ran parsed, and at least one ran."""
        ran = [r for r in self.results if r.status != SKIPPED]
        return bool(ran) and all(r.status == PARSED for r in ran)

    def summary(self):
        return (f"conform {self.device} against {self.target}: {self.count(PARSED)} parsed, "
                f"{self.count(MISMATCHED)} mismatched, {self.count(UNPARSABLE)} unparsable, "
                f"{self.count(SKIPPED)} skipped")

    def lines(self):
        return [r.line() for r in self.results] + [self.summary()]


def _lowest(arg):
    if arg.type == "enum":
        return arg.choices[0] if arg.choices else None
    if arg.type == "bool":
        return False
    if arg.type in ("int", "float"):
        if arg.min is not None:
            value = arg.min
        elif arg.max is not None and arg.max < 0:
            value = arg.max
        else:
            value = 0
        return int(value) if arg.type == "int" else float(value)
    return None


def choose_args(spec, op):
    """The arguments conformance runs ``op`` with, or a str saying why it
    cannot choose them."""
    chosen = {}
    if spec.polling is not None:
        for item in spec.polling.items:
            if item.operation == op.name:
                chosen.update(item.args or {})
                break
    for arg in op.args:
        if arg.name in chosen:
            continue
        if not arg.required:
            continue
        value = _lowest(arg)
        if value is None:
            return f"no value to choose for the required {arg.type} argument {arg.name!r}"
        chosen[arg.name] = value
    try:
        op.check_args(**chosen)
    except (TypeError, ValueError) as exc:
        return f"cannot choose arguments: {exc}"
    return chosen


def _type_problem(field, value):
    types = _TYPES.get(field.type)
    if value is None or types is None or getattr(field, "map", None) or getattr(field, "flags", None):
        return ""  # no value (status marked it invalid), or a mapped / flag value: any type the map gives
    if isinstance(value, bool) and field.type != "bool" or not isinstance(value, types):
        return f"field {field.name!r} is {type(value).__name__} {value!r}, the file says {field.type}"
    return ""


def _check_values(op, values):
    """A str describing what is wrong with parsed values, or ''."""
    if not isinstance(values, dict):
        return f"parsed to {type(values).__name__}, not a dict of fields"
    for field in op.fields:
        if field.name not in values:
            return f"field {field.name!r} missing from the parsed reply {values}"
        value = values[field.name]
        array = getattr(field, "array", None)
        if array is not None:
            if not isinstance(value, (list, tuple)):
                return f"field {field.name!r} is {type(value).__name__} {value!r}, the file says an array"
            if array.count is not None and len(value) != array.count:
                return f"field {field.name!r} has {len(value)} elements, the file says {array.count}"
            if array.max is not None and len(value) > array.max:
                return f"field {field.name!r} has {len(value)} elements, the file says at most {array.max}"
            problem = next((p for p in (_type_problem(field, v) for v in value) if p), "")
        else:
            problem = _type_problem(field, value)
        if problem:
            return problem
    return ""


def _run_one(spec, op, args, address, tcp_kwargs, replay):
    from . import Device

    before = len(replay.unexpected) if replay is not None else 0
    result = QueryResult(op.name, dict(args), MISMATCHED)
    device = None
    try:
        device = Device.from_file(spec.path, address, **tcp_kwargs)
        values, exchanges = device.transact(op.name, **args)
        result.exchanges = list(exchanges)
    except DeviceReplyError as exc:
        result.status, result.detail, result.offending = UNPARSABLE, str(exc), exc.reply
    except DeviceError as exc:
        result.detail = f"the device reported an error: {exc}"
    except (LinkTimeoutError, TimeoutError) as exc:
        result.detail = f"no reply in time: {exc}"
    except (LinkError, ConnectionError, OSError) as exc:
        result.detail = f"link failed: {exc}"
    else:
        problem = _check_values(op, values)
        if problem:
            result.detail = problem
        else:
            result.status, result.values = PARSED, values
    finally:
        if device is not None:
            try:
                device.close()
            except Exception:  # closing must not hide the outcome
                log.debug("closing the device link failed", exc_info=True)
    if replay is not None and len(replay.unexpected) > before:
        # whatever the driver saw, the root cause is a request the recording does not have
        bad = replay.unexpected[before][1]
        result.status = MISMATCHED
        result.detail = f"request {format_traffic(bad, 128)} is not in the recording"
        result.offending = bad
    return result


def conform(name_or_path, *, recording=None, address=None, allow_writes=False, timeout=None, **tcp_kwargs):
    """Check a device file against a recording or a live device.

    Args:
        name_or_path: a shipped device name or a device file path (or a
            loaded :class:`~socs_tcp.devices.DeviceSpec`).
        recording: a recording file (replayed in-process), or
        address (str): ``host:port`` (or host: the file's port) of a live device.
        allow_writes (bool): also run the operations that change the device.
        timeout (float or None): per-operation timeout (default: the file's).
        tcp_kwargs: passed to the driver (:class:`~socs_tcp.TCPInterface` options).

    Returns:
        :class:`ConformReport`.

    Raises:
        DeviceFileError: the device file does not load.
        RecordingError: the recording does not read.
        ValueError: neither or both of ``recording`` and ``address``.
    """
    if (recording is None) == (address is None):
        raise ValueError("give exactly one of recording= and address=")
    spec = name_or_path if hasattr(name_or_path, "operations") else load(name_or_path)
    if timeout is not None:
        tcp_kwargs["timeout"] = timeout
    replay = None
    if recording is not None:
        from ..testing.replay import ReplayServer
        replay = ReplayServer(recording, match="queues", context=1, timing="fast", at_end="loop",
                              on_unexpected="close").start()
        target_address = replay.address
        target = f"recording {recording}"
    else:
        target_address = address
        target = f"device {address}"
    results = []
    try:
        for op in spec.operations.values():
            if op.writes and not allow_writes:
                results.append(QueryResult(op.name, {}, SKIPPED, detail="changes the device (use --allow-writes)"))
                continue
            args = choose_args(spec, op)
            if isinstance(args, str):
                results.append(QueryResult(op.name, {}, SKIPPED, detail=args))
                continue
            result = _run_one(spec, op, args, target_address, tcp_kwargs, replay)
            log.info("%s", result.line())
            results.append(result)
    finally:
        if replay is not None:
            replay.shutdown()
    return ConformReport(spec.name, target, results)


# ----------------------------------------------------------------------
# command line
def add_cli(subparsers):
    """Add ``conform NAME_OR_PATH (--recording FILE | --address HOST:PORT)
    [--allow-writes]`` to the ``python -m socs_tcp.devices`` parser.  The
    handler is the subparser's ``func`` default; it returns the exit status
    (0 all parsed, 1 any mismatched or unparsable, 2 unreadable input)."""
    parser = subparsers.add_parser(
        "conform", help="check a device file against a recording or a live device",
        description="Run the device file's read-only queries against a recording (replayed in-process) or a "
                    "live device and report each as parsed, mismatched or unparsable, with the offending bytes.")
    parser.add_argument("device", metavar="NAME_OR_PATH", help="shipped device name (see 'list') or path to a file")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--recording", metavar="FILE", help="a recording made with python -m socs_tcp.record")
    target.add_argument("--address", metavar="HOST:PORT", help="a live device (HOST alone: the file's port)")
    parser.add_argument("--allow-writes", action="store_true",
                        help="also send the commands and queries that change the device")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="per-operation timeout (default: the device file's)")
    parser.set_defaults(func=_run)
    return parser


def _run(args):
    from ..testing.recording import RecordingError

    if args.address is not None and parse_address(args.address) is None and ":" in args.address:
        sys.stderr.write(f"error: --address: not a HOST:PORT address: {args.address!r}\n")
        return 2
    try:
        report = conform(args.device, recording=args.recording, address=args.address,
                         allow_writes=args.allow_writes, timeout=args.timeout)
    except DeviceFileError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    except (RecordingError, OSError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write("\n".join(report.lines()) + "\n")
    sys.stdout.flush()
    return 0 if report.ok else 1


def main(argv=None):
    """Run the subcommand alone: ``python -m socs_tcp.devices.conform ...``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m socs_tcp.devices")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["conform", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
