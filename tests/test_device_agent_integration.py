"""DeviceAgent as users run it: real crossbar, agents started with
ocs-agent-cli from device files, a real OCSClient, and independent device
emulators on loopback (tests/emulators, written from the vendor manuals and
SOCS's fixtures, not from the device files).

Three devices end to end: the Pfeiffer TPG 366 (text, ACK/ENQ handshake),
the Cryomech CPA (Modbus TCP) and the Pfeiffer TC 400 (checksummed
telegrams at a bus address given as a param, SOCS's ``acq(wait)``).  Also here, ported check by check, SOCS's own
integration tests of the agents these files replace
(simonsobs/socs ``tests/integration/test_pfeiffer_tpg366_agent_integration.py``
and ``test_cryomech_cpa_agent_integration.py``).  The files themselves need a
SOCS checkout, docker-compose for crossbar, ``socs.testing`` and fixed ports,
so they are not part of this suite: ``tests/run_socs_agent_tests.py`` runs
them unchanged against DeviceAgent (all 7 pass).  Here their checks (the same
calls, the same fixture bytes, the same expected op codes) run on free ports
against the independent emulators, with SOCS's own ``--ip_address`` /
``--port`` / ``--mode`` arguments kept as they are and ``--device-file`` added.
"""

import struct
import time

import ocs
import pytest
from emulators import CryomechCPAEmulator, TC400Emulator, TPG366Emulator
from emulators.cryomech_cpa import SOCS_CAPTURED_REPLY
from emulators.tpg366 import SOCS_FIXTURE_PRESSURES
from ocs import site_config
from ocs.base import OpCode
from ocs.ocs_client import OCSClient
from ocs_replies import failed, ok

from socs_tcp.devices import load
from socs_tcp.devices.docgen import agent_tasks
from socs_tcp.devices.simulator import DeviceSimulator
from socs_tcp_stack.stack import Stack

pytestmark = pytest.mark.integration

TIMEOUT = 1.0        # device timeout given to the agents
RATE = 4.0           # acq cycles per second
OPERATOR_PW, EXPERT_PW = "operator-pw", "expert-pw"

