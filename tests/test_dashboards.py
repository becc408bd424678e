"""The Grafana dashboards and their provisioning, checked without Grafana.

Fast tests: the provisioning files and the dashboard JSON are well formed and
consistent (data source uid, op code mappings, template variables), and the
query expansion of :mod:`socs_tcp_stack.dashboards` behaves as Grafana's.

Integration tests: a real InfluxDB (``influxd``) filled by OCS's own
``InfluxDBAgent`` from real agents (``ScpiInstrumentAgent`` and
``TCPBusAgent`` on the SCPI simulator, and the ``RegistryAgent``), all over a
real crossbar router.  Every target of every panel is expanded the way
Grafana does it - ``$timeFilter``, ``$__interval`` and the template
variables, each variable evaluated with its own query against the same
InfluxDB - and must return data.  Then the simulator goes away and the
operation-state panel must show the SCPI agent's ``acq`` as DEGRADED (op
code 8), and RUNNING again once the simulator is back.
"""

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from socs_tcp.simulators.scpi import ScpiSimulator
from socs_tcp_stack import dashboards as dash
from socs_tcp_stack.localstack import build_stack, influxdb_help, wait_for_feeds
from socs_tcp_stack.stack import influxd_path

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCE_UID = "ocs-influxdb"
DB = "ocs_feeds"

TIMEOUT = 1.0    # device timeout of the agents, seconds
RATE = 4.0       # acq cycles per second
DATA_DEADLINE = 90.0
STATE_DEADLINE = 45.0


