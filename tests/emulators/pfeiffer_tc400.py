"""Pfeiffer TC 400 turbopump electronics on RS-485, behind a serial server (raw TCP).

Facts and their sources (Pfeiffer Vacuum TC 400 operating instructions,
"Pfeiffer Vacuum protocol for RS-485" and "Parameter set"; the
``pfeiffer_vacuum_protocol`` package 1.0 that SOCS's driver uses,
``_send_data_request``, ``_send_control_command`` and
``_read_gauge_response``; SOCS ``socs/agents/pfeiffer_tc400/drivers.py``):

* A telegram is the unit address (3 digits), the action (2 digits: ``00``
  asks for a parameter, ``10`` sets one; every answer carries ``10``), the
  parameter number (3 digits), the data length (2 digits), the data, a
  checksum and CR.  The checksum is the sum of the ASCII codes of every
  character before it, modulo 256, written as 3 digits.  A data request has
  the data ``=?`` (length 02).
* The answer repeats address and parameter with action ``10`` and carries
  the value; data ``NO_DEF`` means the parameter does not exist, ``_RANGE``
  that the value is outside its range, ``_LOGIC`` a logic access violation.
* A unit answers only telegrams with its own address; a telegram with a
  wrong checksum is not answered.
* Data types used here: 0 ``boolean_old`` (``111111`` / ``000000``), 1
  ``u_integer`` (6 digits), 2 ``u_real`` (6 digits, hundredths), 4
  ``string`` (6 characters).
* Parameters: 009 ErrorAckn (write ``111111``), 010 PumpgStatn, 023
  MotorPump (read/write, type 0); 303 Error code (type 4, ``000000`` or
  ``Err001``...); 308 SetRotSpd, 309 ActualSpd [Hz], 316 DrvPower [W], 324
  TempPwrStg, 326 TempElec, 330 TempPmpBot, 342 TempBearng, 346 TempMotor
  [C], 336 AccelDecel [%] (type 1); 310 DrvCurrent [A], 313 DrvVoltage [V]
  (type 2); 349 ElecName (type 4, ``TC 400``).
* Here the rotation speed reads the set speed while the motor is on and 0
  otherwise (the real pump takes minutes to get there).

Faults: the common ones and :meth:`corrupt_checksum_once`.
"""

from .base import EmulatorServer

__all__ = ["TC400Emulator", "telegram"]


def telegram(body):
    """``body`` with its checksum and CR, as the protocol sends every telegram."""
    return f"{body}{sum(body.encode('ascii')) % 256:03d}\r".encode("ascii")


BOOL_PARAMS = {9: "error_ack", 10: "pumping_station", 23: "motor"}
INT_PARAMS = {308: "set_speed", 309: "speed", 316: "power", 324: "power_stage_temp", 326: "electronics_temp",
              330: "pump_bottom_temp", 336: "acceleration", 342: "bearing_temp", 346: "motor_temp"}
REAL_PARAMS = {310: "current", 313: "voltage"}
STRING_PARAMS = {303: "error_code", 349: "name"}


class TC400Emulator(EmulatorServer):
    """One TC 400 at RS-485 ``address``."""

    device_name = "tc400"

    def __init__(self, *, address=1, host="127.0.0.1", port=0):
        super().__init__(host, port)
        self.unit = address
        self.values = {"error_ack": False, "pumping_station": False, "motor": False, "set_speed": 820, "speed": 0,
                       "power": 0, "power_stage_temp": 35, "electronics_temp": 33, "pump_bottom_temp": 24,
                       "acceleration": 0, "bearing_temp": 25, "motor_temp": 27, "current": 0.0, "voltage": 48.02,
                       "error_code": "000000", "name": "TC 400"}
        self.acknowledged = 0
        self.bad_checksums = 0
        self._corrupt = 0

    def corrupt_checksum_once(self, count=1):
        """The next ``count`` answers carry a wrong checksum."""
        with self.lock:
            self._corrupt = int(count)

    def split_requests(self, session):
        out = []
        buf = session.buffer
        while True:
            at = buf.find(b"\r")
            if at < 0:
                return out
            out.append(bytes(buf[:at]).decode("ascii", "replace"))
            del buf[:at + 1]

    def respond(self, session, request):
        body, check = request[:-3], request[-3:]
        if len(request) < 13 or not check.isdigit() or int(check) != sum(body.encode("ascii")) % 256:
            self.bad_checksums += 1
            return None
        if int(body[0:3]) != self.unit:
            return None
        action, param, length, data = body[3:5], int(body[5:8]), int(body[8:10]), body[10:]
        if len(data) != length:
            return None
        answer = self._answer(action, param, data)
        out = telegram(f"{self.unit:03d}10{param:03d}{len(answer):02d}{answer}")
        if self._corrupt > 0:
            self._corrupt -= 1
            out = out[:-4] + (b"000" if out[-4:-1] != b"000" else b"001") + b"\r"
        return out

    def _answer(self, action, param, data):
        known = {**BOOL_PARAMS, **INT_PARAMS, **REAL_PARAMS, **STRING_PARAMS}
        if param not in known:
            return "NO_DEF"
        name = known[param]
        if action == "00":
            if data != "=?":
                return "_RANGE"
            value = self.values[name]
            if param in BOOL_PARAMS:
                return "111111" if value else "000000"
            if param in INT_PARAMS:
                return f"{int(value):06d}"
            if param in REAL_PARAMS:
                return f"{int(round(value * 100)):06d}"
            return f"{value:<6}"[:6]
        if action != "10" or param not in BOOL_PARAMS:
            return "_LOGIC"
        if data not in ("111111", "000000"):
            return "_RANGE"
        on = data == "111111"
        if param == 9:
            if on:
                self.acknowledged += 1
                self.values["error_code"] = "000000"
            return data
        self.values[name] = on
        if param == 10 and not on:
            self.values["motor"] = False
        self.values["speed"] = self.values["set_speed"] if self.values["motor"] else 0
        return data
