"""A SCPI instrument simulator: a small programmable power supply plus multimeter.

Run it::

    python -m socs_tcp.simulators.scpi --port 5025 [--host 127.0.0.1] [--model psu|dmm] [--log-level INFO]

``--port 0`` picks a free port.  The first line on stdout is
``listening on HOST:PORT``; SIGINT or SIGTERM stops the server with exit code 0.

Or use it in-process::

    with ScpiSimulator(port=0, noise=0) as sim:
        sock = socket.create_connection(sim.address)
        ...

Layers (each usable without the next one)
    :class:`ScpiInstrument`
        Pure instrument logic: parses one program message (a line, units
        separated by ``;``) and returns the replies.  No sockets, no threads;
        a lock makes it safe to share.  Clock and random generator can be
        injected, so tests are deterministic.
    :class:`ScpiLineProtocol`
        Sans-IO framing for one client: bytes in (any chunking), reply bytes
        out.  Lines end with ``\\n`` (``\\r\\n`` tolerated); the replies to the
        queries of one line are joined by ``;`` and end with one ``\\n``, as
        IEEE 488.2 prescribes for a response message.
    :class:`ScpiSimulator`
        The TCP server: one selector thread serving any number of clients,
        all sharing one :class:`ScpiInstrument`.

Command set (case-insensitive; short ``VOLT`` or long ``VOLTage`` forms;
``[...]`` is an optional node)::

    *IDN?  *RST  *CLS  *OPC  *OPC?  *WAI  *TST?  *ESR?  *ESE <n>  *ESE?  *SRE <n>  *SRE?  *STB?
    SYSTem:ERRor[:NEXT]?   SYSTem:ERRor:COUNt?   SYSTem:VERSion?
    [SOURce:]VOLTage[:LEVel][:IMMediate][:AMPLitude] <V>|MIN|MAX|DEF     ...? [MIN|MAX|DEF]
    [SOURce:]CURRent[:LEVel][:IMMediate][:AMPLitude] <A>|MIN|MAX|DEF     ...? [MIN|MAX|DEF]
    OUTPut[:STATe] ON|OFF|1|0    OUTPut[:STATe]?
    MEASure[:SCALar]:VOLTage[:DC]?  :CURRent[:DC]?  :TEMPerature?  :RESistance?
    READ?                                      (reading of the multimeter function)
    CONFigure[:SCALar]:VOLTage[:DC] | :CURRent[:DC] | :TEMPerature | :RESistance  [range[,resolution]]
    [SENSe:]FUNCtion[:ON] "VOLT"|"CURR"|"TEMP"|"RES"    [SENSe:]FUNCtion[:ON]?
    SIMulation:LOAD <ohms>|MIN|MAX|DEF    SIMulation:LOAD?        (simulator only)

Numbers accept the base unit as suffix (``5V``, ``0.5 A``, ``10 OHM``).  After
a ``;`` a header without a leading ``:`` is relative to the previous header's
path (``MEAS:VOLT?;CURR?`` is ``MEAS:CURR?``), as in SCPI; when that names no
command the header is tried from the root, so ``MEAS:VOLT?;OUTP?`` also works.
Errors go to a bounded queue read by ``SYST:ERR?``; a command with an error
produces no reply.
"""

import argparse
import collections
import dataclasses
import logging
import math
import random
import re
import selectors
import signal
import socket
import sys
import threading
import time

from ...core.buffer import ReceiveBuffer
from ...core.checks import listen_port_argument
from ...core.codec import format_traffic

__all__ = ["ScpiInstrument", "ScpiLineProtocol", "ScpiSimulator", "InstrumentState", "ScpiError",
           "ERROR_MESSAGES", "MODELS", "make_parser", "main"]

log = logging.getLogger("socs_tcp.simulators.scpi")  # same name when run with -m

#: SCPI error codes used by the simulator and their standard messages.
ERROR_MESSAGES = {
    0: "No error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -131: "Invalid suffix",
    -222: "Data out of range",
    -223: "Too much data",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
}

#: Identity and defaults of each simulated model.
MODELS = {
    "psu": {"model": "SIM-PSU1", "function": "VOLT"},
    "dmm": {"model": "SIM-DMM1", "function": "VOLT"},
}