def wait_for(condition, timeout, what, interval=0.25):
    """Poll ``condition()`` until it returns a truthy value; fail with the last value after *timeout*."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def boards():
    return dash.load_dashboards(GRAFANA / "dashboards")


def panels_of(board):
    out = []

    def walk(panels):
        for panel in panels:
            out.append(panel)
            walk(panel.get("panels", []))
    walk(board["panels"])
    return out


def find_panel(board, title_prefix):
    matches = [p for p in panels_of(board) if p.get("title", "").startswith(title_prefix)]
    assert len(matches) == 1, f"expected one panel titled {title_prefix!r}, found {[p.get('title') for p in matches]}"
    return matches[0]


# ======================================================================
# fast tests: files and query expansion


def test_datasource_provisioning():
    config = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yaml").read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "influxdb" and source["uid"] == DATASOURCE_UID
    assert source["url"] == "http://influxdb:8086"
    assert source["database"] == DB and source["jsonData"]["dbName"] == DB
    assert source["access"] == "proxy"
    assert source["jsonData"].get("version", "InfluxQL") == "InfluxQL"


def test_dashboard_provider_points_at_the_mounted_folder(boards):
    config = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "socs_tcp.yaml").read_text())
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert len(boards) >= 3


def test_dashboards_are_well_formed(boards):
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids), f"dashboard uids must be unique: {uids}"
    for name, board in boards.items():
        assert board["title"] and board["schemaVersion"] >= 30, name
        ids = [p["id"] for p in panels_of(board)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids {ids}"
        variables = board["templating"]["list"]
        assert variables, f"{name} has no template variable"
        for var in variables:
            assert var["type"] == "query" and var["datasource"]["uid"] == DATASOURCE_UID, (name, var["name"])
        for panel in panels_of(board):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == DATASOURCE_UID, (name, panel["title"])
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), (name, panel["title"])
            assert panel.get("targets"), f"{name}: panel {panel['title']!r} has no query"
            assert panel.get("description"), f"{name}: panel {panel['title']!r} has no description"
        for panel, target in dash.iter_targets(board):
            query = target["query"]
            assert target["rawQuery"] is True and target["refId"], (name, panel["title"])
            assert "$timeFilter" in query, f"{name}: {panel['title']!r} ignores the time range: {query}"
            if "GROUP BY time(" in query:
                assert "GROUP BY time($__interval)" in query, f"{name}: {panel['title']!r} has a fixed interval"
            # every $name is a macro or a variable of this dashboard (interpolate raises otherwise)
            dummy = {var["name"]: ["x"] for var in variables}
            dash.interpolate(query, dummy, list(dummy))


def test_every_op_code_has_a_mapping(boards):
    from ocs.base import OpCode

    board = boards["agent_operations"]
    mapped_panels = [p for p in panels_of(board) if p["fieldConfig"]["defaults"].get("mappings")]
    assert len(mapped_panels) >= 2
    for panel in mapped_panels:
        (mapping,) = panel["fieldConfig"]["defaults"]["mappings"]
        options = mapping["options"]
        for code in OpCode:
            assert options[str(code.value)]["text"] == code.name, (panel["title"], code)
            assert options[str(code.value)]["color"], (panel["title"], code)
        assert options["8"]["color"] not in (options["3"]["color"], "text"), "DEGRADED must stand out from RUNNING"


def test_bus_field_variable_leaves_out_the_health_fields(boards):
    from socs_tcp_agents.common import HEALTH_FIELDS

    (var,) = [v for v in boards["device_feeds"]["templating"]["list"] if v["name"] == "bus_field"]
    keys = [[name, "float"] for name in (*HEALTH_FIELDS, "output_voltage", "idn", "errors_total")]
    values = dash.variable_values(var["query"], [{"columns": ["fieldKey", "fieldType"], "values": keys}],
                                  var["regex"])
    assert values == ["output_voltage", "idn", "errors_total"]


def test_interpolate_macros_and_variables():
    query = 'SELECT mean("v") FROM /^$agent$/ WHERE $timeFilter GROUP BY time($__interval) -- $__interval_ms [[n]]'
    out = dash.interpolate(query, {"agent": ["observatory.scpi-psu", "observatory.tcp-bus"], "n": ["3"]},
                           ["agent"], time_filter="time > now() - 1h", interval="2s")
    assert out == (r'SELECT mean("v") FROM /^(observatory\.scpi-psu|observatory\.tcp-bus)$/ '
                   'WHERE time > now() - 1h GROUP BY time(2s) -- 2000 3')
    # one value of a multi-value variable is escaped too; ${name:regex} forces the regex form
    assert dash.interpolate("/^$a$/", {"a": ["a.b"]}, ["a"]) == r"/^a\.b$/"
    assert dash.interpolate("${a:regex}|${a}", {"a": ["a.b"]}) == r"a\.b|a.b"
    assert dash.interpolate("$__interval_ms", interval="1m") == "60000"


@pytest.mark.parametrize("query, values, message", [
    ("SELECT $nosuch", {}, r"unknown variable \$nosuch"),
    ("SELECT ${a:csv}", {"a": ["1"]}, "unsupported variable format"),
    ("SELECT $a", {"a": []}, "at least one value"),
    ("SELECT $a", {"a": ["1", "2"]}, "single-value variable got several"),
])
def test_interpolate_refuses_what_grafana_would_not_expand(query, values, message):
    with pytest.raises(ValueError, match=message):
        dash.interpolate(query, values)


@pytest.mark.parametrize("interval", ["", "10", "1 s", "5w", None])
def test_interpolate_refuses_a_bad_interval(interval):
    with pytest.raises(ValueError, match="interval"):
        dash.interpolate("$__interval", interval=interval)


def test_interpolate_type_errors():
    with pytest.raises(TypeError, match="query must be a str"):
        dash.interpolate(b"SELECT 1")
    with pytest.raises(TypeError, match="value must be a str"):
        dash.regex_escape(3)


def test_variable_values_picks_columns_like_grafana():
    tag_values = [{"columns": ["key", "value"], "values": [["feed", "scpi"], ["feed", "tcp_bus"], ["feed", "scpi"]]}]
    assert dash.variable_values('SHOW TAG VALUES WITH KEY = "feed"', tag_values) == ["scpi", "tcp_bus"]
    measurements = [{"columns": ["name"], "values": [["observatory.a"], ["observatory.b"]]}]
    assert dash.variable_values("SHOW MEASUREMENTS", measurements, r"/\.(b)$/") == ["b"]
    assert dash.variable_values("SHOW MEASUREMENTS", measurements, "/OBSERVATORY.A/i") == ["observatory.a"]
    with pytest.raises(ValueError, match="flag"):
        dash.variable_values("SHOW MEASUREMENTS", measurements, "/a/x")
    with pytest.raises(ValueError, match="bad variable regex"):
        dash.variable_values("SHOW MEASUREMENTS", measurements, "/(/")


def test_resolve_variables_chains_and_checks_the_selection():
    board = {"templating": {"list": [
        {"name": "agent", "type": "query", "multi": True, "query": "SHOW MEASUREMENTS"},
        {"name": "field", "type": "query", "includeAll": True, "query": "SHOW FIELD KEYS FROM /^$agent$/"},
        {"name": "fixed", "type": "custom", "query": "a, b"},
    ]}}
    asked = []

    def run(query):  # stands in for InfluxDB: pure logic under test
        asked.append(query)
        if query.startswith("SHOW MEASUREMENTS"):
            return [{"columns": ["name"], "values": [["lab.x-1"], ["lab.y"]]}]
        return [{"columns": ["fieldKey", "fieldType"], "values": [["volt", "float"]]}]

    values, regex_names = dash.resolve_variables(board, run, selected={"agent": ["lab.x-1"], "fixed": ["b"]})
    assert values == {"agent": ["lab.x-1"], "field": ["volt"], "fixed": ["b"]}
    assert regex_names == ["agent", "field"]
    assert asked == ["SHOW MEASUREMENTS", r"SHOW FIELD KEYS FROM /^lab\.x-1$/"]
    values, _ = dash.resolve_variables(board, run, selected={"agent": [dash.ALL]})
    assert values["agent"] == ["lab.x-1", "lab.y"] and values["fixed"] == ["a", "b"]
    assert asked[-1] == r"SHOW FIELD KEYS FROM /^(lab\.x-1|lab\.y)$/"
    with pytest.raises(ValueError, match="not among its options"):
        dash.resolve_variables(board, run, selected={"agent": ["lab.z"]})
    with pytest.raises(ValueError, match="unknown variables"):
        dash.resolve_variables(board, run, selected={"nosuch": ["1"]})
    with pytest.raises(ValueError, match="has no options"):
        dash.resolve_variables(board, lambda q: [])


def test_expand_target_needs_a_raw_query():
    with pytest.raises(ValueError, match="not a raw InfluxQL query"):
        dash.expand_target({"refId": "A", "rawQuery": False, "query": "SELECT 1"}, {}, [])
    with pytest.raises(ValueError, match="not a raw InfluxQL query"):
        dash.expand_target({"refId": "A", "rawQuery": True}, {}, [])


def test_load_dashboards_reports_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no dashboard JSON"):
        dash.load_dashboards(tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        dash.load_dashboards(tmp_path)
    (tmp_path / "broken.json").write_text(json.dumps({"title": "no panels"}))
    with pytest.raises(ValueError, match="not a Grafana dashboard"):
        dash.load_dashboards(tmp_path)


def test_column_values_skips_nulls():
    series = [{"columns": ["time", "a", "b"], "values": [[1, None, 2], [2, 3, None]]},
              {"columns": ["time", "a"], "values": [[3, 4]]}]
    assert dash.column_values(series) == [2, 3, 4]
    assert dash.column_values(series, "a") == [3, 4]


# ======================================================================
# integration: agents -> OCS InfluxDBAgent -> InfluxDB -> panel queries


@pytest.fixture(scope="module")
def influxd():
    path = influxd_path()
    if path is None:
        reason = "influxd (InfluxDB 1.x) is not installed: apt-get install influxdb (./scripts/test does it as root)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


class Site:
    """The local stack with InfluxDB, as ``./scripts/run-local`` starts it (agents with fast settings)."""

    def __init__(self, local):
        self.local = local
        self.stack = local.stack
        self.influx = local.influxdb
        self.sim_port = local.simulator.port

    @property
    def simulator(self):
        return self.local.simulator

    @simulator.setter
    def simulator(self, value):
        self.local.simulator = value

    def run(self, query):
        return self.influx.query(query, db=DB)


@pytest.fixture(scope="module")
def site(influxd):
    # build_stack cleans up by itself if it fails part-way
    local = build_stack(sample_rate=RATE, influxdb=True, registry_wait_time=1,
                        agent_args={iid: ["--timeout", str(TIMEOUT)] for iid in ("scpi-psu", "tcp-bus")})
    try:
        assert sorted(local.stack.agents) == ["influxdb-publisher", "registry", "scpi-psu", "tcp-bus", "tpg366"]
        yield Site(local)
    finally:
        local.stop()
    for proc in (local.influxdb, local.stack.crossbar, *local.stack.agents.values()):
        assert not proc.alive(), f"{proc!r} still running"
    assert not local.simulator.running
    assert not local.device_simulator._running


@pytest.mark.integration
def test_local_stack_reports_where_the_feeds_go(site):
    latest = wait_for_feeds(site.influx, timeout=DATA_DEADLINE)
    assert latest is not None, "no scpi data reached InfluxDB"
    assert isinstance(latest[1], float)
    text = "\n".join(influxdb_help(site.influx))
    assert site.influx.url in text and DB in text and "ocs-influxdb" in text
    assert 'q=SELECT last("voltage") FROM "observatory.scpi-psu"' in text


@pytest.mark.integration
def test_local_stack_runs_a_device_file_agent_on_its_simulator(site):
    """The ``tpg366`` DeviceAgent polls the TPG 366 simulator made from the same
    file, and its ``pressures`` feed lands in InfluxDB with SOCS's field names."""
    query = 'SELECT last("pressure_ch1"), last("pressure_ch6") FROM "observatory.tpg366" WHERE "feed" = \'pressures\''
    deadline = time.monotonic() + DATA_DEADLINE
    while True:
        series = site.run(query)
        if series and series[0].get("values"):
            break
        assert time.monotonic() < deadline, "no tpg366 pressures reached InfluxDB"
        time.sleep(0.5)
    _, p1, p6 = series[0]["values"][-1]
    assert isinstance(p1, float) and isinstance(p6, float) and p1 > 0 and p6 > 0


