"""Tests of the SCPI instrument simulator: pure logic, framing, loopback sockets, CLI."""

import math
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socs_tcp.core.buffer import ReceiveBuffer
from socs_tcp.simulators import InstrumentState, ScpiInstrument, ScpiLineProtocol, ScpiSimulator, scpi

REPO = Path(__file__).resolve().parents[1]
FLOAT_RE = re.compile(r"[+-]\d\.\d{6}E[+-]\d{2}")
TIMEOUT = 10.0


@pytest.fixture(autouse=True)
def no_leaked_server_threads():
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("scpi-sim-")]
    assert not leaked, f"simulator threads still running: {leaked}"


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def make(model="psu", **kwargs):
    kwargs.setdefault("noise", 0)
    kwargs.setdefault("clock", FakeClock())
    return ScpiInstrument(model, **kwargs)


def one(instr, line):
    replies = instr.handle_line(line)
    assert len(replies) == 1, (line, replies)
    return replies[0]


def drain_errors(instr):
    """Every queued error as (code, message), read with SYST:ERR? as a client would."""
    found = []
    for _ in range(100):
        code, message = one(instr, "SYST:ERR?").split(",", 1)
        if int(code) == 0:
            assert message == '"No error"'
            return found
        found.append((int(code), message.strip('"')))
    raise AssertionError("error queue never emptied")


def wait_until(predicate, timeout=TIMEOUT, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# ----------------------------------------------------------------------
# identity and IEEE 488.2 common commands

@pytest.mark.parametrize("model, name", [("psu", "SIM-PSU1"), ("dmm", "SIM-DMM1")])
def test_idn(model, name):
    instr = make(model)
    assert one(instr, "*IDN?") == f"SOCS-TCP,{name},SN0001,1.0"
    assert one(instr, "*idn?") == f"SOCS-TCP,{name},SN0001,1.0"
    assert make(model, serial="SN0042").idn == f"SOCS-TCP,{name},SN0042,1.0"


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="'scope'"):
        ScpiInstrument("scope")
    with pytest.raises(ValueError, match="noise"):
        ScpiInstrument(noise=-1)
    with pytest.raises(ValueError, match="error_queue_size"):
        ScpiInstrument(error_queue_size=1)


def test_rst_restores_settings_but_keeps_errors_and_load():
    instr = make()
    instr.handle_line("VOLT 12;CURR 0.3;OUTP ON;FUNC 'TEMP';SIM:LOAD 50;BOGUS")
    assert instr.handle_line("*RST") == []
    s = instr.state
    assert (s.voltage, s.current, s.output, s.function) == (0.0, 1.0, False, "VOLT")
    assert s.load_ohms == 50.0
    assert drain_errors(instr) == [(-113, "Undefined header")]


def test_cls_clears_error_queue_and_esr():
    instr = make()
    instr.handle_line("BOGUS;VOLT 99")
    assert one(instr, "SYST:ERR:COUN?") == "2"
    assert instr.handle_line("*CLS") == []
    assert one(instr, "SYST:ERR:COUN?") == "0"
    assert one(instr, "*ESR?") == "0"
    assert drain_errors(instr) == []


def test_opc_tst_wai_version():
    instr = make()
    assert one(instr, "*OPC?") == "1"
    assert instr.handle_line("*WAI") == []
    assert one(instr, "*TST?") == "0"
    assert one(instr, "SYST:VERS?") == "1999.0"
    assert one(instr, "*ESR?") == "0"
    assert instr.handle_line("*OPC") == []
    assert one(instr, "*ESR?") == "1"


def test_esr_bits_are_set_by_errors_and_cleared_by_reading():
    instr = make()
    instr.handle_line("BOGUS")          # -113 command error: bit 5
    assert one(instr, "*ESR?") == "32"
    assert one(instr, "*ESR?") == "0"
    instr.handle_line("VOLT 1000")      # -222 execution error: bit 4
    assert one(instr, "*ESR?") == "16"
    instr.handle_line("BOGUS;VOLT 1000")
    assert one(instr, "*ESR?") == "48"


