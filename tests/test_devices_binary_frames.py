"""Binary frames with checksums, length fields and sync bytes.

The example file ``docs/devices/examples/rtu_controller.yaml`` (Modbus RTU
behind a serial server) runs against an independent RTU slave emulator
(tests/emulators/modbus_rtu.py, written from the Modbus serial-line
specification with a bit-by-bit CRC), over real loopback sockets: the bytes
on the wire, device-decided array lengths, a bad CRC discarded and the
request sent again, impossible length fields, an exception reply, arguments
that send nothing.  Then the loader's errors for each new key, and the
generated simulator answering the file's own driver.
"""

import logging
import textwrap
import time
from pathlib import Path

import pytest
from emulators import ModbusRTUEmulator
from emulators.modbus_rtu import crc16, with_crc

from socs_tcp import LinkTimeoutError
from socs_tcp.devices import Device, DeviceError, DeviceFileError, DeviceReplyError, load, loads
from socs_tcp.devices.simulator import DeviceSimulator

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "devices" / "examples" / "rtu_controller.yaml"

#: the controller's registers: inputs 21.5 and -3.2 degC, set point 20.0, heater on
REGISTERS = {0x1000: 215, 0x1001: -32, 0x1010: 200, 0x1020: 0b010}


@pytest.fixture
def rtu():
    with ModbusRTUEmulator(unit=1, registers=REGISTERS, writable={0x1010}) as emu:
        yield emu


@pytest.fixture
def dev(rtu):
    d = Device.from_file(EXAMPLE, rtu.address, timeout=2.0)   # a reply later than this would be asked again
    yield d
    d.close()


def test_requests_carry_the_crc_of_the_serial_line_standard(dev, rtu):
    values, exchanges = dev.transact("temperatures")
    request = bytes.fromhex("01 03 10 00 00 02")
    assert exchanges[0][0] == request + crc16(request).to_bytes(2, "little")
    assert exchanges[0][0] == bytes.fromhex("01 03 10 00 00 02 c0 cb")   # the known frame of this read
    assert values == {"temperature": [21.5, -3.2]}
    assert rtu.bad_crc_frames == 0


def test_poll_publishes_the_labelled_inputs_and_the_status_flags(dev):
    assert dev.poll() == {"temperature_A": 21.5, "temperature_B": -3.2, "setpoint": 20.0,
                          "alarm": False, "heater_on": True, "sensor_fault": False}


def test_the_device_decides_how_many_values_come(dev, rtu):
    rtu.set_register(0x1002, 0)
    reply = with_crc(bytes.fromhex("01 03 06 00d7 ffe0 0064"))
    assert dev.parse("temperatures", reply) == {"temperature": [21.5, -3.2, 10.0]}
    assert dev.parse("temperatures", with_crc(bytes.fromhex("01 03 00"))) == {"temperature": []}
    with pytest.raises(DeviceReplyError, match=r"field 'temperature': 3 bytes from byte 3 are not 0..8 values of 2 "
                                               r"bytes"):
        dev.parse("temperatures", with_crc(bytes.fromhex("01 03 03 00d7 ff")))


def test_set_point_is_scaled_sent_and_echoed(dev, rtu):
    values, exchanges = dev.transact("set_setpoint", value=-12.3)
    request = bytes.fromhex("01 06 10 10 ff 85")      # -123 tenths
    assert exchanges[0][0] == request + crc16(request).to_bytes(2, "little")
    assert values == {"setpoint": -12.3}
    assert rtu.registers[0x1010] == (-123) & 0xFFFF
    assert dev.setpoint() == -12.3


def test_bad_arguments_send_nothing(dev, rtu):
    for bad in (400.1, -50.5, "hot", None):
        with pytest.raises((TypeError, ValueError), match="value"):
            dev.set_setpoint(value=bad)
    assert rtu.received == []


def test_a_reply_with_a_bad_crc_is_discarded_and_the_request_sent_again(dev, rtu, caplog):
    rtu.corrupt_crc_once(2)
    with caplog.at_level(logging.WARNING, logger="socs_tcp.devices"):
        assert dev.temperatures() == [21.5, -3.2]
    assert len(rtu.received) == 3
    discarded = [r.getMessage() for r in caplog.records if "reply discarded" in r.getMessage()]
    assert len(discarded) == 2 and "checksum" in discarded[0] and "computed" in discarded[0]


