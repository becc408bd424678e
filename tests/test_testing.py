"""The device emulator itself: framing, response rules, faults, fixture factory."""

import socket
import time

import pytest

from socs_tcp import TCPInterface
from socs_tcp.testing import DeviceEmulator, create_device_emulator

scripted = create_device_emulator({"RDG?": ["1", "2"], "ID?": "EMU"}, write_termination="\n")


def test_fixture_factory_pops_lists_in_order(scripted):
    dev = TCPInterface("127.0.0.1", scripted.port, 1.0, termination="\n")
    assert [dev.query("RDG?"), dev.query("RDG?")] == ["1", "2"]
    with pytest.raises(TimeoutError):
        dev.query("RDG?", timeout=0.1)  # list exhausted: no reply, like SOCS
    assert dev.query("ID?") == "EMU"
    assert scripted.received == ["RDG?", "RDG?", "RDG?", "ID?"]


def test_fixture_factory_gives_each_test_fresh_lists(scripted):
    dev = TCPInterface("127.0.0.1", scripted.port, 1.0, termination="\n")
    assert dev.query("RDG?") == "1"


def test_commands_are_framed_by_terminator_not_chunk():
    with DeviceEmulator({"A": "1", "B": "2"}, write_termination="\n") as device:
        with socket.create_connection(("127.0.0.1", device.port)) as s:
            s.sendall(b"A\nB")   # merged and split
            time.sleep(0.05)
            s.sendall(b"\n")
            data = b""
            while data.count(b"\n") < 2:
                data += s.recv(100)
    assert data == b"1\n2\n"


def test_chunk_framing_for_socs_style_devices():
    with DeviceEmulator({"TEMP?": "4.2"}, read_termination=None) as device:
        dev = TCPInterface("127.0.0.1", device.port, 1.0)
        dev.send(b"TEMP?\r\n")
        assert dev.recv() == b"4.2"


def test_raw_bytes_and_socs_relay_name():
    device = DeviceEmulator({b"\x01\x02": b"\xff\x00"}, encoding=None, read_termination=None)
    device.create_tcp_relay(0)
    try:
        dev = TCPInterface("127.0.0.1", device.port, 1.0, encoding=None)
        assert dev.wrnrd_bin("0102", 2) == "ff00"
        device.define_responses({}, default_response=b"?")
        assert dev.wrnrd(b"zz", 1) == b"?"
    finally:
        device.shutdown()


def test_refuse_and_accept_again_on_same_port(emulator):
    port = emulator.port
    emulator.refuse_connections()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    emulator.refuse_connections(False)
    assert emulator.port == port
    socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_garbage_and_wait_for_clients(emulator):
    dev = TCPInterface("127.0.0.1", emulator.port, 1.0)
    assert emulator.wait_for_clients(1)
    emulator.send_garbage(b"\xde\xad")
    assert dev.read_bin(2) == "dead"
    assert emulator.client_count == 1


def test_scpi_instrument_behind_the_emulator_keeps_its_state_through_faults():
    from socs_tcp.simulators.scpi import ScpiInstrument

    instrument = ScpiInstrument(noise=0)
    with DeviceEmulator(default_response=instrument.respond, write_termination="\n") as device:
        dev = TCPInterface("127.0.0.1", device.port, 1.0, termination="\n")
        assert dev.query("*IDN?") == instrument.idn
        assert dev.query("VOLT 2.5;VOLT?;CURR?") == "+2.500000E+00;+1.000000E+00"
        device.go_silent()
        with pytest.raises(TimeoutError):
            dev.query("VOLT?", timeout=0.2)
        device.go_silent(False)
        device.restart()
        # the instrument outlives the reboot of its emulated connection
        assert dev.query("VOLT?") == "+2.500000E+00"
        dev.write("NOPE 1")                      # undefined header: no reply, error queued
        assert dev.query("SYST:ERR?") == '-113,"Undefined header"'


def test_scpi_respond_is_none_without_a_reply():
    from socs_tcp.simulators.scpi import ScpiInstrument

    instrument = ScpiInstrument(noise=0)
    assert instrument.respond("VOLT 1") is None          # a command has no reply
    assert instrument.respond("VOLT 99") is None         # out of range: error queued, no reply
    assert instrument.respond("") is None
    assert instrument.respond(b"VOLT?") == "+1.000000E+00"
    assert instrument.respond("SYST:ERR?") == '-222,"Data out of range"'