def test_ese_sre_stb():
    instr = make()
    assert one(instr, "*STB?") == "0"
    instr.handle_line("*ESE 32;*SRE 32")
    assert instr.handle_line("*ESE?;*SRE?") == ["32", "32"]
    instr.handle_line("BOGUS")
    # error queue not empty (4) + ESB (32) + MSS (64, because SRE enables ESB)
    assert one(instr, "*STB?") == "100"
    instr.handle_line("*CLS")
    assert one(instr, "*STB?") == "0"
    instr.handle_line("*ESE 256")
    assert drain_errors(instr) == [(-222, "Data out of range")]
    assert one(instr, "*ESE?") == "32"


# ----------------------------------------------------------------------
# error queue

def test_syst_err_empty_and_fifo_order():
    instr = make()
    assert one(instr, "SYST:ERR?") == '0,"No error"'
    assert one(instr, "SYSTem:ERRor:NEXT?") == '0,"No error"'
    instr.handle_line("BOGUS")
    instr.handle_line("VOLT 99")
    instr.handle_line("VOLT")
    instr.handle_line("OUTP MAYBE")
    assert instr.handle_line("SYST:ERR?;SYST:ERR?;SYST:ERR?;SYST:ERR?;SYST:ERR?") == [
        '-113,"Undefined header"',
        '-222,"Data out of range"',
        '-109,"Missing parameter"',
        '-224,"Illegal parameter value"',
        '0,"No error"',
    ]


def test_error_queue_overflow_replaces_newest_with_350():
    instr = make(error_queue_size=5)
    for i in range(12):
        instr.handle_line(f"BOGUS{i}")
    assert one(instr, "SYST:ERR:COUN?") == "5"
    assert drain_errors(instr) == [(-113, "Undefined header")] * 4 + [(-350, "Queue overflow")]
    # after reading, errors are queued again
    instr.handle_line("VOLT 99")
    assert drain_errors(instr) == [(-222, "Data out of range")]


def test_error_queue_exactly_full_has_no_overflow():
    instr = make(error_queue_size=3)
    instr.handle_line("A;B;C")
    assert [code for code, _ in drain_errors(instr)] == [-113, -113, -113]


def test_push_error_is_public():
    instr = make()
    instr.push_error(-223)
    assert drain_errors(instr) == [(-223, "Too much data")]


# ----------------------------------------------------------------------
# settings: forms, case, ranges

@pytest.mark.parametrize("command", [
    "VOLT 2.5", "volt 2.5", "VOLTage 2.5", "VoLtAgE 2.5", "SOUR:VOLT 2.5",
    "source:voltage:level:immediate:amplitude 2.5", ":SOUR:VOLT:LEV 2.5", "VOLT:AMPL 2.5",
    "VOLT:LEV:IMM 2.5", "VOLT +2.5E+00", "VOLT 2.5V", "VOLT 2.5 v", "VOLT 25e-1", "VOLT .25E1",
    "  VOLT   2.5  ", "VOLT 2.5\r",
])
def test_voltage_forms(command):
    instr = make()
    assert instr.handle_line(command) == []
    assert drain_errors(instr) == []
    assert instr.state.voltage == 2.5
    assert one(instr, "VOLT?") == "+2.500000E+00"
    assert one(instr, "sour:volt:lev?") == "+2.500000E+00"


@pytest.mark.parametrize("command", ["CURR 0.25", "curr 0.25", "CURRent 0.25", "SOUR:CURR:LEV:IMM:AMPL 0.25",
                                     "CURR 250E-3", "CURR 0.25A", "current 0.25 a"])
