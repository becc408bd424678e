"""The shipped device files: they load, and where SOCS has an agent they keep its names.

Drop-in names (feed, block, fields, tasks and their arguments) are checked
against the SOCS agents they replace (simonsobs/socs ``socs/agents/...``).
"""

import pytest

from socs_tcp.devices import REQUIRED, find, list_devices, load
from socs_tcp.devices.spec import files_dir

SHIPPED = ["cryomech_cpa", "ds378", "galil_dmc", "ls372", "pcr500ma", "pfeiffer_tc400", "toptica_dlc", "tpg366"]


def test_list_devices_is_the_sorted_shipped_names():
    assert list_devices() == SHIPPED
    assert all(find(name).parent == files_dir() for name in SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_loads(name):
    spec = load(name)
    assert spec.name == name
    assert spec.title and spec.description
    assert spec.operations, "a device has operations"
    assert 0 < spec.source_lines < len(spec.path.read_text().splitlines())
    assert set(spec.queries) | set(spec.commands) == set(spec.operations)
    assert all(op.kind == "query" for op in spec.queries.values())
    assert all(op.writes for op in spec.commands.values())
    for op in spec.operations.values():
        for f in op.fields:
            assert f.type in ("float", "int", "str", "bool")
    assert spec.polling is not None and spec.polling.feed_fields
    names = [f.name for f in spec.polling.feed_fields]
    assert len(names) == len(set(names))


def test_load_by_path_is_the_same_as_by_name(tmp_path):
    copy = tmp_path / "gauge.yaml"
    copy.write_text(find("tpg366").read_text())
    a, b = load("tpg366"), load(copy)
    assert list(a.operations) == list(b.operations)
    assert b.path == copy


def test_tpg366_is_a_drop_in_for_the_pfeiffer_agent():
    spec = load("tpg366")
    assert (spec.polling.feed, spec.polling.block, spec.polling.rate) == ("pressures", "pressures", 2.5)
    assert [f.name for f in spec.polling.feed_fields] == [f"pressure_ch{i}" for i in range(1, 7)]
    assert spec.agent.agent_class == "DeviceAgent"
    assert spec.agent.tasks["close"].kind == "stop"
    assert spec.agent.modes["test"] == {"acq": {"test_mode": True}}
    assert spec.replaces["agent"] == "PfeifferAgent"
    # the multi-step transaction with a change of in-terminator
    t = spec.operations["pressures"].transaction
    assert [s.action for s in t.steps] == ["send", "expect", "send", "reply"]
    assert t.steps[2].terminator == [] and t.steps[3].terminator == ["\r"]
    assert spec.connection.in_terminator == ["\r\n"] and t.attempts == 3
    assert [s.action for s in spec.connection.init] == ["send", "discard"]


def test_cryomech_is_a_drop_in_for_the_cpa_agent():
    spec = load("cryomech_cpa")
    assert (spec.polling.feed, spec.polling.block) == ("ptc_status", "ptc_status")
    assert [f.name for f in spec.polling.feed_fields] == [
        "Operating_State", "Compressor_State", "Warning_State", "Alarm_State", "Coolant_In_Temp", "Coolant_Out_Temp",
        "Oil_Temp", "Helium_Temp", "Low_Pressure", "Low_Pressure_Average", "High_Pressure", "High_Pressure_Average",
        "Delta_Pressure_Average", "Motor_Current", "Hours_of_Operation", "Pressure_Unit", "Temperature_Unit"]
    power = spec.operations["power_ptc"]
    assert [a.name for a in power.args] == ["state"] and power.args[0].choices == ["on", "off"]
    assert power.args[0].default is REQUIRED and power.args[0].required
    init = spec.agent.tasks["init"]
    assert init.kind == "init" and [(p.name, p.default) for p in init.params] == [("auto_acquire", False)]
    assert spec.connection.transaction_id == 0x0999 and spec.connection.unit == 1
    assert spec.agent.modes["acq"] == {"init": {"auto_acquire": True}}


def test_ds378_and_pcr500ma_keep_the_socs_names():
    ds = load("ds378")
    assert (ds.polling.feed, ds.polling.block, ds.polling.rate) == ("relay", "relay", 0.5)
    assert [f.name for f in ds.polling.feed_fields] == ["V_sppl", "T_int"] + [f"Relay_{i}" for i in range(1, 9)]
    assert [a.name for a in ds.operations["set_relay"].args] == ["relay_number", "on_off", "pulse_time"]
    assert "get_relays" in ds.queries
    pcr = load("pcr500ma")
    assert (pcr.polling.feed, pcr.polling.block) == ("heater_source", "heater_source")
    assert [f.name for f in pcr.polling.feed_fields] == ["I_AC", "V_AC", "P_AC", "f_AC", "output"]
    assert [a.name for a in pcr.operations["set_output"].args] == ["output", "force"]
    assert [a.name for a in pcr.operations["set_volt_ac"].args] == ["volt_set"]
    assert pcr.operations["set_volt_ac"].args[0].max == 51
    assert {"get_output", "get_volt_ac"} <= set(pcr.queries)


def test_galil_arrays_publish_per_axis_names():
    spec = load("galil_dmc")
    assert (spec.polling.feed, spec.polling.block) == ("stage_status", "axes")
    names = [f.name for f in spec.polling.feed_fields]
    assert names[:8] == [f"{a}_position" for a in "ABCDEFGH"] and "H_position_error" in names
    position = spec.operations["get_positions"].fields[0]
    assert position.array.count is None and position.array.max == 8


def test_ls372_channels_and_status_bits():
    spec = load("ls372")
    channel = spec.operations["krdg"].args[0]
    assert channel.choices == ["A"] + [str(i) for i in range(1, 17)]
    assert channel.check(5) == "5" and channel.check("a") == "A"
    with pytest.raises(ValueError, match="argument 'channel' must be one of"):
        channel.check(17)
    fields = [f.name for f in spec.operations["get_reading_status"].fields]
    assert fields == ["status", "CS_OVL", "VCM_OVL", "VMIX_OVL", "VDIF_OVL", "R_OVER", "R_UNDER", "T_OVER", "T_UNDER"]
    assert spec.connection.stale_input == "close"


def test_alarm_and_warning_limits_reach_the_feed_fields():
    spec = load("cryomech_cpa")
    by_name = {f.name: f for f in spec.polling.feed_fields}
    assert by_name["Coolant_In_Temp"].warning == (None, 90) and by_name["Coolant_In_Temp"].alarm == (None, 100)
    assert by_name["Coolant_In_Temp"].unit == "F"
    tpg = {f.name: f for f in load("tpg366").polling.feed_fields}
    assert tpg["pressure_ch3"].alarm == (None, 1.0) and tpg["pressure_ch3"].unit == "mbar"


def test_check_args_names_the_bad_argument():
    op = load("pcr500ma").operations["set_volt_ac"]
    assert op.check_args(volt_set=12) == {"volt_set": 12.0}
    with pytest.raises(ValueError, match=r"argument 'volt_set' must be <= 51, got 60.0"):
        op.check_args(volt_set=60)
    with pytest.raises(TypeError, match=r"argument 'volt_set' must be a number, got str: 'high'"):
        op.check_args(volt_set="high")
    with pytest.raises(TypeError, match=r"set_volt_ac: missing required argument 'volt_set'"):
        op.check_args()
    with pytest.raises(TypeError, match=r"set_volt_ac: unknown argument 'volts' \(arguments: volt_set\)"):
        op.check_args(volts=1)
    with pytest.raises(ValueError, match="finite"):
        op.check_args(volt_set=float("nan"))


def test_the_tutorial_file_loads_and_behaves_as_the_tutorial_says():
    from pathlib import Path

    from socs_tcp.devices import Device
    from socs_tcp.devices.simulator import DeviceSimulator

    path = Path(__file__).resolve().parent.parent / "docs" / "devices" / "examples" / "tm2.yaml"
    spec = load(path)
    assert list(spec.operations) == ["identify", "temperature", "temperatures", "unit", "status", "set_unit"]
    assert [f.name for f in spec.polling.feed_fields] == ["temperature_1", "temperature_2", "alarm_1", "alarm_2"]
    with DeviceSimulator(spec, seed=1) as sim:
        dev = Device.from_file(spec, sim.address, timeout=5)
        try:
            assert dev.identify() == {"maker": "ACME", "model": "TM-2", "serial": "0042", "firmware": "1.3"}
            assert 20 <= dev.temperature(channel=1) <= 25
            with pytest.raises(ValueError, match="argument 'channel' must be <= 2, got 3"):
                dev.temperature(channel=3)
            dev.set_unit(unit="K")
            assert dev.unit() == "K"
            assert sim.received[-3:] == ["UNIT 2", "ERR?", "UNIT?"]
            assert dev.parse("temperatures", b"0,+21.50,1,+0.00\r\n") == {"temperature": [21.5, None],
                                                                          "input_status": ["ok", "open"]}
            assert set(dev.poll()) == {"temperature_1", "temperature_2", "alarm_1", "alarm_2"}
        finally:
            dev.close()


def test_a_number_is_taken_for_an_enum_key_that_reads_as_it():
    from socs_tcp.devices.spec import ArgSpec
    nplc = ArgSpec("nplc", "enum", choices=["0.02", "0.2", "1", "10"],
                   values={"0.02": "0.02", "0.2": "0.2", "1": "1", "10": "10"})
    assert [nplc.check(v) for v in (0.2, 10.0, 1, "0.02")] == ["0.2", "10", "1", "0.02"]
    with pytest.raises(ValueError, match=r"argument 'nplc' must be one of \['0.02', '0.2', '1', '10'\], got 5.0"):
        nplc.check(5.0)
