"""A Modbus RTU slave behind a serial-to-Ethernet server in raw TCP mode.

Facts and their sources (MODBUS over Serial Line Specification and
Implementation Guide V1.02, sections 2.5.1 "RTU transmission mode" and 6.2.2
"CRC generation"; MODBUS Application Protocol Specification V1.1b3,
sections 6.3 and 6.6 and 7):

* An RTU frame is the slave address (1 byte), the function code, the data,
  and a CRC-16 over all of them, sent low byte first.  The CRC starts at
  0xFFFF; each byte is XORed into the low byte, then 8 times: shift right,
  and XOR with 0xA001 when the bit shifted out was 1.
* Function 3 (read holding registers) and 4 (read input registers): request
  address, starting register (2 bytes, big-endian), count 1..125; reply
  address, function, byte count (2 x count), the registers big-endian.
* Function 6 (write single register): request address, register, value;
  the normal reply is an echo of the request.
* Exceptions: address, function | 0x80, exception code (1 illegal function,
  2 illegal data address, 3 illegal data value), CRC.  A frame with a wrong
  CRC is ignored (no reply), as a serial slave does.
* A serial server in raw TCP mode passes the bytes through unchanged; the
  frames are cut here by their function's known request length.

Faults: the common ones, :meth:`corrupt_crc_once` (the next replies carry a
wrong CRC) and :meth:`set_byte_count` (the next replies claim another byte
count than they carry).
"""

from .base import EmulatorServer

__all__ = ["ModbusRTUEmulator", "crc16"]

READ_HOLDING, READ_INPUT, WRITE_SINGLE = 3, 4, 6
REQUEST_LENGTH = {READ_HOLDING: 8, READ_INPUT: 8, WRITE_SINGLE: 8}


def crc16(frame):
    """CRC-16 of the serial-line specification, bit by bit."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


def with_crc(frame):
    return bytes(frame) + crc16(frame).to_bytes(2, "little")


class ModbusRTUEmulator(EmulatorServer):
    """One RTU slave: a holding-register map (also read by function 4).

    Args:
        unit (int): the slave address it answers.
        registers (dict): register number -> 16-bit value (signed values are
            stored as their two's complement).
        writable (iterable): registers function 6 may write.
    """

    device_name = "modbus-rtu"

    def __init__(self, *, unit=1, registers=None, writable=(), host="127.0.0.1", port=0):
        super().__init__(host, port)
        self.unit = unit
        self.registers = {int(k): int(v) & 0xFFFF for k, v in (registers or {}).items()}
        self.writable = set(writable)
        self.bad_crc_frames = 0
        self._corrupt = 0
        self._byte_count = None

    def set_register(self, register, value):
        with self.lock:
            self.registers[register] = int(value) & 0xFFFF

    def corrupt_crc_once(self, count=1):
        """The next ``count`` replies carry a wrong CRC."""
        with self.lock:
            self._corrupt = int(count)

    def set_byte_count(self, value):
        """Replies to reads claim ``value`` data bytes (None: the true count)."""
        with self.lock:
            self._byte_count = value

    def split_requests(self, session):
        requests = []
        buf = session.buffer
        while len(buf) >= 2:
            need = REQUEST_LENGTH.get(buf[1], len(buf))
            if len(buf) < need:
                break
            requests.append(bytes(buf[:need]))
            del buf[:need]
        return requests

    def respond(self, session, request):
        if len(request) < 4 or crc16(request[:-2]) != int.from_bytes(request[-2:], "little"):
            self.bad_crc_frames += 1
            return None
        if request[0] != self.unit:
            return None
        reply = self._reply(request[:-2])
        frame = with_crc(reply)
        if self._corrupt > 0:
            self._corrupt -= 1
            frame = frame[:-2] + bytes([frame[-2] ^ 0xFF, frame[-1]])
        return frame

    def _reply(self, pdu):
        unit, function = pdu[0], pdu[1]
        if function not in REQUEST_LENGTH:
            return bytes([unit, function | 0x80, 1])
        start = int.from_bytes(pdu[2:4], "big")
        if function in (READ_HOLDING, READ_INPUT):
            count = int.from_bytes(pdu[4:6], "big")
            if not 1 <= count <= 125:
                return bytes([unit, function | 0x80, 3])
            if any(r not in self.registers for r in range(start, start + count)):
                return bytes([unit, function | 0x80, 2])
            data = b"".join(self.registers[r].to_bytes(2, "big") for r in range(start, start + count))
            claimed = len(data) if self._byte_count is None else self._byte_count
            return bytes([unit, function, claimed]) + data
        if start not in self.writable:
            return bytes([unit, function | 0x80, 2])
        self.registers[start] = int.from_bytes(pdu[4:6], "big")
        return bytes(pdu)
