"""Lake Shore Model 372 AC resistance bridge emulator: readings, status, input setup.

Facts and their sources:

* Terminators CR LF both ways; only queries (a ``?`` in the message) are
  answered, commands get no reply (SOCS ``socs/Lakeshore/Lakeshore372.py``
  ``LS372.msg``); default port 7777 (same file).
* Channels: ``A`` (control input) and 1-16 (measurement input) (Model 372
  manual, section 6.6.1, ``RDGK?``: "A (control input), 1 to 16 (measurement
  input)").
* ``RDGK?``/``KRDG?`` (kelvin), ``RDGR?``/``SRDG?`` (ohms), ``RDGPWR?``
  (excitation power): format ``±nnn.nnnE±nn`` (manual 6.6.1); SOCS's agent
  test fixture (``tests/agents/test_ls372_agent.py``) has ``KRDG? 1`` ->
  ``+293.873E+00`` and ``SRDG? 1`` -> ``+108.278E+00``, used here as channel
  1's defaults.  With no curve the kelvin reading is zero (manual ``RDGK?``
  remarks).
* ``RDGST?``: ``nnn``, the sum of bit weights 1 CS OVL, 2 VCM OVL, 4 VMIX
  OVL, 8 VDIF OVL, 16 R. OVER, 32 R. UNDER, 64 T. OVER, 128 T. UNDER;
  ``000`` is a valid reading (manual 6.6.1; SOCS ``get_reading_status``).
* ``INSET? n`` -> ``enabled,dwell,pause,curve,tempco`` (fixture
  ``1,007,003,21,1``; control input ``0,010,003,00,1``); ``INSET
  n,enabled,dwell,pause,curve,tempco`` sets it (SOCS
  ``_set_input_channel_parameter``).  Ranges: dwell 1-200 s, pause 3-200 s
  (SOCS ``get_input_channel_parameter`` docstring), curve 0-59, tempco 1
  negative / 2 positive (SOCS ``tempco_key``).
* ``INTYPE? n`` -> ``mode,excitation,autorange,range,cs_shunt,units``
  (fixture ``0,07,1,10,0,1``; control input ``1,04,0,15,0,2``) and ``INTYPE``
  sets it; ``INNAME? n`` -> ``Channel 01`` (fixture), ``INNAME n,"name"``
  sets it (15 characters at most); ``SCAN?`` -> ``01,1`` (fixture), ``SCAN
  n,autoscan``; ``*IDN?`` -> ``LSCI,MODEL372,LSA23JD,1.3`` (fixture);
  ``TLIMIT? n`` -> ``+0000`` (fixture).
* Heater outputs 0 (sample), 1 (warm-up), 2 (still), enough for the SOCS
  driver to start: ``OUTMODE? n`` -> ``mode,input,powerup,polarity,filter,delay``
  (fixture ``2,6,1,0,0,001`` for 0, ``4,16,1,0,0,001`` for 2), ``HTRSET? n``
  (fixture ``+120.000,8,+0000.00,1``), ``RANGE? n`` (fixture 0 and 1),
  ``STILL?`` (fixture ``+10.60``), ``HTR?`` (fixture ``+00.0005E+00``),
  ``MOUT? n``, ``SETP? n`` and the matching setters (``OUTMODE``,
  ``HTRSET``, ``RANGE n r``, ``MOUT n v``, ``SETP n,v``, ``STILL v``).
* A disabled channel (``INSET n,0,...``) reads zero here (assumed, not from a source).
* Bad channels, bad parameters and unknown commands are ignored with no
  reply (Lake Shore instruments do not answer what they cannot parse).

Faults: the common ones, and :meth:`LS372Emulator.stale_reply_once` (the
next reply is preceded by an old one, as after a reconnect, SOCS PR #1064).
"""

import math

from .base import EmulatorServer, split_lines

__all__ = ["LS372Emulator", "format_reading", "STATUS_BITS"]

IDN = "LSCI,MODEL372,LSA23JD,1.3"
CHANNELS = ["A"] + [str(i) for i in range(1, 17)]
#: RDGST? bit weight -> indicator (manual 6.6.1)
STATUS_BITS = {1: "CS OVL", 2: "VCM OVL", 4: "VMIX OVL", 8: "VDIF OVL", 16: "R. OVER", 32: "R. UNDER",
               64: "T. OVER", 128: "T. UNDER"}


