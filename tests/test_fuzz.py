"""Property-based fuzzing of layer 1 (codecs and the receive buffer).

Complements the examples and properties in ``test_codec.py`` and
``test_buffer.py``: arbitrary inputs of any type may only raise the documented
``ValueError``/``TypeError`` (whose messages name the bad value), valid inputs
round-trip through every accepted spelling, and the receive buffer behaves
exactly like a plain ``bytes`` reference model under any sequence of feeds,
extractions, put-backs and drains.
"""

import ipaddress
import re

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from socs_tcp.core.buffer import ReceiveBuffer
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
from socs_tcp.errors import ReadOverflowError

# no per-example deadline: the test machines are shared and busy, and these
# properties are about correctness, not speed
FUZZ = settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])

#: Values of the wrong type, and of the right type but odd content.
ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary(),
    st.lists(st.one_of(st.text(max_size=4), st.binary(max_size=4), st.integers()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.builds(bytearray, st.binary()),
)
HEX_DIGITS = "0123456789abcdefABCDEF"


def names(value, error):
    """The error message quotes the bad value."""
    return repr(value) in str(error)

# ---------------------------------------------------------------- hex


@FUZZ
@given(ANYTHING)
def test_hex_to_bytes_any_input(value):
    try:
        data = hex_to_bytes(value)
    except TypeError as e:
        assert not isinstance(value, str) and "hex data must be a str" in str(e)
        return
    except ValueError as e:
        assert isinstance(value, str) and names(value, e)
        assert len(value) % 2 or any(c not in HEX_DIGITS for c in value)
        return
    assert isinstance(value, str) and all(c in HEX_DIGITS for c in value) and len(value) % 2 == 0
    assert data == bytes.fromhex(value)


@FUZZ
@given(st.text(alphabet=HEX_DIGITS + " xg\u0660\uff10", max_size=40))
def test_hex_to_bytes_accepts_exactly_ascii_hex_pairs(text):
    valid = len(text) % 2 == 0 and all(c in HEX_DIGITS for c in text)
    try:
        data = hex_to_bytes(text)
    except ValueError as e:
        assert not valid and names(text, e)
    else:
        assert valid and bytes_to_hex(data) == text.lower()


@FUZZ
@given(st.one_of(st.binary(), st.builds(bytearray, st.binary()), st.builds(memoryview, st.binary())))
def test_bytes_to_hex_is_lowercase_two_digits_per_byte(data):
    text = bytes_to_hex(data)
    assert len(text) == 2 * len(bytes(data))
    assert set(text) <= set("0123456789abcdef")
    assert hex_to_bytes(text) == bytes(data)


@FUZZ
@given(ANYTHING.filter(lambda v: not isinstance(v, (bytes, bytearray))))
def test_bytes_to_hex_refuses_non_bytes(value):
    with pytest.raises(TypeError, match="expected bytes"):
        bytes_to_hex(value)

# ---------------------------------------------------------------- escapes


@FUZZ
@given(st.binary(), st.booleans())
def test_encode_escapes_is_printable_ascii_and_round_trips(data, commas):
    text = encode_escapes(data, commas=commas)
    assert text.isascii() and text.isprintable()
    assert decode_escapes(text) == data
    if commas:
        assert "," not in text.replace("\\,", ""), "every comma is escaped, so the text is one eot item"


@FUZZ
@given(st.text(alphabet=st.sampled_from("ab,\\nrtx0fF9 µ\u20ac\U0001f600"), max_size=30),
       st.sampled_from(["utf-8", "latin-1", "ascii"]))
def test_decode_escapes_raises_only_value_error_naming_the_text(text, encoding):
    try:
        data = decode_escapes(text, encoding)
    except UnicodeEncodeError:
        # a character the encoding cannot represent (UnicodeEncodeError is a ValueError)
        assert any(not _encodable(c, encoding) for c in text)
        return
    except ValueError as e:
        assert "\\" in text and names(text, e)
        return
    assert isinstance(data, bytes)
    if "\\" not in text:
        assert data == text.encode(encoding)


def _encodable(char, encoding):
    try:
        char.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


@FUZZ
@given(ANYTHING)
def test_decode_escapes_any_input(value):
    try:
        data = decode_escapes(value)
    except TypeError as e:
        assert not isinstance(value, (str, bytes, bytearray)) and "expected a str with escapes or bytes" in str(e)
        return
    except ValueError:
        assert isinstance(value, str)
        return
    assert isinstance(data, bytes)
    if isinstance(value, (bytes, bytearray)):
        assert data == bytes(value)

# ---------------------------------------------------------------- terminators


@FUZZ
@given(ANYTHING)
def test_parse_terminators_any_input(value):
    try:
        terms = parse_terminators(value)
    except (TypeError, ValueError):
        return
    assert isinstance(terms, tuple) and terms
    assert all(isinstance(t, bytes) and t for t in terms)
    assert len(set(terms)) == len(terms), "duplicates are removed"


@FUZZ
@given(st.text(alphabet=st.sampled_from("ab,\\nrx0"), max_size=24))
def test_parsed_terminators_reparse_to_themselves(text):
    """Printing a parsed eot back with escapes gives an equivalent eot."""
    try:
        terms = parse_terminators(text)
    except ValueError as e:
        assert names(text, e)
        return
    canonical = ",".join(encode_escapes(t) for t in terms)
    assert parse_terminators(canonical) == terms
    assert parse_terminators(list(terms)) == terms
    assert parse_terminators([encode_escapes(t) for t in terms]) == terms


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=3), min_size=1, max_size=4))
def test_terminator_list_forms_agree(terms):
    expected = tuple(dict.fromkeys(terms))
    assert parse_terminators(terms) == expected
    assert parse_terminators(tuple(encode_escapes(t) for t in terms)) == expected
    if len(terms) == 1:
        assert parse_terminators(terms[0]) == expected