def test_current_forms(command):
    instr = make()
    assert instr.handle_line(command) == []
    assert drain_errors(instr) == []
    assert instr.state.current == 0.25
    assert one(instr, "CURR?") == "+2.500000E-01"


@pytest.mark.parametrize("command, expected", [
    ("OUTP ON", True), ("OUTP 1", True), ("outp on", True), ("OUTPut:STATe ON", True), ("OUTP:STAT 1", True),
    ("OUTP OFF", False), ("OUTP 0", False), ("output off", False), ("OUTP:STAT OFF", False),
])
def test_output_forms(command, expected):
    instr = make()
    instr.state.output = not expected
    assert instr.handle_line(command) == []
    assert drain_errors(instr) == []
    assert instr.state.output is expected
    assert one(instr, "OUTP?") == ("1" if expected else "0")
    assert one(instr, "OUTPUT:STATE?") == ("1" if expected else "0")


@pytest.mark.parametrize("command, attribute, value", [
    ("VOLT MIN", "voltage", 0.0), ("VOLT MAX", "voltage", 30.0), ("VOLT DEF", "voltage", 0.0),
    ("VOLT maximum", "voltage", 30.0), ("CURR MIN", "current", 0.0), ("CURR MAX", "current", 3.0),
    ("CURR DEF", "current", 1.0), ("VOLT 30", "voltage", 30.0), ("VOLT 0", "voltage", 0.0),
    ("CURR 3", "current", 3.0), ("SIM:LOAD 100", "load_ohms", 100.0), ("SIMulation:LOAD 5 OHM", "load_ohms", 5.0),
])
def test_limits_and_keywords(command, attribute, value):
    instr = make()
    instr.state.voltage = 7.0
    instr.state.current = 0.7
    assert instr.handle_line(command) == []
    assert drain_errors(instr) == []
    assert getattr(instr.state, attribute) == value


def test_limit_queries():
    instr = make()
    assert instr.handle_line("VOLT? MIN;VOLT? MAX;VOLT? DEF;CURR? MAX;CURR? DEF;SIM:LOAD? DEF") == [
        "+0.000000E+00", "+3.000000E+01", "+0.000000E+00", "+3.000000E+00", "+1.000000E+00", "+1.000000E+01"]


@pytest.mark.parametrize("command, code", [
    ("VOLT 30.001", -222), ("VOLT -0.1", -222), ("VOLT 1e999", -222), ("CURR 3.5", -222), ("CURR -1", -222),
    ("SIM:LOAD 0", -222), ("*ESE 256", -222), ("*SRE -1", -222),
    ("VOLT", -109), ("CURR", -109), ("OUTP", -109), ("*ESE", -109), ("FUNC", -109), ("VOLT ,", -109),
    ("VOLT 1,2", -108), ("*IDN? 1", -108), ("OUTP? 1", -108), ("MEAS:VOLT? 1", -108), ("*RST now", -108),
    ("VOLT abc", -104), ("VOLT 1.2.3", -104), ("CURR ON", -104), ("*ESE x", -104),
    ("VOLT 5A", -131), ("CURR 1V", -131), ("VOLT 5 MV", -131),
    ("OUTP MAYBE", -224), ("OUTP 'ON'", -224), ("VOLT? 5", -224), ("FUNC 'FREQ'", -224), ("FUNC \"VOLT;CURR\"", -224),
    ("VOLTA 1", -113), ("VO 1", -113), ("SOURC:VOLT 1", -113), ("VOLT:LEVEL:FOO 1", -113), ("VOLT: 1", -113),
    ("*RST?", -113), ("MEAS:VOLT", -113), ("READ", -113), ("*FOO", -113), ("!!!", -113), ("VOLT?? ", -113),
    ("MEAS:VOLT:AC?", -113), ("OUTP1 ON", -113),
])
def test_errors(command, code):
    instr = make()
    instr.handle_line("VOLT 7;CURR 0.7;OUTP ON")
    assert instr.handle_line(command) == []
    errors = drain_errors(instr)
    assert [c for c, _ in errors] == [code]
    assert errors[0][1] == scpi.ERROR_MESSAGES[code]
    s = instr.state
    assert (s.voltage, s.current, s.output, s.function) == (7.0, 0.7, True, "VOLT")


