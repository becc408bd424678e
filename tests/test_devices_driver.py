"""The driver made from each shipped device file, against the independent emulators.

The emulators (tests/emulators) are written from vendor manuals and SOCS's
drivers and fixtures, not from the device files, so these tests check the
files against the devices' documented behaviour: replies, multi-step
transactions, error recovery, wrong-length and stale replies, and that bad
arguments send nothing.
"""

import pytest
from emulators import (
    CryomechCPAEmulator,
    DS378Emulator,
    GalilDMCEmulator,
    LS372Emulator,
    PCR500MAEmulator,
    TopticaDLCEmulator,
    TPG366Emulator,
)
from emulators.cryomech_cpa import SOCS_CAPTURED_REPLY

from socs_tcp import ConnectFailedError, LinkTimeoutError
from socs_tcp.devices import Device, DeviceError, DeviceInterlockError, DeviceReplyError, load

TIMEOUT = 2.0


@pytest.fixture
def connect():
    """Make Device objects that are closed after the test."""
    made = []

    def make(name, emulator, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT)
        dev = Device.from_file(name, emulator.address, **kwargs)
        made.append(dev)
        return dev
    yield make
    for dev in made:
        dev.close()


def run(emulator):
    emulator.start()
    return emulator


@pytest.fixture
def tpg():
    emu = run(TPG366Emulator())
    yield emu
    emu.stop()


# ----------------------------------------------------------------------
# Pfeiffer TPG 366: mnemonic, ACK, ENQ, data; init ENQ; resend on missing ACK

def test_tpg366_reads_all_channels_as_socs_fixture(tpg, connect):
    dev = connect("tpg366", tpg)
    values = dev.pressures()
    assert values["pressure"] == [12.345, 23.456, 34.567, 45.678, 56.789, 67.891]
    assert values["gauge_status"] == ["ok"] * 6
    assert dev.poll() == {f"pressure_ch{i + 1}": v for i, v in enumerate(values["pressure"])}


def test_tpg366_bytes_on_the_wire(tpg, connect):
    dev = connect("tpg366", tpg)
    values, exchanges = dev.transact("pressure", channel=3)
    assert values == {"status": "ok", "pressure": 34.567}
    assert [e[0] for e in exchanges] == [b"PR3\r\n", b"\x05"]
    assert exchanges[0][1] == b"\x06\r\n" and exchanges[1][1] == b"0,+3.4567E+01\r"


def test_tpg366_invalid_status_marks_the_value(tpg, connect):
    dev = connect("tpg366", tpg)
    tpg.set_status(2, 2)  # overrange
    values = dev.pressures()
    assert values["gauge_status"][1] == "overrange" and values["pressure"][1] == 0.0
    assert values["pressure"][0] == 12.345
    assert dev.pressure(channel=2) == {"status": "overrange", "pressure": pytest.approx(23.456)}


def test_tpg366_resends_when_no_ack(connect):
    with TPG366Emulator() as emu:
        dev = connect("tpg366", emu, timeout=5)
        emu.miss_ack(1, mode="silent")
        assert dev.pressures()["pressure"][0] == 12.345
        assert [r for r in emu.received if r.startswith(b"PRX")] == [b"PRX", b"PRX"]
        emu.miss_ack(1, mode="junk")
        assert dev.pressures()["pressure"][5] == 67.891


def test_tpg366_init_enq_stops_continuous_output(connect):
    with TPG366Emulator() as emu:
        emu.start_continuous(interval=0.01)
        dev = connect("tpg366", emu)
        assert emu.received[0] == b"\x05"
        assert dev.unit() == "mbar"
        assert dev.set_unit(unit="Torr") == "Torr"
        assert dev.unit() == "Torr"


