"""DeviceAgent: any device described by a device file, as an OCS agent, with no code.

The device file (``--device-file NAME_OR_PATH``, see :mod:`socs_tcp.devices`)
gives everything: the driver (:class:`socs_tcp.devices.Device`), one OCS task
per command and query (named, typed and limited as the file says), the
``acq`` process with its feed, block and field names, and the docstring of
every op.  Where the file replaces a SOCS agent it also keeps that agent's
names (TPG366: feed ``pressures``, fields ``pressure_ch1`` .. ``pressure_ch6``;
Cryomech CPA: ``init``, ``power_ptc(state)``, ``acq(test_mode)``), so a site
keeps its dashboards and client scripts.

Each generated task's parameters are declared to OCS with
:func:`ocs.ocs_agent.param`, the checks being the device file's own
(:meth:`socs_tcp.devices.ArgSpec.check`): a bad value is refused by OCS
before the op starts (``OCSReply.status == -1``, the reason in ``msg``), so
nothing is sent.  The OCS docstrings come from :mod:`socs_tcp.devices.docgen`,
which writes the device's docs page from the same file.
"""

import argparse

from ocs import ocs_agent, site_config
from ocs.ocs_agent import ParamError
from ocs.ocs_twisted import TimeoutLock

from socs_tcp.devices import Device, DeviceError, DeviceReplyError, load
from socs_tcp.devices.docgen import acq_docstring, acq_parameters, agent_modes, agent_tasks, task_docstring
from socs_tcp.devices.spec import param_assignments

from ..common import (
    Outage,
    Poller,
    add_access_arguments,
    add_device_arguments,
    check_positive,
    device_address,
    log_access_control,
    register_feeds,
    route_library_logs,
    run_op,
    start_logging,
    write_privs,
)

HEALTH_FEED = "link_health"

#: What a task reports as "the device said no" (rather than a link failure or bad input).
DEVICE_ERRORS = (DeviceError, DeviceReplyError)


def _param_check(arg):
    """An ``ocs_agent.param`` check that applies the device file's own check
    of *arg* and turns its refusal into OCS's ``ParamError`` with the reason."""
    def check(value):
        try:
            arg.check(value)
        except (ValueError, TypeError) as exc:
            raise ParamError(f"Param '{arg.name}'={value!r} rejected: {exc}") from None
        return True
    return check


def declare_params(func, args):
    """Declare each :class:`~socs_tcp.devices.ArgSpec` of *args* on *func* with
    :func:`ocs.ocs_agent.param`, exactly as the decorator would: OCS then
    checks the parameters of every start request before the op runs (and
    refuses unknown ones)."""
    for arg in args:
        kwargs = {"check": _param_check(arg)}
        if not arg.required:
            kwargs["default"] = arg.default
        func = ocs_agent.param(arg.name, **kwargs)(func)
    if not getattr(func, "_ocs_prescreen", None):
        # no parameter at all: still refuse unexpected ones, as a decorated op does
        func = ocs_agent.param("_")(func)
    return func