# ---------------------------------------------------------------- addresses

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_-]{0,10}[A-Za-z0-9])?", fullmatch=True)
HOSTNAMES = st.lists(LABEL, min_size=1, max_size=4).map(".".join).filter(lambda h: not _is_ip(h))
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)
PORTS = st.integers(1, 65535)


def _is_ip(text):
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@FUZZ
@given(ANYTHING)
def test_parse_address_never_raises_on_any_input(value):
    result = parse_address(value)
    if result is not None:
        assert isinstance(value, str)
        assert set(result) == {"host", "port"}
        assert isinstance(result["host"], str) and result["host"] and result["host"] in value
        assert type(result["port"]) is int and 0 < result["port"] < 65536


@FUZZ
@given(st.text(alphabet=st.sampled_from("ab1:[]/.-_ TCPIPSOCKEtcp\u0660\u00b2"), max_size=30))
def test_parse_address_dense_alphabet(text):
    result = parse_address(text)
    if result is not None:
        assert str(result["port"]) in text, "the port is the digits as written"
        assert result["host"] in text


@FUZZ
@given(st.one_of(HOSTNAMES, IPV4), PORTS, st.sampled_from(["", " ", "\t"]))
def test_host_forms_round_trip(host, port, pad):
    expected = {"host": host, "port": port}
    for form in (f"{host}:{port}", f"tcp://{host}:{port}", f"TCP://{host}:{port}/", f"TCP::{host}::{port}",
                 f"SOCKET::{host}::{port}", f"TCPIP0::{host}::{port}::SOCKET", f"tcpip3::{host}::{port}::socket"):
        assert parse_address(pad + form + pad) == expected, form


@FUZZ
@given(IPV6, PORTS)
def test_ipv6_forms_round_trip(host, port):
    expected = {"host": host, "port": port}
    for form in (f"[{host}]:{port}", f"tcp://[{host}]:{port}", f"TCPIP0::[{host}]::{port}::SOCKET",
                 f"TCP::{host}::{port}"):
        assert parse_address(form) == expected, form
    assert parse_address(f"{host}:{port}") is None or ":" not in host, "an unbracketed IPv6 host is ambiguous"


@FUZZ
@given(st.one_of(HOSTNAMES, IPV4), st.text(alphabet="0123456789\u0660\u0661\u00b2\u2460-+ ", min_size=1, max_size=6))
def test_port_must_be_ascii_digits_in_range(host, port):
    result = parse_address(f"{host}:{port}")
    digits = port.rstrip()  # trailing blanks are stripped from the whole address
    valid = digits.isascii() and digits.isdigit() and 0 < int(digits) < 65536
    assert (result is not None) == valid
    if valid:
        assert result == {"host": host, "port": int(digits)}

