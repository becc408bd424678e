"""Shared fixtures: emulated devices on loopback, cleaned up even on failure."""

import pytest

from socs_tcp.testing import DeviceEmulator


@pytest.fixture
def emulator():
    """An echo-style device: replies ``echo:<command>\\n`` to each ``\\n``-terminated command,
    and answers ``*IDN?`` with an identity string."""
    device = DeviceEmulator({"*IDN?": "ACME,MODEL1,42,1.0"}, write_termination="\n",
                            default_response=lambda cmd: f"echo:{cmd}").start()
    try:
        yield device
    finally:
        device.shutdown()


@pytest.fixture
def make_emulator():
    """Factory for extra emulators; all are shut down after the test."""
    made = []

    def make(*args, **kwargs):
        device = DeviceEmulator(*args, **kwargs).start()
        made.append(device)
        return device
    try:
        yield make
    finally:
        for device in made:
            device.shutdown()
