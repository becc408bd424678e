"""``python -m socs_tcp.devices``: check, list and simulate device files.

Commands::

    check NAME_OR_PATH [...]     validate; exit 0 ("ok: NAME (N operations)") or 1 (file:line: errors on stderr)
    list                         shipped device files: short name, then title
    simulate NAME_OR_PATH --port N [--host H] [--seed S]
                                 serve the file's simulator; first line "listening on HOST:PORT"
    dashboard / docs / conform   Grafana dashboard, docs page, conformance check (when installed)
"""

import argparse
import importlib
import logging
import sys

from .errors import DeviceFileError
from .spec import list_devices, load

log = logging.getLogger("socs_tcp.devices")

#: modules that add a subcommand through add_cli(subparsers)
_PLUGINS = ("dashboard", "docgen", "conform")


def _check(args):
    status = 0
    for name in args.device:
        try:
            spec = load(name)
        except DeviceFileError as e:
            sys.stderr.write(f"{e}\n")
            status = 1
            continue
        except (FileNotFoundError, TypeError, UnicodeDecodeError, OSError) as e:
            sys.stderr.write(f"{name}: {e}\n")
            status = 1
            continue
        sys.stdout.write(f"ok: {spec.name} ({len(spec.operations)} operations)\n")
    return status


def _list(args):
    for name in list_devices():
        try:
            title = load(name).title
        except DeviceFileError:
            title = "(does not load: run check)"
        sys.stdout.write(f"{name:<16} {title}\n")
    return 0


def _simulate(args):
    from .simulator import run
    try:
        return run(args)
    except (DeviceFileError, FileNotFoundError) as e:
        sys.stderr.write(f"{e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"cannot listen on {args.host}:{args.port}: {e}\n")
        return 1
    except (TypeError, ValueError) as e:     # a bad --param
        sys.stderr.write(f"{e}\n")
        return 2


def make_parser():
    parser = argparse.ArgumentParser(prog="python -m socs_tcp.devices",
                                     description="Device files: check, list, simulate (and more when installed).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("check", help="validate device files")
    p.add_argument("device", nargs="+", metavar="NAME_OR_PATH")
    p.set_defaults(func=_check)
    p = sub.add_parser("list", help="list the shipped device files")
    p.set_defaults(func=_list)
    from .simulator import make_parser as simulate_parser
    p = sub.add_parser("simulate", help="serve a device file's simulator over TCP")
    simulate_parser(p)
    p.set_defaults(func=_simulate)
    for name in _PLUGINS:
        try:
            module = importlib.import_module(f"{__package__}.{name}")
        except ImportError as e:
            log.debug("no %s subcommand: %s", name, e)
            continue
        add_cli = getattr(module, "add_cli", None)
        if add_cli is not None:
            add_cli(sub)
    return parser


def main(argv=None):
    args = make_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
