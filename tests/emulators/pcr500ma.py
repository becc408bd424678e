"""Kikusui PCR500MA AC power supply emulator: SCPI over a raw socket (port 5025).

Facts and their sources:

* Command set, from SOCS ``socs/agents/kikusui_pcr500ma/drivers.py``:
  ``*IDN?``, ``*RST``, ``OUTP {0|1}``/``OUTP?`` (reply ``1`` or ``0``),
  ``OUTP:COUP {AC|DC|ACDC}``/``OUTP:COUP?``, ``OUTP:PROT:CLE``,
  ``CURR``/``CURR?`` (AC current limit), ``CURR:OFFS``/``CURR:OFFS?`` (DC
  current limit), ``FREQ f[,low,high]``/``FREQ?``, ``VOLT v[,low,high]``/``VOLT?``,
  ``MEAS:VOLT:AC?``, ``MEAS:CURR:AC?``, ``MEAS:POW:AC?``, ``MEAS:FREQ?``.
  The driver keeps its own soft limit ``VOLT_ULIM_SOFT = 51`` V and checks
  40-500 Hz before sending; the device itself accepts its full range.
* SCPI syntax (Kikusui PCR-MA / PCR-M communication interface manuals,
  "Overview of Command"): short or long form, case-insensitive, a space
  between header and parameters, ``;`` joins commands, optional ``[SOURce:]``
  and ``[:SCALar]`` nodes; LF ends a command on LAN (SCPI-RAW) and LF ends
  each response.  ``*CLS`` clears the error queue.
* Error queue ``SYST:ERR?`` answers ``code,"message"``, oldest first, and
  ``0,"No error"`` when empty (SOCS ``hwp_pmx/drivers/PMX_ethernet.py``
  ``check_error``).  Codes are the SCPI standard's: -113 "Undefined header",
  -104 "Data type error", -109 "Missing parameter", -108 "Parameter not
  allowed", -221 "Settings conflict" (output on during an alarm), -224
  "Illegal parameter value", -222 "Data out of range", -350 "Queue overflow" (queue of 255,
  as the PMX driver's docstring says for Kikusui error queues).
* Ranges used here (PCR-MA 100 V range, not checked against a unit): voltage
  0-150 V, frequency 1-999.9 Hz, AC current limit 0-5 A, DC current limit
  0-3.5 A.  A ``VOLT v,low,high`` sets the voltage and a setting window; a
  later voltage outside the window is -222 too.
* Numbers are answered in NR3 form (``+5.00000E+01``).  Measurements follow
  the settings into a resistive load (``load_ohms``), clipped at the current
  limit; 0 with the output off.

Faults: the common ones (:mod:`emulators.base`) and :meth:`PCR500MAEmulator.trip_protection`
(an alarm that turns the output off until ``OUTP:PROT:CLE``).
"""

from .base import EmulatorServer, split_lines

__all__ = ["PCR500MAEmulator", "IDN"]

IDN = "KIKUSUI,PCR500MA,SIM00001,1.00"
VOLT_RANGE = (0.0, 150.0)
FREQ_RANGE = (1.0, 999.9)
CURR_AC_RANGE = (0.0, 5.0)
CURR_DC_RANGE = (0.0, 3.5)
QUEUE_SIZE = 255

# (short form, long form) of each header node this device knows
_NODES = {
    "OUTP": "OUTPUT", "COUP": "COUPLING", "PROT": "PROTECTION", "CLE": "CLEAR", "CURR": "CURRENT",
    "OFFS": "OFFSET", "FREQ": "FREQUENCY", "VOLT": "VOLTAGE", "MEAS": "MEASURE", "POW": "POWER",
    "SYST": "SYSTEM", "ERR": "ERROR", "SOUR": "SOURCE", "SCAL": "SCALAR", "AC": "AC", "STAT": "STATE",
    "NEXT": "NEXT",
}


class ScpiError(Exception):
    def __init__(self, code, message):
        super().__init__(code, message)
        self.code, self.message = code, message


def _canonical(header):
    """``sour:Voltage`` -> ``VOLT``; optional nodes removed.  Raises -113 for unknown nodes."""
    if header.startswith("*"):
        return header.upper()
    nodes = []
    for token in header.strip(":").split(":"):
        word = token.upper()
        short = next((s for s, long in _NODES.items() if word in (s, long)), None)
        if short is None:
            raise ScpiError(-113, "Undefined header")
        nodes.append(short)
    if nodes and nodes[0] == "SOUR":
        nodes = nodes[1:]
    nodes = [n for n in nodes if n != "SCAL"]
    if nodes[-1:] == ["STAT"] and nodes[:1] == ["OUTP"]:
        nodes = nodes[:-1]
    if nodes == ["SYST", "ERR", "NEXT"]:
        nodes = nodes[:-1]
    return ":".join(nodes)


