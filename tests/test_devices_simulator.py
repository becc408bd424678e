"""The simulator made from a device file: state, sample values, faults, fixture, command line."""

import os
import signal
import subprocess
import sys
import time

import pytest

from socs_tcp import ConnectFailedError, LinkTimeoutError, TCPInterface
from socs_tcp.devices import Device, DeviceError, load, loads
from socs_tcp.devices.simulator import DeviceSimulator, SimulatorLogic, SimulatorState
from socs_tcp.devices.testing import device_simulator_fixture

tpg_sim = device_simulator_fixture("tpg366", seed=3)


def driver(sim, name=None, **kwargs):
    kwargs.setdefault("timeout", 3)
    return Device.from_file(name or sim.spec.name, sim.address, **kwargs)


def test_fixture_serves_the_file(tpg_sim):
    dev = driver(tpg_sim)
    try:
        values = dev.pressures()
        # the sample values of the file, with its noise (1e-9 mbar)
        assert values["pressure"][0] == pytest.approx(1.0e-3, abs=1e-7)
        assert values["pressure"][5] == pytest.approx(6.0e-7, abs=1e-7)
        assert 1.0e-4 <= dev.pressure(channel=2)["pressure"] <= 1.0e-3  # the file's range
        assert tpg_sim.received[:3] == ["\x05", "PRX", "\x05"]  # init ENQ, then mnemonic + ENQ
    finally:
        dev.close()


@pytest.mark.parametrize("name,setter,args,getter,expected", [
    ("tpg366", "set_unit", {"unit": "Pa"}, "unit", "Pa"),
    ("pcr500ma", "set_volt_ac", {"volt_set": 12.5}, "get_volt_ac", 12.5),
    ("pcr500ma", "set_coupling", {"coupling": "ACDC"}, "get_coupling", "ACDC"),
    ("ls372", "set_name", {"channel": "7", "name": "cold plate"}, "get_name", "cold plate"),
    ("galil_dmc", "set_speed", {"axis": "C", "speed": 1234}, "get_speed", 1234.0),
    ("toptica_dlc", "set_frequency", {"frequency": 150.5}, "get_frequency", 150.5),
])
def test_a_setter_changes_what_the_getter_returns(name, setter, args, getter, expected):
    with DeviceSimulator(name, noise=False) as sim:
        dev = driver(sim)
        try:
            dev.call(setter, **args)
            getter_args = {k: v for k, v in args.items() if k in dev.spec.operations[getter].arg_map}
            assert getattr(dev, getter)(**getter_args) == expected
        finally:
            dev.close()


def test_binary_and_modbus_state():
    with DeviceSimulator("ds378") as sim:
        dev = driver(sim)
        try:
            dev.set_relay(relay_number=5, on_off=1)
            relays = dev.get_relays()
            assert relays["Relay_5"] == 1 and relays["relays"] == 1 << 4
            assert dev.get_status()["V_sppl"] == 12.5
        finally:
            dev.close()
    with DeviceSimulator("cryomech_cpa") as sim:
        dev = driver(sim)
        try:
            assert dev.status()["Compressor_State"] == 1
            dev.power_ptc(state="off")
            assert dev.status()["Compressor_State"] == 0
        finally:
            dev.close()


def test_same_seed_same_values():
    def read():
        with DeviceSimulator("cryomech_cpa", seed=11) as sim:
            dev = driver(sim)
            try:
                return dev.status()["Coolant_In_Temp"]
            finally:
                dev.close()
    assert read() == read()


def test_unknown_requests_get_the_devices_error():
    with DeviceSimulator("galil_dmc") as sim:
        link = TCPInterface("127.0.0.1", sim.port, 3, encoding="ascii")
        try:
            assert link.wrnrd_until("XQ\r", ["?", ":"]) == ""
            assert link.wrnrd_until("TC1\r", ":").strip() == "1 Unrecognized command"
        finally:
            link.close()
    with DeviceSimulator("pcr500ma") as sim:
        link = TCPInterface("127.0.0.1", sim.port, 3, encoding="ascii", termination="\n")
        try:
            link.write("BOGUS 1")
            assert link.query("SYST:ERR?") == '-113,"Undefined header"'
            assert link.query("SYST:ERR?") == '0,"No error"'
        finally:
            link.close()


INIT_FILE = """\
device: initdemo
connection:
  port: 5025
  init:
    - send: "*CLS"
    - send: "SYST:REM"
    - expect: "REMOTE"
errors:
  queue: {query: "SYST:ERR?", parse: '^(?P<code>[-+]?\\d+),"(?P<message>[^"]*)"$', ok: [0]}
queries:
  volt: {request: "VOLT?", reply: {type: float, sim: {state: volt, value: 1.5}}}
commands:
  set_volt:
    request: "VOLT {v}"
    args: {v: {type: float, min: 0, max: 10}}
    sim: {sets: {volt: "{v}"}}
"""