def test_tpg366_init_runs_again_on_every_reconnect(tpg, connect):
    dev = connect("tpg366", tpg)
    assert dev.unit() == "mbar"
    tpg.drop_connections()
    try:
        unit = dev.unit()  # the link notices the close, reconnects and runs the init ENQ first ...
    except ConnectionError:
        unit = dev.unit()  # ... or, when the close arrives only after the request was sent, on the next call
    assert unit == "mbar"
    assert tpg.connections == 2
    assert tpg.received == [b"\x05", b"UNI", b"\x05", b"\x05", b"UNI", b"\x05"]


def test_tpg366_data_line_ending_crlf_is_tolerated(connect):
    # SOCS's fixture ends the data with CR LF: the LF left over is drained before the next call
    with TPG366Emulator(data_terminator=b"\r\n") as emu:
        dev = connect("tpg366", emu)
        for _ in range(3):
            assert dev.pressures()["pressure"][0] == 12.345


def test_tpg366_bad_channel_sends_nothing(tpg, connect):
    dev = connect("tpg366", tpg)
    dev.unit()  # answered: everything sent so far has arrived
    before = list(tpg.received)
    with pytest.raises(ValueError, match="argument 'channel' must be <= 6, got 7"):
        dev.pressure(channel=7)
    with pytest.raises(TypeError, match="argument 'channel' must be an int, got str"):
        dev.call("pressure", channel="3")
    with pytest.raises(ValueError, match="unknown argument|must be one of"):
        dev.set_unit(unit="furlongs")
    assert tpg.received == before


# ----------------------------------------------------------------------
# Cryomech CPA: Modbus TCP with SOCS's fixed transaction id and unit

SOCS_READ = b"\t\x99\x00\x00\x00\x06\x01\x04\x00\x01\x005"
SOCS_ON = b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\x01"
SOCS_OFF = b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\xff"


def test_cryomech_same_bytes_as_socs_and_its_captured_reply(connect):
    with CryomechCPAEmulator() as emu:
        dev = connect("cryomech_cpa", emu)
        values, exchanges = dev.transact("status")
        assert exchanges[0][0] == SOCS_READ
        assert exchanges[0][1] == SOCS_CAPTURED_REPLY
        assert values == dev.parse("status", SOCS_CAPTURED_REPLY)
        assert values["Coolant_In_Temp"] == pytest.approx(65.627, abs=1e-3)
        assert values["Oil_Temp"] == pytest.approx(66.21, abs=1e-3)
        assert values["Hours_of_Operation"] == pytest.approx(10613.5)
        assert values["Motor_Current"] == pytest.approx(0.219, abs=1e-3)
        assert values["Serial_Number"] == 10556
        assert values["Warning_State"] == 0 and isinstance(values["Warning_State"], int)
        assert set(dev.poll()) == {f.name for f in dev.spec.polling.feed_fields}


def test_cryomech_power_echo(connect):
    with CryomechCPAEmulator() as emu:
        dev = connect("cryomech_cpa", emu)
        _, exchanges = dev.transact("power_ptc", state="off")
        assert exchanges == [(SOCS_OFF, SOCS_OFF)]
        assert dev.status()["Compressor_State"] == 0
        _, exchanges = dev.transact("power_ptc", state="on")
        assert exchanges[0][0] == SOCS_ON
        assert dev.status()["Compressor_State"] == 1
        with pytest.raises(ValueError, match="argument 'state' must be one of \\['on', 'off'\\], got 'standby'"):
            dev.power_ptc(state="standby")


def test_cryomech_reply_with_another_transaction_id_is_not_taken(connect):
    with CryomechCPAEmulator() as emu:
        dev = connect("cryomech_cpa", emu, timeout=0.5)
        emu.wrong_transaction_id_once()
        with pytest.raises(LinkTimeoutError):
            dev.status()
        assert dev.status()["Serial_Number"] == 10556


def test_cryomech_short_reply_is_a_reply_error(connect):
    with CryomechCPAEmulator() as emu:
        dev = connect("cryomech_cpa", emu, timeout=0.5)
        emu.corrupt_next_reply()
        with pytest.raises((DeviceReplyError, LinkTimeoutError)) as info:
            dev.status()
        if isinstance(info.value, DeviceReplyError):
            assert "status:" in str(info.value)
        assert dev.status()["Serial_Number"] == 10556


