"""Text telegrams with a checksum, and device params: the shipped Pfeiffer TC 400 file.

The file runs against an independent TC 400 emulator (tests/emulators/
pfeiffer_tc400.py, written from the Pfeiffer Vacuum protocol and the
pfeiffer_vacuum_protocol package SOCS uses) over real loopback sockets: the
telegrams on the wire (the protocol's own example "0010030902=?107"), the
unit address as a param, a telegram for another unit never answered, the
two-telegram turn-on, a bad checksum, the protocol's error answers.  Then
the loader's errors for the new keys, and the simulator with params.
"""

import functools
import operator
import subprocess
import sys
import textwrap

import pytest
from emulators import TC400Emulator
from emulators.pfeiffer_tc400 import telegram

from socs_tcp import LinkTimeoutError
from socs_tcp.devices import Device, DeviceError, DeviceFileError, DeviceReplyError, load, loads
from socs_tcp.devices.simulator import DeviceSimulator


@pytest.fixture
def connect():
    made = []

    def make(emulator, **kwargs):
        kwargs.setdefault("timeout", 1.0)
        dev = Device.from_file("pfeiffer_tc400", emulator.address, **kwargs)
        made.append(dev)
        return dev
    yield make
    for dev in made:
        dev.close()


def test_a_data_request_is_the_protocols_own_example(connect):
    with TC400Emulator(address=1) as emu:
        dev = connect(emu)
        values, exchanges = dev.transact("rotation_speed")
        assert exchanges == [(b"0010030902=?107\r", telegram("0011030906000000"))]
        assert values == {"rotation_speed": 0}


def test_the_unit_address_is_a_param_and_other_units_stay_silent(connect):
    with TC400Emulator(address=94) as emu:
        dev = connect(emu, params={"address": 94})
        assert dev.electronics_name() == "TC 400"
        assert emu.received[-1].startswith("0940034902=?")
        stranger = connect(emu, timeout=0.3)            # the file's default address, 1
        with pytest.raises(LinkTimeoutError):
            stranger.electronics_name()
        assert emu.received[-1].startswith("0010034902=?")


def test_poll_gives_the_socs_agents_feed_fields(connect):
    with TC400Emulator() as emu:
        emu.values.update(voltage=46.65, current=3.02, power=140, motor_temp=32, error_code="Err001")
        dev = connect(emu)
        assert dev.poll() == {
            "Drive_Voltage": 46.65, "Drive_Current": 3.02, "Drive_Power": 140.0, "Turbo_Power_Stage_Temp": 35,
            "Turbo_Electronics_Temp": 33, "Turbo_Pump_Bottom_Temp": 24, "Turbo_Bearing_Temp": 25,
            "Turbo_Motor_Temp": 32, "Rotation_Speed": 0, "Acceleration": 0, "Error_Code": "Err001"}


def test_turn_on_readies_the_pump_then_starts_the_motor_checking_each_echo(connect):
    with TC400Emulator() as emu:
        dev = connect(emu)
        _, exchanges = dev.transact("turn_turbo_on")
        assert [sent for sent, _ in exchanges] == [telegram("0011001006111111"), telegram("0011002306111111")]
        assert dev.pumping_station() is True and dev.motor_pump() is True
        assert dev.rotation_speed() == 820
        _, exchanges = dev.transact("turn_turbo_off")
        assert [sent for sent, _ in exchanges] == [telegram("0011002306000000"), telegram("0011001006000000")]
        assert dev.motor_pump() is False and dev.rotation_speed() == 0
        emu.values["error_code"] = "Err006"
        dev.acknowledge_turbo_errors()
        assert emu.acknowledged == 1 and dev.error_code() == "000000"


def test_a_refused_command_is_a_reply_error_naming_the_echo(connect):
    with TC400Emulator() as emu:
        dev = connect(emu)
        emu.values["pumping_station"] = True
        original = emu._answer
        emu._answer = lambda action, param, data: "_LOGIC" if param == 23 else original(action, param, data)
        with pytest.raises(DeviceError) as info:
            dev.turn_turbo_on()
        assert info.value.code == "_LOGIC"