class PCR500MAEmulator(EmulatorServer):
    """A PCR500MA with one output into a resistive load.

    Args:
        load_ohms (float): the load the measurements assume.
        volt_window (tuple): the voltage setting window at power-up and
            after ``*RST`` (e.g. ``(0, 51)`` for a unit configured like the
            SOCS soft limit); it must lie inside the 0-150 V range.
    """

    device_name = "pcr500ma"

    def __init__(self, *, load_ohms=50.0, volt_window=VOLT_RANGE, host="127.0.0.1", port=0):
        super().__init__(host, port)
        low, high = (float(v) for v in volt_window)
        if not VOLT_RANGE[0] <= low <= high <= VOLT_RANGE[1]:
            raise ValueError(f"volt_window must lie inside {VOLT_RANGE}, got {volt_window!r}")
        self.load_ohms = float(load_ohms)
        self.initial_volt_window = (low, high)
        self.errors = []
        self._reset()

    def _reset(self):
        self.output = False
        self.coupling = "AC"
        self.volt = 0.0
        self.volt_window = self.initial_volt_window
        self.freq = 50.0
        self.freq_window = FREQ_RANGE
        self.curr_ac = 5.0
        self.curr_dc = 3.5
        self.alarm = False

    # -- faults ------------------------------------------------------------------

    def trip_protection(self):
        """Raise an alarm: the output turns off and cannot be turned on until cleared."""
        with self.lock:
            self.alarm = True
            self.output = False

    # -- protocol ------------------------------------------------------------------

    def split_requests(self, session):
        return split_lines(session, b"\n", strip=b"\r ")

    def respond(self, session, request):
        text = request.decode("ascii", errors="replace")
        replies = []
        for part in text.split(";"):
            part = part.strip()
            if not part:
                continue
            try:
                reply = self._execute(part)
            except ScpiError as error:
                self._push_error(error.code, error.message)
                continue
            if reply is not None:
                replies.append(reply)
        if not replies:
            return None
        return (";".join(replies) + "\n").encode("ascii")

    def _push_error(self, code, message):
        if len(self.errors) >= QUEUE_SIZE - 1:
            if len(self.errors) == QUEUE_SIZE - 1:
                self.errors.append((-350, "Queue overflow"))
            return
        self.errors.append((code, message))

    def _execute(self, command):
        header, _, params = command.partition(" ")
        query = header.endswith("?")
        key = _canonical(header.rstrip("?"))
        args = [a.strip() for a in params.split(",")] if params.strip() else []
        if query:
            if args:
                raise ScpiError(-108, "Parameter not allowed")
            return self._query(key)
        self._set(key, args)
        return None

    def _query(self, key):
        measuring = self.output
        current = min(self.volt / self.load_ohms, self.curr_ac) if measuring and self.load_ohms > 0 else 0.0
        volts = current * self.load_ohms if measuring else 0.0
        table = {
            "*IDN": lambda: IDN,
            "OUTP": lambda: "1" if self.output else "0",
            "OUTP:COUP": lambda: self.coupling,
            "CURR": lambda: _nr3(self.curr_ac),
            "CURR:OFFS": lambda: _nr3(self.curr_dc),
            "FREQ": lambda: _nr3(self.freq),
            "VOLT": lambda: _nr3(self.volt),
            "MEAS:VOLT:AC": lambda: _nr3(volts),
            "MEAS:CURR:AC": lambda: _nr3(current),
            "MEAS:POW:AC": lambda: _nr3(volts * current),
            "MEAS:FREQ": lambda: _nr3(self.freq if measuring else 0.0),
            "SYST:ERR": self._pop_error,
        }
        if key not in table:
            raise ScpiError(-113, "Undefined header")
        return table[key]()

    def _pop_error(self):
        if not self.errors:
            return '0,"No error"'
        code, message = self.errors.pop(0)
        return f'{code},"{message}"'

    def _set(self, key, args):
        if key == "*RST":
            _no_args(args)
            self._reset()
        elif key == "*CLS":
            _no_args(args)
            self.errors.clear()
        elif key == "OUTP":
            value = _bool(_one(args))
            if value and self.alarm:
                raise ScpiError(-221, "Settings conflict")
            self.output = value
        elif key == "OUTP:COUP":
            value = _one(args).upper()
            if value not in ("AC", "DC", "ACDC"):
                raise ScpiError(-224, "Illegal parameter value")
            self.coupling = value
        elif key == "OUTP:PROT:CLE":
            _no_args(args)
            self.alarm = False
        elif key == "CURR":
            self.curr_ac = _in_range(_number(_one(args)), CURR_AC_RANGE)
        elif key == "CURR:OFFS":
            self.curr_dc = _in_range(_number(_one(args)), CURR_DC_RANGE)
        elif key == "FREQ":
            self.freq, self.freq_window = _value_and_window(args, FREQ_RANGE, self.freq_window)
        elif key == "VOLT":
            self.volt, self.volt_window = _value_and_window(args, VOLT_RANGE, self.volt_window)
        else:
            raise ScpiError(-113, "Undefined header")


def _nr3(value):
    return f"{value:+.5E}"


def _no_args(args):
    if args:
        raise ScpiError(-108, "Parameter not allowed")


def _one(args):
    if not args:
        raise ScpiError(-109, "Missing parameter")
    if len(args) > 1:
        raise ScpiError(-108, "Parameter not allowed")
    return args[0]


def _bool(text):
    value = text.upper()
    if value in ("1", "ON"):
        return True
    if value in ("0", "OFF"):
        return False
    raise ScpiError(-104, "Data type error")


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise ScpiError(-104, "Data type error") from None


def _in_range(value, bounds):
    low, high = bounds
    if not low <= value <= high:
        raise ScpiError(-222, "Data out of range")
    return value


def _value_and_window(args, device_range, window):
    """``v`` or ``v,low,high``: the value (inside the device range and the
    setting window) and the window in force afterwards."""
    if len(args) == 1:
        value = _in_range(_number(args[0]), device_range)
        return _in_range(value, window), window
    if len(args) == 3:
        value, low, high = (_number(a) for a in args)
        for v in (value, low, high):
            _in_range(v, device_range)
        if not low <= value <= high:
            raise ScpiError(-222, "Data out of range")
        return value, (low, high)
    if not args:
        raise ScpiError(-109, "Missing parameter")
    raise ScpiError(-108, "Parameter not allowed")