# ----------------------------------------------------------------------
# Devantech dS378: fixed-length binary frames, bits across bytes, wrong length retried

def test_ds378_status_and_relays(connect):
    with DS378Emulator(supply_volts=12.5, temperature=-3.2) as emu:
        dev = connect("ds378", emu)
        status = dev.get_status()
        assert status["module_id"] == 35 and status["V_sppl"] == 12.5 and status["T_int"] == -3.2
        assert dev.set_relay(relay_number=3, on_off=1) == 0
        assert dev.set_relay(relay_number=8, on_off=1) == 0
        relays = dev.get_relays()
        assert [relays[f"Relay_{i}"] for i in range(1, 9)] == [0, 0, 1, 0, 0, 0, 0, 1]
        assert relays["relays"] == 0b10000100
        assert emu.received[-1] == b"\x33\x01"
        _, exchanges = dev.transact("set_relay", relay_number=2, on_off=1, pulse_time=500)
        assert exchanges[0][0] == b"\x31\x02\x01\x00\x00\x01\xf4"
        assert dev.get_counter(counter=4) == {"value": 0, "capture": 0}
        assert dev.poll()["Relay_3"] == 1


def test_ds378_wrong_length_reply_is_discarded_and_sent_again(connect):
    with DS378Emulator() as emu:
        dev = connect("ds378", emu, timeout=0.5)
        emu.partial_reply_once()
        assert dev.get_status()["module_id"] == 35
        assert emu.received.count(b"\x30") == 2
        emu.partial_reply_once(2)
        with pytest.raises(DeviceReplyError, match="get_status: 7 bytes, expected 8 \\(after 2 attempts\\)") as info:
            dev.get_status()
        assert [sent for sent, _ in info.value.exchanges] == [b"\x30", b"\x30"]
        assert all(len(received) == 7 for _, received in info.value.exchanges)


def test_ds378_limits_send_nothing(connect):
    with DS378Emulator() as emu:
        dev = connect("ds378", emu)
        for bad in ({"relay_number": 9, "on_off": 1}, {"relay_number": 1, "on_off": 2},
                    {"relay_number": 1, "on_off": 1, "pulse_time": 2 ** 32}):
            with pytest.raises(ValueError):
                dev.set_relay(**bad)
        assert emu.received == []


# ----------------------------------------------------------------------
# Kikusui PCR500MA: SCPI, limits, error queue after commands, interlock

def test_pcr500ma_set_and_get(connect):
    with PCR500MAEmulator() as emu:
        dev = connect("pcr500ma", emu)
        assert dev.get_idn()["model"] == "PCR500MA"
        dev.set_volt_ac(volt_set=12.5)
        assert dev.get_volt_ac() == 12.5
        assert emu.received[1:3] == [b"VOLT 12.5", b"SYST:ERR?"]
        dev.set_coupling(coupling="DC")
        assert dev.get_coupling() == "DC"
        dev.set_output(output=True, force=True)
        assert dev.get_output() == 1
        assert dev.meas_volt_ac() == pytest.approx(12.5)
        assert dev.poll()["output"] == 1


def test_pcr500ma_soft_limit_sends_nothing(connect):
    with PCR500MAEmulator() as emu:
        dev = connect("pcr500ma", emu)
        with pytest.raises(ValueError, match="argument 'volt_set' must be <= 51, got 60.0"):
            dev.set_volt_ac(volt_set=60)
        assert emu.received == []


def test_pcr500ma_error_queue_raises_the_device_error(connect):
    with PCR500MAEmulator(volt_window=(0, 20)) as emu:
        dev = connect("pcr500ma", emu)
        with pytest.raises(DeviceError) as info:
            dev.set_volt_ac(volt_set=30)
        assert info.value.code == -222 and info.value.message == "Data out of range"
        assert str(info.value) == "set_volt_ac: device error -222: Data out of range"
        dev.set_volt_ac(volt_set=10)  # the queue was emptied: the next command is clean
        emu.trip_protection()
        with pytest.raises(DeviceError) as info:
            dev.set_output(output=True, force=True)
        assert info.value.code == -221


