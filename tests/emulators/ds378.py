"""Devantech dS378 ethernet relay emulator: the binary command set.

Facts and their sources (Devantech dS378 User Manual v2.19, "Binary command
set", and SOCS ``socs/agents/devantech_dS378/drivers.py``):

* Commands and reply lengths: 0x30 GET_STATUS (1 byte, 8 back), 0x31
  SET_RELAY (7 bytes, 1 back), 0x32 SET_OUTPUT (3 bytes, 1 back), 0x33
  GET_RELAYS (2 bytes, 5 back), 0x34 GET_INPUTS (2 bytes, 2 back), 0x35
  GET_ANALOG (1 byte, 14 back: 7 inputs, 2 bytes each, high byte first),
  0x36 GET_COUNTERS (2 bytes, 8 back: 32-bit current value then 32-bit
  capture register, high byte first).
* GET_STATUS: module id (35 for the dS378), system firmware major/minor,
  application firmware major/minor, supply volts x 10, internal temperature
  x 10 as a signed 16-bit big-endian value (manual example ``... 0x7D 0x01
  0x0B``: 12.5 V, 26.7 C).
* SET_RELAY: relay 1-8, 1 on / 0 off, a 32-bit big-endian pulse time in ms;
  a pulse time above 100 turns the relay on for that long (the on/off byte is
  then ignored).  Reply 0 = ACK, otherwise NACK (the unknown relay number).
* GET_RELAYS: relay ``i`` (0-based) is bit ``i % 8`` of reply byte
  ``4 - i // 8`` (SOCS ``get_relays``; manual bit-order table: byte 5 holds
  relays 8..1).  The first reply byte is not described in either source; it is 0 here.
* GET_INPUTS: the second reply byte holds inputs 1-7 in bits 0-6 (SOCS
  ``get_inputs``).  SET_OUTPUT drives I/O 1-7; an I/O set as output reads back.

Faults: the common ones, and :meth:`DS378Emulator.partial_reply_once` (the next
reply is cut short: a wrong-length reply, as after a reconnect, SOCS PR #694).
An unknown command byte is recorded and ignored (no reply).
"""

import time

from .base import EmulatorServer

__all__ = ["DS378Emulator", "COMMAND_LENGTHS", "REPLY_LENGTHS"]

GET_STATUS, SET_RELAY, SET_OUTPUT, GET_RELAYS, GET_INPUTS, GET_ANALOG, GET_COUNTERS = range(0x30, 0x37)
#: request length (bytes, command byte included) per command byte
COMMAND_LENGTHS = {GET_STATUS: 1, SET_RELAY: 7, SET_OUTPUT: 3, GET_RELAYS: 2, GET_INPUTS: 2, GET_ANALOG: 1,
                   GET_COUNTERS: 2}
#: reply length per command byte (the SOCS driver's table)
REPLY_LENGTHS = {GET_STATUS: 8, SET_RELAY: 1, SET_OUTPUT: 1, GET_RELAYS: 5, GET_INPUTS: 2, GET_ANALOG: 14,
                 GET_COUNTERS: 8}

MODULE_ID = 35


class DS378Emulator(EmulatorServer):
    """A dS378 with 8 relays, 7 I/O ports and 8 counters.

    Args:
        supply_volts (float): reported supply voltage (0.1 V steps).
        temperature (float): reported internal temperature in C (0.1 C steps, may be negative).
        firmware (tuple): (system major, minor, application major, minor).
    """

    device_name = "ds378"

    def __init__(self, *, supply_volts=12.5, temperature=26.7, firmware=(2, 18, 1, 2), host="127.0.0.1", port=0):
        super().__init__(host, port)
        self.supply_volts = supply_volts
        self.temperature = temperature
        self.firmware = tuple(firmware)
        self.relays = [False] * 8
        self._pulse_until = [0.0] * 8
        self.outputs = [False] * 7
        #: external input levels (True = high) for I/O ports not driven as outputs
        self.inputs = [False] * 7
        self.analog = [0] * 7
        self.counters = [(0, 0)] * 8
        self._partial = 0

    # -- state -------------------------------------------------------------------

    def relay_states(self):
        """The eight relays now (pulses that ended read as off)."""
        with self.lock:
            now = time.monotonic()
            return [on or now < until for on, until in zip(self.relays, self._pulse_until)]

    def set_analog(self, index, value):
        """Set analogue input ``index`` (1-7) to a raw 16-bit value."""
        with self.lock:
            self.analog[index - 1] = int(value) & 0xFFFF

    def set_input(self, index, level):
        """Set the external level of I/O ``index`` (1-7)."""
        with self.lock:
            self.inputs[index - 1] = bool(level)

    def set_counter(self, index, value, capture=0):
        """Set counter ``index`` (1-8) and its capture register."""
        with self.lock:
            self.counters[index - 1] = (int(value), int(capture))

    # -- faults ------------------------------------------------------------------

    def partial_reply_once(self, count=1):
        """The next ``count`` replies lose their last byte (wrong length)."""
        with self.lock:
            self._partial = int(count)

    # -- protocol ----------------------------------------------------------------

    def split_requests(self, session):
        requests = []
        buf = session.buffer
        while buf:
            need = COMMAND_LENGTHS.get(buf[0], 1)
            if len(buf) < need:
                break
            requests.append(bytes(buf[:need]))
            del buf[:need]
        return requests

    def respond(self, session, request):
        reply = self._reply(request)
        if reply and self._partial > 0:
            self._partial -= 1
            reply = reply[:-1]
        return reply

    def _reply(self, request):
        command = request[0]
        if command == GET_STATUS:
            temp = int(round(self.temperature * 10)).to_bytes(2, "big", signed=True)
            return bytes([MODULE_ID, *self.firmware, int(round(self.supply_volts * 10))]) + temp
        if command == SET_RELAY:
            relay, on_off = request[1], request[2]
            pulse = int.from_bytes(request[3:7], "big")
            if not 1 <= relay <= 8:
                return bytes([relay or 0xFF])
            if pulse > 100:
                self._pulse_until[relay - 1] = time.monotonic() + pulse / 1000.0
                self.relays[relay - 1] = False
            else:
                self._pulse_until[relay - 1] = 0.0
                self.relays[relay - 1] = on_off != 0
            return b"\x00"
        if command == SET_OUTPUT:
            port, on_off = request[1], request[2]
            if not 1 <= port <= 7:
                return bytes([port or 0xFF])
            self.outputs[port - 1] = on_off != 0
            return b"\x00"
        if command == GET_RELAYS:
            bits = 0
            for i, on in enumerate(self.relay_states()):
                bits |= int(on) << i
            return b"\x00" + bits.to_bytes(4, "big")
        if command == GET_INPUTS:
            bits = 0
            for i in range(7):
                bits |= int(self.outputs[i] or self.inputs[i]) << i
            return bytes([0, bits])
        if command == GET_ANALOG:
            return b"".join(v.to_bytes(2, "big") for v in self.analog)
        if command == GET_COUNTERS:
            index = request[1]
            value, capture = self.counters[index - 1] if 1 <= index <= 8 else (0, 0)
            return value.to_bytes(4, "big") + capture.to_bytes(4, "big")
        return None