def evaluate(site, board, selected=None):
    """``{(panel title, refId): (query, series)}`` for every target of *board*."""
    values, regex_names = dash.resolve_variables(board, site.run, selected=selected, interval="1s")
    out = {}
    for panel, target in dash.iter_targets(board):
        query = dash.expand_target(target, values, regex_names, interval="1s")
        out[(panel["title"], target["refId"])] = (query, site.run(query))
    return values, out


@pytest.mark.integration
def test_every_panel_query_returns_data(site, boards):
    from socs_tcp_agents.common import HEALTH_FIELDS

    def missing():
        empty = []
        for name, board in boards.items():
            try:
                _, results = evaluate(site, board)
            except ValueError as exc:  # a variable without options yet
                empty.append((name, str(exc)))
                continue
            empty += [(name, title, query) for (title, _), (query, series) in results.items()
                      if not dash.column_values(series)]
        return empty

    deadline = time.monotonic() + DATA_DEADLINE
    while missing():
        if time.monotonic() >= deadline:
            pytest.fail(f"panels still without data after {DATA_DEADLINE} s: {missing()}; "
                        f"publisher log:\n{site.stack.agents['influxdb-publisher'].log_tail()}")
        time.sleep(0.5)

    values, _ = dash.resolve_variables(boards["device_feeds"], site.run)
    assert values["scpi"] == ["observatory.scpi-psu"]
    assert values["bus"] == ["observatory.tcp-bus"]
    assert set(values["bus_field"]) == {"output_voltage", "idn"}, "the health fields must be left out"
    assert not set(values["bus_field"]) & set(HEALTH_FIELDS)
    values, _ = dash.resolve_variables(boards["link_health"], site.run)
    assert set(values["agent"]) == {"observatory.scpi-psu", "observatory.tcp-bus", "observatory.tpg366"}
    values, _ = evaluate(site, boards["agent_operations"])
    assert values["registry"] == ["observatory.registry"]
    # (the registry does not receive its own heartbeat: WAMP does not echo a publication to its publisher)
    assert {"observatory_scpi_psu_acq", "observatory_tcp_bus_acq", "observatory_influxdb_publisher_record",
            "observatory_scpi_psu_init", "observatory_tcp_bus_wrnrd_until"} <= set(values["operation"])

    # the values are the devices' own, not just "something"
    _, results = evaluate(site, boards["device_feeds"])
    (_, table), = [v for k, v in results.items() if k[0] == "Latest replies"]
    assert "SOCS-TCP,SIM-PSU1,SN0001,1.0" in dash.column_values(table, "last_idn")
    (_, temperature), = [v for k, v in results.items() if k[0] == "Temperature"]
    assert all(0 < t < 100 for t in dash.column_values(temperature)), "simulated temperatures are near 25 C"