def test_an_unknown_parameter_is_the_devices_error(connect):
    with TC400Emulator() as emu:
        dev = connect(emu)
        del emu.values["acceleration"]           # the emulator no longer knows 336 ...
        original = emu._answer
        emu._answer = lambda action, param, data: "NO_DEF" if param == 336 else original(action, param, data)
        with pytest.raises(DeviceError) as info:
            dev.acceleration()
        assert (info.value.code, info.value.operation) == ("NO_DEF", "acceleration")


def test_a_bad_checksum_is_a_reply_error_and_the_link_stays_in_step(connect):
    with TC400Emulator() as emu:
        dev = connect(emu)
        emu.corrupt_checksum_once()
        with pytest.raises(DeviceReplyError, match=r"motor_temperature: checksum '00[01]', computed '\d{3}' "
                                                   r"\(sum8 of the characters before it\)"):
            dev.motor_temperature()
        assert dev.motor_temperature() == 27


def test_the_units_checksum_is_checked_by_the_emulator_too(connect):
    with TC400Emulator() as emu:
        dev = connect(emu, timeout=0.3)
        dev.write(b"0010030902=?108\r")        # one off: the unit does not answer
        with pytest.raises(LinkTimeoutError):
            dev.read_bytes(1, timeout=0.3)
        assert emu.bad_checksums == 1


def test_parse_checks_the_checksum_of_a_captured_telegram():
    dev = Device.from_file("pfeiffer_tc400", "127.0.0.1:1", connect=False)
    assert dev.parse("motor_temperature", telegram("0011034606000032")) == {"motor_temperature": 32}
    with pytest.raises(DeviceReplyError, match=r"checksum '999'"):
        dev.parse("motor_temperature", b"0011034606000032999\r")


def test_bad_params_are_refused_before_anything_is_sent():
    with pytest.raises(ValueError, match="param 'address' must be <= 255, got 300"):
        Device.from_file("pfeiffer_tc400", "127.0.0.1:1", params={"address": 300}, connect=False)
    with pytest.raises(TypeError, match=r"pfeiffer_tc400: unknown param 'adress' \(params: address\)"):
        Device.from_file("pfeiffer_tc400", "127.0.0.1:1", params={"adress": 3}, connect=False)


def test_the_simulator_takes_the_params_and_answers_only_its_own_unit():
    with DeviceSimulator("pfeiffer_tc400", params={"address": 7}, seed=1) as sim:
        dev = Device.from_file("pfeiffer_tc400", sim.address, params={"address": 7}, timeout=1)
        other = Device.from_file("pfeiffer_tc400", sim.address, timeout=0.3)
        try:
            assert dev.rotation_speed() == 819
            dev.turn_turbo_on()
            assert dev.motor_pump() is True
            with pytest.raises(LinkTimeoutError):
                other.rotation_speed()
        finally:
            dev.close()
            other.close()


