"""A driver written for socs.tcp.TCPInterface works unchanged on socs_tcp.TCPInterface."""

import time

import pytest

from socs_tcp import TCPInterface  # the only line a SOCS driver changes


class Cryostat(TCPInterface):
    """Written exactly as SOCS drivers are: positional super().__init__,
    send() bytes, recv() until the reply is complete, touching self.comm."""

    def __init__(self, ip_address, port=501, timeout=10, *args, **kwargs):
        super().__init__(ip_address, port, timeout)

    def get_data(self):
        self.send(b"TEMP?\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            data += self.recv()
        return float(data.decode().strip())


def agent_loop(device, cycles, session):
    """The SOCS docs' acq loop: ConnectionError -> degraded, recovery clears it."""
    readings = []
    for _ in range(cycles):
        try:
            readings.append(device.get_data())
            session["degraded"] = False
        except ConnectionError:
            session["degraded"] = True
            session["outages"] += 1
            time.sleep(0.05)
    return readings


@pytest.fixture
def cryo(make_emulator):
    return make_emulator({"TEMP?": "4.2"}, write_termination="\r\n", read_termination="\r\n")


def test_socs_style_driver_survives_a_device_restart(cryo):
    device = Cryostat("127.0.0.1", cryo.port, timeout=1)
    assert device.comm is not None and device.ip_address == "127.0.0.1" and device.port == cryo.port
    session = {"degraded": False, "outages": 0}
    assert agent_loop(device, 3, session) == [4.2, 4.2, 4.2]

    cryo.refuse_connections()           # the device reboots ...
    assert agent_loop(device, 2, session) == []
    assert session["degraded"] is True and session["outages"] == 2
    cryo.refuse_connections(False)      # ... and comes back on the same port
    deadline = time.monotonic() + 5
    readings = []
    while not readings and time.monotonic() < deadline:
        readings = agent_loop(device, 1, session)
    assert readings == [4.2] and session["degraded"] is False


def test_restart_between_polls_needs_no_failed_cycle(cryo):
    device = Cryostat("127.0.0.1", cryo.port, timeout=1)
    assert device.get_data() == 4.2
    cryo.restart()
    assert device.get_data() == 4.2  # the stale socket is noticed before writing


def test_constructor_does_not_raise_when_device_is_down(cryo):
    port = cryo.port
    cryo.shutdown()
    device = Cryostat("127.0.0.1", port, timeout=1)
    assert device.comm is None
    with pytest.raises(ConnectionError):
        device.get_data()


def test_hooks_can_be_patched_like_socs_tests_do(cryo, monkeypatch):
    device = Cryostat("127.0.0.1", cryo.port, timeout=1)
    calls = []
    real = TCPInterface._connect

    def spy(self, address):
        calls.append(address)
        return real(self, address)
    monkeypatch.setattr(TCPInterface, "_connect", spy)
    device._reset()
    assert calls == [("127.0.0.1", cryo.port)] and device.comm is not None
    monkeypatch.setattr(TCPInterface, "_connect", lambda self, address: None)
    device._reset()
    assert device.comm is None
    with pytest.raises(ConnectionError):
        device.send(b"TEMP?\r\n")