def op_state(site, boards, operation, title="Operation state"):
    """The latest op code of *operation* in what the op-state panel's query returns."""
    board = boards["agent_operations"]
    panel = find_panel(board, title)
    values, regex_names = dash.resolve_variables(board, site.run, selected={"operation": [operation]}, interval="1s")
    (target,) = panel["targets"]
    series = site.run(dash.expand_target(target, values, regex_names, interval="1s"))
    codes = dash.column_values(series, f"last_{operation}")
    return codes[-1] if codes else None


def latest(series):
    """The last non-null value in *series*, or ``None``."""
    values = dash.column_values(series)
    return values[-1] if values else None


def panel_result(site, board, title, selected=None):
    """The series the (single) target of the panel *title* returns."""
    _, results = evaluate(site, board, selected)
    (series,) = [series for (panel_title, _), (_, series) in results.items() if panel_title == title]
    return series


@pytest.mark.integration
def test_outage_shows_as_degraded_then_clears(site, boards):
    acq = "observatory_scpi_psu_acq"
    psu = {"agent": ["observatory.scpi-psu"]}
    wait_for(lambda: op_state(site, boards, acq) == 3, STATE_DEADLINE, "scpi-psu acq RUNNING (3)")

    site.simulator.stop()                          # the instrument goes away
    try:
        wait_for(lambda: op_state(site, boards, acq) == 8, STATE_DEADLINE, "scpi-psu acq DEGRADED (8)")
        # the at-a-glance panels agree
        now = panel_result(site, boards["agent_operations"], "Processes now")
        assert dash.column_values(now, f"last_{acq}") == [8]
        wait_for(lambda: latest(panel_result(site, boards["link_health"], "Connected", psu)) == 0,
                 STATE_DEADLINE, "the link shown as down")
        assert latest(panel_result(site, boards["link_health"], "Consecutive failures", psu)) >= 1
    finally:
        site.simulator = ScpiSimulator(port=site.sim_port).start()   # back on the same address
    wait_for(lambda: op_state(site, boards, acq) == 3, STATE_DEADLINE, "scpi-psu acq RUNNING (3) again")
    wait_for(lambda: latest(panel_result(site, boards["link_health"], "Connected", psu)) == 1,
             STATE_DEADLINE, "the link shown as up again")


def test_local_stack_refuses_influxdb_without_influxd(monkeypatch):
    import socs_tcp_stack.localstack as localstack

    monkeypatch.setattr(localstack, "influxd_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="influxd"):
        localstack.build_stack(influxdb=True)   # refused before anything is started