def test_empty_units_are_ignored():
    instr = make()
    assert instr.handle_line("") == []
    assert instr.handle_line("   ") == []
    assert instr.handle_line(";;*OPC?;;") == ["1"]
    assert drain_errors(instr) == []


def test_handle_line_accepts_bytes():
    assert make().handle_line(b"*OPC?") == ["1"]


# ----------------------------------------------------------------------
# compound commands

def test_compound_sets_and_queries_in_order():
    instr = make()
    assert instr.handle_line("VOLT 5;CURR 0.2;OUTP ON") == []
    assert instr.handle_line("VOLT?;CURR?;OUTP?;*OPC?") == ["+5.000000E+00", "+2.000000E-01", "1", "1"]
    assert instr.handle_line("VOLT 6;VOLT?;VOLT 7;VOLT?") == ["+6.000000E+00", "+7.000000E+00"]


def test_compound_relative_path_follows_scpi_rules():
    instr = make()
    instr.handle_line("VOLT 5;CURR 1;OUTP ON")
    # MEAS:VOLT? ; CURR?  ->  MEAS:CURR? (measured 0.5 A), not the 1 A limit
    assert instr.handle_line("MEAS:VOLT?;CURR?") == ["+5.000000E+00", "+5.000000E-01"]
    # SOUR:VOLT sets the path SOUR:, so CURR is SOUR:CURR; common commands keep the path
    instr.handle_line("SOUR:VOLT 1;*OPC;CURR 0.2")
    assert (instr.state.voltage, instr.state.current) == (1.0, 0.2)
    # a leading colon goes back to the root
    assert instr.handle_line("MEAS:VOLT?;:CURR?") == ["+1.000000E+00", "+2.000000E-01"]
    # a relative header that names no command is tried from the root
    assert instr.handle_line("MEAS:VOLT?;OUTP?") == ["+1.000000E+00", "1"]
    assert drain_errors(instr) == []


def test_compound_error_does_not_stop_later_units():
    instr = make()
    assert instr.handle_line("BOGUS;*IDN?;VOLT 99;VOLT 3;VOLT?") == [instr.idn, "+3.000000E+00"]
    assert [c for c, _ in drain_errors(instr)] == [-113, -222]


def test_quoted_semicolons_and_commas_do_not_split():
    instr = make()
    assert instr.handle_line('FUNC "CURR";FUNC?') == ['"CURR"']
    instr.handle_line('FUNC "A;B,C";FUNC?')
    assert instr.state.function == "CURR"
    assert [c for c, _ in drain_errors(instr)] == [-224]


# ----------------------------------------------------------------------
# readings

def test_measurements_with_output_off_read_zero():
    instr = make()
    instr.handle_line("VOLT 5")
    assert instr.handle_line("MEAS:VOLT?;MEAS:CURR?") == ["+0.000000E+00", "+0.000000E+00"]


def test_constant_voltage_mode():
    instr = make()
    instr.handle_line("VOLT 5;CURR 1;OUTP ON")
    assert instr.true_output() == (5.0, 0.5)
    assert one(instr, "MEAS:VOLT?") == "+5.000000E+00"
    assert one(instr, "MEASure:SCALar:CURRent:DC?") == "+5.000000E-01"


def test_constant_current_mode_when_load_draws_more_than_the_limit():
    instr = make()
    instr.handle_line("VOLT 20;CURR 0.5;OUTP ON;SIM:LOAD 10")
    assert instr.handle_line("MEAS:VOLT?;MEAS:CURR?") == ["+5.000000E+00", "+5.000000E-01"]
    instr.handle_line("SIM:LOAD 100")
    assert instr.handle_line("MEAS:VOLT?;MEAS:CURR?") == ["+2.000000E+01", "+2.000000E-01"]
    assert one(instr, "SIM:LOAD?") == "+1.000000E+02"


