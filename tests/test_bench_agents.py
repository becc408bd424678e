"""The acq benchmark's machine probe (bench/agents.py): its analysis on
made-up units of work, the attribution of missed cycles, and one short real
probe process."""

import importlib.util
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load_agents_bench():
    # bench/ is not a package, and the script imports its neighbour benchutil
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("socs_tcp_bench_agents", BENCH / "agents.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_agents_bench()


def units_at(rate_hz, seconds, cost, start=100.0, slow=()):
    """Units of work every 1/rate_hz s from *start*; inside each ``(t0, t1, factor)``
    of *slow* they cost *factor* times *cost*."""
    out = []
    for i in range(int(rate_hz * seconds)):
        t = start + i / rate_hz
        factor = next((f for a, b, f in slow if a <= t < b), 1.0)
        out.append((t, cost * factor))
    return out


def test_slow_windows_found_merged_and_measured():
    units = units_at(1000, 2.0, 20e-6, slow=[(100.50, 100.53, 12.0), (101.20, 101.21, 6.0)])
    typical, windows = bench.slow_windows(units)
    assert typical == pytest.approx(20e-6)
    assert len(windows) == 2
    (s1, l1), (s2, l2) = windows
    assert s1 == pytest.approx(100.50) and l1 == pytest.approx(0.030)   # three 10 ms bins merged into one window
    assert s2 == pytest.approx(101.20) and l2 == pytest.approx(0.010)


def test_slow_windows_threshold_and_lone_units():
    # 4x slower is under the 5x threshold; a single very slow unit is not a window
    units = units_at(1000, 1.0, 20e-6, slow=[(100.30, 100.34, 4.0), (100.700, 100.701, 100.0)])
    assert bench.slow_windows(units)[1] == []
    # fewer than two units in a bin never make it slow
    sparse = [(100.0 + 0.02 * i, 20e-6 if i % 2 else 1e-3) for i in range(50)]
    assert bench.slow_windows(sparse)[1] == []
    assert bench.slow_windows([]) == (0.0, [])


def test_analyse_probe_summary():
    units = units_at(1000, 2.0, 20e-6, slow=[(100.50, 100.56, 10.0)])
    late = [0.0001] * 999 + [0.004]
    result = bench.analyse_probe(late, units)
    assert result["n"] == 1000
    assert result["max_ms"] == pytest.approx(4.0)
    assert result["p50_ms"] == pytest.approx(0.1)
    assert result["unit_us"] == pytest.approx(20.0)
    assert result["slow_count"] == 1
    assert result["slow_longest_ms"] == pytest.approx(60.0)
    assert result["slow_fraction"] == pytest.approx(0.06 / 1.999, rel=1e-3)
    empty = bench.analyse_probe([], [])
    assert empty["slow_count"] == 0 and empty["slow_fraction"] == 0.0 and empty["max_ms"] == 0.0


def test_missed_near_counts_against_chance():
    readings = [(0.0, 0), (0.5, 0), (1.0, 7), (1.5, 7), (2.0, 9), (2.5, 12)]
    windows = [[0.8, 0.03],    # inside (0.5, 1.0]: its 7 misses are near
               [1.60, 0.02]]   # inside (1.5, 2.0], and over 0.15 s before 2.0
    # (2.0, 2.5] counted 3 misses with no window in it or ending within the margin before it
    near = bench.missed_near(readings, windows)
    assert near == {"missed": 9, "intervals": 3, "intervals_near": 2, "chance": pytest.approx(2 / 5)}


def test_missed_near_margin_and_missing_data():
    readings = [(0.0, 0), (0.5, 0), (1.0, 4)]
    ended_before = [[0.40, 0.02]]          # ended at 0.42: 0.08 s before the interval (0.5, 1.0] began
    assert bench.missed_near(readings, ended_before)["missed"] == 4
    assert bench.missed_near(readings, ended_before, margin=0.05)["missed"] == 0
    assert bench.missed_near(readings, None) is None
    assert bench.missed_near([(0.0, 0)], []) == {"missed": 0, "intervals": 0, "intervals_near": 0, "chance": 0.0}


def test_probe_process_reports_and_stops():
    probe = bench.NoiseProbe()
    try:
        time.sleep(0.5)   # a measuring window (nothing to wait for): a few hundred samples
    finally:
        result = probe.stop()
    assert probe._proc.poll() is not None
    assert result is not None and result["n"] > 10
    assert result["unit_us"] > 0
    assert 0.0 <= result["slow_fraction"] <= 1.0
    assert all(length > 0 for _, length in result["slow_windows"])
