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


class CountingLink:
    """Always answers; counts the polls; each poll's values carry its number."""

    def __init__(self, stall_on=None, stall=0.0):
        self.n = 0
        self.stall_on, self.stall = stall_on, stall

    def poll(self):
        self.n += 1
        if self.n == self.stall_on:
            time.sleep(self.stall)
        return {"n": self.n}

    def stats(self):
        return {"connected": True}


def run_cycles(poller, rate, cycles, timeout=30.0):
    """Run ``poller`` until it has run ``cycles`` cycles, then stop it; returns its session."""
    session = FakeSession()
    thread = threading.Thread(target=poller.run, args=(session, rate), daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while poller.cycles < cycles:
            assert time.monotonic() < deadline, f"only {poller.cycles} cycles"
            time.sleep(0.01)
    finally:
        poller.stop()
        thread.join(10)
    assert not thread.is_alive()
    return session


def test_fast_acq_publishes_every_sample_in_batches():
    link = CountingLink()
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    session = run_cycles(poller, 2000.0, 300)
    samples, stamps = [], []
    for feed, message in obj.published:
        if feed != "data":
            continue
        if "timestamps" in message:
            assert len(message["timestamps"]) == len(message["data"]["n"]) > 1
            samples += message["data"]["n"]
            stamps += message["timestamps"]
        else:
            samples.append(message["data"]["n"])
            stamps.append(message["timestamp"])
    assert samples == list(range(1, link.n + 1)), "every sample once, in order, the last ones flushed at stop"
    assert stamps == sorted(stamps)
    health = [m for feed, m in obj.published if feed == "link_health"]
    assert len(health) < link.n, "health is published per update, not per cycle, at fast rates"
    assert session.data["cycles"] == poller.cycles == link.n
    assert session.data["values"] == {"n": link.n}


def test_slow_acq_publishes_each_cycle_as_it_happens():
    link = CountingLink()
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    run_cycles(poller, 10.0, 3)                   # 1 / UPDATE_INTERVAL: still one update per cycle
    data = [m for feed, m in obj.published if feed == "data"]
    assert all("timestamp" in m and "timestamps" not in m for m in data)
    assert [m["data"]["n"] for m in data] == list(range(1, link.n + 1))
    assert len([m for feed, m in obj.published if feed == "link_health"]) == link.n


def test_a_cycle_late_by_less_than_a_period_is_taken_not_missed():
    link = CountingLink(stall_on=1, stall=0.3)      # period 1 s: the next cycle is due 0.7 s after the stall
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    session = run_cycles(poller, 1.0, 2)
    assert poller.missed == 0 and session.data["missed_cycles"] == 0
    assert session.data["lateness_max"] >= 0


def test_a_stall_of_several_periods_skips_slots_and_counts_them():
    link = CountingLink(stall_on=1, stall=1.0)      # five periods of 0.2 s
    obj = FakeAgentObj()
    poller = Poller(obj, link, link.poll, "data", "block")
    run_cycles(poller, 5.0, 2)
    assert poller.missed >= 4, "the slots the stall swallowed are missed cycles"


def test_overlapping_fast_runs_restore_the_switch_interval_once_the_last_ends():
    import sys

    before = sys.getswitchinterval()
    links = [CountingLink(), CountingLink()]
    pollers = [Poller(FakeAgentObj(), link, link.poll, "data", "block") for link in links]
    threads = [threading.Thread(target=p.run, args=(FakeSession(), 1000.0), daemon=True) for p in pollers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while not all(p.cycles for p in pollers):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sys.getswitchinterval() < before
    pollers[0].stop()
    threads[0].join(10)
    assert sys.getswitchinterval() < before, "the other run is still fast"
    pollers[1].stop()
    threads[1].join(10)
    assert sys.getswitchinterval() == before