# Standard Event Status Register bits (IEEE 488.2).
ESR_OPC = 0x01  # operation complete
ESR_QYE = 0x04  # query error            (-400 .. -499)
ESR_DDE = 0x08  # device-dependent error (-300 .. -399)
ESR_EXE = 0x10  # execution error        (-200 .. -299)
ESR_CME = 0x20  # command error          (-100 .. -199)


def _esr_bit(code):
    for low, bit in ((-199, ESR_CME), (-299, ESR_EXE), (-399, ESR_DDE), (-499, ESR_QYE)):
        if low <= code <= low + 99:
            return bit
    return 0


class ScpiError(Exception):
    """A SCPI error raised while executing one command; queued, never sent."""

    def __init__(self, code, detail=""):
        super().__init__(f"{code},{ERROR_MESSAGES.get(code, 'Error')}" + (f" ({detail})" if detail else ""))
        self.code = code
        self.detail = detail


@dataclasses.dataclass
class InstrumentState:
    """Everything a client can change, plus the simulated load.

    Hold :attr:`ScpiInstrument.lock` to change it while clients are connected.
    """

    voltage: float = 0.0      #: voltage setpoint, V
    current: float = 1.0      #: current limit, A
    output: bool = False      #: output relay
    function: str = "VOLT"    #: multimeter function read by READ?: VOLT, CURR, TEMP or RES
    load_ohms: float = 10.0   #: resistance connected to the output (not reset by *RST)
    esr: int = 0              #: Standard Event Status Register
    ese: int = 0              #: Standard Event Status Enable
    sre: int = 0              #: Service Request Enable
    errors: collections.deque = dataclasses.field(default_factory=collections.deque)  #: (code, message)


# ----------------------------------------------------------------------
# parsing helpers (pure)

def _split_outside_quotes(text, sep):
    """Split ``text`` at ``sep`` characters that are not inside '...' or "..."."""
    parts = []
    current = []
    quote = None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == sep:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def _compile_pattern(pattern):
    """``"[SOURce] VOLTage [LEVel]"`` -> ``((short, long, optional), ...)``."""
    nodes = []
    for token in pattern.split():
        optional = token.startswith("[")
        name = token.strip("[]")
        short = re.match(r"[A-Z]+", name).group(0)
        nodes.append((short, name.upper(), optional))
    return tuple(nodes)


def _match(nodes, keywords):
    if not nodes:
        return not keywords
    short, long_, optional = nodes[0]
    if keywords and keywords[0] in (short, long_) and _match(nodes[1:], keywords[1:]):
        return True
    return optional and _match(nodes[1:], keywords)


_UNIT_RE = re.compile(r"\s*(\S+)(?:\s+(.*))?", re.S)
_TREE_HEADER_RE = re.compile(r"(:)?([A-Z][A-Z0-9]*(?::[A-Z][A-Z0-9]*)*)(\?)?")
_NUMBER_RE = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:E[+-]?\d+)?)\s*([A-Z]*)")
_FUNCTIONS = {
    "VOLT": "VOLT", "VOLTAGE": "VOLT", "VOLT:DC": "VOLT", "VOLTAGE:DC": "VOLT",
    "CURR": "CURR", "CURRENT": "CURR", "CURR:DC": "CURR", "CURRENT:DC": "CURR",
    "TEMP": "TEMP", "TEMPERATURE": "TEMP",
    "RES": "RES", "RESISTANCE": "RES",
}


def _format_float(value):
    """Instrument style: ``+1.234560E+00``."""
    return f"{value:+.6E}"


def _parse_number(text, unit=""):
    """A decimal number, optionally followed by ``unit``; ScpiError otherwise."""
    m = _NUMBER_RE.fullmatch(text.strip().upper())
    if m is None:
        raise ScpiError(-104, f"{text!r} is not a number")
    if m.group(2) and m.group(2) != unit:
        raise ScpiError(-131, f"{m.group(2)!r} in {text!r}")
    return float(m.group(1))