def test_simulate_command_line_takes_params():
    proc = subprocess.Popen([sys.executable, "-m", "socs_tcp.devices", "simulate", "pfeiffer_tc400", "--port", "0",
                             "--param", "address=94"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        dev = Device.from_file("pfeiffer_tc400", line.split()[-1], params={"address": 94}, timeout=2)
        try:
            assert dev.electronics_name() == "TC 400"
        finally:
            dev.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    done = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "simulate", "pfeiffer_tc400", "--port", "0",
                           "--param", "address=x"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip() == "param 'address' must be an int, got 'x'"


# ----------------------------------------------------------------------
# loader errors

BASE = """\
device: t
connection:
  port: 4001
  out_terminator: "\\r"
  in_terminator: "\\r"
"""


def problems(text):
    text = BASE + textwrap.dedent(text[len(BASE):]) if text.startswith(BASE) else textwrap.dedent(text)
    with pytest.raises(DeviceFileError) as info:
        loads(text, "t.yaml")
    return [str(p) for p in info.value.errors]


def test_a_text_checksum_needs_a_fixed_width_format():
    assert problems(BASE + """\
          checksum: {type: sum8, format: d}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:6: connection.checksum.format: 'd' does not give every sum8 value the same width (0 is '0', "
                 "255 is '255'); pad it: '03d'"]
    assert problems(BASE + """\
          checksum: {type: sum8}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:6: connection.checksum: missing required key 'format'"]


def test_a_connection_checksum_is_for_text_only():
    assert problems("""\
        device: t
        connection: {port: 1, protocol: binary, checksum: {type: sum8, format: 03d}}
        queries:
          v: {request: [0x01], reply: {length: 1, fields: {v: {wire: u8, byte: 0}}}}
        """) == ["t.yaml:2: connection.checksum: only for protocol: text (a binary frame's checksum is an item of its "
                 "request and a key of its reply)"]


def test_params_need_defaults_and_their_own_names():
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255}
        queries:
          v: {request: "{address:03d}V", reply: int}
        """) == ["t.yaml:7: params.address: a param needs a 'default' (the value when none is given)"]
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255, default: 1}
        queries:
          v:
            request: "{address}V{address}"
            args: {address: int}
            reply: int
        """) == ["t.yaml:11: queries.v.args.address: 'address' is a param of the device; an argument needs another "
                 "name"]


def test_an_unknown_placeholder_lists_the_arguments_and_params():
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255, default: 1}
        queries:
          v: {request: "{adress:03d}V", reply: int}
        """) == ["t.yaml:9: queries.v.request: placeholder {adress} is not an argument (this operation has none) or "
                 "a param (address)"]
    assert problems(BASE + """\
        transactions:
          t1:
            steps:
              - send: "{request}"
              - expect: "{unit}OK"
              - reply:
        queries:
          v: {request: V, reply: int, transaction: t1}
        """) == ["t.yaml:10: transactions.t1.steps[1].expect: unknown placeholder {unit} (no params defined)"]


def test_params_are_for_text_devices():
    assert problems("""\
        device: t
        connection: {port: 1, protocol: binary}
        params: {address: {type: int, min: 1, max: 9, default: 1}}
        queries:
          v: {request: [0x01], reply: {length: 1, fields: {v: {wire: u8, byte: 0}}}}
        """) == ["t.yaml:3: params: only for protocol: text (its templates use them; this is binary)"]


def test_acq_takes_a_rate_or_a_period():
    assert problems(BASE + """\
        queries:
          v: {request: V, reply: int}
        polling: {feed: f, items: [{query: v}]}
        agent:
          acq_args: {rate: hz, period: wait}
        """) == ["t.yaml:10: agent.acq_args: give 'rate' (cycles per second) or 'period' (seconds between cycles), "
                 "not both"]


def test_the_shipped_file_is_the_socs_agents_names():
    spec = load("pfeiffer_tc400")
    assert spec.polling.feed == "pfeiffer_turbo" and spec.polling.block == "turbo_output"
    assert [f.name for f in spec.polling.feed_fields] == [
        "Drive_Voltage", "Drive_Current", "Drive_Power", "Turbo_Power_Stage_Temp", "Turbo_Electronics_Temp",
        "Turbo_Pump_Bottom_Temp", "Turbo_Bearing_Temp", "Turbo_Motor_Temp", "Rotation_Speed", "Acceleration",
        "Error_Code"]
    assert spec.agent.acq_args == {"period": "wait"}
    assert {"turn_turbo_on", "turn_turbo_off", "acknowledge_turbo_errors"} <= set(spec.operations)


# ----------------------------------------------------------------------
# from a trial of the docs on a Pfeiffer gauge, an Omron Host Link PLC and NMEA

NMEA = """\
device: nmea
connection:
  port: 10110
  out_terminator: "\\r\\n"
  in_terminator: "\\r\\n"
  checksum: {type: xor8, format: "02X", from: 1, separator: "*"}
queries:
  heading:
    request: "$PQII,HDG"
    reply:
      regex: '^\\$HCHDG,(?P<heading>[\\d.]+)$'
      fields:
        heading: {type: float, sim: {value: 12.5}}