def test_the_simulator_knows_what_the_files_init_sends():
    spec = loads(INIT_FILE, "initdemo.yaml")
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=3)
        try:
            dev.set_volt(v=2.5)                 # the queue holds no -113 for the init lines
            assert dev.volt() == 2.5
            assert sim.received[:2] == ["*CLS", "SYST:REM"]
        finally:
            dev.close()


RELAYS_FILE = """\
device: relays
connection: {port: 17494, protocol: binary}
queries:
  states:
    request: [0x24]
    reply:
      length: 1
      fields:
        relays: {wire: u8, byte: 0, flags: {relay_1: 0, relay_2: 1, relay_3: 2}, sim: {state: relays, value: 0}}
commands:
  relay_on:
    request: [0x20, {arg: relay, wire: u8}]
    args: {relay: {type: int, min: 1, max: 3}}
    sim: {sets: {"relay_{relay}": true}}
  relay_off:
    request: [0x21, {arg: relay, wire: u8}]
    args: {relay: {type: int, min: 1, max: 3}}
    sim: {sets: {"relay_{relay}": false}}
  set_all:
    request: [0x23, {arg: mask, wire: u8}]
    args: {mask: {type: int, min: 0, max: 7}}
    sim: {sets: {relays: "{mask}"}}
"""


def test_a_flag_word_and_its_flags_are_one_state():
    spec = loads(RELAYS_FILE, "relays.yaml")
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=3)
        try:
            dev.relay_on(relay=2)
            assert dev.states()["relays"] == 0b010
            dev.set_all(mask=0b101)             # the whole word wins over the earlier single flag
            assert dev.states()["relays"] == 0b101
            dev.relay_off(relay=3)
            dev.relay_on(relay=2)
            assert dev.states() == {"relays": 0b011, "relay_1": True, "relay_2": True, "relay_3": False}
        finally:
            dev.close()


def test_pushed_error_reaches_the_driver_as_device_error():
    with DeviceSimulator("pcr500ma") as sim:
        dev = driver(sim)
        try:
            sim.push_error(-221, "Settings conflict")
            with pytest.raises(DeviceError) as info:
                dev.set_output(output=False, force=True)
            assert (info.value.code, info.value.message) == (-221, "Settings conflict")
        finally:
            dev.close()


def test_faults_of_the_emulator():
    with DeviceSimulator("ls372") as sim:
        dev = driver(sim, timeout=0.5)
        try:
            assert isinstance(dev.krdg(channel=1), float)
            sim.go_silent(True)
            with pytest.raises(LinkTimeoutError):
                dev.krdg(channel=1)
            sim.go_silent(False)
            sim.split_replies(2, gap=0.001)
            assert isinstance(dev.krdg(channel=2), float)
            sim.split_replies(None)
            sim.drop_connections()
            assert isinstance(dev.krdg(channel=3), float)  # reconnects
            sim.send_garbage(b"junk\r\n")
            assert isinstance(dev.krdg(channel=3), float)  # stale input is drained first
            sim.refuse_connections(True)
            dev.close()
            with pytest.raises(ConnectFailedError):
                dev.krdg(channel=1)
        finally:
            sim.refuse_connections(False)
            dev.close()


def test_logic_is_sans_io():
    spec = load("tpg366")
    logic = SimulatorLogic(spec, SimulatorState(spec, seed=1, noise=False))
    assert logic.feed(b"PR") == []
    [(request, ack)] = logic.feed(b"1\r\n")
    assert (request, ack) == ("PR1", b"\x06\r\n")
    [(request, data)] = logic.feed(b"\x05")
    assert request == "\x05" and data.endswith(b"\r") and data.startswith(b"0,")
    assert logic.feed(b"\x05") == [("\x05", None)]  # an ENQ with nothing pending is ignored


def test_simulate_command_line():
    proc = subprocess.Popen([sys.executable, "-m", "socs_tcp.devices", "simulate", "tpg366", "--port", "0",
                             "--seed", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        dev = Device.from_file("tpg366", f"127.0.0.1:{port}", timeout=5)
        try:
            assert len(dev.pressures()["pressure"]) == 6
        finally:
            dev.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def test_simulate_stops_on_sigint_and_reports_a_bad_file(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "socs_tcp.devices", "simulate", "ds378", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("listening on ")
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: bad\nconnection: {port: 1}\nqueries:\n  a: {request: A, reply: flaot}\n")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "simulate", str(bad), "--port", "0"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == f"{bad}:4: queries.a.reply: unknown type 'flaot' (one of: float, int, str, bool)"
    assert time.monotonic() - started < 60