def test_temperature_drifts_sinusoidally_around_25():
    clock = FakeClock(500.0)
    instr = make(clock=clock)
    period = instr.TEMP_PERIOD
    expected = {0.0: 25.0, period / 4: 25.5, period / 2: 25.0, 3 * period / 4: 24.5}
    for dt, temp in expected.items():
        clock.t = 500.0 + dt
        reply = one(instr, "MEAS:TEMP?")
        assert FLOAT_RE.fullmatch(reply)
        assert float(reply) == pytest.approx(temp, abs=1e-6)


def test_noisy_readings_vary_but_stay_close():
    clock = FakeClock()
    instr = ScpiInstrument(seed=1, clock=clock)
    instr.handle_line("VOLT 5;CURR 1;OUTP ON")
    volts, amps, temps = [], [], []
    for _ in range(200):
        clock.t += 7.3
        volts.append(float(one(instr, "MEAS:VOLT?")))
        amps.append(float(one(instr, "MEAS:CURR?")))
        temps.append(float(one(instr, "MEAS:TEMP?")))
    assert len(set(volts)) > 150 and len(set(amps)) > 150
    assert all(abs(v - 5.0) < 0.01 for v in volts)
    assert all(abs(a - 0.5) < 0.001 for a in amps)
    assert all(24.4 < t < 25.6 for t in temps)
    assert max(temps) - min(temps) > 0.5  # the sinusoid is visible over ~1500 s


def test_same_seed_same_readings():
    def readings():
        instr = ScpiInstrument(seed=7, clock=FakeClock())
        instr.handle_line("VOLT 3;OUTP ON")
        return [one(instr, "MEAS:VOLT?") for _ in range(5)]

    assert readings() == readings()


@pytest.mark.parametrize("setup, expected", [
    ("", "+5.000000E+00"),
    ("CONF:VOLT", "+5.000000E+00"), ("CONF:VOLT:DC 10,0.001", "+5.000000E+00"),
    ("CONF:CURR", "+5.000000E-01"), ("CONFigure:SCALar:CURRent:DC", "+5.000000E-01"),
    ("CONF:TEMP", "+2.500000E+01"), ("CONF:RES", "+1.000000E+01"),
    ("FUNC \"CURR\"", "+5.000000E-01"), ("SENS:FUNC 'TEMP'", "+2.500000E+01"),
    ("sense:function:on \"resistance\"", "+1.000000E+01"), ("FUNC VOLT:DC", "+5.000000E+00"),
])
def test_read_follows_the_multimeter_function(setup, expected):
    instr = make("dmm")
    instr.handle_line("VOLT 5;CURR 1;OUTP ON")
    instr.handle_line(setup)
    assert drain_errors(instr) == []
    assert one(instr, "READ?") == expected


def test_func_query_returns_quoted_short_name():
    instr = make()
    assert one(instr, "FUNC?") == '"VOLT"'
    instr.handle_line("CONF:TEMP")
    assert one(instr, "SENSe:FUNCtion:ON?") == '"TEMP"'


def test_every_float_reply_has_instrument_format():
    instr = ScpiInstrument(seed=3)
    instr.handle_line("VOLT 12.345678;CURR 0.001;OUTP ON")
    queries = ["VOLT?", "CURR?", "MEAS:VOLT?", "MEAS:CURR?", "MEAS:TEMP?", "MEAS:RES?", "READ?", "SIM:LOAD?"]
    for reply in instr.handle_line(";".join(queries)):
        assert FLOAT_RE.fullmatch(reply), reply


