"""Cryomech CPA compressor emulator: Modbus TCP input registers and the power register.

Facts and their sources:

* Modbus TCP framing (MBAP header: transaction id, protocol id 0, length of
  the rest, unit id), FC 0x04 "read input registers" (start, count 1-125;
  reply: byte count then big-endian registers), FC 0x06 "write single
  register" (the reply echoes the request), exception replies (function code
  | 0x80 and code 1 illegal function, 2 illegal data address, 3 illegal data
  value): the Modbus Application Protocol Specification v1.1b3 and the
  Modbus Messaging on TCP/IP Implementation Guide v1.0b.
* SOCS ``socs/agents/cryomech_cpa/drivers.py``: ``buildRegistersQuery`` reads
  0x35 registers from register 1 with transaction id 0x0999 and unit 1;
  ``power`` writes register 1 with 0x0001 (on) or 0x00FF (off) and discards
  the echo; ``breakdownReplyData`` reads, at byte offsets of the whole reply
  frame, uint16 states at 9 and 11, word-swapped IEEE floats (second register
  first) from 13 on, units and serial number as uint16 at 65-70, model and
  software revision as two bytes each at 71-74.
* The fixed data set is the reply captured in SOCS
  ``tests/integration/test_cryomech_cpa_agent_integration.py`` (``init_res``):
  coolant in 65.627, coolant out 65.493, oil 66.21, helium 66.95, low pressure
  219.18, ..., motor current 0.219, 10613.5 hours, serial 10556.
* Register index ``k`` (0-based in the reply) is Modbus address ``k + 1``.
  Operating state after power on/off: 3 "running" / 0 "idling" (Cryomech CPA
  manual's operating-state table; not checked against a unit).

Faults: the common ones, :meth:`CryomechCPAEmulator.corrupt_next_reply`
(a short reply once), :meth:`CryomechCPAEmulator.wrong_transaction_id_once`.
Frames with a protocol id other than 0 are dropped without a reply; a length
field outside 2..254 closes the connection (the stream cannot be re-synchronised).
"""

import struct

from .base import EmulatorServer

__all__ = ["CryomechCPAEmulator", "SOCS_CAPTURED_REPLY", "FLOAT_REGISTERS"]

#: SOCS's captured FC 0x04 reply to the 0x35-register read (init_res)
SOCS_CAPTURED_REPLY = (
    b'\t\x99\x00\x00\x00m\x01\x04j\x00\x00\x00\x00\x00\x00\x80\x00\x00\x00\x80\x00A\x06B\x83\xfcjB\x82k\x85B'
    b'\x84\xe6fB\x85.\xb8C[\t\x0cC[\xf1\x82CZ6\xeeC[\xd8\x00\xbetwG>`\xd6\x00F%\x00\x00\x00\x00)<\x04\x18\x02'
    b'\x9a\x04u' + b'\x00' * 38
)

#: name -> index of the first of its two registers (low word first, "CDAB")
FLOAT_REGISTERS = {
    "Warning_State": 2, "Alarm_State": 4, "Coolant_In_Temp": 6, "Coolant_Out_Temp": 8, "Oil_Temp": 10,
    "Helium_Temp": 12, "Low_Pressure": 14, "Low_Pressure_Average": 16, "High_Pressure": 18,
    "High_Pressure_Average": 20, "Delta_Pressure_Average": 22, "Motor_Current": 24, "Hours_of_Operation": 26,
}
#: name -> register index of 16-bit values
WORD_REGISTERS = {"Operating_State": 0, "Compressor_State": 1, "Pressure_Unit": 28, "Temperature_Unit": 29,
                  "Serial_Number": 30}
#: name -> register index of two-byte (major, minor) values
BYTE_PAIR_REGISTERS = {"Model": 31, "Software_Revision": 32}

N_REGISTERS = 0x35
POWER_REGISTER = 1
POWER_ON, POWER_OFF = 0x0001, 0x00FF