def test_crc_errors_on_every_attempt_raise_with_the_bytes_and_leave_nothing_behind(dev, rtu):
    rtu.corrupt_crc_once(3)
    with pytest.raises(DeviceReplyError, match=r"temperatures: checksum 0x[0-9a-f]{4}, computed 0x[0-9a-f]{4} "
                                               r"\(crc16_modbus of bytes 0..6\) \(after 3 attempts\)") as info:
        dev.temperatures()
    assert info.value.reply[:3] == bytes.fromhex("01 03 04")
    assert len(info.value.exchanges) == 3
    assert dev.setpoint() == 20.0               # the link is in step: the next reply is the next request's


def test_an_impossible_length_field_names_its_value(dev, rtu):
    rtu.set_byte_count(251)                     # 251 + 5 = 256 bytes: more than the file's max of 255
    with pytest.raises(DeviceReplyError, match=r"length field 251 \(bytes 2..2\) gives a reply of 256 bytes, "
                                               r"expected 5..255 \(after 3 attempts\)"):
        dev.temperatures()
    rtu.set_byte_count(None)
    assert dev.temperatures() == [21.5, -3.2]


def test_a_modbus_exception_reply_is_the_devices_error_and_is_not_sent_again(dev, rtu):
    del rtu.registers[0x1020]                   # reading it now gives "illegal data address"
    with pytest.raises(DeviceError) as info:
        dev.status()
    assert (info.value.operation, info.value.code, info.value.message) == ("status", 2, "illegal data address")
    assert len(rtu.received) == 1               # an answer, not a garbled reply: asked once
    assert dev.setpoint() == 20.0


def test_a_garbled_exception_reply_is_a_reply_error():
    spec = load(EXAMPLE)
    dev = Device.from_file(spec, "127.0.0.1:1", connect=False)
    frame = with_crc(bytes.fromhex("01 83 02"))
    with pytest.raises(DeviceError, match="status: device error 2: illegal data address"):
        dev.parse("status", frame)
    with pytest.raises(DeviceReplyError, match="checksum"):
        dev.parse("status", frame[:-1] + bytes([frame[-1] ^ 1]))


def test_the_simulator_answers_a_value_out_of_range_with_the_files_exception():
    spec = load(EXAMPLE)
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=2)
        try:
            dev.write_bin("01061010" + "1388" + with_crc(bytes.fromhex("01061010 1388"))[-2:].hex())  # 500.0 degC
            assert dev.read_bytes(5, timeout=2) == with_crc(bytes.fromhex("01 86 03"))
        finally:
            dev.close()


def test_a_silent_device_is_the_links_timeout(dev, rtu):
    rtu.go_silent()
    with pytest.raises(LinkTimeoutError):
        dev.setpoint()


def test_the_generated_simulator_answers_the_files_own_driver():
    spec = load(EXAMPLE)
    with DeviceSimulator(spec, seed=3, noise=False) as sim:
        d = Device.from_file(spec, sim.address, timeout=2)
        try:
            assert d.temperatures() == [21.5, 22.0]
            assert d.setpoint() == 20.0
            assert d.set_setpoint(value=33.3) == 33.3
            assert d.setpoint() == 33.3
            assert d.status()["heater_on"] is True
        finally:
            d.close()


def test_the_simulator_ignores_a_request_with_a_bad_crc():
    spec = load(EXAMPLE)
    with DeviceSimulator(spec, seed=3) as sim:
        d = Device.from_file(spec, sim.address, timeout=0.3)
        try:
            d.write_bin("0103101000010000")          # a set-point read with a zero CRC
            with pytest.raises(LinkTimeoutError):
                d.read_bytes(1, timeout=0.3)
            assert d.setpoint() == 20.0
        finally:
            d.close()


# ----------------------------------------------------------------------
# loader errors: file, line, key and the bad value

BASE = """\
device: frames
connection: {port: 4001, protocol: binary}
queries:
  q:
"""


def problems(body, protocol="binary"):
    text = BASE.replace("protocol: binary", f"protocol: {protocol}") + textwrap.indent(textwrap.dedent(body), "    ")
    with pytest.raises(DeviceFileError) as info:
        loads(text, "frames.yaml")
    return [str(p) for p in info.value.errors]


