"""Frame checksums and CRCs used by device protocols: bytes in, an int out.

Each algorithm is named as device manuals name it; the CRCs are the ones of
the standard catalogue (reveng) with the same parameters, checked against the
catalogue's check value (the CRC of ``b"123456789"``):

=================  ====  ===================================================  ==========
name               size  what it is                                           check
=================  ====  ===================================================  ==========
``sum8``           1     sum of the bytes, modulo 256                         ``0xDD``
``sum16``          2     sum of the bytes, modulo 65536                       ``0x01DD``
``twos8``          1     two's complement of ``sum8`` (frame + sum = 0)       ``0x23``
``xor8``           1     XOR of the bytes (longitudinal redundancy check)     ``0x31``
``crc8``           1     CRC-8/SMBUS: poly 0x07, init 0                       ``0xF4``
``crc16_modbus``   2     CRC-16/MODBUS: poly 0x8005 reflected, init 0xFFFF    ``0x4B37``
``crc16_xmodem``   2     CRC-16/XMODEM: poly 0x1021, init 0                   ``0x31C3``
``crc16_ccitt``    2     CRC-16/IBM-3740 ("CCITT-FALSE"): poly 0x1021,        ``0x29B1``
                         init 0xFFFF
``crc32``          4     CRC-32 (ISO-HDLC, as zlib and Ethernet)              ``0xCBF43926``
=================  ====  ===================================================  ==========

Three of them come from the standard library (:func:`binascii.crc_hqx`,
:func:`zlib.crc32`); CRC-8 and CRC-16/MODBUS are one 256-entry table each,
built here at import time.
"""

import binascii
import zlib

__all__ = ["CHECKSUMS", "checksum", "checksum_size"]


def _table(poly, width, reflected):
    top = 1 << (width - 1)
    mask = (1 << width) - 1
    table = []
    for byte in range(256):
        if reflected:
            crc = byte
            for _ in range(8):
                crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        else:
            crc = byte << (width - 8)
            for _ in range(8):
                crc = ((crc << 1) ^ poly) & mask if crc & top else (crc << 1) & mask
        table.append(crc)
    return tuple(table)


_CRC8 = _table(0x07, 8, False)
_CRC16_MODBUS = _table(0xA001, 16, True)   # 0x8005 bit-reversed


def _crc8(data):
    crc = 0
    for b in data:
        crc = _CRC8[crc ^ b]
    return crc


def _crc16_modbus(data):
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC16_MODBUS[(crc ^ b) & 0xFF]
    return crc


#: name -> (size in bytes, function of the covered bytes)
CHECKSUMS = {
    "sum8": (1, lambda data: sum(data) & 0xFF),
    "sum16": (2, lambda data: sum(data) & 0xFFFF),
    "twos8": (1, lambda data: -sum(data) & 0xFF),
    "xor8": (1, lambda data: _xor(data)),
    "crc8": (1, _crc8),
    "crc16_modbus": (2, _crc16_modbus),
    "crc16_xmodem": (2, lambda data: binascii.crc_hqx(data, 0)),
    "crc16_ccitt": (2, lambda data: binascii.crc_hqx(data, 0xFFFF)),
    "crc32": (4, lambda data: zlib.crc32(data)),
}


def _xor(data):
    out = 0
    for b in data:
        out ^= b
    return out


def checksum_size(name):
    """Size in bytes of the checksum ``name``; :class:`ValueError` for an unknown name."""
    try:
        return CHECKSUMS[name][0]
    except (KeyError, TypeError):
        raise ValueError(f"unknown checksum {name!r} (one of: {', '.join(CHECKSUMS)})") from None


def checksum(name, data):
    """The checksum ``name`` of ``data`` (bytes-like) as an unsigned int.

    Raises:
        ValueError: an unknown ``name``.
        TypeError: ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"checksum data must be bytes, got {type(data).__name__}: {data!r}")
    try:
        func = CHECKSUMS[name][1]
    except (KeyError, TypeError):
        raise ValueError(f"unknown checksum {name!r} (one of: {', '.join(CHECKSUMS)})") from None
    return func(bytes(data))
