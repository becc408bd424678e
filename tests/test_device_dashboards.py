"""Grafana dashboards generated from device files (socs_tcp.devices.dashboard).

Fast tests: every shipped device file with polling gives a well-formed
dashboard with the shape of the shipped ones (data source uid, raw InfluxQL
with ``$timeFilter`` and ``GROUP BY time($__interval)``, variables that
expand), one panel per feed field with its unit and its alarm/warning
thresholds; bad input is refused with a clear error; the CLI prints JSON.

Integration test, as tests/test_dashboards.py does for the shipped
dashboards: a real InfluxDB (``influxd``) filled by OCS's own
``InfluxDBAgent`` with the feeds of DeviceAgents (TPG 366 and Cryomech CPA,
against the independent emulators of tests/emulators) over a real crossbar
router; every target of every generated panel is expanded the way Grafana
does it (:mod:`socs_tcp_stack.dashboards`) and must return the devices' values.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from emulators import CryomechCPAEmulator, TPG366Emulator
from emulators.tpg366 import SOCS_FIXTURE_PRESSURES

from socs_tcp.devices import dashboard as devdash
from socs_tcp.devices import list_devices, load, loads
from socs_tcp_stack import dashboards as dash
from socs_tcp_stack.stack import InfluxDB, Stack, influxd_path

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy" / "grafana" / "dashboards"
DATASOURCE_UID = "ocs-influxdb"
DB = "ocs_feeds"
DATA_DEADLINE = 90.0


def polled_devices():
    return [name for name in list_devices() if load(name).polling is not None]


def panels_of(board):
    out = []

    def walk(panels):
        for panel in panels:
            out.append(panel)
            walk(panel.get("panels", []))
    walk(board["panels"])
    return out


def field_panels(board):
    return [p for p in panels_of(board) if p["type"] != "row" and "link_health" not in p["targets"][0]["query"]]


# ======================================================================
# fast tests


def test_every_shipped_device_with_polling_gets_a_dashboard():
    assert {"tpg366", "cryomech_cpa"} <= set(polled_devices())


@pytest.mark.parametrize("name", polled_devices())
def test_dashboard_is_well_formed_like_the_shipped_ones(name):
    spec = load(name)
    board = devdash.make_dashboard(spec)
    assert json.loads(devdash.dashboard_json(spec)) == board
    assert board["title"] and board["schemaVersion"] >= 30 and board["uid"]
    assert len(board["uid"]) <= 40
    shipped_uids = {b["uid"] for b in dash.load_dashboards(SHIPPED).values()}
    assert board["uid"] not in shipped_uids
    ids = [p["id"] for p in panels_of(board)]
    assert len(set(ids)) == len(ids)
    (var,) = board["templating"]["list"]
    assert var["type"] == "query" and var["datasource"]["uid"] == DATASOURCE_UID
    assert var["query"] == f"SHOW MEASUREMENTS WHERE \"feed\" = '{spec.polling.feed}'"
    for panel in panels_of(board):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == DATASOURCE_UID and panel["description"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    for _panel, target in dash.iter_targets(board):
        query = target["query"]
        assert target["rawQuery"] is True and target["datasource"]["uid"] == DATASOURCE_UID
        assert "$timeFilter" in query and "FROM /^$agent$/" in query, query
        if "GROUP BY time(" in query:
            assert "GROUP BY time($__interval)" in query
        dash.interpolate(query, {"agent": ["observatory.x"]}, ["agent"])     # every $name is known


@pytest.mark.parametrize("name", polled_devices())
def test_one_panel_per_feed_field_with_unit_and_thresholds(name):
    spec = load(name)
    board = devdash.make_dashboard(spec)
    panels = field_panels(board)
    fields = spec.polling.feed_fields
    assert len(panels) == len(fields)
    for panel, field in zip(panels, fields):
        (target,) = panel["targets"]
        assert f'("{field.name}")' in target["query"] and f"\"feed\" = '{spec.polling.feed}'" in target["query"]
        assert field.name in panel["title"]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults.get("unit") == devdash.grafana_unit(field.unit)
        if field.type in ("float", "int"):
            assert panel["type"] == "timeseries" and "mean(" in target["query"]
            assert defaults["thresholds"] == devdash.thresholds(field.alarm, field.warning)
            style = defaults["custom"]["thresholdsStyle"]["mode"]
            assert style == ("line+area" if (field.alarm or field.warning) else "off")
        else:
            assert panel["type"] == "stat" and "last(" in target["query"]


def test_tpg366_panels_keep_the_socs_field_names_and_show_the_limits():
    board = devdash.make_dashboard(load("tpg366"))
    panels = field_panels(board)
    assert [p["title"] for p in panels] == [f"pressure_ch{i} [mbar]" for i in range(1, 7)]
    defaults = panels[0]["fieldConfig"]["defaults"]
    assert defaults["unit"] == "pressurembar"
    # warning above 1e-2 mbar, alarm above 1 mbar (the file's limits)
    assert defaults["thresholds"]["steps"] == [{"color": "green", "value": None}, {"color": "orange", "value": 1.0e-2},
                                               {"color": "red", "value": 1.0}]
    assert "alarm above 1" in panels[0]["description"] and "warning above 0.01" in panels[0]["description"]


@pytest.mark.parametrize("alarm, warning, steps", [
    (None, None, [("green", None)]),
    ((1, 10), (2, 8), [("red", None), ("orange", 1), ("green", 2), ("orange", 8), ("red", 10)]),
    ((None, 100), None, [("green", None), ("red", 100)]),
    ((5, None), None, [("red", None), ("green", 5)]),
    (None, (None, 3), [("green", None), ("orange", 3)]),
    ((0, 10), (0, 5), [("red", None), ("green", 0), ("orange", 5), ("red", 10)]),   # shared low bound
    ((None, 0), None, [("green", None), ("red", 0)]),                                # Cryomech Alarm_State
])
def test_thresholds_colour_outside_the_limits(alarm, warning, steps):
    got = devdash.thresholds(alarm, warning)
    assert got["mode"] == "absolute"
    assert [(s["color"], s["value"]) for s in got["steps"]] == steps


@pytest.mark.parametrize("unit, grafana", [
    ("mbar", "pressurembar"), ("psi", "pressurepsi"), ("F", "fahrenheit"), ("K", "kelvin"), ("V", "volt"),
    ("A", "amp"), ("mA", "mamp"), ("h", "h"), ("%", "percent"), ("Hz", "hertz"), ("counts", "suffix: counts"),
    (None, None), ("", None),
])
def test_units_map_to_grafana_unit_ids(unit, grafana):
    assert devdash.grafana_unit(unit) == grafana


def test_the_datasource_uid_can_be_chosen():
    board = devdash.make_dashboard(load("tpg366"), datasource="my-influx")
    uids = {p["datasource"]["uid"] for p in panels_of(board) if "datasource" in p}
    uids |= {t["datasource"]["uid"] for _, t in dash.iter_targets(board)}
    uids |= {v["datasource"]["uid"] for v in board["templating"]["list"]}
    assert uids == {"my-influx"}


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_a_bad_datasource_is_refused(bad):
    with pytest.raises(ValueError, match="datasource uid must be a non-empty string"):
        devdash.make_dashboard(load("tpg366"), datasource=bad)


NO_POLLING = """\
device: bare
title: A device without polling
description: nothing is published
connection: {port: 5000}
queries:
  idn: {request: "*IDN?", reply: {fields: {idn: {}}}}