class DeviceAgent:
    """OCS agent for the device of a device file.

    Args:
        agent (OCSAgent): from :func:`ocs.ocs_agent.init_site_agent`.
        device (socs_tcp.devices.Device): the driver (connects lazily).
        sample_rate (float): default ``acq`` cycles per second (default:
            the device file's ``polling.rate``).

    Attributes:
        agent (OCSAgent): the OCS agent.
        log (txaio.interfaces.ILogger): the agent log.
        lock (TimeoutLock): guards the start of ``acq``; the device link
            serialises traffic itself, one whole transaction at a time, so a
            task never reads a reply meant for ``acq``.
        spec (socs_tcp.devices.DeviceSpec): the device file.
        tasks (list): the :class:`socs_tcp.devices.docgen.AgentTask` of each
            generated task.
        feed (str): the feed ``acq`` publishes to (``None`` without polling).
    """

    def __init__(self, agent, device, sample_rate=None):
        self.agent = agent
        self.log = agent.log
        self.lock = TimeoutLock()
        self.device = device
        self.spec = device.spec
        polling = self.spec.polling
        self.feed = polling.feed if polling is not None else None
        self.block = polling.block if polling is not None else None
        self.sample_rate = sample_rate or (polling.rate if polling is not None else 1.0)
        self.tasks = agent_tasks(self.spec)
        self.initialized = False
        self.outage = Outage(self.log, "acq")
        self.poller = Poller(self, device, self._poll, self.feed, self.block, HEALTH_FEED, outage=self.outage)
        self.acq = self._make_acq()
        if self.feed is not None:
            # recorded, with the aggregator frame the device file asks for (SOCS's agents use 60 s)
            agent.register_feed(self.feed, record=True, agg_params={"frame_length": polling.frame_length},
                                buffer_time=1.0)
        register_feeds(agent, HEALTH_FEED)

    # ------------------------------------------------------------------ acq
    def _poll(self):
        if self.feed is None:
            self.device.connect()
            return None
        try:
            return self.device.poll()
        except (DeviceReplyError, DeviceError) as exc:
            # a garbled or refused reply leaves acq without data, as an outage
            # does (SOCS's TPG366 agent treats junk after a reconnect the same way)
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    def _make_acq(self):
        params = acq_parameters(self.spec)
        rate_name = params[0][0] if len(params) > 1 else None
        period = "period" in (self.spec.agent.acq_args or {})   # the argument is seconds between cycles

        def acq(session, params):
            value = params.get(rate_name) if rate_name else None
            rate = 1.0 / value if value and period else value
            return self.poller.run_exclusive(self.lock, session, rate or self.sample_rate, once=params["test_mode"])

        acq.__doc__ = acq_docstring(self.spec)
        acq.__name__ = "acq"
        acq = ocs_agent.param("test_mode", default=False, type=bool)(acq)
        if rate_name:
            acq = ocs_agent.param(rate_name, default=None, type=float,
                                  check=lambda r: r > 0 and r != float("inf"))(acq)
        return acq

    # ------------------------------------------------------------------ tasks
    def make_task(self, task):
        """The op function (``(session, params)``) of one generated task
        (a :class:`~socs_tcp.devices.docgen.AgentTask`), with its OCS
        docstring and its parameters declared with ``ocs_agent.param``."""
        if task.kind == "stop":
            func = self._make_stop(task)
        elif task.kind == "init":
            func = self._make_init(task)
        else:
            func = self._make_call(task)
        func.__name__ = task.name
        func.__doc__ = task_docstring(task)
        return declare_params(func, task.args)

    def _call(self, task, args):
        """Run the task's operation; ``session.data`` gets the parsed values."""
        op_name = task.operation.name
        args = {task.rename.get(k, k): v for k, v in args.items() if v is not None}
        return lambda: self.device.call(op_name, **args)

    @staticmethod
    def _data(values, elapsed, started):
        return {"values": values, "timestamp": started, "elapsed": elapsed}

    def _make_call(self, task):
        def run(session, params):
            return run_op(session, task.name, self._call(task, params), device_errors=DEVICE_ERRORS,
                          data=self._data)
        return run

    def _make_init(self, task):
        def init(session, params):
            params = dict(params)
            auto_acquire = params.pop("auto_acquire", False)
            if task.operation is not None:
                call = self._call(task, {k: v for k, v in params.items() if k in task.operation.arg_map})
            else:
                def call():
                    self.device.connect()
                    return {}
            ok, message = run_op(session, task.name, call, device_errors=DEVICE_ERRORS, data=self._data)
            self.initialized = self.initialized or ok
            if auto_acquire:
                # acq starts even when the device did not answer: it then runs
                # degraded and recovers by itself once the device is back
                _, text, _ = self.agent.start("acq", params={})
                self.log.info("{name}: starting acq: {text}", name=task.name, text=text)
            return ok, message
        return init

    def _make_stop(self, task):
        def stop(session, params):
            running = self.agent.sessions.get("acq")
            if running is None or running.status not in ("starting", "running"):
                return False, "acq is not currently running"
            self.poller.stop()
            return True, "requested to stop taking data"
        return stop

    def register(self, mode=None, privs=1):
        """Register ``acq`` and every generated task with the OCS agent, and
        what *mode* starts at start-up.

        Args:
            mode (str): a start-up mode of the device file (see
                :func:`socs_tcp.devices.docgen.agent_modes`; default: the file's).
            privs (int): ``min_privs`` of the tasks that change the device's state.

        Returns:
            list: names of the tasks registered with ``min_privs=privs``.

        Raises:
            ValueError: an unknown mode (names it and the known ones).
        """
        modes, default = agent_modes(self.spec)
        mode = default if mode is None else mode
        if mode not in modes:
            raise ValueError(f"--mode {mode!r} is not a mode of device file {self.spec.name!r}; "
                             f"its modes: {', '.join(modes)}")
        startup = modes[mode]
        self.agent.register_process("acq", self.acq, self.poller.stop_process,
                                    startup=startup.get("acq", False))
        writes = []
        for task in self.tasks:
            level = privs if task.writes else 1
            if task.writes:
                writes.append(task.name)
            self.agent.register_task(task.name, self.make_task(task), startup=startup.get(task.name, False),
                                     min_privs=level)
        return writes


