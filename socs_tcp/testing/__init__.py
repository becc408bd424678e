"""Test support: the fault-injecting device emulator, simulators, and the
JSON-lines test server.

``from socs_tcp.testing import DeviceEmulator, create_device_emulator`` is the
public face; the emulator lives in :mod:`socs_tcp.testing.emulator`.
"""

from .emulator import DeviceEmulator, create_device_emulator

__all__ = ["DeviceEmulator", "create_device_emulator"]