def format_reading(value):
    """``±nnn.nnnE±nn`` with an exponent that is a multiple of 3."""
    if value == 0 or not math.isfinite(value):
        return "+000.000E+00"
    sign = "-" if value < 0 else "+"
    magnitude = abs(value)
    exponent = 3 * math.floor(math.log10(magnitude) / 3)
    mantissa = round(magnitude / 10 ** exponent, 3)
    if mantissa >= 1000:
        exponent += 3
        mantissa = round(mantissa / 1000, 3)
    return f"{sign}{mantissa:07.3f}E{exponent:+03d}"


class _Channel:
    def __init__(self, name):
        control = name == "A"
        self.name = name
        self.enabled, self.dwell, self.pause, self.curve, self.tempco = (0, 10, 3, 0, 1) if control else (1, 7, 3, 21, 1)
        self.intype = [1, 4, 0, 15, 0, 2] if control else [0, 7, 1, 10, 0, 1]
        self.title = "Input A" if control else f"Channel {int(name):02}"
        self.kelvin = 0.0
        self.ohms = 0.0
        self.power = 1.0e-15
        self.status = 0
        self.tlimit = 0


class LS372Emulator(EmulatorServer):
    """A Model 372 with the control input and 16 scanner channels."""

    device_name = "ls372"

    def __init__(self, *, host="127.0.0.1", port=0):
        super().__init__(host, port)
        self.channels = {name: _Channel(name) for name in CHANNELS}
        self.channels["1"].kelvin, self.channels["1"].ohms = 293.873, 108.278
        for i in range(2, 17):
            self.channels[str(i)].kelvin = 0.010 * i
            self.channels[str(i)].ohms = 1000.0 + 100.0 * i
        self.scan_channel = 1
        self.autoscan = 1
        self.outmode = {0: [2, 6, 1, 0, 0, 1], 1: [0, 1, 1, 0, 0, 1], 2: [4, 16, 1, 0, 0, 1]}
        self.htrset = {0: "+120.000,8,+0000.00,1", 1: "+120.000,8,+0000.00,1", 2: "+120.000,8,+0000.00,1"}
        self.heater_range = {0: 0, 1: 0, 2: 1}
        self.manual_out = {0: 0.0, 1: 0.0, 2: 0.0}
        self.setpoint = {0: 0.0, 1: 0.0, 2: 0.0}
        self.still = 10.60
        self._stale = []

    # -- state -------------------------------------------------------------------

    def set_reading(self, channel, kelvin=None, ohms=None, status=None):
        """Set the readings (and optionally the RDGST? bits) of ``channel``."""
        with self.lock:
            ch = self.channels[str(channel)]
            if kelvin is not None:
                ch.kelvin = float(kelvin)
            if ohms is not None:
                ch.ohms = float(ohms)
            if status is not None:
                ch.status = int(status)

    def channel(self, channel):
        """The state object of ``channel`` (``"A"`` or 1-16)."""
        return self.channels[str(channel)]

    # -- faults --------------------------------------------------------------------

    def stale_reply_once(self, text="+000.000E+00"):
        """The next reply is preceded by ``text`` + CR LF, an answer left over
        from an earlier query."""
        with self.lock:
            self._stale.append(text)

    # -- protocol ----------------------------------------------------------------

    def split_requests(self, session):
        return split_lines(session, b"\n", strip=b"\r ")

    def respond(self, session, request):
        text = request.decode("ascii", errors="replace").strip()
        if "?" not in text:
            self._command(text)
            return None
        reply = self._query(text)
        if reply is None:
            return None
        stale = "".join(s + "\r\n" for s in self._stale)
        self._stale.clear()
        return (stale + reply + "\r\n").encode("ascii")

    def _channel_arg(self, arg):
        arg = arg.strip().upper()
        if arg != "A":
            try:
                arg = str(int(arg))
            except ValueError:
                return None
        return self.channels.get(arg)

    def _query(self, text):
        name, _, arg = text.partition(" ")
        name = name.upper()
        if name == "*IDN?":
            return IDN
        if name == "SCAN?":
            return f"{self.scan_channel:02d},{self.autoscan}"
        if name == "STILL?":
            return f"+{self.still:05.2f}"
        if name == "HTR?":
            return "+00.0005E+00"
        if name in ("OUTMODE?", "HTRSET?", "RANGE?", "MOUT?", "SETP?"):
            output = _output(arg)
            if output is None:
                return None
            if name == "OUTMODE?":
                mode, channel, powerup, polarity, filt, delay = self.outmode[output]
                return f"{mode},{channel},{powerup},{polarity},{filt},{delay:03d}"
            if name == "HTRSET?":
                return self.htrset[output]
            if name == "RANGE?":
                return str(self.heater_range[output])
            if name == "MOUT?":
                return f"{self.manual_out[output]:+.3E}"
            return f"{self.setpoint[output]:+.3E}"
        ch = self._channel_arg(arg)
        if ch is None:
            return None
        off = not ch.enabled and ch.name != "A"
        if name in ("RDGK?", "KRDG?"):
            return format_reading(0.0 if off or ch.curve == 0 else ch.kelvin)
        if name in ("RDGR?", "SRDG?"):
            return format_reading(0.0 if off else ch.ohms)
        if name == "RDGPWR?":
            return format_reading(0.0 if off else ch.power)
        if name == "RDGST?":
            return f"{ch.status:03d}"
        if name == "INSET?":
            return f"{ch.enabled},{ch.dwell:03d},{ch.pause:03d},{ch.curve:02d},{ch.tempco}"
        if name == "INTYPE?":
            mode, exc, auto, rng, shunt, units = ch.intype
            return f"{mode},{exc:02d},{auto},{rng:02d},{shunt},{units}"
        if name == "INNAME?":
            return ch.title
        if name == "TLIMIT?":
            return f"+{ch.tlimit:04d}"
        return None

    def _command(self, text):
        name, _, rest = text.partition(" ")
        name = name.upper()
        args = [a.strip() for a in rest.split(",")] if rest.strip() else []
        if name == "SCAN":
            values = _ints(args, 2)
            if values and 1 <= values[0] <= 16 and values[1] in (0, 1):
                self.scan_channel, self.autoscan = values
            return
        if name == "STILL":
            value = _float(rest)
            if value is not None and 0 <= value <= 100:
                self.still = value
            return
        if name in ("OUTMODE", "HTRSET", "RANGE", "MOUT", "SETP"):
            self._heater_command(name, rest)
            return
        if not args:
            return
        ch = self._channel_arg(args[0])
        if ch is None:
            return
        if name == "INSET":
            values = _ints(args[1:], 5)
            if values is None:
                return
            enabled, dwell, pause, curve, tempco = values
            if enabled in (0, 1) and 1 <= dwell <= 200 and 3 <= pause <= 200 and 0 <= curve <= 59 and tempco in (1, 2):
                ch.enabled, ch.dwell, ch.pause, ch.curve, ch.tempco = values
        elif name == "INTYPE":
            values = _ints(args[1:], 6)
            if values is not None and values[0] in (0, 1) and 1 <= values[1] <= 22 and values[2] in (0, 1, 2) \
                    and 1 <= values[3] <= 22 and values[4] in (0, 1) and values[5] in (1, 2):
                ch.intype = values
        elif name == "INNAME" and len(args) == 2:
            ch.title = args[1].strip('"')[:15]
        elif name == "TLIMIT" and len(args) == 2:
            values = _ints(args[1:], 1)
            if values is not None and values[0] >= 0:
                ch.tlimit = values[0]


    def _heater_command(self, name, rest):
        # RANGE and MOUT separate output and value with a space in the SOCS driver, the others with commas
        parts = [p for p in rest.replace(",", " ").split()]
        if not parts:
            return
        output = _output(parts[0])
        if output is None:
            return
        values = parts[1:]
        if name == "OUTMODE":
            numbers = _ints(values, 6)
            if numbers is not None and 0 <= numbers[0] <= 6:
                self.outmode[output] = numbers
        elif name == "HTRSET" and values:
            self.htrset[output] = ",".join(values)
        elif name == "RANGE":
            numbers = _ints(values, 1)
            if numbers is not None and 0 <= numbers[0] <= 8:
                self.heater_range[output] = numbers[0]
        elif name in ("MOUT", "SETP") and len(values) == 1:
            value = _float(values[0])
            if value is not None:
                (self.manual_out if name == "MOUT" else self.setpoint)[output] = value


def _output(text):
    text = text.strip()
    return int(text) if text in ("0", "1", "2") else None


def _float(text):
    try:
        return float(text)
    except ValueError:
        return None


def _ints(args, count):
    if len(args) != count:
        return None
    try:
        return [int(a) for a in args]
    except ValueError:
        return None