"""


def test_a_separator_stands_between_frame_and_checksum_uncovered():
    spec = loads(NMEA, "nmea.yaml")
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=2)
        try:
            values, exchanges = dev.transact("heading")
        finally:
            dev.close()
    assert values == {"heading": 12.5}
    assert exchanges[0][0] == b"$PQII,HDG*66\r\n"          # XOR of PQII,HDG: the $ and the * are not covered
    with pytest.raises(DeviceReplyError, match=r"no '\*' before the checksum"):
        Device.from_file(spec, "127.0.0.1:1", connect=False).parse("heading", b"$HCHDG,1.0#00\r\n")


OMRON = """\
device: omron
params:
  unit: {type: int, min: 0, max: 31, default: 7}
connection:
  port: 9600
  out_terminator: "*\\r"
  in_terminator: "*\\r"
  checksum: {type: xor8, format: "02X"}
errors:
  reply:
    match: '^@\\d{2}(RD|WD)(?!00)\\d{2}$'
    parse: '^@\\d{2}(?:RD|WD)(?P<code>\\d{2})$'
    format: "@{unit:02d}WD{code}"
    sim_code: "15"
queries:
  dm_word:
    request: "@{unit:02d}RD{word:04d}0001"
    args: {word: {type: int, min: 0, max: 9999}}
    reply:
      regex: '^@\\d{2}RD00(?P<value>[0-9A-F]{4})$'
      format: "@{unit:02d}RD00{value:0>4}"
      fields:
        value: {type: int, base: 16, sim: {state: "dm_{word}", value: 0}}
commands:
  write_dm_word:
    request: "@{unit:02d}WD{word:04d}{value:04X}"
    args: {word: {type: int, min: 0, max: 9999}, value: {type: int, min: 0, max: 65535}}
    sim:
      sets: {"dm_{word}": "{value}"}
