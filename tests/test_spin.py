"""The spin-or-block choice for reply waits: the pure chooser, and a link
using it against real loopback devices."""

import time

import pytest

from socs_tcp import LinkTimeoutError, TCPInterface
from socs_tcp.core.spin import SpinChooser
from socs_tcp.testing import DeviceEmulator

US = 1e-6


def drive(chooser, wait_of, count):
    """Run ``count`` waits through ``chooser``; ``wait_of(spun, i)`` gives the
    wait in seconds.  Returns the list of ``spun`` per wait."""
    spun, history, skip = False, [], 0
    for i in range(count):
        history.append(spun)
        if skip:
            skip -= 1
            continue
        spun = chooser.update(spun, wait_of(spun, i))
        skip = chooser.skip
    return history


def test_spins_when_spinning_gets_the_reply_sooner():
    chooser = SpinChooser()
    history = drive(chooser, lambda spun, i: (9 if spun else 15) * US, 5000)
    assert chooser.spin
    assert sum(history[-4000:]) / 4000 > 0.97   # tries of blocking are rare once settled


@pytest.mark.parametrize("spin_us, block_us", [(12, 5), (10, 10), (1000, 1000)],
                         ids=["peer-on-this-cpu", "no-gain", "slow-device"])
def test_blocks_when_spinning_does_not_pay(spin_us, block_us):
    chooser = SpinChooser()
    history = drive(chooser, lambda spun, i: (spin_us if spun else block_us) * US, 20000)
    assert not chooser.spin
    assert sum(history[-16000:]) / 16000 < 0.01  # spinning is tried about once in 200 waits


def test_one_stall_does_not_decide():
    """A single wait of a second (the machine stalled) among fast spins."""
    chooser = SpinChooser()
    history = drive(chooser, lambda spun, i: 1.0 if (spun and i == 7) else (9 if spun else 15) * US, 200)
    assert chooser.spin and history[-1]


def test_a_change_of_conditions_is_followed():
    """Spinning pays, then stops paying (load arrives), then pays again."""
    chooser = SpinChooser()

    def wait(spun, i):
        loaded = 20000 <= i < 40000
        return ((30 if loaded else 9) if spun else 15) * US

    history = drive(chooser, wait, 60000)

    def share(start, end):
        return sum(history[start:end]) / (end - start)
    assert share(15000, 20000) > 0.97
    assert share(30000, 40000) < 0.03
    assert share(55000, 60000) > 0.97


def test_medians_start_empty_and_follow_the_kept_waits():
    chooser = SpinChooser(burst=3, explore=3)
    assert chooser.medians() == (None, None)
    for w in (5, 1, 3):
        chooser.update(False, w * US)
    assert chooser.medians() == (3 * US, None)


@pytest.mark.parametrize("kwargs, named", [
    ({"window": 0}, "window"), ({"burst": 20, "explore": 16}, "burst=20"),
    ({"explore": 2048}, "explore_max=1024"), ({"margin": 1.5}, "margin"),
])
def test_bad_chooser_settings_are_refused_naming_them(kwargs, named):
    with pytest.raises(ValueError, match=named):
        SpinChooser(**kwargs)


@pytest.mark.parametrize("bad, exc", [("fast", TypeError), (True, TypeError), (-1e-6, ValueError),
                                      (float("nan"), ValueError), (0.5, ValueError)])
def test_bad_spin_wait_is_refused_naming_the_value(bad, exc):
    with pytest.raises(exc, match="spin_wait"):
        TCPInterface("127.0.0.1", 9, spin_wait=bad, connect=False)


@pytest.mark.parametrize("value", [0, None])
def test_spin_wait_off(value):
    link = TCPInterface("127.0.0.1", 9, spin_wait=value, connect=False)
    assert link.spin_wait is None and link._spin is None


@pytest.fixture
def device():
    dev = DeviceEmulator({"PING": "PONG"}, write_termination="\n").start()
    try:
        yield dev
    finally:
        dev.shutdown()


@pytest.mark.parametrize("force", [None, True, False], ids=["chosen", "always-spin", "never-spin"])
def test_replies_are_right_whichever_way_the_link_waits(device, force):
    with TCPInterface("127.0.0.1", device.port, 5, termination="\n") as link:
        for i in range(400):
            if force is not None:
                link._spin_next = force
            assert link.query("PING") == "PONG", i
        link.write("PING")
        assert link.recv(64) == b"PONG\n"   # a drop-in send/recv pair waits the same way


def test_a_slow_device_settles_on_blocking(device):
    """Replies 3 ms after the request: spinning (50 µs) cannot catch them."""
    device.set_delay(0.003)
    with TCPInterface("127.0.0.1", device.port, 5, termination="\n") as link:
        for _ in range(60):
            assert link.query("PING") == "PONG"
        assert link._spin.spin is False
        blocking, spinning = link._spin.medians()
        assert blocking >= 0.003 and spinning >= 0.003


def test_a_spinning_wait_holds_the_deadline(device):
    """A deadline shorter than the spin window ends the spin; a longer one
    is waited out in full after it."""
    device.set_delay(2.0)
    with TCPInterface("127.0.0.1", device.port, 5, termination="\n", spin_wait=0.005,
                      close_on_timeout=True) as link:
        for timeout in (0.001, 0.05):
            link._spin_next = True
            started = time.monotonic()
            with pytest.raises(LinkTimeoutError):
                link.query("PING", timeout=timeout)
            took = time.monotonic() - started
            assert timeout <= took < timeout + 0.5, f"timeout={timeout} took {took:.4f} s"
