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