def test_state_is_a_dataclass_snapshot_of_settings():
    instr = make()
    assert isinstance(instr.state, InstrumentState)
    instr.handle_line("VOLT 1;BOGUS")
    assert instr.state.voltage == 1.0
    assert list(instr.state.errors) == [(-113, "Undefined header")]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("VOLTCURMESAIDN*?:;, \"'0123456789.+-eE\r\tabcxyz")), max_size=60))
def test_fuzz_handle_line_never_raises(line):
    instr = make(error_queue_size=4)
    replies = instr.handle_line(line)
    assert all(isinstance(r, str) and "\n" not in r and r for r in replies)
    assert len(instr.state.errors) <= 4
    s = instr.state
    assert 0 <= s.voltage <= 30 and 0 <= s.current <= 3


# ----------------------------------------------------------------------
# framing (sans-IO)

SCRIPT = (b"*RST\r\nVOLT 4;CURR 0.5\nOUTP ON\n"
          b"VOLT?;CURR?;OUTP?\r\nBOGUS\nMEAS:VOLT?;CURR?\nSYST:ERR?\nSYST:ERR?\n*IDN?\n")
SCRIPT_REPLY = (b"+4.000000E+00;+5.000000E-01;1\n+4.000000E+00;+4.000000E-01\n"
                b'-113,"Undefined header"\n0,"No error"\nSOCS-TCP,SIM-PSU1,SN0001,1.0\n')


def test_protocol_whole_script_in_one_chunk():
    proto = ScpiLineProtocol(make())
    assert proto.receive_data(SCRIPT) == SCRIPT_REPLY
    assert proto.pending == b""


def test_protocol_one_byte_at_a_time():
    proto = ScpiLineProtocol(make())
    out = b"".join(proto.receive_data(SCRIPT[i:i + 1]) for i in range(len(SCRIPT)))
    assert out == SCRIPT_REPLY


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=20))
def test_protocol_any_chunking_gives_the_same_replies(cuts):
    proto = ScpiLineProtocol(make())
    bounds = [0, *sorted(cuts), len(SCRIPT)]
    out = b"".join(proto.receive_data(SCRIPT[a:b]) for a, b in zip(bounds, bounds[1:]))
    assert out == SCRIPT_REPLY


def test_protocol_keeps_partial_line_until_terminator():
    proto = ScpiLineProtocol(make())
    assert proto.receive_data(b"*ID") == b""
    assert proto.pending == b"*ID"
    assert proto.receive_data(b"N?\r") == b""
    assert proto.receive_data(b"\n*OPC") == b"SOCS-TCP,SIM-PSU1,SN0001,1.0\n"
    assert proto.receive_data(b"?\n") == b"1\n"


@pytest.mark.parametrize("chunks", [
    [b"X" * 40 + b"\n*OPC?\n"],
    [b"X" * 10, b"X" * 10, b"X" * 25, b"\n", b"*OPC?\n"],
    [b"X" * 16, b"\n*OPC?\n"],
])
def test_protocol_overlong_line_is_discarded_with_223(chunks):
    instr = make()
    proto = ScpiLineProtocol(instr, max_line=16)
    out = b"".join(proto.receive_data(c) for c in chunks)
    assert out == b"1\n"
    assert drain_errors(instr) == [(-223, "Too much data")]


def test_protocol_line_just_under_the_limit_is_accepted():
    instr = make()
    proto = ScpiLineProtocol(instr, max_line=16)
    assert proto.receive_data(b"VOLT 1.23456789\n") == b""  # 15 bytes + terminator
    assert instr.state.voltage == pytest.approx(1.23456789)
    assert drain_errors(instr) == []


# ----------------------------------------------------------------------
# real sockets on loopback