def test_unknown_checksum_names_the_choices():
    assert problems("""\
        request: [0x01, {checksum: crc17}]
        reply: {length: 2, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:5: queries.q.request[1].checksum: unknown checksum 'crc17' (one of: sum8, sum16, "
                 "twos8, xor8, crc8, crc16_modbus, crc16_xmodem, crc16_ccitt, crc32)"]


def test_a_request_checksum_must_cover_something():
    assert problems("""\
        request: [{checksum: sum8}, 0x01]
        reply: {length: 2, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:5: queries.q.request[0].from: the checksum at byte 0 must cover at least one byte "
                 "before it (from 0)"]
    assert problems("""\
        request: [0x01, 0x02, {checksum: sum8, from: 2}]
        reply: {length: 2, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:5: queries.q.request[2].from: the checksum at byte 2 must cover at least one byte "
                 "before it (from 2)"]


def test_checksum_keys_do_not_mix_with_arguments():
    assert problems("""\
        args: {x: {type: int, min: 0, max: 9}}
        request: [0x01, {checksum: sum8, arg: x}]
        reply: {length: 2, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.request[1].arg: not with 'checksum'"]


def test_a_reply_checksum_must_lie_in_the_reply():
    assert problems("""\
        request: [0x01]
        reply: {length: 4, checksum: {type: crc16_modbus, byte: 3}, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.checksum.byte: a 2-byte checksum at byte 3 does not fit the reply "
                 "of 4 bytes"]
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 2, plus: 5}, checksum: {type: sum8, from: 3}, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.checksum.from: from 3 is past the length field (bytes 2..2): a short "
                 "reply would have nothing to check"]
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 2, plus: 5, max: 40}, checksum: {type: sum8, byte: 40}, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.checksum.byte: a 1-byte checksum at byte 40 does not fit a reply of "
                 "at most 40 bytes"]


def test_fields_may_not_overlap_the_checksum():
    assert problems("""\
        request: [0x01]
        reply: {length: 4, checksum: crc16_modbus, fields: {a: {wire: u16, byte: 1}}}
        """) == ["frames.yaml:6: queries.q.reply.fields.a: bytes 1..2 overlap the checksum (bytes 2..3)"]


def test_a_device_decided_array_needs_a_length_field_and_the_last_place():
    assert problems("""\
        request: [0x01]
        reply: {length: 6, fields: {a: {wire: u8, byte: 0, array: {max: 4}}}}
        """) == ["frames.yaml:6: queries.q.reply.fields.a: an array whose length the device decides "
                 "(array: {max: N}) needs a reply 'length' given by the device ({byte: N, wire: u8, plus: K})"]
    assert problems("""\
        request: [0x01]
        reply:
          length: {byte: 0, plus: 1}
          fields:
            a: {wire: u8, byte: 1, array: {max: 4}}
            b: {wire: u8, byte: 2}
        """) == ["frames.yaml:9: queries.q.reply.fields.a: an array whose length the device decides must be the "
                 "last field of the reply (by byte)"]


def test_length_field_errors():
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 2, wire: u24}, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.length.wire: unknown length wire type 'u24' (one of: u8, u16, u32)"]
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 4, max: 3}, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.length.max: must be >= 5, got 3"]
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 0, max: 8}, fields: {a: {wire: u32, byte: 6}}}
        """) == ["frames.yaml:6: queries.q.reply.fields.a: bytes 6..9 do not fit a reply of at most 8 bytes"]


def test_hex_map_keys_of_a_binary_field_are_numbers(tmp_path):
    spec = loads(BASE + textwrap.indent(textwrap.dedent("""\
        request: [0x01]
        reply: {length: 1, fields: {echo: {wire: u8, byte: 0, map: {0x11: history, 18: other}, sim: {value: history}}}}
        """), "    "), "frames.yaml")
    assert spec.operations["q"].fields[0].map == {"17": "history", "18": "other"}
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=2)
        try:
            assert dev.q() == "history"
        finally:
            dev.close()
    assert problems("""\
        request: [0x01]
        reply: {length: 1, fields: {echo: {wire: u8, byte: 0, map: {x11: history}}}}
        """) == ["frames.yaml:6: queries.q.reply.fields.echo.map.x11: 'x11' is not an integer (a u8 value)"]


def test_crc16_modbus_goes_low_byte_first_unless_told():
    spec = loads(BASE + textwrap.indent(textwrap.dedent("""\
        request: [0x01, 0x03, 0x10, 0x00, 0x00, 0x02, {checksum: crc16_modbus}]
        reply: {length: 4, checksum: crc16_modbus, fields: {a: {wire: u16, byte: 0}}}
        """), "    "), "frames.yaml")
    op = spec.operations["q"]
    assert op.request[-1].checksum.order == "little" and op.reply.checksum.order == "little"
    dev = Device.from_file(spec, "127.0.0.1:1", connect=False)
    assert dev.parse("q", with_crc(bytes.fromhex("0102"))) == {"a": 0x0102}


def test_the_tail_of_a_refused_reply_does_not_spoil_the_next_attempt(dev, rtu):
    # a reply with a wrong start, sent in two pieces as a serial server forwards it: the driver refuses it
    # at its first bytes, then discards the rest as it comes before it asks again
    exception = with_crc(bytes.fromhex("01 04 02 00 00"))
    original = rtu.respond
    calls = []

    def respond(session, request):
        calls.append(request)
        if len(calls) > 1:
            return original(session, request)
        session.send(exception[:3])
        time.sleep(0.01)                      # the serial line's pace (the device's, not the test's, timing)
        session.send(exception[3:])
        return None

    rtu.respond = respond
    assert dev.status()["heater_on"] is True


def test_a_silent_reply_is_asked_again_while_attempts_remain(dev, rtu):
    original = rtu.respond
    calls = []

    def respond(session, request):
        calls.append(request)
        return None if len(calls) == 1 else original(session, request)   # the first request is lost
    rtu.respond = respond
    assert dev.temperatures() == [21.5, -3.2]
    assert len(calls) >= 2                        # the first request went unanswered


FRAMED = """\
device: ht2
connection: {port: 5000, protocol: binary, timeout: 0.5}
queries:
  history:
    request: [0xAA, 0x55, 0x01, 0x11, {checksum: twos8, from: 2}]
    attempts: 2
    reply:
      starts_with: "AA 55 ?? 11"              # sync, the length byte, the echoed command
      length: {byte: 2, plus: 4, max: 37}
      checksum: {type: twos8, from: 2}
      fields:
        history: {wire: i16, byte: 4, order: little, scale: 0.01, array: {max: 16}, sim: {value: [21.3, 21.25]}}
"""


def test_starts_with_takes_any_byte_where_it_says_and_checks_the_rest():
    spec = loads(FRAMED, "ht2.yaml")
    with DeviceSimulator(spec) as sim:
        dev = Device.from_file(spec, sim.address, timeout=2)
        try:
            values, exchanges = dev.transact("history")
            assert values == {"history": [21.3, 21.25]}
            reply = exchanges[0][1]
            assert reply[:4] == bytes.fromhex("aa 55 05 11") and (sum(reply[2:])) % 256 == 0
        finally:
            dev.close()
    error = bytes.fromhex("aa 55 03 7f 11 02")
    error += bytes([-sum(error[2:]) & 0xFF])
    with pytest.raises(DeviceReplyError, match=r"starts with aa 55 03 7f, expected aa 55 \?\? 11"):
        Device.from_file(spec, "127.0.0.1:1", connect=False).parse("history", error)


def test_error_frame_errors():
    assert problems("""\
        request: [0x01]
        reply:
          length: 4
          checksum: crc16_modbus
          error: {starts_with: "01 83", length: 4, code: {byte: 2, wire: u16}}
          fields: {a: {wire: u8, byte: 0}}
        """) == ["frames.yaml:9: queries.q.reply.error.code.byte: the code (byte 2, a u16) does not fit an error "
                 "frame of 4 bytes with its checksum"]


def test_starts_with_errors():
    assert problems("""\
        request: [0x01]
        reply: {length: 2, starts_with: "0x01", fields: {a: {wire: u8, byte: 1}}}
        """) == ["frames.yaml:6: queries.q.reply.starts_with: not hex digits: '0x01' (bytes as two hex digits, ?? for "
                 "any byte)"]
    assert problems("""\
        request: [0x01]
        reply: {length: {byte: 2, plus: 3}, starts_with: "01 03 ff", fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.reply.starts_with: it reaches the length field (bytes 2..2), which the "
                 "device fills in: write ?? for those bytes"]
    assert problems("""\
        request: [0x01]
        reply: {length: 2, starts_with: "?? ??", fields: {a: {wire: u8, byte: 1}}}
        """) == ["frames.yaml:6: queries.q.reply.starts_with: '?? ??' takes any byte: give at least one"]
    assert problems("""\
        request: "Q?"
        reply: {starts_with: "01", checksum: sum8, fields: {a: int}}
        """, protocol="text") == [
        "frames.yaml:6: queries.q.reply.checksum: only for protocol: binary",
        "frames.yaml:6: queries.q.reply.starts_with: only for protocol: binary"]


def test_scaled_arguments_must_fit_their_wire_type():
    assert problems("""\
        args: {t: {type: float, min: -50, max: 400}}
        request: [0x06, {arg: t, wire: i8, scale: 0.1}]
        reply: {length: 1, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.request[1]: argument 't' from -50 to 400 is sent as -500..4000, beyond a "
                 "i8 (-128..127)"]
    assert problems("""\
        args: {m: {choices: [a, b]}}
        request: [0x06, {arg: m, scale: 2}]
        reply: {length: 1, fields: {a: {wire: u8, byte: 0}}}
        """) == ["frames.yaml:6: queries.q.request[1].scale: argument 'm' is enum; only numbers are scaled"]