"""


def test_a_file_without_polling_has_no_dashboard():
    spec = loads(NO_POLLING, file="bare.yaml")
    with pytest.raises(ValueError, match="bare: the device file has no 'polling' section"):
        devdash.make_dashboard(spec)


def run_cli(argv):
    parser = argparse.ArgumentParser()
    devdash.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def test_cli_prints_the_dashboard_json(tmp_path):
    code, out, err = run_cli(["dashboard", "cryomech_cpa", "--datasource", "lab-db"])
    assert code == 0 and err == ""
    board = json.loads(out)
    assert board == devdash.make_dashboard(load("cryomech_cpa"), "lab-db")
    path = tmp_path / "bare.yaml"
    path.write_text(NO_POLLING)
    code, out, err = run_cli(["dashboard", str(path)])
    assert code == 1 and out == "" and "has no 'polling' section" in err


def test_cli_reports_a_bad_file_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(NO_POLLING.replace("idn: {}", "idn: {type: flaot}"))
    code, out, err = run_cli(["dashboard", str(path)])
    assert code == 1 and out == ""
    assert "broken.yaml:6:" in err and "flaot" in err


def test_cli_reports_an_unknown_device():
    code, out, err = run_cli(["dashboard", "no_such_device"])
    assert code == 1 and out == "" and "no_such_device" in err


def test_the_package_cli_has_the_dashboard_subcommand():
    proc = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "dashboard", "tpg366"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == devdash.make_dashboard(load("tpg366"))
    proc = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "dashboard", "tpg366", "--datasource", ""],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "datasource uid must be a non-empty string" in proc.stderr


# ======================================================================
# integration: DeviceAgents -> OCS InfluxDBAgent -> InfluxDB -> generated panel queries


@pytest.fixture(scope="module")
def influxd():
    path = influxd_path()
    if path is None:
        reason = "influxd (InfluxDB 1.x) is not installed: apt-get install influxdb (./scripts/test does it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def site(influxd):
    devices = {"tpg366": TPG366Emulator().start(), "cryomech_cpa": CryomechCPAEmulator().start()}
    stack = Stack()
    influx = None
    try:
        influx = InfluxDB(stack.workdir / "influxdb", databases=[DB])
        influx.start()
        stack.add_instance("InfluxDBAgent", "influxdb-publisher", [
            "--initial-state", "record", *influx.publisher_args, "--protocol", "line"])
        for name, device in devices.items():
            stack.add_instance("DeviceAgent", name.replace("_", "-"), [
                "--device-file", name, "--address", device.address, "--timeout", "1", "--sampling-frequency", "4",
                "--mode", "acq"])
        stack.start()
        for iid in ("influxdb-publisher", "tpg366", "cryomech-cpa"):
            stack.start_agent(iid, wait=False)
        for agent in stack.agents.values():
            agent.wait_ready(timeout=90)
        yield stack, influx, devices
    finally:
        try:
            for agent in stack.agents.values():
                agent.stop()
            if influx is not None:
                influx.stop()
        finally:
            stack.stop()
            for device in devices.values():
                device.stop()


def evaluate(influx, board):
    run = lambda q: influx.query(q, db=DB)  # noqa: E731
    values, regex_names = dash.resolve_variables(board, run, interval="1s")
    out = {}
    for panel, target in dash.iter_targets(board):
        query = dash.expand_target(target, values, regex_names, interval="1s")
        out[panel["title"]] = (query, run(query))
    return values, out


@pytest.mark.integration
def test_every_generated_panel_query_returns_the_devices_values(site):
    stack, influx, _ = site
    boards = {name: devdash.make_dashboard(load(name)) for name in ("tpg366", "cryomech_cpa")}

    def missing():
        empty = []
        for name, board in boards.items():
            try:
                _, results = evaluate(influx, board)
            except ValueError as exc:        # the variable has no options yet
                empty.append((name, str(exc)))
                continue
            empty += [(name, title, query) for title, (query, series) in results.items()
                      if not dash.column_values(series)]
        return empty

    deadline = time.monotonic() + DATA_DEADLINE
    while missing():
        if time.monotonic() >= deadline:
            pytest.fail(f"panels still without data after {DATA_DEADLINE} s: {missing()}; "
                        f"publisher log:\n{stack.agents['influxdb-publisher'].log_tail()}")
        time.sleep(0.5)

    values, results = evaluate(influx, boards["tpg366"])
    assert values["agent"] == ["observatory.tpg366"], "only the agent publishing the 'pressures' feed"
    for i, pressure in enumerate(SOCS_FIXTURE_PRESSURES, start=1):
        _, series = results[f"pressure_ch{i} [mbar]"]
        assert dash.column_values(series) and all(v == pytest.approx(pressure) for v in dash.column_values(series)), i
    _, connected = results["Device connected"]
    assert dash.column_values(connected)[-1] == 1
    values, results = evaluate(influx, boards["cryomech_cpa"])
    assert values["agent"] == ["observatory.cryomech-cpa"]
    _, series = results["Coolant_In_Temp [F]"]
    assert all(v == pytest.approx(65.627, abs=1e-3) for v in dash.column_values(series))
    _, series = results["Operating_State"]
    assert all(isinstance(v, (int, float)) for v in dash.column_values(series))