class Client:
    """Blocking test client with a deadline per line, framed by ReceiveBuffer."""

    def __init__(self, address):
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = ReceiveBuffer()

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read_line(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            item = self.buffer.maybe_extract_until((b"\n",))
            if item is not None:
                return item[0].decode()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply line within {timeout} s; buffered {self.buffer.peek()!r}")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"server closed; buffered {self.buffer.peek()!r}")
            self.buffer.feed(data)

    def query(self, line):
        self.send(line + "\n")
        return self.read_line()

    def wait_eof(self, timeout=TIMEOUT):
        self.sock.settimeout(timeout)
        while self.sock.recv(65536):
            pass

    def close(self):
        self.sock.close()


@pytest.fixture
def sim():
    with ScpiSimulator(noise=0) as server:
        yield server


@pytest.fixture
def connect(sim):
    clients = []

    def _connect():
        client = Client(sim.address)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


def test_simulator_api(sim):
    host, port = sim.address
    assert host == "127.0.0.1" and port == sim.port and 0 < port < 65536
    assert sim.running
    assert isinstance(sim.state, InstrumentState)
    assert sim.handle_line("*IDN?") == ["SOCS-TCP,SIM-PSU1,SN0001,1.0"]
    assert "127.0.0.1" in repr(sim)
    with pytest.raises(RuntimeError, match="already started"):
        sim.start()


def test_query_over_socket(sim, connect):
    client = connect()
    assert client.query("*IDN?") == "SOCS-TCP,SIM-PSU1,SN0001,1.0"
    assert client.query("VOLT 3.3;OUTP ON;MEAS:VOLT?") == "+3.300000E+00"
    assert sim.state.voltage == 3.3 and sim.state.output is True


def test_compound_replies_share_one_line(connect):
    client = connect()
    assert client.query("VOLT?;CURR?;OUTP?") == "+0.000000E+00;+1.000000E+00;0"


def test_command_split_across_chunks(sim, connect):
    client = connect()
    for i, byte in enumerate(b"VOLT 2.5\r\n"):
        client.send(bytes([byte]))
        if i == 4:
            # the server has not acted on the partial line: a second client sees the old value
            assert connect().query("VOLT?") == "+0.000000E+00"
    client.send(b"VO")
    client.send(b"LT?")
    client.send(b"\n")
    assert client.read_line() == "+2.500000E+00"


def test_several_lines_in_one_chunk(connect):
    client = connect()
    client.send(b"VOLT 3\nVOLT?\r\nCURR 0.25\nCURR?\nBOGUS\nSYST:ERR?\n*OPC?\n")
    assert [client.read_line() for _ in range(4)] == [
        "+3.000000E+00", "+2.500000E-01", '-113,"Undefined header"', "1"]


def test_many_queries_in_one_burst(connect):
    client = connect()
    client.send(b"*IDN?\n" * 500)
    assert all(client.read_line() == "SOCS-TCP,SIM-PSU1,SN0001,1.0" for _ in range(500))


def test_two_clients_share_one_instrument(sim, connect):
    a, b = connect(), connect()
    wait_until(lambda: sim.client_count == 2, what="two clients")
    assert a.query("VOLT 7;*OPC?") == "1"
    assert b.query("VOLT?") == "+7.000000E+00"
    assert b.query("BOGUS;*OPC?") == "1"
    assert a.query("SYST:ERR?") == '-113,"Undefined header"'
    a.close()
    wait_until(lambda: sim.client_count == 1, what="first client gone")
    assert b.query("VOLT?") == "+7.000000E+00"


def test_concurrent_clients_get_their_own_replies(sim, connect):
    clients = [connect() for _ in range(4)]
    results = {}
    errors = []

    def work(index, client):
        try:
            replies = []
            for _ in range(50):
                client.send("SIM:LOAD? DEF;*OPC?;SYST:VERS?;*ESE? \n")
                replies.append(client.read_line())
            results[index] = replies
        except Exception as exc:  # reported below, in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads)
    assert not errors
    assert all(results[i] == ["+1.000000E+01;1;1999.0;0"] * 50 for i in range(4))


def test_client_disconnecting_mid_line_does_not_disturb_others(sim, connect):
    a, b = connect(), connect()
    a.send(b"VOLT 9")
    a.close()
    assert b.query("*OPC?") == "1"
    wait_until(lambda: sim.client_count == 1, what="client a gone")
    assert sim.state.voltage == 0.0


def test_stop_closes_clients_and_listener():
    server = ScpiSimulator(noise=0).start()
    client = None
    try:
        client = Client(server.address)
        assert client.query("*OPC?") == "1"
        address = server.address
        server.stop()
        assert not server.running
        client.wait_eof()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=TIMEOUT).close()
        server.stop()  # idempotent
    finally:
        server.stop()
        if client:
            client.close()


