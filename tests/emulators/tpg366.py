"""Pfeiffer TPG 366 (MaxiGauge) emulator: mnemonic, ACK, ENQ, data.

Facts and their sources:

* Transmission protocol (Pfeiffer TPG 26x/36x communication manuals, e.g.
  BG 5195 BEN "5.1.2 Communication protocol"; the TPG 366 manual BG 5511 BEN
  cited by SOCS's ``tests/integration/test_pfeiffer_tpg366_agent_integration.py``):
  the host sends a three-letter mnemonic (and parameters) ended by
  ``<CR>[<LF>]``; the gauge answers ``<ACK><CR><LF>`` (``0x06``), or
  ``<NAK><CR><LF>`` (``0x15``) for an error.  The host then sends ``<ENQ>``
  (``0x05``) and the gauge sends the data; repeated ENQs read the data of the
  last mnemonic again.  ``<ETX>`` (``0x03``) clears the input buffer.
* The data line ends in CR (ISISComputingGroup/EPICS-TPG ``TPG36x.proto``:
  ``InTerminator = CR LF; in ACK; out ENQ; InTerminator = CR``).  SOCS's
  fixture answers ``...\\r\\n``; pass ``data_terminator=b"\\r\\n"`` for that.
* ``PRX`` gives six ``status,value`` pairs, ``PRn`` one pair; values always
  exponential, ``sx.xxxxEsxx`` (``+1.2345E+01``).  Status: 0 ok, 1 underrange,
  2 overrange, 3 sensor error, 4 sensor off, 5 no sensor (output
  ``5,2.0000E-2``), 6 identification error (TPG 261 manual, "Measurement
  data").  The default readings are the SOCS fixture's
  (``0,+1.2345E+01,0,+2.3456E+01,...``).
* ``SEN[,x,x,x,x,x,x]`` switches gauges: 0 no change, 1 off, 2 on; the reply
  gives per gauge 0 (cannot be switched), 1 off, 2 on.  (SOCS's
  ``TPG366.channel_power`` reads state 1 as "on"; the manuals say 2.)
* ``UNI[,x]``: 0 mbar, 1 Torr, 2 Pa, 3 Micron, 4 hPa.  ``ERR``: ``0000`` no
  error, ``0001`` syntax error (set by a NAK; cleared when read).
* At power-up the TPG366 is in continuous-transmission mode; a single ENQ
  stops it (SOCS ``pfeiffer_tpg366/drivers.py`` ``__init__``).

Faults: the common ones (:mod:`emulators.base`), :meth:`TPG366Emulator.miss_ack`
(the next mnemonics get no ACK: silence, or a stale data line instead) and
:meth:`TPG366Emulator.start_continuous` (stream data lines until an ENQ).
"""

import threading

from .base import EmulatorServer

__all__ = ["TPG366Emulator", "ACK", "NAK", "ENQ"]

ACK = b"\x06"
NAK = b"\x15"
ENQ = b"\x05"
ETX = b"\x03"

#: the six readings of SOCS's TPG366 integration-test fixture, in mbar
SOCS_FIXTURE_PRESSURES = (12.345, 23.456, 34.567, 45.678, 56.789, 67.891)

_UNIT_FACTORS = {0: 1.0, 1: 0.750062, 2: 100.0, 3: 750.062, 4: 1.0}  # from mbar
_NO_SENSOR_VALUE = 2.0e-2


def format_value(value):
    """The gauge's value format ``sx.xxxxEsxx``."""
    return f"{value:+.4E}"


