"""Tests of bench/device_agent.py's own code: its device file loads and polls
what TCPBusAgent polls, and the parse-cost part runs briefly against a real
simulator process.  No performance figure is asserted."""

import os
import sys

import pytest

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import device_agent  # noqa: E402

from socs_tcp.devices import loads  # noqa: E402


def test_the_bench_device_file_polls_the_same_ten_queries_as_the_bus_agent():
    spec = loads(device_agent.bench_device_file(), file="bench10.yaml")
    assert [f.name for f in spec.polling.feed_fields] == [f"f{i}" for i in range(device_agent.N_FIELDS)]
    assert [spec.operations[item.operation].request for item in spec.polling.items] == \
        [f"Q{i}" for i in range(device_agent.N_FIELDS)]
    _, args = device_agent.instance_args("tcp_bus", 1234, 5.0, "unused")
    assert args[args.index("--acq-query") + 1:] == [f"f{i}=Q{i}" for i in range(device_agent.N_FIELDS)]


@pytest.mark.parametrize("device, op", [("tpg366", "pressures"), ("cryomech_cpa", "status")])
def test_parse_cost_part_runs_against_a_simulator_process(device, op):
    lines = []
    result = device_agent.measure_parse(device, op, 20, lines.append)
    assert result["device"] == device and result["operation"] == op
    assert result["transaction_us"] > 0 and result["parse_us"] > 0 and result["reply_bytes"] > 0
    assert result["ratio"] == pytest.approx(result["parse_us"] / result["transaction_us"])
    assert lines and f"{device}.{op}" in lines[0]


def test_a_simulator_process_that_cannot_start_is_reported(tmp_path):
    with pytest.raises(RuntimeError, match="did not report its port"):
        device_agent.SimulatorProcess(tmp_path / "missing.yaml", timeout=20)


def test_cycle_cost_part_runs_both_agents_against_the_echo_device(tmp_path):
    from agents import EmulatorProcess

    path = tmp_path / "bench10.yaml"
    path.write_text(device_agent.bench_device_file())
    lines = []
    with EmulatorProcess(device_agent.N_FIELDS) as device:
        result = device_agent.measure_cycle_cost(device.port, path, seconds=0.1, rounds=2, log=lines.append)
    assert len(result["rounds"]["tcp_bus"]) == len(result["rounds"]["device"]) == 2
    assert result["tcp_bus_hz"] > 0 and result["device_hz"] > 0
    assert result["ratio"] == pytest.approx(result["device_hz"] / result["tcp_bus_hz"])
    assert lines and "cycle cost" in lines[0]
