"""Device files: describe a TCP device once, in YAML; get its driver,
simulator, OCS agent, dashboard and docs page from that one file.

* :func:`load` reads and checks a file (by short name or path) and returns
  its :class:`DeviceSpec`; problems raise :class:`DeviceFileError` with
  ``file:line: key: message`` lines.
* :class:`Device` is the driver made from a file (a
  :class:`~socs_tcp.TCPInterface`): ``Device.from_file("tpg366", "host")``.
* :class:`~socs_tcp.devices.simulator.DeviceSimulator` serves the same file
  over TCP, with the emulator's faults.
* ``python -m socs_tcp.devices check|list|simulate|dashboard|docs|conform``.

The format is described in the documentation (``docs/devices/format.rst``).
"""

from .errors import DeviceError, DeviceFileError, DeviceFileProblem, DeviceInterlockError, DeviceReplyError
from .spec import (
    REQUIRED,
    AgentSpec,
    ArgSpec,
    ConnectionSpec,
    DeviceSpec,
    FieldSpec,
    OperationSpec,
    PollItem,
    PollSpec,
    TaskSpec,
    find,
    list_devices,
    load,
    loads,
)

__all__ = [
    "load", "loads", "find", "list_devices", "Device",
    "DeviceSpec", "ConnectionSpec", "OperationSpec", "ArgSpec", "FieldSpec", "PollSpec", "PollItem", "AgentSpec",
    "TaskSpec", "REQUIRED",
    "DeviceFileError", "DeviceFileProblem", "DeviceReplyError", "DeviceError", "DeviceInterlockError",
]


def __getattr__(name):
    # the driver imports the transport; load it on first use
    if name == "Device":
        from .driver import Device
        return Device
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