# ---------------------------------------------------------------- conf strings


@FUZZ
@given(ANYTHING)
def test_parse_conf_string_any_input(value):
    try:
        conf = parse_conf_string(value)
    except TypeError as e:
        assert not isinstance(value, str) and "conf_string must be a str" in str(e)
        return
    except ValueError as e:
        assert isinstance(value, str) and names(value, e)
        return
    assert isinstance(value, str)
    assert set(conf) == {"host", "port", "timeout"}


@FUZZ
@given(st.text(alphabet=st.sampled_from("hostpr=,timeu1.5a ²٣[]:-e\\"), max_size=40))
@example("host=a,port=\u00b2")  # str.isdigit() is true for a superscript, which int() refuses
def test_parse_conf_string_dense_alphabet_names_the_string(text):
    try:
        conf = parse_conf_string(text)
    except ValueError as e:
        assert names(text, e)
        return
    assert 0 < conf["port"] < 65536
    assert conf["timeout"] is None or conf["timeout"] >= 0


@FUZZ
@given(st.one_of(HOSTNAMES, IPV4, IPV6), PORTS,
       st.one_of(st.none(), st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)),
       st.permutations(["host", "port", "timeout"]), st.sampled_from(["", " ", "  "]), st.booleans())
def test_conf_string_round_trip(host, port, timeout, order, pad, upper):
    written_host = f"[{host}]" if ":" in host else host
    values = {"host": written_host, "port": str(port), "timeout": None if timeout is None else repr(timeout)}
    entries = [f"{pad}{key.upper() if upper else key}{pad}={pad}{values[key]}{pad}"
               for key in order if values[key] is not None]
    conf = parse_conf_string(",".join(entries))
    assert conf == {"host": host, "port": port, "timeout": timeout}


@FUZZ
@given(st.binary(max_size=600), st.integers(0, 300))
def test_format_traffic_never_raises(data, limit):
    text = format_traffic(data, limit)
    assert text.isascii()
    if len(data) > limit:
        assert text.endswith(f"(+{len(data) - limit} bytes)")

# ---------------------------------------------------------------- the receive buffer

#: Terminator sets with overlaps, shared prefixes and multi-byte terminators, to
#: stress the resumed search (a terminator straddling the end of an earlier search).
TERMINATOR_SETS = [(b"\n",), (b"\r\n",), (b"\r\n", b"\n"), (b"\n", b"\r\n"), (b"aa",), (b"ab", b"b"),
                   (b"aba",), (b"\r", b"\r\n", b";"), (b"xyz", b"y")]


def _prefix_ambiguous(terms):
    return any(a != b and b.startswith(a) for a in terms for b in terms)
PATTERNS = [re.compile(p) for p in (rb"a+b", rb"\r?\n", rb"(?s)x.y", rb"ab|ba", rb"\d{2}")]
CHUNKS = st.binary(max_size=12) | st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b"b", b"ab", b"aab", b"y", b"xyz", b"12"])


def reference_until(data, terms):
    """Earliest terminator; the longest one when several start at the same place."""
    hits = [(data.find(t), -len(t), t) for t in terms if t in data]
    if not hits:
        return None
    pos, _, term = min(hits)
    return pos, term