class TPG366Emulator(EmulatorServer):
    """A TPG 366 with six gauges.

    Args:
        pressures: six pressures in mbar (default: the SOCS fixture's values).
        data_terminator (bytes): end of each data line (``b"\\r"``).
        present: six booleans, False for "no sensor" channels.
        switchable: six booleans, True for gauges SEN can switch (cold
            cathode / Pirani combination gauges); others report SEN state 0.
        missed_acks (int): how many of the first mnemonics get no ACK (see
            :meth:`miss_ack`), to test the client's resend.
    """

    device_name = "tpg366"

    def __init__(self, pressures=SOCS_FIXTURE_PRESSURES, *, data_terminator=b"\r", present=(True,) * 6,
                 switchable=(True,) * 6, missed_acks=0, host="127.0.0.1", port=0):
        super().__init__(host, port)
        if len(pressures) != 6 or len(present) != 6 or len(switchable) != 6:
            raise ValueError("pressures, present and switchable need six entries each")
        self.pressures = [float(p) for p in pressures]
        self.present = list(present)
        self.switchable = list(switchable)
        self.gauge_on = [True] * 6
        #: per-channel status override (1 underrange, 2 overrange, 3 sensor error, 6 identification error)
        self.status_override = [None] * 6
        self.unit = 0
        self.error_word = "0000"
        self.data_terminator = data_terminator
        #: mnemonic whose data the next ENQ sends (PRX: the power-up continuous output)
        self.last_mnemonic = "PRX"
        self._missed_acks = int(missed_acks)
        self._miss_mode = "silent"
        self._continuous = None

    # -- state setters for tests -------------------------------------------------

    def set_pressure(self, channel, mbar):
        """Set the reading of ``channel`` (1-6) in mbar."""
        with self.lock:
            self.pressures[channel - 1] = float(mbar)

    def set_status(self, channel, status):
        """Force the status of ``channel`` (1-6); ``None`` goes back to normal."""
        with self.lock:
            self.status_override[channel - 1] = status

    # -- faults ---------------------------------------------------------------------

    def miss_ack(self, count=1, mode="silent"):
        """The next ``count`` mnemonics get no plain ACK.  ``mode="silent"``:
        they are ignored; ``mode="junk"``: a data line of the previous
        mnemonic is sent instead of the ACK; ``mode="stale"``: that data line
        comes first and the ACK after it, in one write (continuous output not
        yet stopped: SOCS ``_send_mnemonic`` keeps only the last line)."""
        if mode not in ("silent", "junk", "stale"):
            raise ValueError(f"mode must be 'silent', 'junk' or 'stale', got {mode!r}")
        with self.lock:
            self._missed_acks = int(count)
            self._miss_mode = mode

    def start_continuous(self, interval=0.05):
        """Stream data lines of the last mnemonic to every client every
        ``interval`` seconds until an ENQ arrives (power-up behaviour)."""
        self.stop_continuous()
        stop = threading.Event()

        def run():
            while not stop.wait(interval):
                with self.lock:  # an ENQ (handled under the lock) ends the stream before its reply
                    if stop.is_set():
                        return
                    self.send_unsolicited(self._data_line(self.last_mnemonic))

        thread = threading.Thread(target=run, name="tpg366-continuous", daemon=True)
        self._continuous = (stop, thread)
        self._threads.append(thread)
        thread.start()

    def stop_continuous(self):
        """Stop the continuous output (an ENQ does the same)."""
        pair, self._continuous = self._continuous, None
        if pair is not None:
            pair[0].set()
            if pair[1] is not threading.current_thread():
                pair[1].join(timeout=5)

    @property
    def continuous(self):
        """True while continuous output runs."""
        return self._continuous is not None

    def stop(self):
        self.stop_continuous()
        super().stop()

    # -- protocol ---------------------------------------------------------------

    def split_requests(self, session):
        requests = []
        buf = session.buffer
        while buf:
            if buf[:1] == b"\n":  # the optional LF after a CR-ended mnemonic
                del buf[:1]
            elif buf[:1] in (ENQ, ETX):
                requests.append(bytes(buf[:1]))
                del buf[:1]
            else:
                cr = buf.find(b"\r")
                etx = buf.find(ETX)
                if 0 <= etx and (cr < 0 or etx < cr):  # ETX clears what came before it
                    del buf[:etx]
                    continue
                if cr < 0:
                    break
                requests.append(bytes(buf[:cr]))
                del buf[:cr + 1]
        return requests

    def respond(self, session, request):
        if request == ETX:
            return None
        if request == ENQ:
            if self._continuous is not None:
                pair, self._continuous = self._continuous, None
                pair[0].set()
            return self._data_line(self.last_mnemonic)
        text = request.decode("ascii", errors="replace").replace(" ", "").upper()
        if self._missed_acks > 0:
            self._missed_acks -= 1
            if self._miss_mode == "junk":
                return self._data_line(self.last_mnemonic)
            if self._miss_mode == "stale":
                stale = self._data_line(self.last_mnemonic)
                return stale + (ACK + b"\r\n" if self._accept(text) else NAK + b"\r\n")
            return None
        if not self._accept(text):
            self.error_word = "0001"
            return NAK + b"\r\n"
        return ACK + b"\r\n"

    def _accept(self, text):
        """Apply a mnemonic; False if it is unknown or its parameters are bad."""
        name, _, params = text.partition(",")
        args = params.split(",") if params else []
        if name == "PRX" and not args:
            pass
        elif len(name) == 3 and name[:2] == "PR" and name[2] in "123456" and not args:
            pass
        elif name == "SEN":
            if args:
                if len(args) != 6 or any(a not in ("0", "1", "2") for a in args):
                    return False
                for i, a in enumerate(args):
                    if a != "0" and self.present[i] and self.switchable[i]:
                        self.gauge_on[i] = a == "2"
        elif name == "UNI":
            if args:
                if len(args) != 1 or args[0] not in ("0", "1", "2", "3", "4"):
                    return False
                self.unit = int(args[0])
        elif name in ("ERR", "TID") and not args:
            pass
        else:
            return False
        self.last_mnemonic = name
        return True

    def _pair(self, i):
        if not self.present[i]:
            return f"5,{format_value(_NO_SENSOR_VALUE * _UNIT_FACTORS[self.unit])}"
        if not self.gauge_on[i]:
            status = 4
        elif self.status_override[i] is not None:
            status = self.status_override[i]
        else:
            status = 0
        return f"{status},{format_value(self.pressures[i] * _UNIT_FACTORS[self.unit])}"

    def _data_line(self, mnemonic):
        if mnemonic == "PRX":
            text = ",".join(self._pair(i) for i in range(6))
        elif mnemonic.startswith("PR"):
            text = self._pair(int(mnemonic[2]) - 1)
        elif mnemonic == "SEN":
            text = ",".join("0" if not (p and s) else ("2" if on else "1")
                            for p, s, on in zip(self.present, self.switchable, self.gauge_on))
        elif mnemonic == "UNI":
            text = str(self.unit)
        elif mnemonic == "TID":
            text = ",".join("PKR" if p else "noSen" for p in self.present)
        else:  # ERR: read once, then cleared
            text, self.error_word = self.error_word, "0000"
        return text.encode("ascii") + self.data_terminator