def make_parser(parser=None):
    """Build the argument parser (OCS passes its own to extend)."""
    if parser is None:
        parser = argparse.ArgumentParser()
    pgroup = parser.add_argument_group("Agent Options")
    pgroup.add_argument("--device-file", required=True, metavar="NAME_OR_PATH",
                        help="Shipped device name (python -m socs_tcp.devices list) or path to a device file.")
    add_device_arguments(pgroup, default_timeout=None)
    pgroup.add_argument("--ip-address", "--ip_address", dest="ip_address", metavar="HOST",
                        help="Device host (as SOCS agents name it; same as --host). The port defaults "
                        "to the device file's.")
    add_access_arguments(pgroup)
    pgroup.add_argument("--sampling-frequency", "--sample-rate", dest="sample_rate", type=float, default=None,
                        metavar="HZ", help="acq cycles per second (default: the device file's polling rate).")
    pgroup.add_argument("--mode", default=None,
                        help="What to start at start-up: a mode of the device file (default: the file's). "
                        "Usually 'acq' starts acq (through init, where the file has an init task), 'init' "
                        "runs only init, 'test' runs one acq cycle, 'idle' starts nothing.")
    pgroup.add_argument("--serial-number", help="Informational (as SOCS's Cryomech agent takes it): logged at start-up.")
    pgroup.add_argument("--port-number", dest="port", type=int, metavar="PORT",
                        help="The device port (as SOCS's Pfeiffer TC400 agent names it; same as --port).")
    pgroup.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="A param of the device file (its bus address, ...), checked like a task argument; "
                             "repeat for several.  Default: the file's.")
    return parser


def make_device(args, spec):
    """The :class:`~socs_tcp.devices.Device` for parsed *args* (lazily connecting).

    Raises:
        ValueError: a bad or missing address (names the value).
    """
    if args.ip_address and not args.host:
        args.host = args.ip_address
    if args.host and not args.port:
        args.port = spec.connection.port
    host, port = device_address(args)
    kwargs = {"connect": False, "max_read_size": args.max_read_size,
              "params": spec.param_values(param_assignments(args.param), texts=True)}
    if args.timeout is not None:
        kwargs["timeout"] = args.timeout
    return Device.from_file(spec, f"{host}:{port}" if ":" not in host else f"[{host}]:{port}", **kwargs)


def main(args=None):
    level = start_logging()
    parser = make_parser()
    args = site_config.parse_args(agent_class="DeviceAgent", parser=parser, args=args)
    try:
        spec = load(args.device_file)
        if args.sample_rate is not None:
            check_positive(args, "sample_rate")
        if args.timeout is not None:
            check_positive(args, "timeout")
        modes, _ = agent_modes(spec)
        if args.mode is not None and args.mode not in modes:
            raise ValueError(f"--mode {args.mode!r} is not a mode of device file {spec.name!r}; "
                             f"its modes: {', '.join(modes)}")
        device = make_device(args, spec)
        privs = write_privs(args)
    except (OSError, TypeError, ValueError) as e:
        parser.error(str(e))
    agent, runner = ocs_agent.init_site_agent(args)
    route_library_logs(agent.log, level)
    dev = DeviceAgent(agent, device, args.sample_rate)
    agent.log.info("device file {name} ({path}): {n} tasks, feed {feed}", name=spec.name, path=spec.path,
                   n=len(dev.tasks), feed=dev.feed)
    if args.serial_number:
        agent.log.info("serial number (from the site file): {sn}", sn=args.serial_number)
    writes = dev.register(args.mode, privs)
    log_access_control(agent.log, args, writes)
    runner.run(agent, auto_reconnect=True)


if __name__ == "__main__":
    main()