"""


def sealed(text):
    """A Host Link frame with its XOR check (two hex digits)."""
    return text + b"%02X" % functools.reduce(operator.xor, text, 0)


def test_the_simulator_reads_hex_and_fixed_width_arguments_and_writes_the_files_error_reply():
    spec = loads(OMRON, "omron.yaml")
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=2)
        try:
            for value in (10, 1234, 0xBEEF):
                _, exchanges = dev.transact("write_dm_word", word=100, value=value)
                assert dev.dm_word(word=100) == value
            assert exchanges[0][0] == b"@07WD0100BEEF51*\r"
            reply = dev.wrnrd_until(sealed(b"@07XX00") + b"*\r", b"*\r")    # a request the unit does not know
            assert reply == sealed(b"@07WD15")                              # the file's error reply, code 15
        finally:
            dev.close()


def test_a_device_error_without_a_message_ends_with_its_code():
    assert str(DeviceError("dm_word", 15, "")) == "dm_word: device error 15"
    assert str(DeviceError("dm_word", 15, "busy")) == "dm_word: device error 15: busy"


def test_check_names_what_would_fail_at_the_first_call():
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255, default: 1}
        queries:
          v: {request: "{address:03q}V", reply: int}
        """) == ["t.yaml:9: queries.v.request: placeholder {address:03q}: Unknown format code 'q' for object of type "
                 "'int' (param 'address' is int)"]
    assert problems(BASE + """\
        queries:
          v:
            request: V
            reply:
              regex: '^(?P<v>[0-9A-F]{4})$'
              format: "{v:04X}"
              fields: {v: {type: int, base: 16}}
        """) == ["t.yaml:11: queries.v.reply.format: placeholder {v:04X}: the simulator writes a field as its reply "
                 "text, so only a text spec works ('0>6' pads with zeros; a field's 'base: 16' writes hex)"]
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255, default: 1}
        queries:
          v:
            request: "{address:03d}V"
            reply:
              regex: '^{address:03d}(?P<v>\\d+)$'
              format: "{address:03d}{v}"
              fields: {v: int}
        """) == ["t.yaml:12: queries.v.reply.regex: params are not filled into a regex; match their value with a "
                 "pattern (\\d{3} for an address)"]


def test_check_refuses_checksum_formats_that_are_not_digits_and_typed_escapes():
    assert problems(BASE + """\
          checksum: {type: sum8, format: c}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:6: connection.checksum.format: 'c' is not a format of a number in digits: end it with d, x, "
                 "X, o or b (\"03d\": three decimal digits, \"02X\": two hex digits)"]
    assert problems(BASE + """\
          checksum: {type: sum8, format: 3}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:6: connection.checksum.format: 3 is a number to YAML; a format spec is text ending in d, x, "
                 "X, o or b: write \"03d\" or \"03X\""]
    assert problems(BASE + """\
          checksum: {type: xor8, format: X}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:6: connection.checksum.format: 'X' does not give every xor8 value the same width (0 is '0', "
                 "255 is 'FF'); pad it: '02X'"]
    assert problems("""\
        device: t
        connection: {port: 1, out_terminator: '\\r', in_terminator: "\\r"}
        queries:
          v: {request: V, reply: int}
        """) == ["t.yaml:2: connection.out_terminator: '\\\\r' holds a backslash and 'r': in single quotes or "
                 "unquoted, YAML keeps the backslash; write control characters in double quotes (\"\\r\\n\")"]


def test_a_broken_param_is_reported_once():
    assert problems(BASE + """\
        params:
          address: {type: int, min: 1, max: 255, default: 300}
        queries:
          v: {request: "{address:03d}V", reply: int}
          w: {request: "{address:03d}W", reply: int}
        """) == ["t.yaml:7: params.address.default: bad default: param 'address' must be <= 255, got 300"]


def test_a_param_written_as_a_value_says_how_to_declare_it():
    assert problems(BASE + """\
        params:
          address: 122
        queries:
          v: {request: "{address:03d}V", reply: int}
        """) == ["t.yaml:7: params.address: unknown type '122' (one of: int, float, str, bool, enum); a param is "
                 "declared like an argument, with its default: address: {type: int, default: 122}"]


GAUGE = """\
device: gauge
params:
  address: {type: int, min: 1, max: 255, default: 122}
connection:
  port: 4001
  out_terminator: "\\r"
  in_terminator: "\\r"
  checksum: {type: sum8, format: "03d"}
queries:
  pressure:
    request: "{address:03d}0074002=?"
    reply:
      regex: '^\\d{3}10740\\d{2}(?P<pressure>\\d{6})$'
      format: "{address:03d}1074006{pressure}"
      fields:
        pressure: {type: float, unit: hPa, exponent: {mantissa_digits: 4, digits: 2, offset: -23},
                   sim: {value: 2.5e-5}}
"""


def test_a_pressure_in_mantissa_and_exponent_digits_reads_as_one_number():
    spec = loads(GAUGE, "gauge.yaml")
    dev = Device.from_file(spec, "127.0.0.1:1", connect=False)
    # Pfeiffer u_expo_new: "100023" is 1000 x 10^(23 - 23) = 1.000e3 hPa
    assert dev.parse("pressure", telegram("1221074006100023")) == {"pressure": 1000.0}
    assert dev.parse("pressure", telegram("1221074006123417")) == {"pressure": 0.001234}
    with pytest.raises(DeviceReplyError, match="does not match"):          # five digits: not this reply
        dev.parse("pressure", telegram("122107400612341"))
    with DeviceSimulator(spec) as sim:
        live = Device.from_file(spec, sim.address, timeout=2)
        try:
            values, exchanges = live.transact("pressure")
        finally:
            live.close()
    assert values == {"pressure": 2.5e-5} and exchanges[0][1] == telegram("1221074006250015")
    assert problems(BASE + """\
        queries:
          v: {request: V, reply: {type: int, scale: 2, exponent: {mantissa_digits: 4}}}
        """) == ["t.yaml:7: queries.v.reply.exponent: only for float fields of text replies",
                 "t.yaml:7: queries.v.reply.scale: not with 'exponent'"]
