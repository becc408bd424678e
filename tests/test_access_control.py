"""OCS access control of the agents' device-writing tasks.

The integration tests run OCS's own ``AccessDirector`` agent with a real
access configuration file, the agents with ``--access-policy
director:access-dir``, and real ``OCSClient`` objects with and without
passwords, over a real crossbar router.  The devices are emulators on
loopback that record every byte they receive, so "refused" can be checked
all the way down: nothing reached the device.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from ocs import site_config
from ocs.ocs_client import OCSClient
from ocs_replies import ok
from socs_tcp_agents import common
from socs_tcp_agents.scpi_instrument import agent as scpi_agent
from socs_tcp_agents.tcp_bus import agent as bus_agent

from socs_tcp.testing import DeviceEmulator
from socs_tcp_stack.stack import Stack, make_crossbar_config, write_site_config

LEVEL2_PASSWORD = "operator-pw"
LEVEL3_PASSWORD = "expert-pw"
ERROR = -1  # ocs.ERROR: the start request itself was refused


def wait_for(condition, timeout, what):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as e:  # the router or the agent is not ready yet
            last = e
        else:
            if last:
                return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


def refused(reply, needed, has):
    """The start request was rejected by OCS before the task ran."""
    assert reply.status == ERROR, reply
    assert f"requires credential level {needed}" in reply.msg and f"client has only level {has}" in reply.msg, reply
    return reply.msg

# ---------------------------------------------------------------- pure logic (no processes)


def namespace(**kwargs):
    values = {"access_policy": None, "write_privs": common.DEFAULT_WRITE_PRIVS}
    values.update(kwargs)
    return argparse.Namespace(**values)


@pytest.mark.parametrize("policy", [None, "", "none"])
def test_without_an_access_policy_every_task_stays_at_level_1(policy):
    args = namespace(access_policy=policy, write_privs=3)
    assert common.access_control_enabled(args) is False
    assert common.write_privs(args) == 1


@pytest.mark.parametrize("policy", ["director:access-dir", "override:pw2,pw3"])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_with_an_access_policy_write_tasks_need_write_privs(policy, level):
    args = namespace(access_policy=policy, write_privs=level)
    assert common.access_control_enabled(args) is True
    assert common.write_privs(args) == level


def test_default_write_privs_is_ocs_advanced_level():
    from ocs.access import CredLevel

    assert common.DEFAULT_WRITE_PRIVS == CredLevel.ADVANCED
    for module in (bus_agent, scpi_agent):
        assert module.make_parser().parse_args([]).write_privs == CredLevel.ADVANCED


@pytest.mark.parametrize("bad", [0, 4, -1, True, 2.0, "2"])
def test_write_privs_outside_1_to_3_is_refused(bad):
    with pytest.raises(ValueError, match=r"--write-privs must be 1, 2 or 3, got " + repr(bad).replace(".", r"\.")):
        common.write_privs(namespace(access_policy="director:x", write_privs=bad))


@pytest.mark.parametrize("module", [bus_agent, scpi_agent])
@pytest.mark.parametrize("value", ["0", "4", "two"])
def test_parser_refuses_bad_write_privs(module, value, capsys):
    with pytest.raises(SystemExit) as info:
        module.make_parser().parse_args(["--write-privs", value])
    assert info.value.code == 2
    assert "--write-privs" in capsys.readouterr().err


def test_write_tasks_are_the_tasks_that_send_data():
    assert set(bus_agent.WRITE_TASKS) < set(bus_agent.BUS_TASKS)
    assert {name for name in bus_agent.BUS_TASKS if name.startswith(("write", "wrnrd"))} == set(bus_agent.WRITE_TASKS)
    assert set(scpi_agent.WRITE_TASKS) == {"init", "command", "query"}


@pytest.mark.parametrize("policy", [None, "director:access-dir"])
def test_start_up_message_goes_through_a_real_agent_logger(policy):
    import txaio

    txaio.use_twisted()
    seen = []
    log = txaio.make_logger(level="info", observer=seen.append)
    common.log_access_control(log, namespace(access_policy=policy), bus_agent.WRITE_TASKS)
    assert len(seen) == 1
    text = seen[0]["log_format"].format(**seen[0])
    if policy:
        assert text.startswith("access policy director:access-dir: tasks write, write_bin") and text.endswith("level 2")
    else:
        assert text.startswith("no access policy")


@pytest.mark.parametrize("agent_class, extra", [("TCPBusAgent", []), ("ScpiInstrumentAgent", ["--mode", "idle"])])
def test_bad_max_read_size_stops_the_agent_with_a_clear_message(tmp_path, agent_class, extra):
    site = write_site_config(tmp_path / "site.yaml", 1, "test_realm", "observatory", {"localhost": [{
        "agent-class": agent_class, "instance-id": "dev",
        "arguments": ["--address", "127.0.0.1:9", "--max-read-size", "0", *extra]}]})
    env = {k: v for k, v in os.environ.items() if k not in ("INSTANCE_ID", "SITE_HOST", "SITE_HUB", "SITE_HTTP")}
    env["OCS_CONFIG_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "ocs.agent_cli", "--site-file", str(site), "--site-host", "localhost",
         "--instance-id", "dev"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env)
    assert result.returncode == 2, result
    assert "argument --max-read-size: must be a positive integer, got '0'" in result.stdout + result.stderr

def _roles(config):
    realm = config["workers"][0]["realms"][0]
    return {role["name"]: role["permissions"][0]["allow"] for role in realm["roles"]}


def test_crossbar_roles_keep_controllers_from_registering():
    config = make_crossbar_config(8001)
    roles = _roles(config)
    assert roles["iocs_agent"] == {"call": True, "register": True, "publish": True, "subscribe": True}
    assert roles["iocs_controller"]["register"] is False and roles["iocs_controller"]["publish"] is False
    assert roles["iocs_controller"]["call"] is True and roles["iocs_controller"]["subscribe"] is True
    paths = config["workers"][0]["transports"][0]["paths"]
    assert paths["ws"]["auth"]["anonymous"]["role"] == "iocs_agent"
    assert paths["call"]["role"] == "iocs_controller", "OCSClient's HTTP bridge runs as a controller"
    deployed = json.loads((Path(__file__).parent.parent / "deploy" / "crossbar" / "config.json").read_text())
    assert _roles(deployed) == roles, "the deployed router grants the same permissions"

# ---------------------------------------------------------------- over a real crossbar


@pytest.fixture(scope="module")
def devices():
    """Emulators that record every chunk of bytes they receive (chunk framing)."""
    made = {
        "bus": DeviceEmulator(read_termination=None, write_termination="\n",
                              default_response=lambda cmd: f"echo:{cmd}"),
        "psu": DeviceEmulator({"*IDN?": "ACME,PSU1,SN7,1.0", "SYST:ERR?": '+0,"No error"', "VOLT?": "+2.5"},
                              write_termination="\n"),
        "open": DeviceEmulator(read_termination=None, write_termination="\n",
                               default_response=lambda cmd: f"echo:{cmd}"),
    }
    try:
        for device in made.values():
            device.start()
        yield made
    finally:
        for device in made.values():
            device.shutdown()


@pytest.fixture(scope="module")
def stack(devices):
    st = Stack()
    try:
        access_file = st.workdir / "access-director.yaml"
        access_file.write_text(yaml.safe_dump({
            "passwords_block_default_hashfunc": "none",
            "distrib_hashfunc": "md5",
            "passwords": [{"default": True, "password_1": "",
                           "password_2": LEVEL2_PASSWORD, "password_3": LEVEL3_PASSWORD}],
        }))
        policy = ["--access-policy", "director:access-dir"]
        st.add_instance("AccessDirector", "access-dir", ["--config-file", str(access_file)])
        st.add_instance("TCPBusAgent", "bus", [
            "--address", f"127.0.0.1:{devices['bus'].port}", "--timeout", 2.0, *policy])
        st.add_instance("ScpiInstrumentAgent", "psu", [
            "--address", f"127.0.0.1:{devices['psu'].port}", "--timeout", 2.0, "--mode", "idle",
            "--write-privs", 3, *policy])
        st.add_instance("TCPBusAgent", "open", ["--address", f"127.0.0.1:{devices['open'].port}", "--timeout", 2.0])
        st.start()
        st.start_agent("access-dir")
        director = st.client("access-dir")
        wait_for(lambda: director.manager.status().session["status"] == "running", 30, "the director's manager")
        for instance in ("bus", "psu", "open"):
            st.start_agent(instance)
        for instance in ("bus", "psu"):
            wait_for(lambda i=instance: api(st, i)["access_control"]["update_count"] >= 1, 60,
                     f"{instance} to receive its access rules")
        yield st
    finally:
        st.stop()


def api(stack, instance):
    return site_config.get_control_client(instance, args=stack.client_args).get_api()


def min_privs(stack, instance):
    description = api(stack, instance)
    return {name: encoded["min_privs"] for name, _, encoded in description["tasks"] + description["processes"]}


@pytest.mark.integration
def test_agents_advertise_the_level_of_each_op(stack):
    bus = min_privs(stack, "bus")
    assert {name for name, level in bus.items() if level == 2} == set(bus_agent.WRITE_TASKS)
    assert all(level == 1 for name, level in bus.items() if name not in bus_agent.WRITE_TASKS)
    assert bus["acq"] == 1 and bus["read_until"] == 1 and bus["expect"] == 1
    psu = min_privs(stack, "psu")
    assert psu == {"init": 3, "command": 3, "query": 3, "acq": 1}
    assert set(min_privs(stack, "open").values()) == {1}
    assert api(stack, "bus")["access_control"]["policy"] == "director"
    assert api(stack, "open")["access_control"]["policy"] == "none"
    assert "tasks write, write_bin, wrnrd, wrnrd_bin, wrnrd_until, wrnrd_bin_until need credential level 2" \
        in stack.agents["bus"].log_text()


@pytest.mark.integration
@pytest.mark.parametrize("privs", [None, "wrong-password"], ids=["no-password", "wrong-password"])
def test_unprivileged_client_is_refused_and_nothing_reaches_the_device(stack, devices, privs):
    device = devices["bus"]
    received, connections = list(device.received), device.connections
    client = OCSClient("bus", privs=privs, args=stack.client_args)
    for task, params in [("write", {"data": "VOLT 30\n"}), ("write_bin", {"data": "0a"}),
                         ("wrnrd", {"data": "x\n", "bytes_to_read": 1}), ("wrnrd_bin", {"data": "0a", "bytes_to_read": 1}),
                         ("wrnrd_until", {"data": "x\n", "eot": "\\n"}), ("wrnrd_bin_until", {"data": "0a", "eot": "\\n"})]:
        refused(getattr(client, task)(**params), "2-ADVANCED", "1-BASIC")
    # a refused start returns before any session is created, so nothing can still be on its way
    assert device.received == received, "no byte reached the device"
    assert device.connections == connections, "the agent did not even connect for a refused task"


@pytest.mark.integration
def test_level_1_operations_stay_open(stack, devices):
    client = OCSClient("bus", args=stack.client_args)
    assert ok(client.connect())["response"] is True
    reply = client.read_until(eot="\\n", timeout=0.2)   # runs (and times out: the device sent nothing)
    assert reply.status == 0 and reply.session["success"] is False
    assert "LinkTimeoutError" in " ".join(message for _, message in reply.session["messages"])
    assert client.acq.start().status == 0              # no --acq-query: acq polls nothing
    wait_for(lambda: client.acq.status().session["status"] == "running", 10, "acq running")
    assert client.acq.stop().status == 0
    client.acq.wait(timeout=10)
    assert ok(client.disconnect())["response"] is False


@pytest.mark.integration
def test_privileged_client_writes_reach_the_device(stack, devices):
    device = devices["bus"]
    client = OCSClient("bus", privs=LEVEL2_PASSWORD, args=stack.client_args)
    assert ok(client.write(data="OUTP ON\n"))["response"] == 8
    wait_for(lambda: "OUTP ON" in device.received, 5, "the write to reach the device")
    assert ok(client.read_until(eot="\\n", timeout=2.0))["response"] == "echo:OUTP ON"
    assert ok(client.wrnrd_until(data="VOLT?\n", eot="\\n"))["response"] == "echo:VOLT?"
    assert ok(client.wrnrd_bin_until(data="780a", eot="\\n"))["response"] == b"echo:x".hex()
    higher = OCSClient("bus", privs=LEVEL3_PASSWORD, args=stack.client_args)
    assert ok(higher.wrnrd_until(data="again\n", eot="\\n"))["response"] == "echo:again", "level 3 includes level 2"


@pytest.mark.integration
def test_password_file_gives_the_client_its_level(stack, devices, tmp_path, monkeypatch):
    passwords = tmp_path / "ocs-passwords.yaml"
    passwords.write_text(yaml.safe_dump([{"agent_class": "TCPBusAgent", "password_2": LEVEL2_PASSWORD}]))
    monkeypatch.setenv("OCS_PASSWORDS_FILE", str(passwords))
    client = OCSClient("bus", privs=2, args=stack.client_args)
    assert ok(client.wrnrd_until(data="from-file\n", eot="\\n"))["response"] == "echo:from-file"
    wait_for(lambda: "from-file" in devices["bus"].received, 5, "the command to reach the device")


@pytest.mark.integration
def test_scpi_agent_with_write_privs_3(stack, devices):
    device = devices["psu"]
    before = list(device.received)
    operator = OCSClient("psu", privs=LEVEL2_PASSWORD, args=stack.client_args)
    for task, params in [("init", {}), ("command", {"command": "VOLT 30"}), ("query", {"query": "VOLT?"})]:
        refused(getattr(operator, task)(**params), "3-FULL", "2-ADVANCED")
    assert device.received == before, "no SCPI command reached the instrument"

    expert = OCSClient("psu", privs=LEVEL3_PASSWORD, args=stack.client_args)
    assert ok(expert.init())["response"]["model"] == "PSU1"
    ok(expert.command(command="VOLT 2.5"))
    assert ok(expert.query(query="VOLT?"))["response"] == "+2.5"
    assert device.received[len(before):] == ["*CLS", "*IDN?", "VOLT 2.5", "SYST:ERR?", "VOLT?"]


@pytest.mark.integration
def test_agent_without_access_policy_behaves_as_before(stack, devices):
    client = OCSClient("open", args=stack.client_args)  # no password at all
    assert ok(client.write(data="abc\n"))["response"] == 4
    wait_for(lambda: "abc" in devices["open"].received, 5, "the write to reach the device")
    assert ok(client.read_until(eot="\\n", timeout=2.0))["response"] == "echo:abc"
    assert ok(client.wrnrd_until(data="q\n", eot="\\n"))["response"] == "echo:q"
    assert "no access policy: every client may use every task" in stack.agents["open"].log_text()