class BufferMachine(RuleBasedStateMachine):
    """ReceiveBuffer against a plain ``bytes`` model."""

    def __init__(self):
        super().__init__()
        self.max_size = 64
        self.buffer = ReceiveBuffer(self.max_size)
        self.model = b""

    @rule(data=CHUNKS)
    def feed(self, data):
        if len(self.model) + len(data) > self.max_size:
            with pytest.raises(ReadOverflowError, match=f"max_read_size={self.max_size}"):
                self.buffer.feed(data)
        else:
            self.buffer.feed(data)
            self.model += data

    @rule(terms=st.sampled_from(TERMINATOR_SETS))
    def extract_until(self, terms):
        found = self.buffer.maybe_extract_until(terms)
        expected = reference_until(self.model, terms)
        if expected is None:
            assert found is None
            return
        pos, term = expected
        assert found == (self.model[:pos], term)
        self.model = self.model[pos + len(term):]

    @rule(n=st.integers(0, 20))
    def extract_exact(self, n):
        frame = self.buffer.maybe_extract_exact(n)
        if len(self.model) < n:
            assert frame is None
        else:
            assert frame == self.model[:n]
            self.model = self.model[n:]

    @rule(regex=st.sampled_from(PATTERNS))
    def extract_match(self, regex):
        found = self.buffer.maybe_extract_match(regex)
        match = regex.search(self.model)
        if match is None:
            assert found is None
            return
        consumed, got = found
        assert consumed == self.model[:match.end()] and got.group(0) == match.group(0)
        self.model = self.model[match.end():]

    @rule(n=st.integers(0, 20))
    def extract_some(self, n):
        assert self.buffer.extract_some(n) == self.model[:n]
        self.model = self.model[n:]

    @rule(n=st.integers(-5, -1))
    def negative_counts_are_refused(self, n):
        with pytest.raises(ValueError, match=str(n)):
            self.buffer.maybe_extract_exact(n)
        with pytest.raises(ValueError, match=str(n)):
            self.buffer.extract_some(n)

    @rule(data=st.binary(max_size=20))
    def unread(self, data):
        if len(self.model) + len(data) > self.max_size:
            with pytest.raises(ReadOverflowError, match=f"max_read_size={self.max_size}"):
                self.buffer.unread(data)
        else:
            self.buffer.unread(data)
            self.model = data + self.model

    @precondition(lambda self: self.model)
    @rule()
    def drain(self):
        assert self.buffer.drain() == self.model
        self.model = b""

    @invariant()
    def same_contents(self):
        assert self.buffer.peek() == self.model
        assert len(self.buffer) == len(self.model)
        assert bool(self.buffer) == bool(self.model)
        assert self.buffer.room == self.max_size - len(self.model)


BufferMachine.TestCase.settings = settings(deadline=None, max_examples=300, stateful_step_count=40,
                                           suppress_health_check=[HealthCheck.too_slow])
test_receive_buffer_matches_reference_model = BufferMachine.TestCase


@FUZZ
@given(st.lists(CHUNKS, max_size=40), st.sampled_from([t for t in TERMINATOR_SETS if not _prefix_ambiguous(t)]),
       st.integers(1, 64))
def test_resumed_search_finds_the_same_frames_however_the_stream_is_split(chunks, terms, max_size):
    """Drip-feeding (the search resumes where it stopped) and one-shot
    splitting agree, including terminators that straddle chunk edges.

    Sets where one terminator is a prefix of another (``\\r`` and
    ``\\r\\n``) are left out: there the frame depends on whether the
    longer one had fully arrived when the read looked, see
    :func:`test_prefix_terminator_is_taken_as_soon_as_it_arrives`."""
    stream = b"".join(chunks)
    assume(all(len(c) <= max_size for c in chunks))
    buf = ReceiveBuffer(max_size)
    frames = []
    for chunk in chunks:
        try:
            buf.feed(chunk)
        except ReadOverflowError:
            return  # an overflow is covered by the state machine
        while (found := buf.maybe_extract_until(terms)) is not None:
            frames.append(found)
    expected = []
    rest = stream
    while (hit := reference_until(rest, terms)) is not None:
        pos, term = hit
        expected.append((rest[:pos], term))
        rest = rest[pos + len(term):]
    assert frames == expected and buf.peek() == rest


def test_prefix_terminator_is_taken_as_soon_as_it_arrives():
    """With ``\\r`` and ``\\r\\n`` both terminators, a reply whose ``\\n``
    has not arrived yet ends at the ``\\r``: a read cannot wait for a byte
    that may never come.  The ``\\n`` then starts the next frame."""
    terms = (b"\r", b"\r\n")
    buf = ReceiveBuffer()
    buf.feed(b"abc\r")
    assert buf.maybe_extract_until(terms) == (b"abc", b"\r")
    buf.feed(b"\ndef\r\n")
    assert buf.maybe_extract_until(terms) == (b"\ndef", b"\r\n")
    buf.feed(b"ghi\r\n")
    assert buf.maybe_extract_until(terms) == (b"ghi", b"\r\n"), "complete in the buffer: the longer one wins"
