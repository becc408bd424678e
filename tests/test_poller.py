"""The acq loop's schedule and degraded handling (pure logic: a fake agent and link)."""

import threading
import time

from socs_tcp_agents.common import Poller

from socs_tcp.errors import LinkTimeoutError


class FakeLog:
    def __init__(self):
        self.lines = []

    def error(self, fmt, **kw):
        self.lines.append(("error", fmt.format(**kw)))

    def info(self, fmt, **kw):
        self.lines.append(("info", fmt.format(**kw)))


class FakeAgentObj:
    def __init__(self):
        self.log = FakeLog()
        self.published = []
        self.agent = self

    def publish_to_feed(self, feed, message):
        self.published.append((feed, message))


class FakeSession:
    degraded = False
    data = None


class FakeLink:
    """Down until ``up_at``; reports the backoff's next attempt like TCPInterface."""

    def __init__(self, up_at, retry=0.05):
        self.up_at = up_at
        self.retry = retry
        self.calls = []

    def poll(self):
        now = time.monotonic()
        self.calls.append(now)
        if now < self.up_at:
            raise ConnectionError("device unreachable")
        return {"value": 1.0}

    def next_attempt_in(self):
        return None if time.monotonic() >= self.up_at else self.retry

    def stats(self):
        return {"connected": time.monotonic() >= self.up_at}


def run_until(poller, condition, timeout=10.0):
    # period 100 s: far longer than any stall of a loaded machine, so a cycle seen
    # within a test can only be the first one or an early retry
    thread = threading.Thread(target=poller.run, args=(FakeSession(), 0.01), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert time.monotonic() < deadline, "condition not reached"
            time.sleep(0.01)
    finally:
        poller.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_degraded_poller_retries_when_the_backoff_allows_not_a_period_later():
    link = FakeLink(up_at=time.monotonic() + 0.3)
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    run_until(poller, lambda: any(feed == "data" for feed, _ in obj.published))
    recovered = next(t for t in link.calls if t >= link.up_at)
    assert recovered - link.up_at < 10.0, "recovery waited for the 100 s period"
    assert [level for level, _ in obj.log.lines] == ["error", "info"], "one line per outage and one on recovery"
    assert poller.missed == 0, "early retries are not missed cycles"


def test_no_early_retry_while_connected_but_timing_out():
    class TimingOut(FakeLink):
        def poll(self):
            self.calls.append(time.monotonic())
            raise LinkTimeoutError("no reply")

        def next_attempt_in(self):
            return None  # connected: there is no reconnect to hurry

    link = TimingOut(up_at=float("inf"))
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    started = time.monotonic()
    run_until(poller, lambda: time.monotonic() - started > 0.5)
    assert len(link.calls) == 1, "a silent device is polled on the schedule only"