# SOCS's Cryomech fixture: the agent's init request and the power commands, byte for byte
SOCS_INIT_MSG = b"\t\x99\x00\x00\x00\x06\x01\x04\x00\x01\x005"
SOCS_POWER = {"on": b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\x01",
              "off": b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\xff"}


def wait_for(condition, timeout, what):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


# A device file of our own: an alias with a renamed argument, a hidden operation,
# and no agent modes (so the defaults apply).  Served by its simulator: this file
# tests the agent's mechanics, not the device description.
LAMP = """\
device: lamp
title: Lamp controller
description: A file for the alias, hide and default-mode paths of DeviceAgent.
connection: {port: 7000}
queries:
  get_level:
    description: Brightness (LEV?).
    request: "LEV?"
    reply: {fields: {level: {type: int, unit: "%", sim: {state: level, value: 10}}}}
  idn:
    request: "*IDN?"
    reply: {fields: {idn: {sim: {value: "ACME,LAMP,1"}}}}
commands:
  set_level:
    description: Set the brightness (LEV n).
    request: "LEV {level}"
    args:
      level: {type: int, min: 0, max: 100}
    sim:
      sets: {level: "{level}"}
polling:
  feed: lamp
  block: lamp
  rate: 2
  items:
    - query: get_level
agent:
  hide: [idn]
  tasks:
    brightness:
      operation: set_level
      args: {percent: level}
      description: The lab's name for set_level.
"""


@pytest.fixture(scope="module")
def lamp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("devices") / "lamp.yaml"
    path.write_text(LAMP)
    return path


@pytest.fixture(scope="module")
def devices(lamp_file):
    made = {"tpg": TPG366Emulator(), "cpa": CryomechCPAEmulator(), "guarded": TPG366Emulator(),
            "socs_tpg": TPG366Emulator(data_terminator=b"\r\n"), "socs_cpa": CryomechCPAEmulator(),
            "lamp": DeviceSimulator(lamp_file), "late_cpa": CryomechCPAEmulator(), "tc400": TC400Emulator(address=94)}
    try:
        for device in made.values():
            device.start()
        yield made
    finally:
        for device in made.values():
            device.stop()


@pytest.fixture(scope="module")
def stack(devices, lamp_file):
    st = Stack()
    try:
        common = ["--timeout", TIMEOUT]
        st.add_instance("DeviceAgent", "pfeiffer366", [
            "--device-file", "tpg366", "--address", devices["tpg"].address, "--sampling-frequency", RATE,
            "--mode", "idle", *common])
        st.add_instance("DeviceAgent", "cryomech", [
            "--device-file", "cryomech_cpa", "--ip-address", "127.0.0.1", "--port", devices["cpa"].port,
            "--sampling-frequency", RATE, *common])             # the file's default mode: none
        st.add_instance("DeviceAgent", "guarded", [
            "--device-file", "tpg366", "--address", devices["guarded"].address, "--mode", "idle",
            "--access-policy", f"override:{OPERATOR_PW},{EXPERT_PW}", "--write-privs", 2, *common])
        # SOCS's site-file entries (tests/default.yaml), with the class and the device file added
        st.add_instance("DeviceAgent", "socs-pfeiffer366", [
            "--device-file", "tpg366", "--ip_address", "127.0.0.1", "--port", devices["socs_tpg"].port,
            "--mode", "test"])
        st.add_instance("DeviceAgent", "socs-cryomech", [
            "--device-file", "cryomech_cpa", "--ip-address", "127.0.0.1", "--serial-number", "CPA1234TEST-111111A",
            "--mode", "acq", "--port", devices["socs_cpa"].port])
        # started while its compressor is unreachable (see test_acq_started_while_the_device_is_down)
        st.add_instance("DeviceAgent", "late-cryomech", [
            "--device-file", "cryomech_cpa", "--address", devices["late_cpa"].address, "--mode", "acq", *common])
        # SOCS's PfeifferTC400Agent arguments, with --turbo-address 94 given as the file's param
        st.add_instance("DeviceAgent", "turbo", [
            "--device-file", "pfeiffer_tc400", "--ip-address", "127.0.0.1", "--port-number", devices["tc400"].port,
            "--param", "address=94", "--mode", "none", *common])
        st.add_instance("DeviceAgent", "lamp", [
            "--device-file", lamp_file, "--address", f"127.0.0.1:{devices['lamp'].port}", "--mode", "idle", *common])
        # these two must refuse to start
        broken = lamp_file.parent / "broken.yaml"
        broken.write_text(LAMP.replace("type: int, min: 0", "type: itn, min: 0"))
        st.add_instance("DeviceAgent", "broken", ["--device-file", broken, "--address", "127.0.0.1:1"])
        st.add_instance("DeviceAgent", "badmode", ["--device-file", "tpg366", "--address", "127.0.0.1:1",
                                                   "--mode", "fly"])
        st.start()
        devices["late_cpa"].refuse_connections()
        for iid in ("pfeiffer366", "cryomech", "guarded", "socs-pfeiffer366", "socs-cryomech", "lamp",
                    "late-cryomech", "turbo"):
            st.start_agent(iid, wait=False)
        for iid in st.agents:
            st.agents[iid].wait_ready(timeout=90)
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def tpg(stack):
    return stack.client("pfeiffer366")


@pytest.fixture(scope="module")
def cpa(stack):
    return stack.client("cryomech")


def api(stack, instance):
    return site_config.get_control_client(instance, args=stack.client_args).get_api()


def acq_session(client):
    return client.acq.status().session


# ---------------------------------------------------------------- the generated surface


@pytest.mark.parametrize("instance, device", [("pfeiffer366", "tpg366"), ("cryomech", "cryomech_cpa")])
def test_every_operation_is_a_task_with_an_ocs_docstring(stack, instance, device):
    spec = load(device)
    description = api(stack, instance)
    assert description["agent_class"] == "DeviceAgent"
    tasks = {name: encoded for name, _, encoded in description["tasks"]}
    processes = {name: encoded for name, _, encoded in description["processes"]}
    assert set(tasks) == {t.name for t in agent_tasks(spec)}
    assert set(spec.operations) <= set(tasks) and set(processes) == {"acq"}
    for name, encoded in {**tasks, **processes}.items():
        doc = encoded["docstring"]
        assert doc.splitlines()[0].startswith(f"{name}(") and doc.splitlines()[0].endswith(")"), (name, doc)
        assert ("**Process** -" if name == "acq" else "**Task** -") in doc, name
        assert ">>> response.session['data']" in doc or name == "close", name
    # clients show the same text
    client = stack.client(instance)
    first = next(iter(spec.operations))
    assert getattr(client, first).start.__doc__ == tasks[first]["docstring"]
    assert client.acq.start.__doc__.startswith("acq(sampling_frequency=2.5, test_mode=False)\n")
    feeds = dict(description["feeds"])
    assert set(feeds) - {"heartbeat"} == {spec.polling.feed, "link_health"}
    data_feed = feeds[spec.polling.feed]
    assert data_feed["record"] is True and data_feed["agg_params"]["frame_length"] == spec.polling.frame_length


def test_tpg366_task_and_feed_names_are_socs_pfeiffer_agents(stack):
    description = api(stack, "pfeiffer366")
    assert {name for name, _, _ in description["processes"]} == {"acq"}
    assert "close" in {name for name, _, _ in description["tasks"]}
    assert "pressures" in {name for name, _ in description["feeds"]}


def test_cryomech_task_names_and_signatures_are_socs_cryomech_agents(stack):
    tasks = {name: encoded["docstring"] for name, _, encoded in api(stack, "cryomech")["tasks"]}
    assert tasks["init"].startswith("init(auto_acquire=False)\n")
    assert tasks["power_ptc"].startswith("power_ptc(state)\n")


@pytest.mark.parametrize("instance, needles", [
    ("broken", ["broken.yaml:", "commands.set_level.args.level", "'itn'"]),
    ("badmode", ["--mode 'fly' is not a mode of device file 'tpg366'; its modes: acq, test, idle"]),
])
def test_the_agent_refuses_to_start_with_a_bad_file_or_mode(stack, instance, needles):
    agent = stack.start_agent(instance, wait=False)
    wait_for(lambda: not agent.alive(), 60, f"{instance} to exit")
    assert agent.returncode not in (0, None)
    log = agent.log_tail(80)
    for needle in needles:
        assert needle in log, (needle, log)


def test_aliases_rename_arguments_and_hidden_operations_are_not_tasks(stack, devices):
    tasks = {name: encoded["docstring"] for name, _, encoded in api(stack, "lamp")["tasks"]}
    assert set(tasks) == {"get_level", "set_level", "brightness"}
    assert tasks["brightness"].startswith("brightness(percent)\n\n**Task** - The lab's name for set_level.")
    lamp = stack.client("lamp")
    ok(lamp.brightness(percent=55))
    assert ok(lamp.get_level())["values"] == {"level": 55}
    reply = lamp.brightness(percent=101)
    assert reply.status == ocs.ERROR and "'percent'=101" in reply.msg and "<= 100" in reply.msg
    assert lamp.brightness(level=5).status == ocs.ERROR            # the operation's own name is not the alias's
    ok(lamp.set_level(level=7))
    assert ok(lamp.get_level())["values"] == {"level": 7}


# ---------------------------------------------------------------- tasks


def test_query_tasks_return_parsed_typed_values(tpg, devices):
    data = ok(tpg.pressure(channel=2))
    assert data["values"] == {"status": "ok", "pressure": SOCS_FIXTURE_PRESSURES[1]}
    assert data["elapsed"] > 0 and data["timestamp"] > 0
    values = ok(tpg.pressures())["values"]
    assert values["pressure"] == list(SOCS_FIXTURE_PRESSURES)
    assert values["gauge_status"] == ["ok"] * 6
    devices["tpg"].set_status(3, 5)                 # no sensor on channel 3: value marked invalid
    try:
        assert ok(tpg.pressure(channel=3))["values"]["status"] == "no_sensor"
    finally:
        devices["tpg"].set_status(3, None)


def test_a_command_changes_what_the_queries_return(tpg, devices):
    try:
        assert ok(tpg.set_unit(unit="Torr"))["values"] == {"unit": "Torr"}
        assert devices["tpg"].unit == 1
        assert ok(tpg.unit())["values"] == {"unit": "Torr"}
    finally:
        ok(tpg.set_unit(unit="mbar"))
    assert devices["tpg"].unit == 0


@pytest.mark.parametrize("task, params, needles", [
    ("pressure", {"channel": 7}, ["channel", "7", "<= 6"]),           # above the file's limit
    ("pressure", {"channel": 0}, ["channel", "0", ">= 1"]),
    ("pressure", {"channel": "two"}, ["channel", "'two'", "must be an int"]),
    ("pressure", {}, ["channel", "required"]),
    ("pressure", {"channel": 1, "chanel": 1}, ["unexpected", "chanel"]),
    ("set_unit", {"unit": "furlong"}, ["unit", "'furlong'", "must be one of"]),
    ("pressures", {"channel": 1}, ["unexpected", "channel"]),
])
def test_a_rejected_argument_is_refused_by_ocs_and_nothing_is_sent(tpg, devices, task, params, needles):
    device = devices["tpg"]
    ok(tpg.unit())                                  # the link is up, so a stray byte would show
    before = len(device.received)
    reply = getattr(tpg, task)(**params)
    assert reply.status == ocs.ERROR, reply
    for needle in needles:
        assert needle in reply.msg, (needle, reply.msg)
    assert len(device.received) == before, "nothing may be sent for bad input"


def test_write_tasks_are_gated_by_write_privs(stack, devices):
    device = devices["guarded"]
    privs = {name: encoded["min_privs"] for name, _, encoded in api(stack, "guarded")["tasks"]}
    assert privs["set_unit"] == 2 and privs["pressure"] == 1 and privs["pressures"] == 1
    anonymous = OCSClient("guarded", args=stack.client_args)
    assert ok(anonymous.pressure(channel=1))["values"]["pressure"] == SOCS_FIXTURE_PRESSURES[0]
    before = len(device.received)
    reply = anonymous.set_unit(unit="Pa")
    assert reply.status == ocs.ERROR and "requires credential level 2" in reply.msg, reply
    assert len(device.received) == before and device.unit == 0
    operator = OCSClient("guarded", privs=OPERATOR_PW, args=stack.client_args)
    try:
        assert ok(operator.set_unit(unit="Pa"))["values"] == {"unit": "Pa"}
        assert device.unit == 2
    finally:
        ok(operator.set_unit(unit="mbar"))


def test_a_task_fails_fast_and_clearly_while_the_device_is_down(tpg, devices):
    devices["tpg"].refuse_connections()
    try:
        started = time.monotonic()
        message = failed(tpg.pressure(channel=1))
        assert time.monotonic() - started < 5 * TIMEOUT + 5
        assert "pressure: device error (" in message and "Error" in message
    finally:
        devices["tpg"].refuse_connections(False)
    wait_for(lambda: tpg.pressure(channel=1).session.get("success"), 20, "the gauge to answer again")


# ---------------------------------------------------------------- acq


def test_tc400_is_the_socs_turbo_agent_at_its_bus_address(stack, devices):
    turbo = stack.client("turbo")
    description = api(stack, "turbo")
    names = {name for name, *_ in description["tasks"]}
    assert {"init", "turn_turbo_on", "turn_turbo_off", "acknowledge_turbo_errors"} <= names
    acq_doc = {name: encoded["docstring"] for name, _, encoded in description["processes"]}["acq"]
    assert acq_doc.splitlines()[0] == "acq(wait=1.0, test_mode=False)"
    ok(turbo.init(auto_acquire=False))
    ok(turbo.turn_turbo_on())
    emu = devices["tc400"]
    assert emu.values["pumping_station"] is True and emu.values["motor"] is True
    assert all(r.startswith("094") for r in emu.received)             # every telegram to unit 94
    assert turbo.acq.start(wait=0.25, test_mode=True).status == ocs.OK
    turbo.acq.wait(timeout=20)
    values = acq_session(turbo)["data"]["values"]
    assert values["Rotation_Speed"] == 820 and values["Error_Code"] == "000000"
    assert set(values) == {"Drive_Voltage", "Drive_Current", "Drive_Power", "Turbo_Power_Stage_Temp",
                           "Turbo_Electronics_Temp", "Turbo_Pump_Bottom_Temp", "Turbo_Bearing_Temp",
                           "Turbo_Motor_Temp", "Rotation_Speed", "Acceleration", "Error_Code"}
    ok(turbo.turn_turbo_off())
    assert emu.values["motor"] is False
    assert turbo.acq.start(wait=-1).status == ocs.ERROR                  # a period must be positive


def test_acq_test_mode_runs_one_cycle_and_publishes_the_socs_fields(tpg):
    assert tpg.acq.start(test_mode=True).status == ocs.OK
    tpg.acq.wait(timeout=20)
    session = acq_session(tpg)
    assert session["status"] == "done" and session["success"] is True
    assert session["data"]["cycles"] == 1
    assert session["data"]["values"] == {f"pressure_ch{i + 1}": p for i, p in enumerate(SOCS_FIXTURE_PRESSURES)}


@pytest.mark.parametrize("instance, key, field, expected", [
    ("pfeiffer366", "tpg", "pressure_ch1", SOCS_FIXTURE_PRESSURES[0]),
    ("cryomech", "cpa", "Coolant_In_Temp", pytest.approx(65.627, abs=1e-3)),
])
def test_acq_degrades_when_the_device_goes_and_clears_when_it_is_back(stack, devices, instance, key, field,
                                                                      expected):
    client, device = stack.client(instance), devices[key]
    log_before = stack.agents[instance].log_text().count("device unreachable")
    assert client.acq.start(sampling_frequency=RATE).status == ocs.OK
    try:
        values = wait_for(lambda: (acq_session(client).get("data") or {}).get("values"), 20, "acq values")
        assert values[field] == expected
        assert acq_session(client)["degraded"] is False

        device.refuse_connections()                   # the device goes away
        wait_for(lambda: acq_session(client)["degraded"], 5 * TIMEOUT + 2 / RATE + 10, "degraded to be set")
        session = acq_session(client)
        assert session["status"] == "running" and stack.agents[instance].alive()
        assert session["data"]["connected"] is False and session["data"]["last_error"]
        last_ts = session["data"].get("timestamp", 0)

        device.refuse_connections(False)              # and comes back on the same port
        wait_for(lambda: not acq_session(client)["degraded"], 30, "degraded to clear")
        wait_for(lambda: acq_session(client)["data"].get("timestamp", 0) > last_ts, 10, "new values")
        assert acq_session(client)["data"]["values"][field] == expected
        log = stack.agents[instance].log_text()
        assert log.count("device unreachable") == log_before + 1, "an outage is logged once, not every cycle"
        assert "acq no longer degraded" in log
    finally:
        client.acq.stop()
        client.acq.wait(timeout=20)
    assert acq_session(client)["status"] == "done"


def test_acq_started_while_the_device_is_down_runs_degraded_then_recovers(stack, devices):
    """--mode acq runs init(auto_acquire=True): init fails (nothing answers), acq starts anyway."""
    client = stack.client("late-cryomech")
    try:
        init = wait_for(lambda: client.init.status().session.get("status") == "done" and client.init.status(),
                        30, "the start-up init to end")
        assert init.session["success"] is False
        wait_for(lambda: acq_session(client)["status"] == "running" and acq_session(client)["degraded"], 30,
                 "acq running degraded")
        devices["late_cpa"].refuse_connections(False)
        wait_for(lambda: not acq_session(client)["degraded"], 30, "degraded to clear")
        assert acq_session(client)["data"]["values"]["Coolant_In_Temp"] == pytest.approx(65.627, abs=1e-3)
    finally:
        devices["late_cpa"].refuse_connections(False)
        client.acq.stop()
        client.acq.wait(timeout=20)


def test_garbage_from_the_device_degrades_acq_instead_of_crashing_it(cpa, devices, stack):
    assert cpa.acq.start().status == ocs.OK
    try:
        wait_for(lambda: (acq_session(cpa).get("data") or {}).get("values"), 20, "acq values")
        devices["cpa"].corrupt_next_reply(1000)
        wait_for(lambda: acq_session(cpa)["degraded"], 30, "degraded on short replies")
        assert acq_session(cpa)["status"] == "running" and stack.agents["cryomech"].alive()
        devices["cpa"].corrupt_next_reply(0)
        wait_for(lambda: not acq_session(cpa)["degraded"], 30, "degraded to clear")
    finally:
        devices["cpa"].corrupt_next_reply(0)
        cpa.acq.stop()
        cpa.acq.wait(timeout=20)


def test_close_stops_acq_as_the_socs_agent_does(tpg):
    assert "not currently running" in failed(tpg.close())
    assert tpg.acq.start().status == ocs.OK
    wait_for(lambda: acq_session(tpg)["status"] == "running", 20, "acq running")
    ok(tpg.close())
    tpg.acq.wait(timeout=20)
    assert acq_session(tpg)["status"] == "done"


# ---------------------------------------------------------------- Cryomech


def test_cryomech_power_ptc_sends_socs_bytes(cpa, devices):
    device = devices["cpa"]
    for state in ("off", "on"):
        before = len(device.received)
        ok(cpa.power_ptc(state=state))
        assert device.received[before:] == [SOCS_POWER[state]]
    assert device.compressor_on
    before = len(device.received)
    reply = cpa.power_ptc(state="sideways")
    assert reply.status == ocs.ERROR and "'sideways'" in reply.msg and "state" in reply.msg
    assert len(device.received) == before


def test_cryomech_init_reads_the_compressor(cpa, devices):
    data = ok(cpa.init())
    assert data["values"]["Coolant_In_Temp"] == pytest.approx(65.627, abs=1e-3)
    assert data["values"]["Serial_Number"] == 10556
    assert devices["cpa"].received[-1] == SOCS_INIT_MSG, "SOCS's request, transaction id 0x0999, unit 1"


# ---------------------------------------------------------------- SOCS's own integration tests, ported


def check_resp_success(resp):
    assert resp.status == ocs.OK
    assert resp.session["op_code"] == OpCode.SUCCEEDED.value


def test_socs_pfeiffer_tpg366_acq(stack, devices):
    """test_pfeiffer_tpg366_agent_integration.py::test_pfeiffer_tpg366_acq, against SOCS's fixture
    replies (``\\x06\\r\\n``, then six ``0,+x.xxxxE+xx`` pairs ending ``\\r\\n``) and ``--mode test``."""
    client = stack.client("socs-pfeiffer366")
    client.acq.wait(timeout=30)                   # the start-up test cycle of --mode test
    resp = client.acq.start(test_mode=True)
    resp = client.acq.wait(timeout=30)
    check_resp_success(resp)
    assert resp.session["data"]["values"]["pressure_ch6"] == SOCS_FIXTURE_PRESSURES[5]


def test_socs_cryomech_cpa_init(stack):
    client = stack.client("socs-cryomech")
    resp = client.init.wait(timeout=30)
    resp = client.init.status()
    check_resp_success(resp)


@pytest.mark.parametrize("state", ["on", "off"])
def test_socs_cryomech_cpa_power_ptc(stack, devices, state):
    client = stack.client("socs-cryomech")
    client.init.wait(timeout=30)
    before = len(devices["socs_cpa"].received)
    resp = client.power_ptc(state=state)
    check_resp_success(resp)
    assert SOCS_POWER[state] in devices["socs_cpa"].received[before:]
    ok(client.power_ptc(state="on"))


def test_socs_cryomech_cpa_auto_start_acq(stack):
    client = stack.client("socs-cryomech")
    client.init()
    resp = client.acq.status()
    assert resp.status == ocs.OK
    wait_for(lambda: acq_session(client)["status"] == "running", 30, "acq started by init(auto_acquire=True)")


def test_socs_cryomech_cpa_release_reacquire(stack, devices):
    client = stack.client("socs-cryomech")
    client.init.wait(timeout=30)
    wait_for(lambda: acq_session(client)["status"] == "running", 30, "acq running")
    resp = client.power_ptc(state="on")
    check_resp_success(resp)
    assert acq_session(client)["status"] == "running"


def test_socs_cryomech_cpa_acq(stack):
    client = stack.client("socs-cryomech")
    client.acq.stop()
    client.acq.wait(timeout=30)
    client.init()
    resp = client.acq.start(test_mode=True)
    resp = client.acq.wait(timeout=30)
    assert resp.status == ocs.OK
    assert resp.session["op_code"] == OpCode.SUCCEEDED.value
    values = resp.session["data"]["values"]
    # SOCS's captured reply: coolant-in temperature, a word-swapped float at byte 21 of the frame
    swapped = SOCS_CAPTURED_REPLY[23:25] + SOCS_CAPTURED_REPLY[21:23]
    assert values["Coolant_In_Temp"] == pytest.approx(struct.unpack(">f", swapped)[0])
    resp = client.acq.stop()
