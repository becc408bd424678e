"""One deadline per operation: the sans-IO Deadline, then every phase of a
real operation over loopback with a per-call timeout smaller than the link's."""

import pytest

from socs_tcp.core.deadline import Deadline
from socs_tcp.errors import LinkTimeoutError


class FakeClock:
    """A clock the test moves by hand (pure logic, no sleeping)."""

    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def test_deadline_counts_down_and_expires():
    clock = FakeClock()
    d = Deadline.start(0.5, 10.0, clock=clock)
    assert d.timeout == 0.5
    assert d.remaining() == pytest.approx(0.5)
    assert not d.expired
    clock.now += 0.2
    assert d.remaining() == pytest.approx(0.3)
    assert d.bound(1.5) == pytest.approx(0.3)
    assert d.bound(0.1) == pytest.approx(0.1)
    assert d.bound(None) == pytest.approx(0.3)
    assert d.poll_ms() == 300
    assert d.elapsed() == pytest.approx(0.2)
    d.check("a reply")
    clock.now += 0.3
    assert d.expired
    assert d.remaining() == 0.0
    assert d.poll_ms() == 0
    with pytest.raises(LinkTimeoutError, match="waiting for x: the operation's timeout of 0.5 s ran out"):
        d.check(lambda: "waiting for x")


def test_deadline_uses_the_default_and_none_is_unlimited():
    clock = FakeClock()
    assert Deadline.start(None, 2.0, clock=clock).timeout == 2.0
    forever = Deadline.start(None, None, clock=clock)
    clock.now += 1e6
    assert forever.remaining() is None
    assert not forever.expired
    assert forever.bound(3.0) == 3.0
    assert forever.bound(None) is None
    assert forever.poll_ms() == -1
    forever.check("never raises")


def test_poll_ms_rounds_up_so_a_wait_never_ends_early():
    clock = FakeClock()
    assert Deadline.start(0.0004, None, clock=clock).poll_ms() == 1


@pytest.mark.parametrize("bad, exc", [
    (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("soon", TypeError), (True, TypeError), ([1], TypeError),
])
def test_bad_timeout_is_refused_naming_the_value(bad, exc):
    with pytest.raises(exc, match="timeout must be") as info:
        Deadline.start(bad, 1.0)
    assert repr(bad) in str(info.value) or str(bad) in str(info.value)