class CryomechCPAEmulator(EmulatorServer):
    """A CPA compressor answering Modbus TCP on any unit id.

    Args:
        registers: 0x35 input-register values (default: SOCS's captured reply).
    """

    device_name = "cryomech_cpa"

    def __init__(self, registers=None, *, host="127.0.0.1", port=0):
        super().__init__(host, port)
        if registers is None:
            data = SOCS_CAPTURED_REPLY[9:]
            registers = [struct.unpack(">H", data[i:i + 2])[0] for i in range(0, len(data), 2)]
        if len(registers) != N_REGISTERS:
            raise ValueError(f"need {N_REGISTERS} registers, got {len(registers)}")
        self.registers = list(registers)
        #: every (register, value) written with FC 0x06
        self.writes = []
        self._corrupt = 0
        self._bad_tid = 0

    # -- state -------------------------------------------------------------------

    def set_value(self, name, value):
        """Set a named value (the SOCS ``breakdownReplyData`` names)."""
        with self.lock:
            if name in FLOAT_REGISTERS:
                high, low = struct.unpack(">HH", struct.pack(">f", float(value)))
                index = FLOAT_REGISTERS[name]
                self.registers[index], self.registers[index + 1] = low, high
            elif name in WORD_REGISTERS:
                self.registers[WORD_REGISTERS[name]] = int(value) & 0xFFFF
            elif name in BYTE_PAIR_REGISTERS:
                major, minor = value
                self.registers[BYTE_PAIR_REGISTERS[name]] = (int(major) << 8) | int(minor)
            else:
                raise KeyError(f"unknown value name {name!r}")

    def get_value(self, name):
        """A named value as the device holds it."""
        with self.lock:
            if name in FLOAT_REGISTERS:
                index = FLOAT_REGISTERS[name]
                return struct.unpack(">f", struct.pack(">HH", self.registers[index + 1], self.registers[index]))[0]
            if name in WORD_REGISTERS:
                return self.registers[WORD_REGISTERS[name]]
            if name in BYTE_PAIR_REGISTERS:
                word = self.registers[BYTE_PAIR_REGISTERS[name]]
                return word >> 8, word & 0xFF
            raise KeyError(f"unknown value name {name!r}")

    @property
    def compressor_on(self):
        return self.registers[WORD_REGISTERS["Compressor_State"]] == 1

    # -- faults --------------------------------------------------------------------

    def corrupt_next_reply(self, count=1):
        """The next ``count`` FC 0x04 replies are cut short (half their data)."""
        with self.lock:
            self._corrupt = int(count)

    def wrong_transaction_id_once(self, count=1):
        """The next ``count`` replies carry a transaction id one higher than asked."""
        with self.lock:
            self._bad_tid = int(count)

    # -- protocol ----------------------------------------------------------------

    def split_requests(self, session):
        frames = []
        buf = session.buffer
        while len(buf) >= 6:
            length = struct.unpack(">H", buf[4:6])[0]
            if not 2 <= length <= 254:
                frames.append(bytes(buf))
                del buf[:]
                session.state["bad_length"] = True
                break
            if len(buf) < 6 + length:
                break
            frames.append(bytes(buf[:6 + length]))
            del buf[:6 + length]
        return frames

    def respond(self, session, frame):
        if session.state.pop("bad_length", False):
            session.close()
            return None
        tid, protocol, _length, unit = struct.unpack(">HHHB", frame[:7])
        if protocol != 0:
            return None
        pdu = frame[7:]
        if self._bad_tid > 0:
            self._bad_tid -= 1
            tid = (tid + 1) & 0xFFFF
        reply = self._pdu_reply(pdu)
        if reply is None:
            return None
        return struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply

    def _pdu_reply(self, pdu):
        function = pdu[0]
        if function == 0x04:
            if len(pdu) != 5:
                return bytes([function | 0x80, 0x03])
            start, count = struct.unpack(">HH", pdu[1:5])
            if not 1 <= count <= 125:
                return bytes([function | 0x80, 0x03])
            first = start - 1
            if first < 0 or first + count > N_REGISTERS:
                return bytes([function | 0x80, 0x02])
            data = struct.pack(f">{count}H", *self.registers[first:first + count])
            if self._corrupt > 0:
                self._corrupt -= 1
                data = data[:len(data) // 2]
            return bytes([function, 2 * count]) + data
        if function == 0x06:
            if len(pdu) != 5:
                return bytes([function | 0x80, 0x03])
            register, value = struct.unpack(">HH", pdu[1:5])
            if register != POWER_REGISTER:
                return bytes([function | 0x80, 0x02])
            if value not in (POWER_ON, POWER_OFF):
                return bytes([function | 0x80, 0x03])
            self.writes.append((register, value))
            on = value == POWER_ON
            self.registers[WORD_REGISTERS["Compressor_State"]] = 1 if on else 0
            self.registers[WORD_REGISTERS["Operating_State"]] = 3 if on else 0
            return bytes(pdu)
        return bytes([function | 0x80, 0x01])
