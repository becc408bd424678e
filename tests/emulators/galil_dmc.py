"""Galil DMC motion controller emulator: ``:`` prompt, ``?`` errors, ``TC1``, ``CI -1``.

Facts and their sources:

* Commands end with CR; several may share a line separated by ``;`` (SOCS
  ``socs/agents/galil_axis/drivers.py`` sends ``f"{cmd}\\r"`` and commands
  such as ``MTA=1;``, ``CI -1;``).  Default port 23 (same file).
* "The controller returns a ``:`` for valid commands and a ``?`` for invalid
  commands"; a command in lower case is invalid; ``TC1`` then gives the
  error code and its text, e.g. ``1 Unrecognized command`` (Galil DMC-1600 /
  DMC-13x8 / DMC-2x00 user manuals, "Controller Response to DATA").
  Interrogation data comes "on the next line followed by a carriage return
  and line feed" (same manuals), then the ``:`` prompt.
* ``?``/``??`` -> ``TC1``; code 5 "Input buffer full" is cleared with
  ``CI -1``, then the command is resent (SOCS ``galil_command``).
* ``TP``/``TV``/``TT``/``TE`` give one comma-separated value per axis, axes
  from A on, as many as the controller has (up to 8, A-H; SOCS ``get_data``).
  ``MG _TPA`` etc. give one value (``MG`` default format: a sign position,
  then four decimals, `` 1000.0000``).  Per-axis setters ``PRA=1000``,
  ``SPA=5000;``, queries ``MG _SPA``, ``GAA=?``; ``BGA``/``MG _BGA`` (1 while
  moving), ``SHA``/``MOA``/``MG _MOA`` (1 = motor off), ``ST A``, ``SB n``/``CB
  n``/``MG @OUT[n]``, ``MG @AN[n]``, ``CN``/``MG _CN``, ``BZ <t1>t2`` (SOCS
  driver methods).  ``PR`` moves relative, ``PA`` absolute, both on ``BG``.
* Other TC codes used here: 6 "Number out of range" for an axis the
  controller does not have (assumed, not in the cited sources).  ``TC1``
  with no error answers ``0``.

Faults: the common ones and :meth:`GalilDMCEmulator.fill_input_buffer`: every
command but ``TC0``/``TC1``/``CI`` gets ``?`` with code 5 until ``CI -1``.
"""

import re
import time

from .base import EmulatorServer

__all__ = ["GalilDMCEmulator", "ERROR_TEXT"]

ALL_AXES = "ABCDEFGH"
#: TC codes and their texts
ERROR_TEXT = {1: "Unrecognized command", 5: "Input buffer full", 6: "Number out of range"}
#: per-axis parameters a client may set, with their power-up values
SETTABLE = {"PR": 0.0, "PA": 0.0, "SP": 25000.0, "AC": 256000.0, "DC": 256000.0, "JG": 25000.0, "MT": 1.0,
            "OE": 0.0, "AG": 1.0, "TL": 9.998, "AU": 0.0, "LD": 0.0, "GR": 0.0, "BM": 0.0, "BZ": 0.0, "GA": 0.0}
READ_ONLY = ("TP", "TV", "TT", "TE", "BG", "MO")


class GalilError(Exception):
    def __init__(self, code):
        super().__init__(code)
        self.code = code


def format_mg(value):
    """``MG`` number format: sign position, integer part, four decimals."""
    return f"{'-' if value < 0 else ' '}{abs(value):.4f}"


def format_count(value):
    """``TP``-style integer with a sign position."""
    value = int(round(value))
    return f"{'-' if value < 0 else ' '}{abs(value)}"


class _Axis:
    def __init__(self):
        self.params = dict(SETTABLE)
        self.position = 0.0
        self.motor_off = True
        self.last_move = "PR"
        self.move = None  # (start time, start position, end position, duration)

    def now_position(self):
        if self.move is None:
            return self.position
        start, begin, end, duration = self.move
        done = (time.monotonic() - start) / duration if duration > 0 else 1.0
        if done >= 1.0:
            self.position, self.move = end, None
            return end
        return begin + (end - begin) * done

    def moving(self):
        self.now_position()
        return self.move is not None


