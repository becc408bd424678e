"""Test support: the fault-injecting device emulator, simulators, and the
JSON-lines test server, and record and replay (:mod:`socs_tcp.testing.recording`,
:mod:`socs_tcp.testing.proxy`, :mod:`socs_tcp.testing.replay`).

``from socs_tcp.testing import DeviceEmulator, create_device_emulator`` is the
public face; the emulator lives in :mod:`socs_tcp.testing.emulator`.
"""

from .emulator import DeviceEmulator, create_device_emulator
from .recording import Recorder, read_recording
from .replay import ReplayServer, replay_fixture

__all__ = ["DeviceEmulator", "create_device_emulator", "Recorder", "read_recording", "ReplayServer", "replay_fixture"]
