"""Coverage-guided fuzz target for :mod:`socs_tcp.core.codec` (atheris / libFuzzer).

Each input picks one codec function and feeds it text or bytes made from the
rest of the input.  Anything other than the documented ``ValueError`` /
``TypeError`` is a finding, and so is a broken round trip.

Run it through ``fuzz/run`` (bounded duration), or directly::

    .venv/bin/python fuzz/fuzz_codec.py -max_total_time=60
"""

import sys

import atheris

with atheris.instrument_imports():
    from socs_tcp.core.codec import (
        bytes_to_hex,
        decode_escapes,
        encode_escapes,
        format_traffic,
        hex_to_bytes,
        parse_address,
        parse_conf_string,
        parse_terminators,
    )


def _hex(fdp):
    text = fdp.ConsumeUnicode(64)
    try:
        data = hex_to_bytes(text)
    except ValueError as e:
        assert repr(text) in str(e), e
        return
    assert bytes_to_hex(data) == text.lower()


def _hex_round_trip(fdp):
    data = fdp.ConsumeBytes(64)
    assert hex_to_bytes(bytes_to_hex(data)) == data


def _escapes(fdp):
    text = fdp.ConsumeUnicodeNoSurrogates(64)
    try:
        data = decode_escapes(text)
    except ValueError as e:
        assert repr(text) in str(e), e
        return
    assert decode_escapes(encode_escapes(data)) == data


def _escape_round_trip(fdp):
    data = fdp.ConsumeBytes(64)
    commas = fdp.ConsumeBool()
    text = encode_escapes(data, commas=commas)
    assert text.isascii() and text.isprintable(), text
    assert decode_escapes(text) == data


def _terminators(fdp):
    text = fdp.ConsumeUnicodeNoSurrogates(48)
    try:
        terms = parse_terminators(text)
    except ValueError as e:
        assert repr(text) in str(e), e
        return
    assert terms and all(isinstance(t, bytes) and t for t in terms)
    assert parse_terminators(",".join(encode_escapes(t) for t in terms)) == terms


def _address(fdp):
    text = fdp.ConsumeUnicode(80)
    result = parse_address(text)
    if result is not None:
        assert isinstance(result["host"], str) and result["host"] in text
        assert type(result["port"]) is int and 0 < result["port"] < 65536


def _conf(fdp):
    text = fdp.ConsumeUnicode(80)
    try:
        conf = parse_conf_string(text)
    except ValueError as e:
        assert repr(text) in str(e), e
        return
    assert 0 < conf["port"] < 65536
    assert conf["timeout"] is None or conf["timeout"] >= 0


def _traffic(fdp):
    limit = fdp.ConsumeIntInRange(0, 300)
    format_traffic(fdp.ConsumeBytes(400), limit).encode("ascii")


TARGETS = (_hex, _hex_round_trip, _escapes, _escape_round_trip, _terminators, _address, _conf, _traffic)


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
