"""Tests for socs_tcp_stack.stack: config writers (fast) and a real local OCS stack (integration).

The integration tests start a real crossbar router and OCS's own FakeDataAgent
through ``ocs-agent-cli``, drive it with a real ``OCSClient``, restart the
router under it, and check that every process is gone afterwards.
"""

import json
import os
import socket
import time

import pytest

from socs_tcp_stack import stack
from socs_tcp_stack.stack import AgentProcess, Crossbar, Stack, free_port, group_members, write_crossbar_config, write_site_config

FAKE = "FakeDataAgent"


def poll(fn, timeout, what, interval=0.1):
    """Call *fn* until it returns a truthy value (exceptions count as 'not yet'); fail after *timeout*."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:  # not ready yet
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last error: {last!r}")
        time.sleep(interval)


def assert_group_gone(pgid):
    assert group_members(pgid) == [], f"processes left in group {pgid}: {group_members(pgid)}"


# --------------------------------------------------------------------------
# fast tests: no processes


def test_free_port_is_loopback_and_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.org"])
def test_non_loopback_hosts_are_refused(host, tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        free_port(host)
    with pytest.raises(ValueError, match="loopback"):
        write_crossbar_config(tmp_path, 8001, host=host)


def test_crossbar_config_roles_and_paths(tmp_path):
    cbdir = write_crossbar_config(tmp_path, 18001, realm="r1", address_root="lab")
    assert cbdir == tmp_path / ".crossbar"
    config = json.loads((cbdir / "config.json").read_text())
    (router,) = config["workers"]
    (realm,) = router["realms"]
    assert realm["name"] == "r1"
    perms = {role["name"]: role["permissions"][0] for role in realm["roles"]}
    assert perms["iocs_agent"]["uri"] == "lab." and perms["iocs_agent"]["match"] == "prefix"
    assert perms["iocs_agent"]["allow"] == {"call": True, "register": True, "publish": True, "subscribe": True}
    assert perms["iocs_controller"]["allow"]["call"] and perms["iocs_controller"]["allow"]["subscribe"]
    assert not perms["iocs_controller"]["allow"]["register"]
    (transport,) = router["transports"]
    assert transport["endpoint"] == {"type": "tcp", "interface": "127.0.0.1", "port": 18001}
    paths = transport["paths"]
    assert paths["ws"]["type"] == "websocket"
    assert paths["ws"]["auth"]["anonymous"]["role"] == "iocs_agent"
    assert paths["call"] == {"type": "caller", "realm": "r1", "role": "iocs_controller", "options": {}}
    assert paths["info"] == {"type": "nodeinfo"}


def test_site_config_is_read_by_ocs(tmp_path):
    from ocs import site_config
    from ocs.agents.fake_data.agent import add_agent_args

    path = write_site_config(tmp_path / "site.yaml", 18002, "r2", "lab",
                             {"h1": [{"agent-class": FAKE, "instance-id": "fake-1", "arguments": ["--mode", "acq"]}]})
    args = site_config.parse_args(agent_class=FAKE, args=["--site-file", str(path), "--site-host", "h1",
                                                          "--instance-id", "fake-1"],
                                  parser=add_agent_args())
    assert args.site_hub == "ws://127.0.0.1:18002/ws"
    assert args.site_http == "http://127.0.0.1:18002/call"
    assert args.site_realm == "r2"
    assert args.address_root == "lab"
    assert args.mode == "acq"  # the instance's arguments from the site file
    assert args.crossbar_timeout == stack.DEFAULT_CROSSBAR_TIMEOUT  # a host key, not a hub key
    # The client side resolves the same site without touching the network.
    client = site_config.get_control_client("fake-1", args=["--site-file", str(path), "--site-host", "h1"])
    assert client.call_url == "http://127.0.0.1:18002/call"
    assert client.agent_addr == "lab.fake-1"


def test_site_config_rejects_bad_instances(tmp_path):
    with pytest.raises(ValueError, match="instance-id"):
        write_site_config(tmp_path / "s.yaml", 1, "r", "a", {"h": [{"agent-class": FAKE}]})
    with pytest.raises(ValueError, match="duplicate"):
        write_site_config(tmp_path / "s.yaml", 1, "r", "a",
                          {"h": [{"agent-class": FAKE, "instance-id": "x"}, {"agent-class": FAKE, "instance-id": "x"}]})


def test_crossbar_refuses_a_busy_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cb = Crossbar(tmp_path, port=busy.getsockname()[1])
        with pytest.raises(RuntimeError, match="already in use"):
            cb.start()
        assert cb.pid is None


def test_agent_environment_drops_ocs_cli_variables(tmp_path):
    site = write_site_config(tmp_path / "site.yaml", 1, "r", "a", {"h": [{"agent-class": FAKE, "instance-id": "x"}]})
    base = {"PATH": os.environ.get("PATH", ""), "SITE_HUB": "ws://elsewhere:1/ws", "INSTANCE_ID": "other",
            "CROSSBAR_TIMEOUT": "1"}
    env = AgentProcess(site, "h", "x", env=base, loglevel="debug").environment()
    assert "SITE_HUB" not in env and "INSTANCE_ID" not in env and "CROSSBAR_TIMEOUT" not in env
    assert env["LOGLEVEL"] == "debug"
    assert env["OCS_CONFIG_DIR"] == str(tmp_path)


# --------------------------------------------------------------------------
# integration: real crossbar + real agents


@pytest.mark.integration
def test_agent_that_cannot_start_is_reported(tmp_path):
    site = write_site_config(tmp_path / "site.yaml", free_port(), "r", "observatory",
                             {"h": [{"agent-class": FAKE, "instance-id": "fake-1"}]})
    agent = AgentProcess(site, "h", "no-such-instance")
    try:
        agent.start()
        with pytest.raises(RuntimeError, match="exited with code") as info:
            agent.wait_ready(timeout=30)
        assert "Could not find matching device description" in str(info.value)  # the log tail
    finally:
        agent.stop()
    assert_group_gone(agent.pid)


@pytest.mark.integration
def test_crossbar_startup_error_includes_log_tail(tmp_path):
    cb = Crossbar(tmp_path)
    config = cb.cbdir / "config.json"
    data = json.loads(config.read_text())
    data["workers"][0]["transports"][0]["paths"]["ws"]["options"]["auto_ping_size"] = 4  # the OCS template value
    config.write_text(json.dumps(data))
    try:
        with pytest.raises(RuntimeError, match="exited with code") as info:
            cb.start(timeout=30)
        assert "auto_ping_size" in str(info.value)
    finally:
        cb.stop()
    assert not cb.alive()
    assert_group_gone(cb.pid)


@pytest.mark.integration
def test_fake_data_agent_survives_crossbar_restart(tmp_path):
    from ocs import OK
    from ocs.ocs_client import OCSClient

    cb = Crossbar(tmp_path / "cb")
    site = write_site_config(tmp_path / "site.yaml", cb.port, cb.realm, cb.address_root,
                             {"testhost": [{"agent-class": FAKE, "instance-id": "fake-1",
                                            "arguments": ["--mode", "idle", "--sample-rate", "20"]}]})
    agent = AgentProcess(site, "testhost", "fake-1", log_path=tmp_path / "fake-1.log")
    pgids = []
    try:
        cb.start(timeout=30)
        pgids.append(cb.pid)
        assert cb.ready()
        agent.start()
        pgids.append(agent.pid)
        client = agent.wait_ready(lambda: OCSClient("fake-1", args=["--site-file", str(site),
                                                                    "--site-host", "testhost"]), timeout=30)

        # acq publishes into session.data
        reply = client.acq.start()
        assert reply.status == OK, reply
        data = poll(lambda: client.acq.status().session["data"], 15, "acq session.data")
        assert set(data["fields"]) == {"channel_00", "channel_01"}
        first_stamp = data["timestamp"]

        reply = client.delay_task(delay=0.01)
        assert reply.status == OK, reply
        assert reply.session["success"] is True
        assert reply.session["data"]["requested_delay"] == 0.01

        # restart the router under the running agent
        agent_pid = agent.pid
        cb.restart(timeout=30)
        pgids.append(cb.pid)
        reply = poll(lambda: client.delay_task(delay=0.01), 30, "delay_task after the crossbar restart")
        assert reply.status == OK, reply
        assert reply.session["success"] is True
        assert agent.alive() and agent.pid == agent_pid
        assert "transport disconnected" in agent.log_text()
        assert agent.log_text().count("session joined") == 2

        # acq kept running through the restart and still answers
        status = client.acq.status()
        assert status.session["status"] == "running"
        poll(lambda: client.acq.status().session["data"]["timestamp"] > first_stamp, 10, "fresh acq data")
        assert client.acq.stop().status == OK
    finally:
        agent.stop()
        cb.stop()
    assert not agent.alive() and not cb.alive()
    assert agent.returncode == 0  # clean OCS shutdown on SIGINT
    for pgid in pgids:
        assert_group_gone(pgid)


@pytest.mark.integration
def test_stack_context_manager_cleans_up():
    with Stack(crossbar_timeout=30) as st:
        workdir = st.workdir
        st.add_instance(FAKE, "fake-2", ["--mode", "acq"])
        agent = st.start_agent("fake-2", timeout=30)
        client = st.client("fake-2")
        data = poll(lambda: client.acq.status().session["data"], 15, "startup acq data")
        assert "channel_00" in data["fields"]
        pgids = [st.crossbar.pid, agent.pid]
        assert (workdir / "site.yaml").exists() and (workdir / ".crossbar" / "config.json").exists()
    for pgid in pgids:
        assert_group_gone(pgid)
    assert not agent.alive() and not st.crossbar.alive()
    assert not workdir.exists()


# --------------------------------------------------------------------------
# InfluxDB


def test_influxdb_config_is_loopback_and_self_contained(tmp_path):
    from socs_tcp_stack.stack import make_influxdb_config

    text = make_influxdb_config(tmp_path, 18086, 18088)
    assert 'bind-address = "127.0.0.1:18088"' in text and 'bind-address = "127.0.0.1:18086"' in text
    for sub in ("meta", "data", "wal"):
        assert f'"{tmp_path.resolve() / sub}"' in text
    assert "reporting-disabled = true" in text and "store-enabled = false" in text


@pytest.mark.parametrize("kwargs, error, message", [
    ({"http_port": 0}, ValueError, "http_port"),
    ({"rpc_port": 70000}, ValueError, "rpc_port"),
    ({"http_port": "8086"}, ValueError, "http_port"),
    ({"http_port": 18086, "rpc_port": 18086}, ValueError, "must differ"),
    ({"loglevel": "loud"}, ValueError, "loglevel"),
    ({"host": "0.0.0.0"}, ValueError, "loopback"),
    ({"databases": [""]}, ValueError, "database names"),
])
def test_influxdb_refuses_bad_settings(tmp_path, kwargs, error, message):
    from socs_tcp_stack.stack import InfluxDB

    kwargs = {"http_port": 18086, "rpc_port": 18088, **kwargs}
    with pytest.raises(error, match=message):
        InfluxDB(tmp_path, **kwargs)


def test_influxdb_environment_drops_overrides(tmp_path):
    from socs_tcp_stack.stack import InfluxDB

    env = InfluxDB(tmp_path, env={"PATH": "/bin", "INFLUXDB_HTTP_BIND_ADDRESS": ":8086"}).environment()
    assert env == {"PATH": "/bin"}


@pytest.fixture
def influxd():
    path = stack.influxd_path()
    if path is None:
        reason = "influxd (InfluxDB 1.x) is not installed: apt-get install influxdb"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.mark.integration
def test_influxdb_start_query_write_stop(tmp_path, influxd):
    from socs_tcp_stack.stack import InfluxDB, InfluxQueryError

    influx = InfluxDB(tmp_path / "influx", databases=["ocs_feeds"])
    try:
        influx.start(timeout=30)
        pid = influx.pid
        assert influx.ready() and influx.url == f"http://127.0.0.1:{influx.http_port}"
        assert ["ocs_feeds"] in influx.query("SHOW DATABASES")[0]["values"]
        now = time.time_ns()
        influx.write([f"observatory.scpi-psu,feed=scpi voltage=2.5,idn=\"A,B\" {now}",
                      f"observatory.scpi-psu,feed=scpi voltage=3.5 {now + 1000}"], db="ocs_feeds")
        series = influx.query('SELECT "voltage", "idn" FROM "observatory.scpi-psu" WHERE "feed" = \'scpi\'',
                              db="ocs_feeds", epoch="ns")
        assert series == [{"name": "observatory.scpi-psu", "columns": ["time", "voltage", "idn"],
                           "values": [[now, 2.5, "A,B"], [now + 1000, 3.5, None]]}]
        assert influx.query('SELECT * FROM "nothing_here"', db="ocs_feeds") == []

        # refusals: from the server (with its message) and before anything is sent
        with pytest.raises(InfluxQueryError, match="error parsing query") as info:
            influx.query("SELEC voltage", db="ocs_feeds")
        assert info.value.status == 400 and isinstance(info.value, ValueError)
        with pytest.raises(InfluxQueryError, match="database not found: nodb"):
            influx.query('SELECT * FROM "x"', db="nodb")
        with pytest.raises(InfluxQueryError, match="unable to parse"):
            influx.write("not line protocol", db="ocs_feeds")
        with pytest.raises(TypeError, match="query must be a str"):
            influx.query(b"SHOW DATABASES")
        with pytest.raises(ValueError, match="must not be empty"):
            influx.query("  ")
        with pytest.raises(ValueError, match="epoch"):
            influx.query("SHOW DATABASES", epoch="weeks")
        with pytest.raises(TypeError, match="each line must be a str"):
            influx.write([b"x value=1"], db="ocs_feeds")
        with pytest.raises(ValueError, match="nothing to write"):
            influx.write([], db="ocs_feeds")
        assert len(influx.query('SELECT * FROM "observatory.scpi-psu"', db="ocs_feeds")[0]["values"]) == 2

        with pytest.raises(RuntimeError, match="already running"):
            influx.start()
    finally:
        influx.stop()
    assert not influx.alive()
    assert_group_gone(pid)
    for port in (influx.http_port, influx.rpc_port):  # both listeners are gone, the ports reusable
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0
        with socket.socket() as sock:
            # (closed HTTP connections may linger in TIME_WAIT: reusable as any server binds)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    assert (tmp_path / "influx" / "influxd.log").exists(), "a given workdir is kept"


@pytest.mark.integration
def test_influxdb_refuses_a_busy_port_and_cleans_a_temporary_workdir(influxd):
    from socs_tcp_stack.stack import InfluxDB

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        influx = InfluxDB(rpc_port=busy.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                influx.start()
            assert influx.pid is None
        finally:
            influx.stop()
    assert not influx.workdir.exists()
    with InfluxDB() as influx:
        workdir = influx.workdir
        assert influx.ready()
    assert not influx.alive() and not workdir.exists()
