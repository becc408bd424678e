"""The independent device emulators (tests/emulators) checked with plain sockets.

Each test talks to an emulator the way the SOCS driver or the vendor manual
says the real device is talked to, and checks the replies against facts from
those sources (see each emulator module's docstring).  Nothing here uses
socs_tcp: these tests prove the emulators, which then test the device files.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import time

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
from emulators.ls372 import STATUS_BITS

TIMEOUT = 5.0


class Client:
    """A raw TCP client with deadline-bounded reads."""

    def __init__(self, address, timeout=TIMEOUT):
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.timeout = timeout
        self.pending = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete reply; have {self.pending!r}")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed by the device; have {self.pending!r}")
        self.pending += chunk

    def read_until(self, terminator, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while terminator not in self.pending:
            self._fill(deadline)
        index = self.pending.index(terminator) + len(terminator)
        data, self.pending = self.pending[:index], self.pending[index:]
        return data

    def read_exactly(self, count, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while len(self.pending) < count:
            self._fill(deadline)
        data, self.pending = self.pending[:count], self.pending[count:]
        return data

    def expect_nothing(self, wait=0.3):
        """Nothing arrives within ``wait`` seconds (used only to show silence)."""
        self.sock.settimeout(wait)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            return True
        self.pending += chunk
        return False

    def expect_closed(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "connection still open"
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return
            if not chunk:
                return
            self.pending += chunk

    def close(self):
        self.sock.close()


@pytest.fixture
def connect():
    clients = []

    def make(device):
        client = Client(device.address)
        clients.append(client)
        return client
    yield make
    for client in clients:
        client.close()


def wait_until(predicate, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# -- common server behaviour (checked on one device) ------------------------------------------


def test_address_port_and_clean_stop():
    device = TPG366Emulator().start()
    try:
        assert device.port > 0
        assert device.address == f"127.0.0.1:{device.port}"
        client = Client(device.address)
        assert device.wait_for_clients(1)
    finally:
        device.stop()
    client.expect_closed()
    client.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", device.port), timeout=1).close()
    assert not any(t.is_alive() for t in device._threads)


def test_context_manager_and_restart_of_listening():
    with TPG366Emulator() as device:
        port = device.port
        device.refuse_connections(True)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        device.refuse_connections(False)
        assert device.port == port
        client = Client(device.address)
        client.send(b"PR1\r\n")
        assert client.read_until(b"\r\n") == b"\x06\r\n"
        client.close()


def test_drop_connections_closes_clients_and_keeps_listening(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        assert device.wait_for_clients(1)
        device.drop_connections()
        client.expect_closed()
        again = connect(device)
        again.send(b"PRX\r\n")
        assert again.read_until(b"\r\n") == b"\x06\r\n"
        assert device.connections == 2


def test_go_silent_records_but_does_not_answer(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        device.go_silent(True)
        client.send(b"SEN,1,0,0,0,0,0\r\n")
        assert device.wait_for_requests(1)
        assert client.expect_nothing()
        assert device.gauge_on[0] is True  # not acted on either
        device.go_silent(False)
        client.send(b"PR1\r\n")
        assert client.read_until(b"\r\n") == b"\x06\r\n"


def test_delay_and_unsolicited(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        assert device.wait_for_clients(1)
        device.send_unsolicited(b"junk\r")
        assert client.read_until(b"\r") == b"junk\r"
        device.set_delay(0.05)
        client.send(b"PR1\r\n")
        assert client.read_until(b"\r\n") == b"\x06\r\n"


# -- Pfeiffer TPG366 -----------------------------------------------------------------------------


def tpg_query(client, mnemonic, data_end=b"\r"):
    client.send(mnemonic + b"\r\n")
    assert client.read_until(b"\r\n") == b"\x06\r\n"
    client.send(b"\x05")
    return client.read_until(data_end)


def test_tpg_prx_matches_socs_fixture(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        line = tpg_query(client, b"PRX")
        assert line == (b"0,+1.2345E+01,0,+2.3456E+01,0,+3.4567E+01,"
                        b"0,+4.5678E+01,0,+5.6789E+01,0,+6.7891E+01\r")
        assert client.expect_nothing(0.1)  # data ends in CR, no LF


def test_tpg_crlf_data_option_and_single_channel(connect):
    with TPG366Emulator(data_terminator=b"\r\n") as device:
        device.set_pressure(3, 1.0e-3)
        client = connect(device)
        assert tpg_query(client, b"PR3", b"\r\n") == b"0,+1.0000E-03\r\n"
        client.send(b"\x05")  # a repeated ENQ reads the same mnemonic again
        assert client.read_until(b"\r\n") == b"0,+1.0000E-03\r\n"


def test_tpg_sen_switches_gauges_and_prx_reports_off(connect):
    with TPG366Emulator(present=(True, True, True, True, True, False)) as device:
        client = connect(device)
        assert tpg_query(client, b"SEN,1,0,0,0,0,0") == b"1,2,2,2,2,0\r"
        assert tpg_query(client, b"PR1") == b"4,+1.2345E+01\r"
        fields = tpg_query(client, b"PRX").rstrip(b"\r").split(b",")
        assert fields[0::2] == [b"4", b"0", b"0", b"0", b"0", b"5"]
        assert fields[11] == b"+2.0000E-02"
        assert tpg_query(client, b"SEN,2,0,0,0,0,0") == b"2,2,2,2,2,0\r"
        assert tpg_query(client, b"SEN") == b"2,2,2,2,2,0\r"
        assert tpg_query(client, b"PR1") == b"0,+1.2345E+01\r"


def test_tpg_units_and_status_override(connect):
    with TPG366Emulator() as device:
        device.set_pressure(1, 1000.0)
        device.set_status(2, 2)
        client = connect(device)
        assert tpg_query(client, b"UNI,2") == b"2\r"
        assert tpg_query(client, b"PR1") == b"0,+1.0000E+05\r"
        assert tpg_query(client, b"PR2").startswith(b"2,")


def test_tpg_unknown_mnemonic_gets_nak_and_error_word(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        client.send(b"XYZ\r\n")
        assert client.read_until(b"\r\n") == b"\x15\r\n"
        client.send(b"SEN,7,0,0,0,0,0\r\n")
        assert client.read_until(b"\r\n") == b"\x15\r\n"
        assert tpg_query(client, b"ERR") == b"0001\r"
        assert tpg_query(client, b"ERR") == b"0000\r"


def test_tpg_mnemonic_split_across_writes_and_cr_only(connect):
    with TPG366Emulator() as device:
        client = connect(device)
        client.send(b"PR")
        client.send(b"2\r")
        assert client.read_until(b"\r\n") == b"\x06\r\n"
        client.send(b"\n\x05")
        assert client.read_until(b"\r") == b"0,+2.3456E+01\r"


def test_tpg_continuous_output_stopped_by_single_enq(connect):
    with TPG366Emulator() as device:
        device.start_continuous(0.02)
        client = connect(device)
        first = client.read_until(b"\r")
        assert first.startswith(b"0,+1.2345E+01,")
        client.send(b"\x05")  # the startup ENQ of the SOCS driver
        assert wait_until(lambda: not device.continuous)
        client.send(b"PR1\r\n")
        before_ack = client.read_until(b"\x06\r\n")[:-3]
        # only whole PRX data lines came before the ACK (the stream, then the ENQ's reply)
        assert before_ack and all(line.startswith(b"0,+1.2345E+01,0,") for line in before_ack.split(b"\r")[:-1])
        assert before_ack.endswith(b"\r")
        client.send(b"\x05")
        assert client.read_until(b"\r") == b"0,+1.2345E+01\r"
        assert client.expect_nothing()  # the stream has stopped


def test_tpg_missed_ack_then_resend(connect):
    with TPG366Emulator() as device:
        device.miss_ack(1)
        client = connect(device)
        client.send(b"PRX\r\n")
        assert client.expect_nothing()
        client.send(b"PRX\r\n")  # the resend is acknowledged
        assert client.read_until(b"\r\n") == b"\x06\r\n"
        device.miss_ack(1, mode="junk")
        client.send(b"PR1\r\n")
        junk = client.read_until(b"\r")
        assert junk.startswith(b"0,+1.2345E+01,0,")  # a PRX data line, not an ACK
        assert tpg_query(client, b"PR1") == b"0,+1.2345E+01\r"
        device.miss_ack(1, mode="stale")
        client.send(b"PR2\r\n")
        assert client.read_until(b"\r\n") == b"0,+1.2345E+01\r\x06\r\n"  # old PR1 data, then the ACK
        client.send(b"\x05")
        assert client.read_until(b"\r") == b"0,+2.3456E+01\r"
    with pytest.raises(ValueError, match="'loud'"):
        device.miss_ack(1, mode="loud")


def test_tpg_first_mnemonic_not_acknowledged_option(connect):
    with TPG366Emulator(missed_acks=1) as device:
        client = connect(device)
        client.send(b"PRX\r\n")
        assert client.expect_nothing()
        assert tpg_query(client, b"PR6") == b"0,+6.7891E+01\r"
        assert device.failures == []


# -- Cryomech CPA (Modbus TCP) -------------------------------------------------------------------

# SOCS tests/integration/test_cryomech_cpa_agent_integration.py: init_msg, the power commands
SOCS_READ = b"\t\x99\x00\x00\x00\x06\x01\x04\x00\x01\x005"
SOCS_POWER_ON = b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\x01"
SOCS_POWER_OFF = b"\t\x99\x00\x00\x00\x06\x01\x06\x00\x01\x00\xff"


def modbus_reply(client):
    header = client.read_exactly(7)
    length = struct.unpack(">H", header[4:6])[0]
    return header + client.read_exactly(length - 1)


def socs_float(frame, locs):
    """Decode the way SOCS breakdownReplyData does: bytes at the given frame offsets, '>f'."""
    return struct.unpack(">f", bytes(frame[i] for i in locs))[0]


def test_cryomech_read_reproduces_socs_captured_reply(connect):
    with CryomechCPAEmulator() as device:
        client = connect(device)
        client.send(SOCS_READ)
        reply = modbus_reply(client)
        assert reply == SOCS_CAPTURED_REPLY
        assert len(reply) == 115 and reply[7] == 0x04 and reply[8] == 0x6A
        assert socs_float(reply, [23, 24, 21, 22]) == pytest.approx(65.627, abs=1e-3)  # Coolant_In_Temp
        assert socs_float(reply, [63, 64, 61, 62]) == pytest.approx(10613.5)  # Hours_of_Operation
        assert struct.unpack(">H", reply[69:71])[0] == 10556  # Serial_Number


def test_cryomech_power_echo_and_state(connect):
    with CryomechCPAEmulator() as device:
        client = connect(device)
        client.send(SOCS_POWER_ON)
        assert modbus_reply(client) == SOCS_POWER_ON
        assert device.compressor_on
        client.send(SOCS_READ)
        reply = modbus_reply(client)
        assert struct.unpack(">H", reply[9:11])[0] == 3  # Operating_State
        assert struct.unpack(">H", reply[11:13])[0] == 1  # Compressor_State
        client.send(SOCS_POWER_OFF)
        assert modbus_reply(client) == SOCS_POWER_OFF
        client.send(SOCS_READ)
        reply = modbus_reply(client)
        assert struct.unpack(">H", reply[11:13])[0] == 0
        assert device.writes == [(1, 1), (1, 0xFF)]


def test_cryomech_values_change_and_transaction_id_is_echoed(connect):
    with CryomechCPAEmulator() as device:
        device.set_value("Helium_Temp", 80.5)
        device.set_value("Model", (4, 24))
        assert device.get_value("Helium_Temp") == pytest.approx(80.5)
        client = connect(device)
        client.send(b"\x12\x34" + SOCS_READ[2:])
        reply = modbus_reply(client)
        assert reply[:2] == b"\x12\x34"
        assert socs_float(reply, [35, 36, 33, 34]) == pytest.approx(80.5)
        assert reply[71:73] == b"\x04\x18"
        # a partial range: registers 7..8 are Coolant_In_Temp, low word first
        client.send(b"\x00\x01\x00\x00\x00\x06\x01\x04\x00\x07\x00\x02")
        reply = modbus_reply(client)
        assert reply[8] == 4 and struct.unpack(">f", reply[11:13] + reply[9:11])[0] == pytest.approx(65.627, abs=1e-3)
    with pytest.raises(KeyError, match="'Bogus'"):
        device.set_value("Bogus", 1)


def test_cryomech_exceptions(connect):
    with CryomechCPAEmulator() as device:
        client = connect(device)
        client.send(b"\x00\x07\x00\x00\x00\x06\x01\x03\x00\x01\x00\x01")  # FC 3: not supported
        assert modbus_reply(client) == b"\x00\x07\x00\x00\x00\x03\x01\x83\x01"
        client.send(b"\x00\x08\x00\x00\x00\x06\x01\x04\x00\x30\x00\x10")  # past the last register
        assert modbus_reply(client) == b"\x00\x08\x00\x00\x00\x03\x01\x84\x02"
        client.send(b"\x00\x09\x00\x00\x00\x06\x01\x06\x00\x01\x00\x02")  # neither on nor off
        assert modbus_reply(client) == b"\x00\x09\x00\x00\x00\x03\x01\x86\x03"
        client.send(b"\x00\x0a\x00\x00\x00\x06\x01\x06\x00\x05\x00\x01")  # not the power register
        assert modbus_reply(client) == b"\x00\x0a\x00\x00\x00\x03\x01\x86\x02"
        assert device.writes == []


def test_cryomech_protocol_id_and_length_checks(connect):
    with CryomechCPAEmulator() as device:
        client = connect(device)
        client.send(b"\x09\x99\x00\x01\x00\x06\x01\x04\x00\x01\x005")  # protocol id 1: dropped
        assert client.expect_nothing()
        client.send(SOCS_READ[:5])  # split frame
        client.send(SOCS_READ[5:])
        assert modbus_reply(client) == SOCS_CAPTURED_REPLY
        client.send(b"\x09\x99\x00\x00\x01\x00\x01\x04")  # length 256: cannot resync
        client.expect_closed()


def test_cryomech_faults_short_reply_and_wrong_tid(connect):
    with CryomechCPAEmulator() as device:
        client = connect(device)
        device.corrupt_next_reply()
        client.send(SOCS_READ)
        short = modbus_reply(client)
        assert len(short) < len(SOCS_CAPTURED_REPLY)
        device.wrong_transaction_id_once()
        client.send(SOCS_READ)
        assert modbus_reply(client)[:2] == b"\x09\x9a"
        client.send(SOCS_READ)
        assert modbus_reply(client) == SOCS_CAPTURED_REPLY


# -- Devantech dS378 ------------------------------------------------------------------------------


def socs_relays(reply):
    """Unpack the way SOCS DS378.get_relays does."""
    return [(reply[4 - i // 8] >> (i % 8)) & 1 for i in range(32)]


def test_ds378_status_bytes_match_the_manual_example(connect):
    with DS378Emulator() as device:
        client = connect(device)
        client.send(b"\x30")
        reply = client.read_exactly(8)
        assert reply == bytes([35, 2, 18, 1, 2, 0x7D, 0x01, 0x0B])
        assert reply[5] / 10 == 12.5
        assert int.from_bytes(reply[6:8], "big", signed=True) / 10 == 26.7
        assert client.expect_nothing(0.1)  # exactly 8 bytes


def test_ds378_negative_temperature_is_signed(connect):
    with DS378Emulator(temperature=-5.3, supply_volts=24.0) as device:
        client = connect(device)
        client.send(b"\x30")
        reply = client.read_exactly(8)
        assert reply[5] == 240
        assert int.from_bytes(reply[6:8], "big", signed=True) == -53


def test_ds378_relays_set_and_read_back(connect):
    with DS378Emulator() as device:
        client = connect(device)
        for relay in (1, 3, 8):
            client.send(bytes([0x31, relay, 1, 0, 0, 0, 0]))
            assert client.read_exactly(1) == b"\x00"
        client.send(b"\x33\x01")
        states = socs_relays(client.read_exactly(5))
        assert states[:8] == [1, 0, 1, 0, 0, 0, 0, 1] and not any(states[8:])
        client.send(bytes([0x31, 3, 0, 0, 0, 0, 0]))
        assert client.read_exactly(1) == b"\x00"
        client.send(b"\x33\x01")
        assert socs_relays(client.read_exactly(5))[:8] == [1, 0, 0, 0, 0, 0, 0, 1]
        client.send(bytes([0x31, 9, 1, 0, 0, 0, 0]))  # relay 9 does not exist: NACK = its number
        assert client.read_exactly(1) == b"\x09"


def test_ds378_pulse_turns_relay_on_then_off(connect):
    with DS378Emulator() as device:
        client = connect(device)
        client.send(bytes([0x31, 5, 0]) + (300).to_bytes(4, "big"))
        assert client.read_exactly(1) == b"\x00"
        client.send(b"\x33\x01")
        assert socs_relays(client.read_exactly(5))[4] == 1
        assert wait_until(lambda: not device.relay_states()[4])
        client.send(b"\x33\x01")
        assert socs_relays(client.read_exactly(5))[4] == 0


def test_ds378_outputs_inputs_analog_counters(connect):
    with DS378Emulator() as device:
        device.set_analog(1, 574)
        device.set_analog(7, 0x032C)
        device.set_input(2, True)
        device.set_counter(2, 123456, 789)
        client = connect(device)
        client.send(b"\x32\x04\x01")
        assert client.read_exactly(1) == b"\x00"
        client.send(b"\x32\x08\x01")  # I/O 8 does not exist
        assert client.read_exactly(1) != b"\x00"
        client.send(b"\x34\x01")
        inputs = client.read_exactly(2)
        assert [(inputs[1] >> i) & 1 for i in range(7)] == [0, 1, 0, 1, 0, 0, 0]
        client.send(b"\x35")
        analog = client.read_exactly(14)
        values = [int.from_bytes(analog[2 * i:2 * i + 2], "big") for i in range(7)]
        assert values == [574, 0, 0, 0, 0, 0, 812]
        client.send(b"\x36\x02")
        counters = client.read_exactly(8)
        assert int.from_bytes(counters[:4], "big") == 123456
        assert int.from_bytes(counters[4:], "big") == 789


def test_ds378_request_split_across_writes(connect):
    with DS378Emulator() as device:
        client = connect(device)
        client.send(b"\x31\x02")
        client.send(b"\x01\x00\x00\x00\x00\x33")
        assert client.read_exactly(1) == b"\x00"
        client.send(b"\x01")
        assert socs_relays(client.read_exactly(5))[1] == 1


def test_ds378_partial_reply_once_then_whole(connect):
    with DS378Emulator() as device:
        client = connect(device)
        device.partial_reply_once()
        client.send(b"\x35")
        short = client.read_exactly(13)
        assert client.expect_nothing(0.2)  # 13 of 14 bytes: a wrong-length reply
        assert len(short) == 13
        client.send(b"\x35")  # the retry gets the full reply
        assert len(client.read_exactly(14)) == 14
        assert client.expect_nothing(0.1)


def test_ds378_unknown_command_is_ignored(connect):
    with DS378Emulator() as device:
        client = connect(device)
        client.send(b"\x7f")
        assert client.expect_nothing()
        assert device.received[-1] == b"\x7f"
        client.send(b"\x30")
        assert client.read_exactly(8)[0] == 35


# -- Kikusui PCR500MA (SCPI) ----------------------------------------------------------------------


def scpi(client, command):
    client.send(command.encode() + b"\n")
    return client.read_until(b"\n").decode()


def test_pcr_idn_and_socs_command_set(connect):
    with PCR500MAEmulator(load_ohms=10.0) as device:
        client = connect(device)
        assert scpi(client, "*IDN?").startswith("KIKUSUI,PCR500MA,")
        assert scpi(client, "OUTP?") == "0\n"
        client.send(b"VOLT 20.5\nFREQ 60\nCURR 4\nCURR:OFFS 1.5\nOUTP:COUP ACDC\n")
        assert float(scpi(client, "VOLT?")) == 20.5
        assert float(scpi(client, "FREQ?")) == 60.0
        assert float(scpi(client, "CURR?")) == 4.0
        assert float(scpi(client, "CURR:OFFS?")) == 1.5
        assert scpi(client, "OUTP:COUP?") == "ACDC\n"
        assert float(scpi(client, "MEAS:VOLT:AC?")) == 0.0  # output off
        client.send(b"OUTP 1\n")
        assert scpi(client, "OUTP?") == "1\n"
        assert float(scpi(client, "MEAS:VOLT:AC?")) == 20.5
        assert float(scpi(client, "MEAS:CURR:AC?")) == pytest.approx(2.05)
        assert float(scpi(client, "MEAS:POW:AC?")) == pytest.approx(42.025)
        assert float(scpi(client, "MEAS:FREQ?")) == 60.0
        assert scpi(client, "SYST:ERR?") == '0,"No error"\n'


def test_pcr_long_forms_case_and_compound(connect):
    with PCR500MAEmulator() as device:
        client = connect(device)
        client.send(b"source:voltage 12;:OUTPut:STATe ON\n")
        assert scpi(client, "VOLTage?;OUTP?") == "+1.20000E+01;1\n"
        assert scpi(client, "measure:scalar:voltage:ac?") == "+1.20000E+01\n"
        assert scpi(client, "SYSTem:ERRor:NEXT?") == '0,"No error"\n'


def test_pcr_error_queue(connect):
    with PCR500MAEmulator() as device:
        client = connect(device)
        client.send(b"VOLT 151\n")  # above the 150 V range
        client.send(b"BOGUS 1\n")
        client.send(b"VOLT abc\n")
        client.send(b"VOLT\n")
        assert scpi(client, "SYST:ERR?") == '-222,"Data out of range"\n'
        assert scpi(client, "SYST:ERR?") == '-113,"Undefined header"\n'
        assert scpi(client, "SYST:ERR?") == '-104,"Data type error"\n'
        assert scpi(client, "SYST:ERR?") == '-109,"Missing parameter"\n'
        assert scpi(client, "SYST:ERR?") == '0,"No error"\n'
        assert float(scpi(client, "VOLT?")) == 0.0  # nothing applied
        client.send(b"NOPE?\n")
        assert scpi(client, "SYST:ERR?") == '-113,"Undefined header"\n'
        client.send(b"FREQ 0.5\n*CLS\n")
        assert scpi(client, "SYST:ERR?") == '0,"No error"\n'


def test_pcr_voltage_window_from_volt_with_limits(connect):
    with PCR500MAEmulator() as device:
        client = connect(device)
        client.send(b"VOLT 10,0,51\n")  # the SOCS driver's form with its 51 V soft limit
        assert float(scpi(client, "VOLT?")) == 10.0
        client.send(b"VOLT 52\n")
        assert scpi(client, "SYST:ERR?") == '-222,"Data out of range"\n'
        client.send(b"VOLT 51\n")
        assert float(scpi(client, "VOLT?")) == 51.0
        client.send(b"VOLT 60,0,50\n")
        assert scpi(client, "SYST:ERR?") == '-222,"Data out of range"\n'
    with PCR500MAEmulator(volt_window=(0, 51)) as device:
        client = connect(device)
        client.send(b"VOLT 52\n")
        assert scpi(client, "SYST:ERR?") == '-222,"Data out of range"\n'
        client.send(b"VOLT 150,0,150\n*RST\nVOLT 51\n")
        assert float(scpi(client, "VOLT?")) == 51.0
    with pytest.raises(ValueError, match=r"\(0, 200\)"):
        PCR500MAEmulator(volt_window=(0, 200))


def test_pcr_queue_overflow_and_reset(connect):
    with PCR500MAEmulator() as device:
        client = connect(device)
        client.send(b"X\n" * 300)
        assert device.wait_for_requests(300)
        assert len(device.errors) == 255 and device.errors[-1] == (-350, "Queue overflow")
        client.send(b"VOLT 5\nOUTP 1\n*RST\n")
        assert scpi(client, "OUTP?;VOLT?") == "0;+0.00000E+00\n"


def test_pcr_protection_trip(connect):
    with PCR500MAEmulator() as device:
        client = connect(device)
        client.send(b"OUTP 1\n")
        assert scpi(client, "OUTP?") == "1\n"
        device.trip_protection()
        assert scpi(client, "OUTP?") == "0\n"
        client.send(b"OUTP 1\n")
        assert scpi(client, "SYST:ERR?") == '-221,"Settings conflict"\n'
        client.send(b"OUTP:PROT:CLE\nOUTP 1\n")
        assert scpi(client, "OUTP?") == "1\n"


# -- Lake Shore 372 -------------------------------------------------------------------------------


def ls_query(client, message):
    client.send(message.encode() + b"\r\n")
    return client.read_until(b"\r\n").decode()


def test_ls372_socs_fixture_replies(connect):
    with LS372Emulator() as device:
        client = connect(device)
        assert ls_query(client, "*IDN?") == "LSCI,MODEL372,LSA23JD,1.3\r\n"
        assert ls_query(client, "SCAN?") == "01,1\r\n"
        assert ls_query(client, "INSET? A") == "0,010,003,00,1\r\n"
        assert ls_query(client, "INSET? 16") == "1,007,003,21,1\r\n"
        assert ls_query(client, "INTYPE? 3") == "0,07,1,10,0,1\r\n"
        assert ls_query(client, "INTYPE? A") == "1,04,0,15,0,2\r\n"
        assert ls_query(client, "INNAME? 2") == "Channel 02\r\n"
        assert ls_query(client, "KRDG? 1") == "+293.873E+00\r\n"
        assert ls_query(client, "SRDG? 1") == "+108.278E+00\r\n"
        assert ls_query(client, "RDGK? 1") == "+293.873E+00\r\n"
        assert ls_query(client, "RDGR? 1") == "+108.278E+00\r\n"
        assert ls_query(client, "TLIMIT? 1") == "+0000\r\n"


def test_ls372_reading_format_and_status_bits(connect):
    with LS372Emulator() as device:
        device.set_reading(5, kelvin=0.0123, ohms=2.5e6, status=128 + 16 + 1)
        client = connect(device)
        assert ls_query(client, "KRDG? 5") == "+012.300E-03\r\n"
        assert ls_query(client, "RDGR? 05") == "+002.500E+06\r\n"
        status = int(ls_query(client, "RDGST? 5"))
        assert status == 145
        assert [name for bit, name in STATUS_BITS.items() if status & bit] == ["CS OVL", "R. OVER", "T. UNDER"]
        assert ls_query(client, "RDGST? 1") == "000\r\n"
        assert ls_query(client, "KRDG? A") == "+000.000E+00\r\n"  # no curve on the control input


def test_ls372_commands_get_no_reply_and_change_state(connect):
    with LS372Emulator() as device:
        client = connect(device)
        client.send(b"INSET 3,0,10,5,2,2\r\n")
        client.send(b'INNAME 3,"Mixing chamber"\r\n')
        client.send(b"SCAN 3,0\r\n")
        assert client.expect_nothing()
        assert ls_query(client, "INSET? 3") == "0,010,005,02,2\r\n"
        assert ls_query(client, "INNAME? 3") == "Mixing chamber\r\n"
        assert ls_query(client, "SCAN?") == "03,0\r\n"
        assert ls_query(client, "RDGR? 3") == "+000.000E+00\r\n"  # disabled channel
        client.send(b"INSET 3,1,10,5,2,2\r\n")
        assert float(ls_query(client, "RDGR? 3")) == 1300.0


def test_ls372_bad_input_is_ignored(connect):
    with LS372Emulator() as device:
        client = connect(device)
        client.send(b"KRDG? 17\r\n")  # no channel 17
        client.send(b"KRDG? B\r\n")
        client.send(b"FOO?\r\n")
        client.send(b"INSET 2,1,500,3,1,1\r\n")  # dwell above 200 s
        assert client.expect_nothing()
        assert ls_query(client, "INSET? 2") == "1,007,003,21,1\r\n"


def test_ls372_stale_reply_fault(connect):
    with LS372Emulator() as device:
        client = connect(device)
        device.stale_reply_once("+001.000E+00")
        assert ls_query(client, "KRDG? 1") == "+001.000E+00\r\n"
        assert client.read_until(b"\r\n") == b"+293.873E+00\r\n"
        assert ls_query(client, "KRDG? 1") == "+293.873E+00\r\n"


# -- Galil DMC ------------------------------------------------------------------------------------


def galil(client, command):
    """Send one line; read one ':' prompt per ';'-separated command in it."""
    client.send(command.encode() + b"\r")
    count = len([part for part in command.split(";") if part.strip()])
    return "".join(client.read_until(b":").decode() for _ in range(count))


def test_galil_prompt_and_interrogation_format(connect):
    with GalilDMCEmulator("ABCD") as device:
        client = connect(device)
        assert galil(client, "PRA=1000") == ":"
        assert galil(client, "SHA;BGA") == "::"
        assert galil(client, "MG _TPA") == " 1000.0000\r\n:"
        assert galil(client, "TP") == " 1000, 0, 0, 0\r\n:"
        assert galil(client, "TPA") == " 1000\r\n:"
        assert galil(client, "MG _BGA") == " 0.0000\r\n:"
        assert device.position("A") == 1000.0


def test_galil_axis_count_is_the_controllers(connect):
    for axes in ("A", "AB", "ABCDEFGH"):
        with GalilDMCEmulator(axes) as device:
            client = connect(device)
            reply = galil(client, "TP")
            values = reply[:-len("\r\n:")].split(",")
            assert len(values) == len(axes)
            assert [float(v) for v in values] == [0.0] * len(axes)
    with pytest.raises(ValueError, match="'BA'"):
        GalilDMCEmulator("BA")


def test_galil_relative_absolute_moves_and_setters(connect):
    with GalilDMCEmulator("AB") as device:
        client = connect(device)
        assert galil(client, "SPB=5000;") == ":"
        assert galil(client, "MG _SPB") == " 5000.0000\r\n:"
        assert galil(client, "GAB=?") == " 0.0000\r\n:"
        assert galil(client, "PR 100,-250") == ":"
        assert galil(client, "BG AB") == ":"
        assert galil(client, "TP") == " 100,-250\r\n:"
        assert galil(client, "PAA=40") == ":"
        assert galil(client, "BGA") == ":"
        assert galil(client, "MG _TPA") == " 40.0000\r\n:"
        assert galil(client, "DPB=7;") == ":"
        assert galil(client, "TPB") == " 7\r\n:"
        assert galil(client, "MG _MOA") == " 1.0000\r\n:"  # motor off at power-up
        assert galil(client, "SHA") == ":"
        assert galil(client, "MG _MOA") == " 0.0000\r\n:"
        assert galil(client, "SB 2") == ":"
        assert galil(client, "MG @OUT[2]") == " 1.0000\r\n:"
        assert galil(client, "CB 2") == ":"
        assert galil(client, "MG @OUT[2]") == " 0.0000\r\n:"


def test_galil_motion_in_progress(connect):
    with GalilDMCEmulator("A", move_time=0.3) as device:
        client = connect(device)
        assert galil(client, "PRA=500;BGA") == "::"
        assert galil(client, "MG _BGA") == " 1.0000\r\n:"
        assert wait_until(lambda: device.position("A") == 500.0)
        assert galil(client, "MG _BGA") == " 0.0000\r\n:"


def test_galil_bad_command_then_tc1(connect):
    with GalilDMCEmulator("AB") as device:
        client = connect(device)
        client.send(b"XYZ\r")
        assert client.read_exactly(1) == b"?"
        assert galil(client, "TC1") == "1 Unrecognized command\r\n:"
        assert galil(client, "TC1") == "0\r\n:"
        client.send(b"bga\r")  # lower case is invalid
        assert client.read_exactly(1) == b"?"
        client.send(b"PRE=5\r")  # no axis E on a two-axis controller
        assert client.read_exactly(1) == b"?"
        assert galil(client, "TC1") == "6 Number out of range\r\n:"
        assert client.expect_nothing(0.1)


def test_galil_input_buffer_full_until_ci(connect):
    with GalilDMCEmulator("AB") as device:
        client = connect(device)
        device.fill_input_buffer()
        for _ in range(2):  # the SOCS recovery: '?' -> TC1 -> CI -1 -> resend
            client.send(b"MG _TPA\r")
            assert client.read_exactly(1) == b"?"
            assert galil(client, "TC1") == "5 Input buffer full\r\n:"
        assert device.buffer_full
        assert galil(client, "CI -1;") == ":"
        assert not device.buffer_full
        assert galil(client, "MG _TPA") == " 0.0000\r\n:"


def test_galil_line_split_across_writes(connect):
    with GalilDMCEmulator("A") as device:
        client = connect(device)
        client.send(b"MG _T")
        client.send(b"PA\r")
        assert client.read_until(b":") == b" 0.0000\r\n:"


# -- Toptica DLC smart ----------------------------------------------------------------------------


def dlc(client, command):
    client.send(command.encode() + b"\n")
    return client.read_until(b"\n> ").decode()


def test_dlc_prompt_at_connect_and_param_ref(connect):
    with TopticaDLCEmulator() as device:
        client = connect(device)
        assert client.read_until(b"> ").endswith(b"\n> ")  # banner, then the prompt
        assert dlc(client, "(param-ref 'general:system-label)") == '"DLC smart"\n> '
        assert dlc(client, "(param-ref 'laser-operation:emission-global-enable)") == "#f\n> "
        assert float(dlc(client, "(param-ref 'frequency:frequency-act)").strip("\n> ")) == 100.0
        photocurrent = dlc(client, "(param-ref 'lockin:lock-in-value-nanoamp)")
        assert photocurrent == "(#t 12.5)\n> "
        assert float(photocurrent.strip("\n> ").strip("( #t)")) == 12.5  # as SOCS DLCSmart.sampling parses it


def test_dlc_param_set_changes_state(connect):
    with TopticaDLCEmulator(banner=False) as device:
        client = connect(device)
        assert client.read_until(b"> ") == b"> "
        assert dlc(client, "(param-set! 'laser-operation:emission-global-enable #t)") == "0\n> "
        assert dlc(client, "(param-ref 'laser-operation:emission-global-enable)") == "#t\n> "
        assert dlc(client, "(param-set! 'frequency:frequency-set 250.5)") == "0\n> "
        assert dlc(client, "(param-ref 'frequency:frequency-act)") == "250.5\n> "
        assert dlc(client, "(param-set! 'lockin:integration-time 300)") == "0\n> "
        assert dlc(client, "(param-ref 'lockin:integration-time)") == "300\n> "
        assert dlc(client, "(exec 'lockin:mod-out-set-to-default)") == "\n> "
        assert dlc(client, "(param-ref 'lockin:mod-out-amplitude)") == "1.0\n> "
        assert dlc(client, "(exec 'lockin:mod-out-set-to-zero)") == "\n> "
        assert dlc(client, "(param-ref 'lockin:mod-out-amplitude)") == "0.0\n> "
        assert device.executed[-1] == ("lockin:mod-out-set-to-zero", [])


def test_dlc_errors(connect):
    with TopticaDLCEmulator(banner=False) as device:
        client = connect(device)
        client.read_until(b"> ")
        assert dlc(client, "(param-ref 'no:such)").startswith("Error: -10 ")
        assert dlc(client, "(param-set! 'frequency:frequency-act 5)").startswith("Error: -11 ")
        assert dlc(client, "(param-set! 'laser-operation:emission-global-enable 1)").startswith("Error: -1 ")
        assert dlc(client, "param-ref general:system-label").startswith("Error: -1 ")
        assert dlc(client, "(param-ref 'laser-operation:emission-global-enable)") == "#f\n> "


def test_dlc_lost_prompt_fault(connect):
    with TopticaDLCEmulator(banner=False) as device:
        client = connect(device)
        client.read_until(b"> ")
        device.lose_prompt_once()
        client.send(b"(param-ref 'lockin:integration-time)\n")
        assert client.read_until(b"\n") == b"100\n"
        assert client.expect_nothing(0.2)  # no prompt yet
        assert dlc(client, "(param-ref 'lockin:integration-time)") == "> 100\n> "


def test_a_bug_in_device_logic_is_recorded_and_drops_the_client(connect):
    class Broken(TPG366Emulator):
        def respond(self, session, request):
            raise RuntimeError("emulator bug")

    with Broken() as device:
        client = connect(device)
        client.send(b"PRX\r\n")
        client.expect_closed()
        assert [str(e) for e in device.failures] == ["emulator bug"]


def test_ls372_heater_subset(connect):
    with LS372Emulator() as device:
        client = connect(device)
        assert ls_query(client, "OUTMODE? 0") == "2,6,1,0,0,001\r\n"
        assert ls_query(client, "OUTMODE? 2") == "4,16,1,0,0,001\r\n"
        assert ls_query(client, "HTRSET? 0") == "+120.000,8,+0000.00,1\r\n"
        assert ls_query(client, "RANGE? 2") == "1\r\n"
        assert ls_query(client, "STILL?") == "+10.60\r\n"
        client.send(b"RANGE 0 5\r\nMOUT 0 2.5\r\nSETP 0,0.1\r\nSTILL 20.5\r\nOUTMODE 0,5,6,1,0,0,1\r\n")
        assert client.expect_nothing()
        assert ls_query(client, "RANGE? 0") == "5\r\n"
        assert float(ls_query(client, "MOUT? 0")) == 2.5
        assert float(ls_query(client, "SETP? 0")) == 0.1
        assert ls_query(client, "STILL?") == "+20.50\r\n"
        assert ls_query(client, "OUTMODE? 0") == "5,6,1,0,0,001\r\n"
        client.send(b"RANGE 0 9\r\nOUTMODE? 3\r\n")  # out of range, no output 3: ignored
        assert client.expect_nothing()
        assert ls_query(client, "RANGE? 0") == "5\r\n"


def test_command_line_runner_prints_address_and_stops_on_sigterm():
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.Popen([sys.executable, "-m", "emulators", "ds378"], cwd=tests_dir,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        client = Client(line.split()[-1])
        client.send(b"\x30")
        assert client.read_exactly(8)[0] == 35
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