def test_pcr500ma_interlock_refuses_before_sending(connect):
    with PCR500MAEmulator() as emu:
        dev = connect("pcr500ma", emu)
        dev.set_volt_ac(volt_set=10)
        count = len(emu.received)
        with pytest.raises(DeviceInterlockError, match="Voltage too high to turn on/off"):
            dev.set_output(output=True)
        assert emu.received[count:] == [b"VOLT?"]
        dev.set_volt_ac(volt_set=0)
        dev.set_output(output=True)
        assert dev.get_output() == 1


# ----------------------------------------------------------------------
# Lake Shore 372: channels, readings, status bits, input setup, stale replies

def test_ls372_readings_and_channels(connect):
    with LS372Emulator() as emu:
        dev = connect("ls372", emu)
        assert dev.krdg(channel=1) == 293.873
        assert dev.get_resistance(channel="1") == 108.278
        emu.set_reading("A", kelvin=0.05)
        assert dev.get_temp(channel="A") == 0.0  # the control input has no curve: no kelvin reading
        assert emu.received[-1] == b"RDGK? A"
        emu.set_reading(16, kelvin=1.25)
        assert dev.krdg(channel=16) == 1.25
        with pytest.raises(ValueError):
            dev.krdg(channel=17)
        assert dev.poll() == {"Channel_01_T": 293.873, "Channel_01_R": 108.278, "Channel_01_status": 0}


def test_ls372_status_bits(connect):
    with LS372Emulator() as emu:
        dev = connect("ls372", emu)
        emu.set_reading(2, status=128 + 16 + 1)
        status = dev.get_reading_status(channel=2)
        assert status["status"] == 145
        assert status["T_UNDER"] and status["R_OVER"] and status["CS_OVL"]
        assert not status["T_OVER"] and not status["VCM_OVL"]


def test_ls372_input_setup_round_trip(connect):
    with LS372Emulator() as emu:
        dev = connect("ls372", emu)
        assert dev.get_input_setup(channel=1) == {"enabled": True, "dwell": 7, "pause": 3, "curve": 21,
                                                  "tempco": "negative"}
        dev.set_input_setup(channel=4, enabled=False, dwell=12, pause=4, curve=0, tempco="positive")
        assert emu.wait_for_requests(2)  # a Lake Shore command has no reply: wait for it to arrive
        assert emu.received[-1] == b"INSET 4,0,12,4,0,2"
        assert dev.get_input_setup(channel=4)["tempco"] == "positive"
        assert dev.get_input_type(channel="A")["units"] == "ohms"
        count = len(emu.received)
        dev.set_name(channel=3, name="still")
        assert emu.wait_for_requests(count + 1)
        assert emu.received[-1] == b'INNAME 3,"still"'
        assert dev.get_name(channel=3) == "still"
        with pytest.raises(ValueError, match="at most 15 characters"):
            dev.set_name(channel=3, name="a much too long channel name")
        with pytest.raises(ValueError, match="must match"):
            dev.set_name(channel=3, name='quote"in')


def test_ls372_stale_reply_is_not_taken_as_the_answer(connect):
    with LS372Emulator() as emu:
        dev = connect("ls372", emu)
        assert dev.krdg(channel=1) == 293.873
        emu.set_reading(1, kelvin=0.1)
        emu.stale_reply_once()
        values = [dev.krdg(channel=1) for _ in range(3)]
        # the stale line is taken at most once, and never after the link has re-synchronised
        assert values[-1] == 0.1 and values.count(0.0) <= 1


# ----------------------------------------------------------------------
# Galil DMC: ':' prompt, '?' error token, TC1, CI -1, device-length arrays

