"""Pure logic: reconnect policy and statistics."""

import random

import pytest

from socs_tcp import ReconnectPolicy
from socs_tcp.core.stats import LinkStats


def test_backoff_grows_to_the_cap_without_jitter():
    p = ReconnectPolicy(initial=0.1, factor=2, cap=1.0, jitter=0)
    assert [p.delay(k) for k in range(6)] == [0.0, 0.1, 0.2, 0.4, 0.8, 1.0]
    assert p.delay(10_000) == 1.0


def test_jitter_spreads_clients_but_stays_within_bounds():
    p = ReconnectPolicy(initial=1.0, cap=1.0, jitter=0.5, rng=random.Random(1))
    delays = [p.delay(3) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len({round(d, 3) for d in delays}) > 50


@pytest.mark.parametrize("kwargs, needle", [
    ({"initial": -1}, "initial"), ({"cap": float("inf")}, "cap"), ({"factor": 0.5}, "factor"),
    ({"jitter": 2}, "jitter"), ({"cooldown": "1"}, "cooldown"), ({"max_attempts": 1.5}, "max_attempts"),
])
def test_bad_policy_values(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        ReconnectPolicy(**kwargs)


def test_policy_coercion():
    assert ReconnectPolicy.coerce(None) == ReconnectPolicy()
    assert ReconnectPolicy.coerce({"cap": 5}).cap == 5
    with pytest.raises(TypeError, match="reconnect_policy"):
        ReconnectPolicy.coerce(3)


def test_stats_percentiles_and_failures():
    s = LinkStats(window=100)
    for i in range(1, 101):
        s.success(i / 1000)
    s.failure(timeout=True)
    s.failure()
    snap = s.snapshot(True)
    assert snap["latency_p50"] == pytest.approx(0.050, abs=0.002)
    assert snap["latency_p99"] == pytest.approx(0.099, abs=0.002)
    assert snap["latency_mean"] == pytest.approx(0.0505)
    assert snap["timeouts"] == 1 and snap["errors"] == 2 and snap["consecutive_failures"] == 2
    s.success(0.001)
    assert s.snapshot(True)["consecutive_failures"] == 0
