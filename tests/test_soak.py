"""The chaos soak (bench/soak.py): its analysis on made-up records, its
argument checking, and a short soak of the real stack with every check."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _load_soak():
    # bench/ is not a package; load the script by path under a name that cannot clash
    path = Path(__file__).resolve().parent.parent / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("socs_tcp_bench_soak", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak = _load_soak()

# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("changes, error, needle", [
    ({"restarts": -1}, ValueError, "restart faults must be >= 0, got -1"),
    ({"floods": 1.5}, TypeError, "flood faults must be an int, got 1.5"),
    ({"restarts": 0, "silences": 0, "garbage": 0, "floods": 0, "crossbar_restarts": 0, "late_replies": 0}, ValueError,
     "no faults requested"),
    ({"duration": 10}, ValueError, "duration=10 s is too short"),
    ({"rate": 0}, ValueError, "rate must be a finite number > 0, got 0"),
    ({"restart_down": (2.0, 1.0)}, ValueError, "restart_down must be (min, max)"),
    ({"silence": (1.0, 3.0)}, ValueError, "longer than two device timeouts"),
    ({"max_fd_growth": -1}, ValueError, "max_fd_growth must be an int >= 0, got -1"),
    ({"rss_per_task_kib": float("nan")}, ValueError, "rss_per_task_kib must be a finite number >= 0, got nan"),
])
def test_config_names_the_bad_value(changes, error, needle):
    config = soak.SoakConfig(**changes)
    with pytest.raises(error) as info:
        config.validate()
    assert needle in str(info.value)


def test_command_line_rejects_bad_counts_before_starting_anything(capsys):
    with pytest.raises(SystemExit) as info:
        soak.main(["--restarts", "-2"])
    assert info.value.code == 2
    assert "got -2" in capsys.readouterr().err


def test_plan_starts_with_one_of_each_kind_and_keeps_the_counts():
    config = soak.SoakConfig(restarts=4, silences=2, garbage=1, floods=0, crossbar_restarts=1, late_replies=0,
                             seed=5)
    plan = soak.Soak(config).plan()
    warm = [f.kind for f in plan if f.warmup]
    assert warm == ["restart", "silent", "garbage", "crossbar"]
    assert all(f.warmup for f in plan[:len(warm)]) and not any(f.warmup for f in plan[len(warm):])
    kinds = [f.kind for f in plan]
    assert {k: kinds.count(k) for k in set(kinds)} == {"restart": 4, "silent": 2, "garbage": 1, "crossbar": 1}
    assert [f.kind for f in soak.Soak(config).plan()] == kinds   # the seed fixes the order

# ---------------------------------------------------------------- analysis on made-up records


def test_replies_and_values_are_classified():
    assert soak.classify_reply("soak-000007", "soak-000007") == "ok"
    assert soak.classify_reply("\x00garbage soak-000007", "soak-000007") == "prefixed"
    assert soak.classify_reply("soak-000006", "soak-000007") == "crossed"
    assert soak.classify_reply(None, "soak-000007") == "crossed"
    is_volt = lambda v: v == 0.0  # noqa: E731
    assert soak.classify_value(0.0, is_volt) == "ok"
    assert soak.classify_value(25.1, is_volt) == "crossed"          # another field's answer
    assert soak.classify_value("xxxx+0.000000E+00", is_volt) == "prefixed"
    assert soak.classify_value("soak-000003", is_volt) == "crossed"
    assert soak.classify_value(True, is_volt) == "crossed"


def test_outages_are_runs_of_cycles_without_data():
    health = [0.0, 0.1, 0.2, 0.3, 1.4, 1.5, 1.6, 1.7]
    data = [0.0, 0.1, 1.5, 1.6]                  # 0.2, 0.3, 1.4 failed; 1.7 failed and never recovered
    cycles = soak.cycles_from_feeds(health, data)
    outages = soak.find_outages("bus", cycles)
    assert [(o.last_good, o.first_bad, o.raised, o.recovered, o.settled, o.failed_cycles) for o in outages] == [
        (0.1, 0.2, 0.3, 1.5, 1.6, 3), (1.6, 1.7, None, None, None, 1)]
    # the window ends when the recovering poll is over: at the start of the next cycle
    assert outages[0].window == (0.1, 1.6) and outages[1].window == (1.6, float("inf"))
    assert outages[0].duration == pytest.approx(1.3) and outages[1].duration is None
    # the first failed poll ran from its cycle's start to the next cycle's start
    assert outages[0].failing == (0.2, 0.3) and outages[1].failing == (1.7, 1.7)


def test_a_gap_outside_every_window_is_found():
    times = [0.0, 0.1, 0.2, 1.2, 1.3, 3.0, 3.1]
    gaps = soak.find_gaps(times, 0.25)
    assert gaps == [(0.2, 1.2), (1.3, 3.0)]
    windows = [(0.1, 1.25)]
    assert soak.covered(gaps[0], windows)
    assert not soak.covered(gaps[1], windows)
    assert soak.overlaps((1.0, 2.0), windows) and not soak.overlaps(2.0, windows)


def test_resource_growth_over_a_bound_is_reported():
    before = {"bus": {"fds": 10, "threads": 4, "rss_kib": 80000}, "psu": {"fds": 10, "threads": 4, "rss_kib": 80000}}
    after = {"bus": {"fds": 11, "threads": 4, "rss_kib": 80100}, "psu": {"fds": 30, "threads": 9, "rss_kib": 80000}}
    bounds = {a: {"fds": 4, "threads": 2, "rss_kib": 16384} for a in ("bus", "psu")}
    assert soak.resource_growth(before, after, bounds) == [("psu", "fds", 20, 4), ("psu", "threads", 5, 2)]
    assert soak.resource_growth(before, before, bounds) == []


def test_resources_of_a_live_process_are_read_from_proc():
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    import os

    with socket.socket() as extra:
        assert extra.fileno() >= 0
        with_socket = soak.proc_resources(os.getpid())
    without = soak.proc_resources(os.getpid())
    assert with_socket["fds"] == without["fds"] + 1
    assert without["threads"] >= 1 and without["rss_kib"] > 0


def _settles(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_bytes_queued_on_a_loopback_connection_are_seen_until_read():
    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs /proc/net/tcp")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            conn, _ = server.accept()
            with conn:
                assert soak.tcp_queued(port) == 0
                conn.sendall(b"x" * 1000)
                # unread by the client (and, until it is acknowledged, unacknowledged too)
                assert soak.tcp_queued(port) >= 1000
                assert _settles(lambda: soak.tcp_queued(port) == 1000)
                got = b""
                while len(got) < 1000:
                    got += client.recv(4096)
                assert _settles(lambda: soak.tcp_queued(port) == 0)


def test_report_lists_failed_checks():
    report = {
        "passed": False,
        "checks": [{"name": "no crossed replies", "passed": False, "detail": "3 crossed"},
                   {"name": "agents alive", "passed": True, "detail": "yes"}],
        "summary": [{"label": "device restart", "injected": 2, "requested": 2, "survived": 1,
                     "outages": {"bus": 2, "psu": 1}, "outage_s": {"median": 0.8, "max": 1.2, "n": 3},
                     "back_after_s": None, "confirmed_after_s": {"median": 0.3, "max": 0.4, "n": 2}}],
        "tasks": {"bus": {"ok": 10, "crossed": 3}}, "soak_s": 50.0, "elapsed_s": 70.0,
        "config": {"seed": 11}, "machine": {"cpus": 2, "python": "3.11"},
    }
    text = soak.format_report(report)
    assert "[FAIL] no crossed replies: 3 crossed" in text and "[PASS] agents alive" in text
    assert "device restart" in text and "2/2" in text and "0.80 / 1.20" in text
    assert text.rstrip().endswith("soak FAILED")

# ---------------------------------------------------------------- the real thing, short


def _refused(port):
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


#: Runs a soak in a fresh interpreter and prints its report as JSON.  The soak's
#: feed recorder is an asyncio WAMP client, and txaio allows one framework per
#: process: other tests in this process import OCS, which chooses Twisted.
SHORT_SOAK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import soak
config = soak.SoakConfig(duration=50, restarts=3, silences=1, garbage=1, floods=1, crossbar_restarts=1,
                         workdir=sys.argv[2])
run = soak.Soak(config)
report = run.run()
report["text"] = soak.format_report(report)
report["counts"] = config.counts()
report["left_running"] = [repr(p) for p in run.stack.agents.values() if p.alive()] + (
    ["crossbar"] if run.stack.crossbar.alive() else [])
report["agent_pids"] = [p.pid for p in run.stack.agents.values()]
report["device_ports"] = [d.port for d in run.devices.values()]
print(json.dumps(report, default=str))
"""


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_short_soak_passes_every_check_and_cleans_up(tmp_path):
    bench = Path(__file__).resolve().parent.parent / "bench"
    done = subprocess.run([sys.executable, "-c", SHORT_SOAK, str(bench), str(tmp_path / "stack")],
                          capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, f"soak process failed:\n{done.stderr[-3000:]}"
    report = json.loads(done.stdout.strip().splitlines()[-1])
    text = report["text"]
    failed = [c["name"] for c in report["checks"] if not c["passed"]]
    assert not failed, f"failed checks {failed} (logs in {tmp_path / 'stack'}):\n{text}"
    assert {c["name"] for c in report["checks"]} == {
        "agents alive", "no crossed replies", "tasks outside faults", "degraded raised and cleared",
        "feed samples only missing in outages", "every fault survived", "resources bounded"}
    summary = {s["fault"]: s for s in report["summary"]}
    for kind, count in report["counts"].items():
        if count:
            assert summary[kind]["injected"] == summary[kind]["survived"] == count, text
    for agent in ("bus", "psu"):
        # every restart and the silence were outages; tasks succeeded and
        # feeds were recorded (how many depends on the machine's speed, so
        # only that there were some)
        assert summary["restart"]["outages"][agent] == 3 and summary["silent"]["outages"][agent] == 1, text
        assert report["tasks"][agent].get("ok", 0) > 0, text
        assert report["feeds"][agent]["data_samples"] > 0, text
    # nothing left running: agents and router stopped, devices closed
    assert report["left_running"] == []
    assert all(_gone(pid) for pid in report["agent_pids"] if pid)
    assert all(_refused(port) for port in report["device_ports"])
