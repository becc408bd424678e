"""Layer 1: hex, escapes, terminator lists, addresses, conf strings (no sockets)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

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

# ---------------------------------------------------------------- hex


def test_hex_is_transmission_order_and_lowercase():
    assert hex_to_bytes("0a0d") == b"\n\r"
    assert hex_to_bytes("DEADbeef") == b"\xde\xad\xbe\xef"
    assert bytes_to_hex(b"\n\r\xff") == "0a0dff"
    assert hex_to_bytes("") == b""


@pytest.mark.parametrize("bad, needle", [("0a0", "odd length 3"), ("0g", "'g' at position 1"),
                                         ("0a 0d", "' ' at position 2"), ("0x0a", "'x' at position 1")])
def test_bad_hex_names_the_value(bad, needle):
    with pytest.raises(ValueError) as info:
        hex_to_bytes(bad)
    assert repr(bad) in str(info.value) and needle in str(info.value)


@pytest.mark.parametrize("bad", [b"0a", 10, None, ["0a"]])
def test_hex_needs_str(bad):
    with pytest.raises(TypeError, match="hex data must be a str"):
        hex_to_bytes(bad)


def test_bytes_to_hex_needs_bytes():
    with pytest.raises(TypeError, match="expected bytes"):
        bytes_to_hex("0a")


@given(st.binary())
def test_hex_round_trip(data):
    assert hex_to_bytes(bytes_to_hex(data)) == data
    assert hex_to_bytes(bytes_to_hex(data).upper()) == data


@given(st.text())
def test_hex_parser_raises_only_documented_errors(text):
    try:
        hex_to_bytes(text)
    except ValueError:
        pass

# ---------------------------------------------------------------- escapes and terminators


@pytest.mark.parametrize("text, expected", [
    ("\\n", b"\n"), ("\\r\\n", b"\r\n"), ("\\t", b"\t"), ("\\0", b"\0"), ("\\\\", b"\\"),
    ("\\x03", b"\x03"), ("\\xFF", b"\xff"), ("END", b"END"), ("\\,", b","), ("\n", b"\n"), ("µ", "µ".encode()),
])
def test_escapes(text, expected):
    assert decode_escapes(text) == expected


@pytest.mark.parametrize("bad, needle", [("\\q", "unknown escape '\\q'"), ("ab\\", "lone backslash"),
                                         ("\\x4", "bad escape"), ("\\xzz", "bad escape")])
def test_bad_escapes_name_the_escape(bad, needle):
    with pytest.raises(ValueError) as info:
        decode_escapes(bad)
    assert needle in str(info.value) and repr(bad) in str(info.value)


@given(st.binary())
def test_escape_round_trip(data):
    assert decode_escapes(encode_escapes(data)) == data


@given(st.text())
def test_escape_decoder_raises_only_value_error(text):
    try:
        decode_escapes(text)
    except ValueError:
        pass


def test_terminator_lists():
    assert parse_terminators("\\r\\n,\\n") == (b"\r\n", b"\n")
    assert parse_terminators("\\x2c") == (b",",)
    assert parse_terminators("a\\,b,c") == (b"a,b", b"c")
    assert parse_terminators(["\\n", b"\x03"]) == (b"\n", b"\x03")
    assert parse_terminators(b"\r\n") == (b"\r\n",)
    assert parse_terminators("\\n,\\n") == (b"\n",)


@pytest.mark.parametrize("bad, exc, needle", [
    ("", ValueError, "empty terminator"), ("\\n,", ValueError, "empty terminator"), ([], ValueError, "no terminator"),
    (b"", ValueError, "empty terminator"), (5, TypeError, "int"), ([b"\n", 3], TypeError, "eot item 3"),
    ("\\q", ValueError, "unknown escape"),
])
def test_bad_terminators(bad, exc, needle):
    with pytest.raises(exc, match=needle.replace("\\", "\\\\")):
        parse_terminators(bad)


def test_bad_escape_in_a_terminator_list_names_the_whole_list():
    with pytest.raises(ValueError) as info:
        parse_terminators("\\r\\n,\\q")
    assert repr("\\r\\n,\\q") in str(info.value) and "unknown escape '\\q'" in str(info.value)


@given(st.lists(st.binary(min_size=1, max_size=4), min_size=1, max_size=5))
def test_terminator_list_round_trip(terms):
    text = ",".join(encode_escapes(t) for t in terms)
    assert parse_terminators(text) == tuple(dict.fromkeys(terms))


@given(st.one_of(st.text(), st.binary(), st.lists(st.one_of(st.text(), st.binary(), st.integers()))))
def test_terminator_parser_raises_only_documented_errors(eot):
    try:
        terms = parse_terminators(eot)
    except (ValueError, TypeError):
        return
    assert terms and all(isinstance(t, bytes) and t for t in terms)

# ---------------------------------------------------------------- addresses


@pytest.mark.parametrize("address, host, port", [
    ("127.0.0.1:5025", "127.0.0.1", 5025),
    ("device.local:7777", "device.local", 7777),
    ("[::1]:5025", "::1", 5025),
    ("tcp://10.0.0.2:502", "10.0.0.2", 502),
    ("TCP://[fe80::1]:1", "fe80::1", 1),
    ("TCP::192.168.1.2::5025", "192.168.1.2", 5025),
    ("SOCKET::host-a::23", "host-a", 23),
    ("TCPIP0::192.168.1.2::5025::SOCKET", "192.168.1.2", 5025),
    ("TCPIP::localhost::9001::SOCKET", "localhost", 9001),
    ("tcpip1::::1::65535::socket", "::1", 65535),
    ("  localhost:80  ", "localhost", 80),
])
def test_parse_address(address, host, port):
    assert parse_address(address) == {"host": host, "port": port}


@pytest.mark.parametrize("address", [
    "localhost", "localhost:0", "localhost:65536", "localhost:port", ":5025", "[::1:5025", "[zz::1]:80",
    "::1:5025", "http://host:80", "TCPIP0::host::5025::INSTR", "bad host:80", "", None, 5025, b"host:1",
    "localhost:\u0668\u0660", "TCPIP0::host::\u0668\u0660::SOCKET",
])
def test_parse_address_rejects(address):
    assert parse_address(address) is None


@given(st.text())
def test_parse_address_never_raises(text):
    result = parse_address(text)
    assert result is None or (isinstance(result["host"], str) and 0 < result["port"] < 65536)


@given(st.sampled_from(["127.0.0.1", "::1", "example.org", "dev-1"]), st.integers(1, 65535))
def test_parse_address_round_trip(host, port):
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    assert parse_address(text) == {"host": host, "port": port}
    assert parse_address(f"tcp://{text}") == {"host": host, "port": port}
    assert parse_address(f"TCPIP0::{host}::{port}::SOCKET") == {"host": host, "port": port}

# ---------------------------------------------------------------- conf strings


def test_conf_string():
    assert parse_conf_string("host=10.0.0.2,port=5025,timeout=1.5") == {
        "host": "10.0.0.2", "port": 5025, "timeout": 1.5}
    assert parse_conf_string(" port = 23 , host = dev ") == {"host": "dev", "port": 23, "timeout": None}
    assert parse_conf_string("host=[::1],port=1")["host"] == "::1"


@pytest.mark.parametrize("bad, needle", [
    ("host=a", "lacks the required key 'port'"),
    ("port=1", "lacks the required key 'host'"),
    ("host=a,port=x", "port 'x'"),
    ("host=a,port=70000", "port '70000'"),
    ("host=a,port=1,timeout=soon", "timeout 'soon'"),
    ("host=a,port=1,timeout=-1", "timeout '-1'"),
    ("host=a,port=1,timeout=nan", "timeout 'nan'"),
    ("host=a,port=1,speed=9600", "unknown key 'speed'"),
    ("host=a,host=b,port=1", "key 'host' given twice"),
    ("host=a,,port=1", "empty entry"),
    ("host=a,port", "entry 'port' is not key=value"),
    ("host=bad host,port=1", "host 'bad host'"),
    ("host=a,port=\u00b2", "port '\u00b2'"),            # isdigit() but not a number for int()
    ("host=a,port=\u0668\u0660", "port '\u0668\u0660'"),  # digits of another script
])
def test_bad_conf_strings(bad, needle):
    with pytest.raises(ValueError) as info:
        parse_conf_string(bad)
    assert needle in str(info.value) and repr(bad) in str(info.value)


def test_conf_string_type():
    with pytest.raises(TypeError, match="conf_string must be a str"):
        parse_conf_string({"host": "a"})


@given(st.text())
def test_conf_parser_raises_only_value_error(text):
    try:
        parse_conf_string(text)
    except ValueError:
        pass


def test_format_traffic_shows_hex_and_text():
    assert format_traffic(b"ID?\r\n") == "49 44 3f 0d 0a |ID?\\r\\n|"
    assert format_traffic(b"x" * 300, limit=2).endswith("(+298 bytes)")
