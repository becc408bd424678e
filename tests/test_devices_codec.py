"""The sans-IO encoding and decoding of device files (no sockets)."""

import struct

import pytest
from emulators.cryomech_cpa import SOCS_CAPTURED_REPLY

from socs_tcp.devices import Device, DeviceReplyError, codec, load, loads

TEXT = """device: demo
connection: {port: 1}
enums:
  mode: {voltage: 0, current: 1}
queries:
  status: {request: "ST?", reply: {type: int, base: 16, flags: {busy: 4, error: 0}}}
  count: {request: "N?", reply: int}
  mode: {request: "MODE?", reply: {enum: mode}}
  axes:
    request: TP
    reply:
      split: ","
      fields:
        gain: float
        position: {type: float, array: {max: 4, labels: [A, B, C, D]}}
  pairs:
    request: PAIRS
    reply:
      split: ";"
      fields:
        value: {type: float, array: {count: 2}, status: {position: after, valid: [OK], invalid_value: -1.0, field: state}}
  idn:
    request: "*IDN?"
    reply:
      regex: '^(?P<maker>[^,]+),(?P<volts>[-+.0-9]+)\\s*V$'
      fields: {maker: str, volts: float}
commands:
  set_mode:
    request: "MODE {mode}"
    args: {mode: {enum: mode}}
  set_level:
    request: "LEV {level:.3f},{on}"
    args:
      level: {type: float, min: 0, max: 10}
      on: {type: bool, true_text: "ON", false_text: "OFF"}
"""


@pytest.fixture(scope="module")
def dev():
    return Device(loads(TEXT, "demo.yaml"), "127.0.0.1", 1, connect=False)


def test_numbers_bases_flags_and_enums(dev):
    assert dev.parse("status", b"11\n") == {"status": 17, "busy": True, "error": True}
    assert dev.parse("count", b"+0005\n") == {"count": 5}
    assert dev.parse("count", b"0x10\n") == {"count": 16}
    assert dev.parse("count", b"1.0000E+01\n") == {"count": 10}
    assert dev.parse("mode", b"1\n") == {"mode": "current"}
    with pytest.raises(DeviceReplyError, match="mode: field 'mode': '7' is not one of"):
        dev.parse("mode", b"7\n")


def test_device_length_arrays_and_status_after_the_value(dev):
    assert dev.parse("axes", b"0.5, 1, 2\n") == {"gain": 0.5, "position": [1.0, 2.0]}
    assert dev.parse("axes", b"0.5,1,2,3,4\n")["position"] == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(DeviceReplyError, match="field 'position': 5 items, expected 1 to 4"):
        dev.parse("axes", b"0.5,1,2,3,4,5\n")
    assert dev.parse("pairs", b"1.5;OK;9;BAD\n") == {"value": [1.5, -1.0], "state": ["OK", "BAD"]}
    assert [f.type for f in dev.spec.operations["pairs"].fields] == ["float", "str"]


def test_regex_and_its_derived_format(dev):
    op = dev.spec.operations["idn"]
    assert dev.parse("idn", b"ACME,+12.5 V\n") == {"maker": "ACME", "volts": 12.5}
    assert op.reply.format == "{maker},{volts} V"
    assert dev.parse("idn", codec.render_text(op, {"maker": "ACME", "volts": 1.5}).encode() + b"\n") == {
        "maker": "ACME", "volts": 1.5}


def test_request_formats(dev):
    spec = dev.spec
    assert codec.format_request(spec.operations["set_mode"], {"mode": "current"}) == "MODE 1"
    op = spec.operations["set_level"]
    assert codec.format_request(op, op.check_args(level=2, on=True)) == "LEV 2.000,ON"
    with pytest.raises(ValueError, match="would end the command early"):
        codec.format_request(loads('device: d\nconnection: {port: 1}\ncommands:\n  n: {request: "N {t}", args: {t: str}}\n')
                             .operations["n"], {"t": "a\nb"}, "\n")


def test_byte_orders():
    data = bytes([0x11, 0x22, 0x33, 0x44])
    assert codec.to_big(data, "big") == data
    assert codec.to_big(data, "little") == bytes([0x44, 0x33, 0x22, 0x11])
    assert codec.to_big(data, "CDAB") == bytes([0x33, 0x44, 0x11, 0x22])
    assert codec.to_big(data, "BADC") == bytes([0x22, 0x11, 0x44, 0x33])


def test_word_swapped_floats_read_as_socs_reads_them():
    # SOCS's breakdownReplyData: struct.unpack(">f", bytes of the reply at [23, 24, 21, 22])
    dev = Device(load("cryomech_cpa"), "127.0.0.1", 1, connect=False)
    values = dev.parse("status", SOCS_CAPTURED_REPLY)
    raw = SOCS_CAPTURED_REPLY
    socs = {"Coolant_In_Temp": [23, 24, 21, 22], "Oil_Temp": [31, 32, 29, 30], "Motor_Current": [59, 60, 57, 58],
            "Hours_of_Operation": [63, 64, 61, 62]}
    for name, locs in socs.items():
        assert values[name] == struct.unpack(">f", bytes(raw[i] for i in locs))[0]
    assert values["Operating_State"] == struct.unpack(">H", raw[9:11])[0]
    assert values["Pressure_Unit"] == struct.unpack(">H", raw[65:67])[0]
    with pytest.raises(DeviceReplyError, match="status: length field says 109, frame has 107"):
        dev.parse("status", raw[:-2])


def test_binary_scale_sign_and_relay_bits():
    dev = Device(load("ds378"), "127.0.0.1", 1, connect=False)
    # the manual's example status reply: 12.5 V, 26.7 C; a negative temperature as SOCS decodes it
    assert dev.parse("get_status", bytes([35, 2, 18, 1, 2, 125, 0x01, 0x0B]))["T_int"] == 26.7
    assert dev.parse("get_status", bytes([35, 2, 18, 1, 2, 125]) + (-32).to_bytes(2, "big", signed=True))[
        "T_int"] == -3.2
    # SOCS get_relays: relay i is bit i % 8 of byte 4 - i // 8
    reply = bytes([0, 0, 0, 0, 0b10000101])
    relays = dev.parse("get_relays", reply)
    assert [relays[f"Relay_{i}"] for i in range(1, 9)] == [(reply[4 - i // 8] >> (i % 8)) & 1 for i in range(8)]
    with pytest.raises(DeviceReplyError, match="get_relays: 4 bytes, expected 5"):
        dev.parse("get_relays", reply[:4])
    op = dev.spec.operations["set_relay"]
    assert codec.encode_binary(op, op.check_args(relay_number=8, on_off=1, pulse_time=70000)) == \
        bytes([0x31, 8, 1]) + (70000).to_bytes(4, "big")


def test_any_reply_bytes_parse_or_raise_a_reply_error():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from socs_tcp.devices import DeviceError, list_devices

    devs = {name: Device(load(name), "127.0.0.1", 1, connect=False) for name in list_devices()}
    ops = [(name, op) for name, dev in devs.items() for op in dev.spec.operations]
    alphabet = st.sampled_from(list(b"0123456789+-.,E:?#tf() \r\n\x00\xff"))

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(ops), st.one_of(st.binary(max_size=120), st.lists(alphabet, max_size=80).map(bytes)))
    def check(name_op, data):
        name, op = name_op
        try:
            values = devs[name].parse(op, data)
        except (DeviceReplyError, DeviceError) as e:
            assert op in str(e)
        else:
            assert isinstance(values, dict)
    check()