def test_stop_before_start_is_harmless():
    ScpiSimulator().stop()


def test_dmm_model_over_socket():
    with ScpiSimulator(model="dmm", noise=0, clock=FakeClock()) as server:
        client = Client(server.address)
        try:
            assert client.query("*IDN?") == "SOCS-TCP,SIM-DMM1,SN0001,1.0"
            assert client.query("CONF:TEMP;READ?") == "+2.500000E+01"
        finally:
            client.close()


def test_shared_instrument_between_two_servers():
    instr = make()
    with ScpiSimulator(instrument=instr) as s1, ScpiSimulator(instrument=instr) as s2:
        c1, c2 = Client(s1.address), Client(s2.address)
        try:
            assert c1.query("VOLT 4;*OPC?") == "1"
            assert c2.query("VOLT?") == "+4.000000E+00"
        finally:
            c1.close()
            c2.close()


def test_busy_port_raises_oserror(sim):
    with pytest.raises(OSError):
        ScpiSimulator(port=sim.port).start()


def test_main_returns_2_when_port_busy(sim):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert scpi.main(["--port", str(sim.port), "--log-level", "CRITICAL"]) == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


# ----------------------------------------------------------------------
# the command-line program in a subprocess

@pytest.fixture
def run_cli(tmp_path):
    procs = []

    def _run(*args):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        stderr = open(tmp_path / f"stderr{len(procs)}.txt", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "socs_tcp.simulators.scpi", *args],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
        stderr.close()
        procs.append(proc)
        return proc

    yield _run
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(TIMEOUT)
        proc.stdout.close()


def read_stdout_line(proc, timeout=TIMEOUT):
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not sel.select(remaining):
                raise AssertionError(f"no line on stdout within {timeout} s (got {data!r})")
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"stdout closed, exit code {proc.wait(TIMEOUT)}, got {data!r}")
            data += chunk
    return data.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_runs_serves_and_exits_cleanly_on_signal(run_cli, sig):
    proc = run_cli("--port", "0", "--model", "dmm", "--log-level", "DEBUG")
    line = read_stdout_line(proc)
    m = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", line)
    assert m, line
    client = Client(("127.0.0.1", int(m.group(1))))
    try:
        assert client.query("*IDN?") == "SOCS-TCP,SIM-DMM1,SN0001,1.0"
        assert client.query("VOLT 2;OUTP ON;MEAS:VOLT?")[0] == "+"
        proc.send_signal(sig)
        assert proc.wait(TIMEOUT) == 0
        client.wait_eof()
    finally:
        client.close()
    assert proc.stdout.read() == b""


def test_cli_help(run_cli):
    proc = run_cli("--help")
    out = read_stdout_line(proc)
    assert "usage" in out
    assert proc.wait(TIMEOUT) == 0


def test_temperature_reading_is_physical_over_real_time(sim, connect):
    client = connect()
    value = float(client.query("MEAS:TEMP?"))
    assert math.isfinite(value) and 24.5 <= value <= 25.5


def test_package_exports_resolve_lazily():
    import socs_tcp.simulators as package
    assert package.ScpiSimulator is ScpiSimulator
    with pytest.raises(AttributeError):
        package.Nope  # noqa: B018