class GalilDMCEmulator(EmulatorServer):
    """A DMC controller with ``axes`` (e.g. ``"ABCD"``).

    Args:
        axes (str): the axes the controller has, a prefix of ``ABCDEFGH``.
        move_time (float): seconds a BG move takes (0: moves complete at once).
        analog: values of ``@AN[1..8]`` in volts.
    """

    device_name = "galil_dmc"

    def __init__(self, axes="ABCD", *, move_time=0.0, analog=(0.0,) * 8, host="127.0.0.1", port=0):
        super().__init__(host, port)
        if not axes or not ALL_AXES.startswith(axes):
            raise ValueError(f"axes must be a prefix of {ALL_AXES!r}, got {axes!r}")
        self.axes = {a: _Axis() for a in axes}
        self.move_time = float(move_time)
        self.outputs = {n: 0 for n in range(1, 17)}
        self.analog = list(analog)
        self.limit_polarity = 1
        self.error_code = 0
        self._buffer_full = False

    # -- state -------------------------------------------------------------------

    def position(self, axis):
        """The position of ``axis`` now, in counts."""
        with self.lock:
            return self.axes[axis].now_position()

    def set_position(self, axis, counts):
        with self.lock:
            self.axes[axis].position = float(counts)
            self.axes[axis].move = None

    # -- faults --------------------------------------------------------------------

    def fill_input_buffer(self):
        """Answer ``?`` (TC1: ``5 Input buffer full``) until ``CI -1`` is sent."""
        with self.lock:
            self._buffer_full = True
            self.error_code = 5

    @property
    def buffer_full(self):
        return self._buffer_full

    # -- protocol ----------------------------------------------------------------

    def split_requests(self, session):
        lines = []
        while True:
            index = session.buffer.find(b"\r")
            if index < 0:
                return lines
            lines.append(bytes(session.buffer[:index]).strip(b"\n"))
            del session.buffer[:index + 1]

    def respond(self, session, request):
        text = request.decode("ascii", errors="replace")
        out = []
        for command in text.split(";"):
            command = command.strip(" ")
            if not command:
                continue
            try:
                data = self._execute(command)
            except GalilError as error:
                self.error_code = error.code
                out.append("?")
                continue
            out.append(":" if data is None else f"{data}\r\n:")
        return "".join(out).encode("ascii") if out else b":"

    def _axes_arg(self, text):
        """Axis letters after a command (``"A"``, ``"AB"``, ``""`` = all)."""
        letters = text.replace(" ", "").replace(",", "")
        if not letters:
            return list(self.axes)
        if not re.fullmatch(r"[A-H]+", letters):
            raise GalilError(1)
        for letter in letters:
            if letter not in self.axes:
                raise GalilError(6)
        return list(letters)

    def _axis(self, letter):
        if letter not in ALL_AXES:
            raise GalilError(1)
        if letter not in self.axes:
            raise GalilError(6)
        return self.axes[letter]

    def _execute(self, command):
        if command in ("TC0", "TC1", "TC"):
            code, self.error_code = self.error_code, 0
            if command == "TC1" and code:
                return f"{code} {ERROR_TEXT[code]}"
            return str(code)
        if re.fullmatch(r"CI\s*-1", command):
            self._buffer_full = False
            return None
        if self._buffer_full:
            raise GalilError(5)
        if command != command.upper():  # lower case is invalid (the manuals)
            raise GalilError(1)
        if command.startswith("MG "):
            return self._message(command[3:].strip())
        match = re.fullmatch(r"([A-Z]{2})([A-H])\s*=\s*(\S+)", command)
        if match:
            name, letter, value = match.groups()
            return self._assign(name, self._axis(letter), value)
        match = re.fullmatch(r"([A-Z]{2})\s+(.*)", command) or re.fullmatch(r"([A-Z]{2})([A-H ,]*)", command)
        if not match:
            raise GalilError(1)
        name, rest = match.group(1), match.group(2).strip()
        if name in ("TP", "TV", "TT", "TE"):
            return ",".join(format_count(self._read(name, self.axes[a])) for a in self._axes_arg(rest))
        if name in ("BG", "ST", "SH", "MO", "BA"):
            for letter in self._axes_arg(rest):
                self._action(name, self.axes[letter])
            return None
        if name in ("SB", "CB"):
            number = _number(rest)
            if int(number) not in self.outputs:
                raise GalilError(6)
            self.outputs[int(number)] = 1 if name == "SB" else 0
            return None
        if name == "CN":
            self.limit_polarity = int(_number(rest.split(",")[0]))
            return None
        if name == "BZ" and rest.startswith("<"):
            return None  # dwell times for BZ initialisation
        if name in SETTABLE or name == "DP":
            values = [v.strip() for v in rest.split(",")]
            if len(values) > len(self.axes):
                raise GalilError(6)
            for letter, value in zip(self.axes, values):
                if value:
                    self._assign(name, self.axes[letter], value)
            return None
        raise GalilError(1)

    def _assign(self, name, axis, value):
        if value == "?":
            if name not in SETTABLE and name not in READ_ONLY:
                raise GalilError(1)
            return format_mg(self._read(name, axis))
        if name == "DP":
            axis.position, axis.move = _number(value), None
            return None
        if name not in SETTABLE:
            raise GalilError(1)
        axis.params[name] = _number(value)
        if name in ("PR", "PA"):
            axis.last_move = name
        return None

    def _read(self, name, axis):
        if name == "TP":
            return axis.now_position()
        if name == "TV":
            return axis.params["SP"] if axis.moving() else 0.0
        if name in ("TT", "TE"):
            return 0.0
        if name == "BG":
            return 1.0 if axis.moving() else 0.0
        if name == "MO":
            return 1.0 if axis.motor_off else 0.0
        return axis.params[name]

    def _action(self, name, axis):
        if name == "BG":
            start = axis.now_position()
            end = axis.params["PA"] if axis.last_move == "PA" else start + axis.params["PR"]
            axis.move = (time.monotonic(), start, end, self.move_time)
            axis.now_position()
        elif name == "ST":
            axis.position, axis.move = axis.now_position(), None
        elif name == "SH":
            axis.motor_off = False
        elif name == "MO":
            axis.position, axis.move = axis.now_position(), None
            axis.motor_off = True

    def _message(self, operand):
        match = re.fullmatch(r"_([A-Z]{2})([A-H]?)", operand)
        if match:
            name, letter = match.groups()
            if name == "CN" and not letter:
                return format_mg(self.limit_polarity)
            if not letter or (name not in SETTABLE and name not in READ_ONLY):
                raise GalilError(1)
            return format_mg(self._read(name, self._axis(letter)))
        match = re.fullmatch(r"@(OUT|AN)\[(\d+)\]", operand)
        if match:
            kind, number = match.group(1), int(match.group(2))
            if kind == "OUT":
                if number not in self.outputs:
                    raise GalilError(6)
                return format_mg(self.outputs[number])
            if not 1 <= number <= len(self.analog):
                raise GalilError(6)
            return format_mg(self.analog[number - 1])
        if len(operand) >= 2 and operand[0] == operand[-1] == '"':
            return operand[1:-1]
        raise GalilError(1)


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise GalilError(1) from None