def test_galil_axes_decided_by_the_controller(connect):
    with GalilDMCEmulator(axes="AB") as emu:
        dev = connect("galil_dmc", emu)
        dev.set_relative_position(axis="A", distance=1000)
        assert emu.received[-1] == b"PRA=1000"
        assert dev.get_relative_position(axis="A") == 1000.0
        assert len(dev.get_positions()) == 2
        feed = dev.poll()
        assert set(feed) == {f"{a}_{q}" for a in "AB" for q in ("position", "velocity", "torque", "position_error")}


def test_galil_input_buffer_full_is_recovered(connect):
    with GalilDMCEmulator() as emu:
        dev = connect("galil_dmc", emu)
        emu.fill_input_buffer()
        dev.set_speed(axis="B", speed=5000)
        assert b"TC1" in emu.received and b"CI -1" in emu.received
        assert emu.received[-1] == b"SPB=5000"
        assert dev.get_speed(axis="B") == 5000.0


def test_galil_unrecoverable_error_is_a_device_error(connect):
    with GalilDMCEmulator(axes="ABCD") as emu:
        dev = connect("galil_dmc", emu)
        with pytest.raises(DeviceError) as info:
            dev.get_speed(axis="H")
        assert (info.value.code, info.value.message) == (6, "Number out of range")
        assert emu.received == [b"MG _SPH", b"TC1"]  # no retry: the code has no recovery
        assert dev.get_speed(axis="A") == 25000.0


# ----------------------------------------------------------------------
# Toptica DLC smart: '> ' prompt, error replies

def test_toptica_prompt_and_errors(connect):
    with TopticaDLCEmulator() as emu:
        dev = connect("toptica_dlc", emu)
        assert dev.get_system_label() == "DLC smart"
        assert dev.set_frequency(frequency=150.5) == 0
        assert dev.get_frequency() == 150.5
        assert dev.get_photocurrent() == {"valid": True, "current": 12.5}
        dev.bias_to_zero()
        assert emu.executed[-1] == ("lockin:mod-out-set-to-zero", [])
        emu.params.pop("frequency:frequency-set")
        with pytest.raises(DeviceError) as info:
            dev.get_frequency_set()
        assert info.value.code == -10


def test_toptica_late_prompt_is_removed(connect):
    with TopticaDLCEmulator() as emu:
        dev = connect("toptica_dlc", emu)
        emu.lose_prompt_once()
        assert [dev.get_frequency() for _ in range(3)] == [100.0] * 3


# ----------------------------------------------------------------------
# link failures are the library's ConnectionError subclasses

def test_unreachable_device_raises_connection_error():
    with TPG366Emulator() as emu:
        address = emu.address
    dev = Device.from_file("tpg366", address, timeout=0.5)
    try:
        with pytest.raises(ConnectFailedError):
            dev.pressures()
        with pytest.raises(ConnectionError):
            dev.pressures()
    finally:
        dev.close()


def test_silent_device_times_out_and_reconnects(connect):
    with LS372Emulator() as emu:
        dev = connect("ls372", emu, timeout=0.3)
        emu.go_silent(True)
        with pytest.raises(LinkTimeoutError):
            dev.krdg(channel=1)
        assert dev.comm is None  # stale_input: close
        emu.go_silent(False)
        assert dev.krdg(channel=1) == 293.873


def test_parse_is_pure_and_names_the_offending_bytes():
    dev = Device(load("tpg366"), "127.0.0.1", 1, connect=False)
    assert dev.parse("pressure", b"0,+1.0000E-03\r") == {"status": "ok", "pressure": 0.001}
    with pytest.raises(DeviceReplyError) as info:
        dev.parse("pressures", b"0,+1.0E-03,0\r")
    assert info.value.operation == "pressures" and info.value.reply == b"0,+1.0E-03,0"
    assert "3 items separated by ',', expected 12" in str(info.value)
    with pytest.raises(DeviceReplyError, match="'x' is not a float"):
        dev.parse("pressure", b"0,x\r")
    assert dev.comm is None
