"""socs_tcp.core.checksums: the catalogue check values, and agreement with
independent bit-by-bit definitions on random data."""

import functools
import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socs_tcp.core.checksums import CHECKSUMS, checksum, checksum_size

#: CRC of b"123456789" from the CRC catalogue (reveng), and the sums worked out by hand
CHECK = {"sum8": 0xDD, "sum16": 0x01DD, "twos8": 0x23, "xor8": 0x31, "crc8": 0xF4, "crc16_modbus": 0x4B37,
         "crc16_xmodem": 0x31C3, "crc16_ccitt": 0x29B1, "crc32": 0xCBF43926}


def bitwise_crc(data, width, poly, init, reflect, xorout=0):
    """A CRC from its catalogue parameters, one bit at a time (refin = refout = reflect)."""
    mask = (1 << width) - 1
    crc = init
    for byte in data:
        if reflect:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ _reverse(poly, width) if crc & 1 else crc >> 1
        else:
            crc ^= byte << (width - 8)
            for _ in range(8):
                crc = ((crc << 1) ^ poly) & mask if crc & (1 << (width - 1)) else (crc << 1) & mask
    return crc ^ xorout


def _reverse(value, width):
    return int(format(value, f"0{width}b")[::-1], 2)


REFERENCE = {
    "crc8": lambda d: bitwise_crc(d, 8, 0x07, 0, False),
    "crc16_modbus": lambda d: bitwise_crc(d, 16, 0x8005, 0xFFFF, True),
    "crc16_xmodem": lambda d: bitwise_crc(d, 16, 0x1021, 0, False),
    "crc16_ccitt": lambda d: bitwise_crc(d, 16, 0x1021, 0xFFFF, False),
    "crc32": lambda d: bitwise_crc(d, 32, 0x04C11DB7, 0xFFFFFFFF, True, 0xFFFFFFFF),
    "sum8": lambda d: sum(d) % 256,
    "sum16": lambda d: sum(d) % 65536,
    "twos8": lambda d: (256 - sum(d) % 256) % 256,
    "xor8": lambda d: functools.reduce(operator.xor, d, 0),
}


@pytest.mark.parametrize("name", list(CHECKSUMS))
def test_check_value_of_the_catalogue(name):
    assert checksum(name, b"123456789") == CHECK[name]
    assert checksum(name, bytearray(b"123456789")) == CHECK[name]
    assert checksum(name, memoryview(b"123456789")) == CHECK[name]
    assert checksum(name, b"123456789") < 1 << (8 * checksum_size(name))


def test_every_algorithm_has_a_reference():
    assert set(REFERENCE) == set(CHECKSUMS) == set(CHECK)


@given(st.sampled_from(sorted(CHECKSUMS)), st.binary(max_size=300))
def test_agrees_with_the_bitwise_definition(name, data):
    assert checksum(name, data) == REFERENCE[name](data)


def test_two_complement_makes_the_frame_sum_to_zero():
    frame = bytes(range(1, 40))
    assert (sum(frame) + checksum("twos8", frame)) % 256 == 0


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match=r"unknown checksum 'crc17' \(one of: sum8, .*crc32\)"):
        checksum("crc17", b"x")
    with pytest.raises(ValueError, match="unknown checksum 'md5'"):
        checksum_size("md5")
    with pytest.raises(TypeError, match="checksum data must be bytes, got str: 'abc'"):
        checksum("sum8", "abc")
    with pytest.raises(ValueError, match="unknown checksum None"):
        checksum(None, b"x")