class ScpiInstrument:
    """The instrument logic, no I/O: program messages in, replies out.

    Args:
        model: ``'psu'`` or ``'dmm'`` (changes ``*IDN?`` and the default
            multimeter function; both accept the whole command set).
        serial: serial number in ``*IDN?``.
        noise: scale of the measurement noise and drift; ``0`` makes every
            reading exact (the temperature still follows its sinusoid).
        seed: seed of the noise generator.
        clock: function returning seconds (default :func:`time.monotonic`);
            readings that drift are functions of ``clock() - clock()@init``.
        error_queue_size: capacity of the error queue (>= 2).  When it is
            full, the newest entry becomes ``-350,"Queue overflow"`` and
            later errors are lost until the queue is read.
    """

    MANUFACTURER = "SOCS-TCP"
    FIRMWARE = "1.0"
    VOLT_RANGE = (0.0, 30.0, 0.0)   # min, max, default
    CURR_RANGE = (0.0, 3.0, 1.0)
    LOAD_RANGE = (1e-3, 1e9, 10.0)
    VOLT_NOISE = 5e-4               # V rms at noise=1
    CURR_NOISE = 5e-5               # A rms at noise=1
    TEMP_NOISE = 5e-3               # C rms at noise=1
    RES_NOISE = 1e-5                # relative rms at noise=1
    DRIFT = 2e-4                    # relative amplitude of the V/I drift at noise=1
    DRIFT_PERIOD = 300.0            # s
    TEMP_MEAN = 25.0                # C
    TEMP_AMPLITUDE = 0.5            # C
    TEMP_PERIOD = 600.0             # s

    _COMMON = {
        "*IDN?": ("_idn", 0, 0),
        "*RST": ("_rst", 0, 0),
        "*CLS": ("_cls", 0, 0),
        "*OPC": ("_opc", 0, 0),
        "*OPC?": ("_opc_query", 0, 0),
        "*WAI": ("_wai", 0, 0),
        "*TST?": ("_tst", 0, 0),
        "*ESR?": ("_esr_query", 0, 0),
        "*ESE": ("_ese_set", 1, 1),
        "*ESE?": ("_ese_query", 0, 0),
        "*SRE": ("_sre_set", 1, 1),
        "*SRE?": ("_sre_query", 0, 0),
        "*STB?": ("_stb_query", 0, 0),
    }
    _SOURCE_LEVEL = "[SOURce] {} [LEVel] [IMMediate] [AMPLitude]"
    _TREE = (
        # pattern, is query, method, min params, max params
        ("SYSTem ERRor [NEXT]", True, "_syst_err", 0, 0),
        ("SYSTem ERRor COUNt", True, "_syst_err_count", 0, 0),
        ("SYSTem VERSion", True, "_syst_version", 0, 0),
        (_SOURCE_LEVEL.format("VOLTage"), False, "_volt_set", 1, 1),
        (_SOURCE_LEVEL.format("VOLTage"), True, "_volt_query", 0, 1),
        (_SOURCE_LEVEL.format("CURRent"), False, "_curr_set", 1, 1),
        (_SOURCE_LEVEL.format("CURRent"), True, "_curr_query", 0, 1),
        ("OUTPut [STATe]", False, "_outp_set", 1, 1),
        ("OUTPut [STATe]", True, "_outp_query", 0, 0),
        ("MEASure [SCALar] VOLTage [DC]", True, "_meas_volt", 0, 0),
        ("MEASure [SCALar] CURRent [DC]", True, "_meas_curr", 0, 0),
        ("MEASure [SCALar] TEMPerature", True, "_meas_temp", 0, 0),
        ("MEASure [SCALar] RESistance", True, "_meas_res", 0, 0),
        ("READ", True, "_read", 0, 0),
        ("CONFigure [SCALar] VOLTage [DC]", False, "_conf_volt", 0, 2),
        ("CONFigure [SCALar] CURRent [DC]", False, "_conf_curr", 0, 2),
        ("CONFigure [SCALar] TEMPerature", False, "_conf_temp", 0, 2),
        ("CONFigure [SCALar] RESistance", False, "_conf_res", 0, 2),
        ("[SENSe] FUNCtion [ON]", False, "_func_set", 1, 1),
        ("[SENSe] FUNCtion [ON]", True, "_func_query", 0, 0),
        ("SIMulation LOAD", False, "_load_set", 1, 1),
        ("SIMulation LOAD", True, "_load_query", 0, 1),
    )

    def __init__(self, model="psu", *, serial="SN0001", noise=1.0, seed=None, clock=time.monotonic,
                 error_queue_size=10):
        if model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(sorted(MODELS))}, got {model!r}")
        if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        if isinstance(error_queue_size, bool) or not isinstance(error_queue_size, int) or error_queue_size < 2:
            raise ValueError(f"error_queue_size must be an int >= 2, got {error_queue_size!r}")
        self.model = model
        self.serial = serial
        self.noise = float(noise)
        self.error_queue_size = error_queue_size
        self.lock = threading.RLock()
        self._clock = clock
        self._t0 = clock()
        self._rng = random.Random(seed)
        self.state = InstrumentState(function=MODELS[model]["function"])
        self._common = {header: (getattr(self, name), lo, hi) for header, (name, lo, hi) in self._COMMON.items()}
        self._tree = [(_compile_pattern(pattern), query, getattr(self, name), lo, hi)
                      for pattern, query, name, lo, hi in self._TREE]

    @property
    def idn(self):
        return f"{self.MANUFACTURER},{MODELS[self.model]['model']},{self.serial},{self.FIRMWARE}"

    # ------------------------------------------------------------------
    # program messages
    def handle_line(self, line):
        """Execute one program message (``;``-separated units, no terminator).

        Returns:
            list of str: the reply of each query, in order, without
            terminators.  Commands with an error reply nothing; the error is
            queued for ``SYST:ERR?``.
        """
        if isinstance(line, (bytes, bytearray)):
            line = bytes(line).decode("latin-1")
        replies = []
        with self.lock:
            path = ()
            for unit in _split_outside_quotes(line, ";"):
                if not unit.strip():
                    continue
                try:
                    reply, path = self._execute(unit, path)
                except ScpiError as exc:
                    log.info("%r: error %s", unit.strip(), exc)
                    self.push_error(exc.code)
                    continue
                if reply is not None:
                    replies.append(reply)
        return replies

    def respond(self, line):
        """The response message to one program message, as the TCP server sends it.

        The replies of :meth:`handle_line` joined by ``;``, without the
        terminator, or ``None`` when the line has no reply (only commands, or
        an error).  Handy as ``default_response`` of a
        :class:`socs_tcp.testing.DeviceEmulator`, to get this instrument with
        the emulator's fault injection::

            DeviceEmulator(default_response=ScpiInstrument().respond, write_termination="\\n")
        """
        replies = self.handle_line(line)
        return ";".join(replies) if replies else None

    def push_error(self, code):
        """Queue the SCPI error ``code`` and set its bit in the ESR."""
        with self.lock:
            errors = self.state.errors
            self.state.esr |= _esr_bit(code)
            if len(errors) < self.error_queue_size:
                errors.append((code, ERROR_MESSAGES.get(code, "Error")))
            elif errors[-1][0] != -350:
                errors[-1] = (-350, ERROR_MESSAGES[-350])
                self.state.esr |= _esr_bit(-350)
                log.warning("error queue overflow (%d entries)", self.error_queue_size)

    def _execute(self, unit, path):
        m = _UNIT_RE.fullmatch(unit)
        header = m.group(1).upper()
        rest = (m.group(2) or "").strip()
        params = [p.strip() for p in _split_outside_quotes(rest, ",")] if rest else []
        if header.startswith("*"):
            entry = self._common.get(header)
            if entry is None:
                raise ScpiError(-113, header)
            return self._call(entry, params), path
        mt = _TREE_HEADER_RE.fullmatch(header)
        if mt is None:
            raise ScpiError(-113, header)
        keywords = tuple(mt.group(2).split(":"))
        query = mt.group(3) is not None
        candidates = [keywords] if mt.group(1) or not path else [path + keywords, keywords]
        for full in candidates:
            for nodes, is_query, handler, lo, hi in self._tree:
                if is_query == query and _match(nodes, full):
                    return self._call((handler, lo, hi), params), full[:-1]
        raise ScpiError(-113, header)

    @staticmethod
    def _call(entry, params):
        handler, lo, hi = entry
        if len(params) < lo or any(not p for p in params):
            raise ScpiError(-109)
        if len(params) > hi:
            raise ScpiError(-108, ",".join(params))
        return handler(*params)

    # ------------------------------------------------------------------
    # parameter helpers
    @staticmethod
    def _value(text, limits, unit):
        lo, hi, default = limits
        word = text.strip().upper()
        if word in ("MIN", "MINIMUM"):
            return lo
        if word in ("MAX", "MAXIMUM"):
            return hi
        if word in ("DEF", "DEFAULT"):
            return default
        value = _parse_number(text, unit)
        if not lo <= value <= hi:
            raise ScpiError(-222, text)
        return value

    @staticmethod
    def _limit_query(text, limits):
        if text is None:
            return None
        word = text.strip().upper()
        for names, value in ((("MIN", "MINIMUM"), limits[0]), (("MAX", "MAXIMUM"), limits[1]),
                             (("DEF", "DEFAULT"), limits[2])):
            if word in names:
                return _format_float(value)
        raise ScpiError(-224, text)

    @staticmethod
    def _boolean(text):
        word = text.strip().upper()
        if word == "ON":
            return True
        if word == "OFF":
            return False
        try:
            return round(_parse_number(word)) != 0
        except ScpiError:
            raise ScpiError(-224, text) from None

    @staticmethod
    def _register(text):
        value = _parse_number(text)
        if not 0 <= round(value) <= 255:
            raise ScpiError(-222, text)
        return int(round(value))

    # ------------------------------------------------------------------
    # simulated physics
    def _elapsed(self):
        return self._clock() - self._t0

    def _gauss(self, sigma):
        return self._rng.gauss(0.0, sigma * self.noise) if self.noise else 0.0

    def _drift(self):
        return 1.0 + self.DRIFT * self.noise * math.sin(2 * math.pi * self._elapsed() / self.DRIFT_PERIOD)

    def true_output(self):
        """Noise-free ``(volts, amps)`` at the output terminals.

        Constant-voltage mode while ``setpoint / load`` is within the current
        limit, constant-current mode (``I = limit``, ``V = limit * load``)
        above it; ``(0, 0)`` with the output off.
        """
        s = self.state
        if not s.output:
            return 0.0, 0.0
        amps = s.voltage / s.load_ohms
        if amps > s.current:
            return s.current * s.load_ohms, s.current
        return s.voltage, amps

    def measure_voltage(self):
        with self.lock:
            return self.true_output()[0] * self._drift() + self._gauss(self.VOLT_NOISE)

    def measure_current(self):
        with self.lock:
            return self.true_output()[1] * self._drift() + self._gauss(self.CURR_NOISE)

    def measure_temperature(self):
        with self.lock:
            phase = 2 * math.pi * self._elapsed() / self.TEMP_PERIOD
            return self.TEMP_MEAN + self.TEMP_AMPLITUDE * math.sin(phase) + self._gauss(self.TEMP_NOISE)

    def measure_resistance(self):
        with self.lock:
            return self.state.load_ohms * (1.0 + self._gauss(self.RES_NOISE))

    # ------------------------------------------------------------------
    # common commands
    def _idn(self):
        return self.idn

    def _rst(self):
        s = self.state
        s.voltage = self.VOLT_RANGE[2]
        s.current = self.CURR_RANGE[2]
        s.output = False
        s.function = MODELS[self.model]["function"]

    def _cls(self):
        self.state.errors.clear()
        self.state.esr = 0

    def _opc(self):
        self.state.esr |= ESR_OPC

    def _opc_query(self):
        return "1"

    def _wai(self):
        return None

    def _tst(self):
        return "0"

    def _esr_query(self):
        value, self.state.esr = self.state.esr, 0
        return str(value)

    def _ese_set(self, text):
        self.state.ese = self._register(text)

    def _ese_query(self):
        return str(self.state.ese)

    def _sre_set(self, text):
        self.state.sre = self._register(text) & ~0x40

    def _sre_query(self):
        return str(self.state.sre)

    def _stb_query(self):
        s = self.state
        stb = 0
        if s.errors:
            stb |= 0x04
        if s.esr & s.ese:
            stb |= 0x20
        if stb & s.sre:
            stb |= 0x40
        return str(stb)

    # ------------------------------------------------------------------
    # SYSTem
    def _syst_err(self):
        if not self.state.errors:
            return f'0,"{ERROR_MESSAGES[0]}"'
        code, message = self.state.errors.popleft()
        return f'{code},"{message}"'

    def _syst_err_count(self):
        return str(len(self.state.errors))

    def _syst_version(self):
        return "1999.0"

    # ------------------------------------------------------------------
    # source and output
    def _volt_set(self, text):
        self.state.voltage = self._value(text, self.VOLT_RANGE, "V")

    def _volt_query(self, text=None):
        return self._limit_query(text, self.VOLT_RANGE) or _format_float(self.state.voltage)

    def _curr_set(self, text):
        self.state.current = self._value(text, self.CURR_RANGE, "A")

    def _curr_query(self, text=None):
        return self._limit_query(text, self.CURR_RANGE) or _format_float(self.state.current)

    def _outp_set(self, text):
        self.state.output = self._boolean(text)

    def _outp_query(self):
        return "1" if self.state.output else "0"

    # ------------------------------------------------------------------
    # measurements
    def _meas_volt(self):
        return _format_float(self.measure_voltage())

    def _meas_curr(self):
        return _format_float(self.measure_current())

    def _meas_temp(self):
        return _format_float(self.measure_temperature())

    def _meas_res(self):
        return _format_float(self.measure_resistance())

    def _read(self):
        return {"VOLT": self._meas_volt, "CURR": self._meas_curr,
                "TEMP": self._meas_temp, "RES": self._meas_res}[self.state.function]()

    def _configure(self, function):
        self.state.function = function

    def _conf_volt(self, *_range_resolution):
        self._configure("VOLT")

    def _conf_curr(self, *_range_resolution):
        self._configure("CURR")

    def _conf_temp(self, *_range_resolution):
        self._configure("TEMP")

    def _conf_res(self, *_range_resolution):
        self._configure("RES")

    def _func_set(self, text):
        name = text.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "\"'":
            name = name[1:-1]
        function = _FUNCTIONS.get(name.strip().upper())
        if function is None:
            raise ScpiError(-224, text)
        self.state.function = function

    def _func_query(self):
        return f'"{self.state.function}"'

    def _load_set(self, text):
        self.state.load_ohms = self._value(text, self.LOAD_RANGE, "OHM")

    def _load_query(self, text=None):
        return self._limit_query(text, self.LOAD_RANGE) or _format_float(self.state.load_ohms)


