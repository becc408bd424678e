"""Tests of the benchmark suite's own code: the statistics and table helpers,
each part run briefly against its real servers on loopback, and the failure
paths (bad parameters, servers that hang up, parts that fail).

These check that the benchmarks measure what they claim and fail clearly;
they assert no performance figures.  Run with::

    .venv/bin/pytest bench/tests
"""

import importlib.util
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import pytest

BENCH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

import benchutil  # noqa: E402
import bulk  # noqa: E402
import links  # noqa: E402
import overhead  # noqa: E402
import recovery  # noqa: E402
import roundtrip  # noqa: E402
import suite  # noqa: E402
from benchutil import LogHistogram, Row  # noqa: E402

import agents as agent_bench  # noqa: E402  (bench/agents.py: first on sys.path)


@pytest.fixture
def hang_up_server():
    """A loopback server that accepts each connection, reads one request and closes it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(b"\x00" * 10)    # a little, then hang up
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        try:
            listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        listener.close()
        thread.join(5)


# ---------------------------------------------------------------- benchutil
def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert benchutil.percentile(values, 50) == 50
    assert benchutil.percentile(values, 99) == 99
    assert benchutil.percentile(values, 100) == 100
    assert benchutil.percentile(values, 0) == 1
    assert benchutil.percentile([7], 99) == 7


@pytest.mark.parametrize("values, q, needle", [([], 50, "empty"), ([1, 2], 101, "101"), ([1, 2], -1, "-1")])
def test_percentile_rejects_bad_input(values, q, needle):
    with pytest.raises(ValueError, match=needle):
        benchutil.percentile(values, q)


def test_describe_scales_and_rejects_empty():
    d = benchutil.describe([0.003, 0.001, 0.002], scale=1e3)
    assert d["n"] == 3 and d["median"] == pytest.approx(2.0) and d["min"] == pytest.approx(1.0)
    assert d["max"] == pytest.approx(3.0) and d["p99"] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="no values"):
        benchutil.describe([])


def test_log_histogram_counts_merges_and_round_trips():
    h = LogHistogram(1e-6, 1.0, 10)
    h.add([1e-5, 1e-5, 1e-3, 5.0, 1e-9])     # out-of-range values land in the end bins
    assert h.total == 5
    xs, ys = h.cdf()
    assert ys[-1] == 1.0 and all(a <= b for a, b in zip(ys, ys[1:]))
    assert xs == sorted(xs)
    other = LogHistogram.from_dict(json.loads(json.dumps(h.to_dict())))
    other.merge(h)
    assert other.total == 10
    assert LogHistogram().cdf() == ([], [])


@pytest.mark.parametrize("kwargs, needle", [
    ({"low": 0}, "low"), ({"low": 2.0, "high": 1.0}, "low"), ({"per_decade": 0}, "per_decade"),
    ({"per_decade": 2.5}, "per_decade")])
def test_log_histogram_rejects_bad_bins(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        LogHistogram(**kwargs)


def test_log_histogram_refuses_to_merge_different_bins():
    with pytest.raises(ValueError, match="different bins"):
        LogHistogram(per_decade=10).merge(LogHistogram(per_decade=20))
    data = LogHistogram(per_decade=10).to_dict()
    data["counts"] = data["counts"][:-1]
    with pytest.raises(ValueError, match="counts"):
        LogHistogram.from_dict(data)


def test_tables_blank_repeated_parts_and_escape_rst():
    rows = [Row("part A", "first", "1 x", result="PASS"), Row("part A", "second*", "2 x", target="<= 1 s"),
            Row("part B", "third|", result="MISS")]
    lines = benchutil.format_table(rows)
    assert lines[0].split()[:2] == ["part", "measured"]
    assert lines[2].startswith("part A") and lines[3].startswith(" ") and lines[4].startswith("part B")
    rst = benchutil.rst_table(rows)
    assert "second\\*" in rst and "third\\|" in rst and "**PASS**" in rst and "**MISS**" in rst
    from docutils.core import publish_doctree
    from docutils.utils import Reporter
    doctree = publish_doctree(rst, settings_overrides={"report_level": Reporter.WARNING_LEVEL + 1,
                                                       "halt_level": Reporter.WARNING_LEVEL})
    assert len(list(doctree.findall(lambda n: n.tagname == "row"))) == 4   # header + 3


def test_wait_for_returns_the_value_or_names_what_timed_out():
    assert benchutil.wait_for(lambda: 42, 1, "the answer") == 42
    with pytest.raises(TimeoutError, match="the impossible"):
        benchutil.wait_for(lambda: None, 0.1, "the impossible", interval=0.01)


def test_process_figures_are_plausible():
    assert benchutil.cpu_seconds() > 0
    assert benchutil.rss_bytes() > 1 << 20
    assert benchutil.process_cpu_seconds(os.getpid()) > 0
    assert benchutil.process_cpu_seconds(2 ** 22 + 12345) is None


# ---------------------------------------------------------------- round trips
def test_roundtrip_run_measures_every_client_side_by_side():
    report = roundtrip.run(seconds=0.2, rounds=1, warmup=0.0, placement="none", log=lambda m: None)
    summary = report["summary"]
    assert {roundtrip.BASELINE, roundtrip.NO_TIMEOUT, *roundtrip.TARGET_CLIENTS} <= set(summary)
    assert summary[roundtrip.BASELINE]["ratio_vs_bare"] == 1.0
    for name, row in summary.items():
        assert row["rate"] > 0 and row["latency_p99_us"] >= row["latency_median_us"] > 0
        assert LogHistogram.from_dict(report["histograms"][name]).total == report["rounds"][name][0]["round_trips"]
    rows = roundtrip.summary_rows(report)
    targets = [r for r in rows if r.target]
    assert [r.what for r in targets] == list(roundtrip.TARGET_CLIENTS)
    assert all(r.result in ("PASS", "MISS") for r in targets)


@pytest.mark.parametrize("kwargs, needle", [
    ({"seconds": 0}, "seconds"), ({"payload": 0}, "payload"), ({"rounds": 0}, "rounds"),
    ({"warmup": -1}, "warmup"), ({"placement": "elsewhere"}, "placement"), ({"slice_seconds": 0}, "slice_seconds")])
def test_roundtrip_rejects_bad_parameters(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        roundtrip.run(**kwargs)


def test_roundtrip_client_reports_a_wrong_reply():
    def round_trip():
        return b"not the echo"
    with pytest.raises(RuntimeError, match="wrong reply"):
        roundtrip.check_first_reply(round_trip, b"expected")


def test_roundtrip_clients_take_turns_in_rotating_order(monkeypatch):
    # a fake clock: each round trip takes 1 ms; the clients record the order they ran in
    ran = []
    clock = [0]

    def client(name):
        def round_trip():
            clock[0] += 1_000_000
            if not ran or ran[-1] != name:
                ran.append(name)
        return name, round_trip
    opened = [client("a"), client("b"), client("c")]
    monkeypatch.setattr(roundtrip.time, "perf_counter_ns", lambda: clock[0])
    measured = roundtrip.run_interleaved(opened, 0.03, 0.01)
    # three turns of 10 ms each, the order rotated each turn
    assert ran == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    for name in "abc":
        figures, histogram = measured[name]
        assert figures["round_trips"] == 30 == histogram.total
        assert figures["rate"] == pytest.approx(1000.0)
        assert figures["latency_median_us"] == pytest.approx(1000.0)


def test_socs_path_must_hold_socs(tmp_path):
    with pytest.raises(ValueError, match="holds no socs package"):
        roundtrip.add_socs_path(str(tmp_path))
    roundtrip.add_socs_path(None)   # nothing to do


# ---------------------------------------------------------------- bulk
def test_bulk_run_checks_every_byte_of_every_client():
    report = bulk.run(mib=1, reps=2, rounds=1, placement="none", log=lambda m: None)
    for name, row in report["summary"].items():
        assert row["transfers"] == 2 and row["mib_per_s"] > 0 and row["cpu_s_per_gib"] >= 0, name
    assert report["summary"][bulk.BASELINE]["ratio_vs_bare"] == 1.0
    assert set(report["target_met"]) == set(bulk.TARGET_CLIENTS)
    assert [r.what for r in bulk.summary_rows(report) if r.target] == list(bulk.TARGET_CLIENTS)


def test_bulk_pattern_and_first_difference():
    data = bulk.pattern(1000)
    assert data[:3] == b"\x00\x01\x02" and data[256] == 0 and len(data) == 1000
    changed = bytearray(data)
    changed[700] ^= 0xFF
    assert bulk.first_difference(changed, data) == 700
    assert bulk.first_difference(data[:10], data) == 10
    assert bulk.first_difference(data, bytes(data)) is None


def test_bulk_client_reports_wrong_bytes():
    expected = bulk.pattern(1 << 16)
    corrupt = bytearray(expected)
    corrupt[-1] ^= 1
    with pytest.raises(RuntimeError, match=f"first difference at byte {(1 << 16) - 1}"):
        bulk.run_client(lambda: corrupt, expected, 1)


@pytest.mark.parametrize("factory", [bulk.make_bare, bulk.make_socs_tcp_readinto, bulk.make_socs_tcp_read_bytes,
                                     bulk.make_socs_tcp_recv])
def test_bulk_clients_fail_clearly_when_the_server_hangs_up(hang_up_server, factory):
    transfer, close = factory(hang_up_server, 1 << 20)
    try:
        with pytest.raises(ConnectionError) as info:
            transfer()
        if factory is bulk.make_bare:
            assert "after 10 of 1048576 bytes" in str(info.value)
    finally:
        close()


@pytest.mark.parametrize("kwargs, needle", [
    ({"mib": 0}, "mib"), ({"mib": True}, "mib"), ({"reps": 0}, "reps"), ({"rounds": 1.5}, "rounds"),
    ({"placement": "same"}, "placement")])
def test_bulk_rejects_bad_parameters(kwargs, needle):
    params = {"mib": 1, "reps": 1, "rounds": 1, "placement": "none", **kwargs}
    with pytest.raises(ValueError, match=needle):
        bulk.check_parameters(**params)
    with pytest.raises(ValueError, match=needle):
        bulk.run(**params)


def test_bulk_command_line_rejects_bad_values(capsys):
    with pytest.raises(SystemExit) as info:
        bulk.main(["--mib", "-1"])
    assert info.value.code == 2 and "mib must be" in capsys.readouterr().err


# ---------------------------------------------------------------- emulator process
def _connects(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


def test_emulator_process_goes_down_and_up_and_stops():
    device = agent_bench.EmulatorProcess(n_fields=2, count=2)
    try:
        assert len(device.ports) == 2 and device.port == device.ports[0]
        with socket.create_connection(("127.0.0.1", device.ports[1]), timeout=5) as sock:
            sock.sendall(b"Q1\nhello\n")
            reply = b""
            while reply.count(b"\n") < 2:
                reply += sock.recv(64)
        assert reply == b"1.5\nhello\n"
        t_down = device.command("down")
        assert not any(_connects(p) for p in device.ports)
        t_up = device.command("up")
        assert t_up >= t_down and all(_connects(p) for p in device.ports)
        with pytest.raises(ValueError, match="'reboot'"):
            device.command("reboot")
    finally:
        device.close()
    assert device._proc.poll() is not None
    with pytest.raises(RuntimeError, match="has exited"):
        device.command("up")


def test_emulator_process_rejects_a_bad_count():
    with pytest.raises(ValueError, match="count"):
        agent_bench.EmulatorProcess(count=0)


# ---------------------------------------------------------------- recovery
def test_recovery_summary_judges_the_slowest_outage():
    outages = [{"length_s": 0.5, "observed_s": 0.4, "first_good_cycle_s": 0.35},
               {"length_s": 0.5, "observed_s": 0.9, "first_good_cycle_s": 0.85},
               {"length_s": 2.0, "observed_s": 1.2, "first_good_cycle_s": 0.95}]
    report = recovery.summarise(outages, (0.5, 2.0), 2, None)
    assert report["target_met"] is False
    assert report["summary"]["observed"]["max"] == 1.2
    assert report["summary"]["by_length"]["0.5"]["observed"]["median"] == pytest.approx(0.65)
    rows = recovery.summary_rows(report)
    assert rows[-1].result == "MISS" and rows[-1].target == "<= 1 s"
    assert recovery.summarise(outages[:2], (0.5,), 2, 2.0)["target_met"] is True


@pytest.mark.parametrize("lengths, repeats, rate, needle", [
    ((), 1, None, "at least one"), ((-1,), 1, None, "-1"), ((1,), 0, None, "repeats"), ((1,), 1, 0, "rate")])
def test_recovery_rejects_bad_parameters(lengths, repeats, rate, needle):
    with pytest.raises(ValueError, match=needle):
        recovery.check_parameters(lengths, repeats, rate)


def test_recovery_parses_lengths():
    assert recovery.parse_lengths("0.5,2,5") == [0.5, 2.0, 5.0]
    with pytest.raises(ValueError, match="'two'"):
        recovery.parse_lengths("1,two")


@pytest.mark.integration
def test_recovery_measures_a_real_outage():
    from socs_tcp_stack.stack import Stack
    with agent_bench.EmulatorProcess(n_fields=1) as device:
        stack = Stack()
        try:
            stack.start()
            report = recovery.measure(stack, device, lengths=(0.2,), repeats=2, rate=5.0, log=lambda m: None,
                                      seed=1)
        finally:
            stack.stop()
    assert len(report["outages"]) == 2
    for outage in report["outages"]:
        # generous sanity bounds only: the device was down, then answered again
        assert outage["down_s"] >= 0.2 and 0 < outage["observed_s"] < 10
        assert outage["first_good_cycle_s"] <= outage["observed_s"]


# ---------------------------------------------------------------- many links
def test_links_worker_keeps_every_link_busy():
    report = links.run(n_links=3, rate=5.0, seconds=1.0, idle_seconds=0.3, modes=("loop", "threads"),
                       log=lambda m: None)
    for mode in ("loop", "threads"):
        result = report["modes"][mode]
        polling = result["polling"]
        assert polling["errors"] == 0, polling["first_errors"]
        # every query that came due in the window was answered; how many came due in
        # one second is the machine's business (the worker checked each link answers first)
        assert polling["queries"] == polling["due"]
        assert result["idle"]["rss_bytes"] > 0 and "cpu_percent" in result["per_link"]
    assert len(links.summary_rows(report)) == 4


def test_links_worker_reports_links_that_cannot_connect():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()          # nothing listens there any more
    with pytest.raises(RuntimeError, match="could not connect"):
        links.run_worker([port], 1.0, 0.2, 0.1, "loop")


@pytest.mark.parametrize("kwargs, needle", [
    ({"n_links": 0}, "links"), ({"rate": 0}, "rate"), ({"seconds": -1}, "seconds"),
    ({"idle_seconds": 0}, "idle_seconds"), ({"modes": ("threads", "fibres")}, "modes"), ({"modes": ()}, "modes")])
def test_links_rejects_bad_parameters(kwargs, needle):
    params = {"n_links": 2, "rate": 1.0, "seconds": 1.0, "idle_seconds": 1.0, "modes": ("loop",), **kwargs}
    with pytest.raises(ValueError, match=needle):
        links.run(**params)


# ---------------------------------------------------------------- suite and plots
def test_suite_rejects_unknown_parts_and_bad_out(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        suite.main(["--only", "bulk,warp"])
    assert info.value.code == 2 and "unknown part 'warp'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        suite.main(["--only", "bulk", "--skip", "bulk"])
    assert "no part left" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        suite.main(["--only", "bulk", "--out", str(blocker / "sub")])
    assert "cannot create" in capsys.readouterr().err


def test_suite_runs_a_part_and_writes_table_json_and_plots(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(suite.SETTINGS["quick"], "bulk", {"mib": 1, "reps": 1, "rounds": 1, "placement": "none"})
    out = tmp_path / "bench"
    assert suite.main(["--quick", "--only", "bulk", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "socs_tcp readinto" in printed and "quick run of" in printed
    results = json.loads((out / "results.json").read_text())
    assert set(results["parts"]) == {"bulk"} and results["errors"] == {}
    assert "socs_tcp readinto" in (out / "summary.txt").read_text()
    assert (out / "summary.inc").read_text().count("list-table") == 1
    if importlib.util.find_spec("matplotlib") is None:      # plots need the bench extra
        assert "plots skipped" in printed
        return
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert width > 100 and height > 100


def test_suite_reports_a_failed_part_and_exits_1(monkeypatch, capsys):
    monkeypatch.setitem(suite.SETTINGS["quick"], "links", {"n_links": 0, "rate": 1.0, "seconds": 1.0,
                                                           "idle_seconds": 1.0})
    assert suite.main(["--quick", "--only", "links"]) == 1
    printed = capsys.readouterr().out
    assert "ERROR" in printed and "links must be an int" in printed


def test_plots_skip_parts_without_data(tmp_path):
    pytest.importorskip("matplotlib")
    import plots
    assert plots.draw_all({"parts": {}}, str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []


def test_acq_trace_analysis_finds_the_worst_cycle_and_what_surrounded_it():
    # (start, wall, CPU time) of each poll; where: (poll start, the poll's CPU, the device's CPU)
    rec = {"poll": [(0.000, 0.0005, 0.0002), (0.002, 0.0005, 0.0002), (0.004, 0.0200, 0.0060), (0.026, 0.0005, 0.0002)],
           "pub": [(0.001, 0.0001), (0.003, 0.0001)], "stats": [(0.001, 0.0001)],
           "gc": [(0.005, 0.001, 0), (9.0, 0.5, 2)],
           "where": [(0.000, 0, 0), (0.004, 0, 1), (0.026, 1, None)]}
    result = agent_bench.analyse_trace(rec, 500.0)
    assert result["poll"]["n"] == 4 and result["poll"]["max_ms"] == pytest.approx(20.0)
    assert result["poll_cpu"]["max_ms"] == pytest.approx(6.0)
    assert result["cycle"]["n"] == 3
    worst = result["worst"][0]
    assert worst["cycle_ms"] == pytest.approx(22.0) and worst["poll_ms"] == pytest.approx(20.0)
    assert worst["since_publish_ms"] == pytest.approx(1.0) and worst["gc_ms"] == [pytest.approx(1.0)]
    assert worst["device_same_cpu"] is False, "the device ran on CPU 1 during the slow poll on CPU 0"
    assert result["gc"]["gen0"]["n"] == 1 and result["gc"]["gen2"] is None, "only collections inside the trace"
    same, other = result["placement"]["same"], result["placement"]["other"]
    assert (same["polls"], other["polls"]) == (1, 1), "a look that found no device thread counts in neither"
    assert other["wall"]["p50_ms"] == pytest.approx(20.0) and same["cpu"]["p50_ms"] == pytest.approx(0.2)


def test_placements_name_the_cpus_of_agent_and_device():
    assert agent_bench.placement_cpus("unpinned", [0, 1]) == (None, None)
    assert agent_bench.placement_cpus("shared", [3, 1]) == ({1}, {1})
    assert agent_bench.placement_cpus("split", [3, 1]) == ({1}, {3})
    with pytest.raises(ValueError, match=r"'split' needs two CPUs.*\[2\]"):
        agent_bench.placement_cpus("split", [2])
    with pytest.raises(ValueError, match="unknown placement 'apart'"):
        agent_bench.placement_cpus("apart", [0, 1])


def test_agent_bench_refuses_split_placement_on_one_cpu(monkeypatch, capsys):
    monkeypatch.setattr(agent_bench.os, "sched_getaffinity", lambda pid: {0})
    with pytest.raises(SystemExit) as info:
        agent_bench.main(["--placement", "split"])
    assert info.value.code == 2 and "needs two CPUs" in capsys.readouterr().err


def _affinity_of_child():
    out = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return set(json.loads(out))


def test_spawning_on_pins_the_children_and_restores_this_thread():
    mine = os.sched_getaffinity(0)
    cpu = max(mine)
    with agent_bench.spawning_on({cpu}):
        assert _affinity_of_child() == {cpu}
    assert os.sched_getaffinity(0) == mine
    with pytest.raises(RuntimeError, match="inside"):
        with agent_bench.spawning_on({cpu}):
            raise RuntimeError("inside")
    assert os.sched_getaffinity(0) == mine, "restored when the block raises too"
    with agent_bench.spawning_on(None):
        assert _affinity_of_child() == mine


def test_emulator_process_runs_every_thread_on_the_cpus_given():
    cpu = max(os.sched_getaffinity(0))
    with agent_bench.EmulatorProcess(n_fields=1, cpus={cpu}) as device:
        with socket.create_connection(("127.0.0.1", device.port), timeout=5) as sock:
            sock.sendall(b"Q0\n")
            reply = b""
            while not reply.endswith(b"\n"):
                reply += sock.recv(64) or b"(closed)\n"
            assert reply == b"0.5\n"
            threads = os.listdir(f"/proc/{device.pid}/task")
            assert len(threads) > 1, "the emulator serves from threads of its own"
            assert all(os.sched_getaffinity(int(tid)) == {cpu} for tid in threads)


def test_acq_instance_is_tcp_bus_or_the_device_file_agent(tmp_path):
    from device_agent import bench_device_file

    from socs_tcp.devices import load
    kind, argv = agent_bench.acq_instance(5000, 100.0)
    assert kind == "TCPBusAgent" and argv.count("--acq-query") == 1
    assert [a for a in argv if isinstance(a, str) and a.startswith("f")] == [f"f{i}=Q{i}" for i in range(10)]
    path = tmp_path / "bench10.yaml"
    path.write_text(bench_device_file(agent_bench.N_FIELDS))
    kind, argv = agent_bench.acq_instance(5000, 100.0, path)
    assert kind == "DeviceAgent" and argv[argv.index("--device-file") + 1] == str(path)
    assert len(load(path).polling.items) == agent_bench.N_FIELDS   # the file is valid, ten queries


def test_agent_bench_refuses_an_unknown_agent(capsys):
    with pytest.raises(SystemExit) as info:
        agent_bench.main(["--agent", "scpi"])
    assert info.value.code == 2 and "invalid choice: 'scpi'" in capsys.readouterr().err


def test_wait_study_clients_include_the_spin_and_all_reply():
    with roundtrip.EchoServer() as server:
        for name, factory in roundtrip._wait_clients():
            round_trip, close = factory(server.port, b"ping\n")
            try:
                assert round_trip() == b"ping\n", name
            finally:
                close()


def test_overhead_measures_each_path_and_puts_the_real_os_back(capsys):
    from socs_tcp.transport import connection
    real_os = connection.os
    figures = overhead.measure(calls=200, rounds=2)
    assert set(figures) == {"bare loop", "wrnrd_until", "query", "general path"}
    assert all(value > 0 for value in figures.values())
    assert connection.os is real_os
    overhead.main(["--calls", "100", "--rounds", "1"])
    out = capsys.readouterr().out
    assert "general path" in out and "vs general" in out


@pytest.mark.parametrize("calls, rounds", [(0, 1), (10, 0)])
def test_overhead_rejects_bad_counts(calls, rounds):
    with pytest.raises(ValueError, match="must be >= 1"):
        overhead.measure(calls=calls, rounds=rounds)
