"""pytest support for device files.

``device_simulator_fixture(name)`` makes a fixture that yields a started
:class:`~socs_tcp.devices.simulator.DeviceSimulator` and stops it after the
test, even on failure::

    tpg = device_simulator_fixture("tpg366", seed=1)

    def test_pressures(tpg):
        dev = Device.from_file("tpg366", tpg.address)
        assert len(dev.pressures()["pressure"]) == 6
"""

from .simulator import DeviceSimulator

__all__ = ["device_simulator_fixture"]


def device_simulator_fixture(name, *, seed=None, noise=True, scope="function"):
    """A pytest fixture serving the simulator of device file ``name`` on a free loopback port."""
    import pytest

    @pytest.fixture(scope=scope)
    def fixture():
        sim = DeviceSimulator(name, port=0, seed=seed, noise=noise).start()
        try:
            yield sim
        finally:
            sim.shutdown()
    return fixture