class ScpiLineProtocol:
    """Framing for one client connection, no I/O.

    Feed received bytes in any chunking to :meth:`receive_data`; it returns
    the bytes to send back.  A line longer than ``max_line`` bytes is
    discarded up to its terminator and queues ``-223,"Too much data"``.
    """

    TERMINATORS = (b"\r\n", b"\n")

    def __init__(self, instrument, max_line=65536, encoding="latin-1"):
        self.instrument = instrument
        self.encoding = encoding
        self._rx = ReceiveBuffer(max_line)
        self._discarding = False

    @property
    def pending(self):
        """Bytes of an incomplete line received so far."""
        return self._rx.peek()

    def receive_data(self, data):
        """Process received bytes; return the reply bytes (possibly ``b""``)."""
        data = bytes(data)
        out = bytearray()
        pos = 0
        while pos < len(data):
            if self._discarding:
                end = data.find(b"\n", pos)
                if end < 0:
                    break
                pos = end + 1
                self._discarding = False
                continue
            n = min(self._rx.room, len(data) - pos)
            self._rx.feed(data[pos:pos + n])
            pos += n
            self._run_lines(out)
            if self._rx.room == 0:  # full, and holding no complete line
                dropped = self._rx.drain()
                log.warning("discarding a command line longer than %d bytes: %s",
                            self._rx.max_size, format_traffic(dropped, 64))
                self.instrument.push_error(-223)
                self._discarding = True
        return bytes(out)

    def _run_lines(self, out):
        while True:
            item = self._rx.maybe_extract_until(self.TERMINATORS)
            if item is None:
                return
            replies = self.instrument.handle_line(item[0].decode(self.encoding))
            if replies:
                out += (";".join(replies) + "\n").encode(self.encoding, "replace")


def _host_port(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Client:
    __slots__ = ("sock", "name", "protocol", "tx", "events")

    def __init__(self, sock, name, protocol):
        self.sock = sock
        self.name = name
        self.protocol = protocol
        self.tx = bytearray()
        self.events = selectors.EVENT_READ


class ScpiSimulator:
    """TCP server around one :class:`ScpiInstrument`.

    Args:
        host: address to bind (use loopback in tests).
        port: TCP port; ``0`` picks a free one (see :attr:`port` after start).
        model: ``'psu'`` or ``'dmm'``.
        instrument: share an existing :class:`ScpiInstrument` instead of
            creating one (then ``model`` and ``instrument_kwargs`` are unused).
        max_line: longest accepted command line, in bytes.
        **instrument_kwargs: ``serial``, ``noise``, ``seed``, ``clock``,
            ``error_queue_size`` for :class:`ScpiInstrument`.

    All clients share the instrument.  One background thread serves them
    with a selector; a client that does not read its replies is no longer
    read from once ``max_pending_output`` bytes wait for it.
    """

    max_pending_output = 1 << 20

    def __init__(self, host="127.0.0.1", port=0, model="psu", *, instrument=None, max_line=65536,
                 **instrument_kwargs):
        self.instrument = instrument if instrument is not None else ScpiInstrument(model, **instrument_kwargs)
        self.host = host
        self._requested_port = port
        self.max_line = max_line
        self._port = None
        self._listener = None
        self._selector = None
        self._wake_r = self._wake_w = None
        self._thread = None
        self._stopping = threading.Event()
        self._clients = {}
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------
    # inspection and pure logic
    @property
    def state(self):
        """The live :class:`InstrumentState` (hold :attr:`lock` to change it)."""
        return self.instrument.state

    @property
    def lock(self):
        return self.instrument.lock

    def handle_line(self, line):
        """Same as :meth:`ScpiInstrument.handle_line` on the shared instrument."""
        return self.instrument.handle_line(line)

    @property
    def port(self):
        """The bound port (``None`` before :meth:`start`)."""
        return self._port

    @property
    def address(self):
        """``(host, port)`` to connect to, e.g. with :func:`socket.create_connection`."""
        return (self.host, self._port)

    @property
    def client_count(self):
        """How many clients are connected now."""
        return len(self._clients)

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def __repr__(self):
        where = _host_port(self.host, self._port) if self._port else "not started"
        return f"<{type(self).__name__} {self.instrument.model} {where}>"

    # ------------------------------------------------------------------
    # life cycle
    def start(self):
        """Bind, listen and start serving in a background thread.  Returns ``self``.

        Raises:
            OSError: the address cannot be bound.
            RuntimeError: already started.
        """
        with self._start_lock:
            if self._thread is not None:
                raise RuntimeError(f"{self!r} was already started")
            infos = socket.getaddrinfo(self.host, self._requested_port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                                       0, socket.AI_PASSIVE)
            af, kind, proto, _, sockaddr = infos[0]
            listener = socket.socket(af, kind, proto)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(sockaddr)
                listener.listen(16)
                listener.setblocking(False)
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                self._wake_w.setblocking(False)
                self._selector = selectors.DefaultSelector()
                self._selector.register(listener, selectors.EVENT_READ, "listener")
                self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            except BaseException:
                listener.close()
                self._close_aux()
                raise
            self._listener = listener
            self.host = listener.getsockname()[0]
            self._port = listener.getsockname()[1]
            self._stopping.clear()
            self._thread = threading.Thread(target=self._serve, name=f"scpi-sim-{self._port}", daemon=True)
            self._thread.start()
            log.info("%s (model %s) listening on %s", self.instrument.idn, self.instrument.model,
                     _host_port(self.host, self._port))
            return self

    def stop(self, timeout=5.0):
        """Close every connection and the listening socket; wait for the thread.

        Safe to call more than once, and before :meth:`start`.
        """
        with self._start_lock:
            thread = self._thread
            if thread is None:
                return
            self._stopping.set()
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
            thread.join(timeout)
            if thread.is_alive():
                log.error("simulator thread did not stop within %s s", timeout)
                return
            self._thread = None
            log.info("simulator on %s stopped", _host_port(self.host, self._port))

    def __enter__(self):
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    # ------------------------------------------------------------------
    # the selector loop (runs in the background thread)
    def _serve(self):
        try:
            while not self._stopping.is_set():
                for key, events in self._selector.select():
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        client = key.data
                        if events & selectors.EVENT_READ:
                            self._on_readable(client)
                        if events & selectors.EVENT_WRITE and client.sock.fileno() >= 0:
                            self._flush(client)
        except Exception:
            log.exception("simulator loop failed")
        finally:
            for client in list(self._clients.values()):
                self._close_client(client, "server stopping")
            self._selector.unregister(self._listener)
            self._listener.close()
            self._close_aux()

    def _close_aux(self):
        for sock in (self._wake_r, self._wake_w):
            if sock is not None:
                sock.close()
        if self._selector is not None:
            self._selector.close()

    def _drain_wake(self):
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass

    def _accept(self):
        try:
            sock, peer = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("accept failed: %s", exc)
            return
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = _host_port(peer[0], peer[1])
        client = _Client(sock, name, ScpiLineProtocol(self.instrument, self.max_line))
        self._clients[sock.fileno()] = client
        self._selector.register(sock, client.events, client)
        log.info("client %s connected (%d connected)", name, len(self._clients))

    def _on_readable(self, client):
        try:
            data = client.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_client(client, f"receive failed: {exc}")
            return
        if not data:
            pending = client.protocol.pending
            self._close_client(client, "closed by client" + (
                f", discarding unterminated {format_traffic(pending, 64)}" if pending else ""))
            return
        log.debug("%s -> %s", client.name, format_traffic(data))
        reply = client.protocol.receive_data(data)
        if reply:
            log.debug("%s <- %s", client.name, format_traffic(reply))
            client.tx += reply
            self._flush(client)
        else:
            self._update_events(client)

    def _flush(self, client):
        try:
            while client.tx:
                sent = client.sock.send(client.tx)
                del client.tx[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._close_client(client, f"send failed: {exc}")
            return
        self._update_events(client)

    def _update_events(self, client):
        events = 0
        if len(client.tx) < self.max_pending_output:
            events |= selectors.EVENT_READ
        if client.tx:
            events |= selectors.EVENT_WRITE
        if events != client.events:
            client.events = events
            self._selector.modify(client.sock, events, client)

    def _close_client(self, client, reason):
        fd = client.sock.fileno()
        if fd < 0:
            return
        self._clients.pop(fd, None)
        try:
            self._selector.unregister(client.sock)
        except (KeyError, ValueError):
            pass
        client.sock.close()
        log.info("client %s disconnected: %s (%d connected)", client.name, reason, len(self._clients))


# ----------------------------------------------------------------------
# command line

def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m socs_tcp.simulators.scpi",
        description="SCPI power supply + multimeter simulator on a raw TCP socket "
                    "(commands and replies end with \\n).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=listen_port_argument, default=5025, help="TCP port, 0 picks a free one (default 5025)")
    parser.add_argument("--model", choices=sorted(MODELS), default="psu", help="instrument model (default psu)")
    parser.add_argument("--noise", type=float, default=1.0, help="noise scale, 0 for exact readings (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the noise generator")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="default INFO")
    return parser


def main(args=None):
    """Run the simulator until SIGINT or SIGTERM.  Returns the exit code."""
    opts = make_parser().parse_args(args)
    logging.basicConfig(level=opts.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sim = ScpiSimulator(opts.host, opts.port, opts.model, noise=opts.noise, seed=opts.seed).start()
        except (OSError, ValueError) as exc:
            log.error("cannot listen on %s: %s", _host_port(opts.host, opts.port), exc)
            return 2
        try:
            sys.stdout.write(f"listening on {_host_port(sim.host, sim.port)}\n")
            sys.stdout.flush()
            while not stop.wait(1.0):
                if not sim.running:
                    log.error("server thread ended unexpectedly")
                    return 1
        finally:
            sim.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
