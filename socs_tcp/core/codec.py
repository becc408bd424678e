"""Pure conversions used by the transport: no sockets, no state.

* hex strings <-> bytes (the binary format of the ``*_bin`` bus operations),
* escape sequences in terminator strings (``"\\r\\n"`` as typed in a config file),
* terminator lists (``eot``),
* device addresses and ``cmd_tcp`` configuration strings.

Every function raises :class:`ValueError` or :class:`TypeError` naming the bad
value; nothing else escapes.
"""

import ipaddress
import re

__all__ = [
    "hex_to_bytes",
    "bytes_to_hex",
    "decode_escapes",
    "encode_escapes",
    "parse_terminators",
    "parse_address",
    "parse_conf_string",
    "format_traffic",
]

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def hex_to_bytes(text):
    """Convert a hex string to bytes, two digits per byte in transmission order.

    ``"0a0d"`` is ``b"\\n\\r"``.  Upper and lower case digits are accepted.

    Raises:
        TypeError: ``text`` is not a ``str``.
        ValueError: odd length or a character that is not a hex digit; the
            message names the value and the first bad position.
    """
    if not isinstance(text, str):
        raise TypeError(f"hex data must be a str of hex digits, got {type(text).__name__}: {text!r}")
    for i, ch in enumerate(text):
        if ch not in _HEX_DIGITS:
            raise ValueError(f"hex data {text!r} has a non-hex character {ch!r} at position {i}")
    if len(text) % 2:
        raise ValueError(f"hex data {text!r} has odd length {len(text)}; two hex digits are needed per byte")
    return bytes.fromhex(text)


def bytes_to_hex(data):
    """Convert bytes to lowercase hex, two digits per byte in transmission order."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}: {data!r}")
    return bytes(data).hex()


_SIMPLE_ESCAPES = {"n": b"\n", "r": b"\r", "t": b"\t", "0": b"\0", "\\": b"\\", ",": b","}


def decode_escapes(text, encoding="utf-8"):
    """Turn a string with backslash escapes into bytes.

    Understood escapes: ``\\n``, ``\\r``, ``\\t``, ``\\0``, ``\\\\``, ``\\,``
    and ``\\xNN`` (one raw byte).  Other characters are encoded with
    ``encoding``.  Bytes are returned unchanged.

    Raises:
        TypeError: ``text`` is neither ``str`` nor ``bytes``.
        ValueError: an unknown or truncated escape; the message names it.
    """
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    if not isinstance(text, str):
        raise TypeError(f"expected a str with escapes or bytes, got {type(text).__name__}: {text!r}")
    if "\\" not in text:
        return text.encode(encoding)
    out = bytearray()
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch != "\\":
            out += ch.encode(encoding)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError(f"{text!r} ends with a lone backslash")
        code = text[i + 1]
        if code in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[code]
            i += 2
        elif code == "x":
            digits = text[i + 2:i + 4]
            if len(digits) != 2 or not all(d in _HEX_DIGITS for d in digits):
                raise ValueError(f"{text!r} has a bad escape {text[i:i + 4]!r} at position {i}; use \\xNN with two hex digits")
            out.append(int(digits, 16))
            i += 4
        else:
            raise ValueError(
                f"{text!r} has an unknown escape '\\{code}' at position {i}; "
                "known escapes are \\n \\r \\t \\0 \\\\ \\, and \\xNN")
    return bytes(out)


def encode_escapes(data, commas=True):
    """Inverse of :func:`decode_escapes`: bytes -> escaped ASCII str.

    With ``commas=False`` commas are left as they are (for display rather
    than for building an ``eot`` list).
    """
    out = []
    for b in bytes(data):
        ch = chr(b)
        if ch == "\\":
            out.append("\\\\")
        elif ch == "," and commas:
            out.append("\\,")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif 0x20 <= b < 0x7f:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return "".join(out)


def parse_terminators(eot, encoding="utf-8"):
    """Normalise an ``eot`` argument to a tuple of non-empty byte strings.

    ``eot`` is either a comma-separated string of terminators with escapes
    (``"\\r\\n,\\n"``; write a literal comma as ``\\,`` or ``\\x2c``), a single
    ``bytes`` terminator, or a list/tuple of ``str`` (escapes allowed) and
    ``bytes`` items.

    Raises:
        TypeError: ``eot`` or an item has the wrong type.
        ValueError: empty list, empty terminator, or a bad escape.
    """
    if isinstance(eot, (bytes, bytearray)):
        items = [bytes(eot)]
    elif isinstance(eot, str):
        items = _split_unescaped_commas(eot)
    elif isinstance(eot, (list, tuple)):
        items = list(eot)
    else:
        raise TypeError(f"eot must be a str, bytes or a list of them, got {type(eot).__name__}: {eot!r}")
    if not items:
        raise ValueError(f"eot {eot!r} names no terminator")
    terms = []
    for item in items:
        if not isinstance(item, (str, bytes, bytearray)):
            raise TypeError(f"eot item {item!r} in {eot!r} is a {type(item).__name__}, not str or bytes")
        try:
            term = decode_escapes(item, encoding)
        except ValueError as e:
            if item == eot:
                raise
            # name the whole eot: a position inside one item alone is misleading
            raise ValueError(f"eot {eot!r}: {e}") from None
        if not term:
            raise ValueError(f"eot {eot!r} contains an empty terminator")
        if term not in terms:
            terms.append(term)
    return tuple(terms)


def _split_unescaped_commas(text):
    parts = []
    current = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            current.append(text[i:i + 2])
            i += 2
            continue
        if ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_\-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_\-]{0,62}))*\.?$")


def _valid_host(host):
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.match(host))


def _valid_port(text):
    # ASCII digits only: str.isdigit() also accepts other scripts' digits and
    # superscripts, some of which int() then rejects
    return text.isascii() and text.isdigit() and 0 < int(text) < 65536


def parse_address(address):
    """Get the host and port from an address string.

    Accepted forms::

        host:port            192.168.1.2:5025, device.local:7777
        [v6addr]:port        [::1]:5025
        tcp://host:port      tcp://[::1]:5025
        TCP::host::port      (and SOCKET::host::port)
        TCPIP0::host::port::SOCKET   (VISA resource names; any board number)

    Returns:
        ``{'host': str, 'port': int}``, or ``None`` if ``address`` is not a
        valid socket address (wrong type included).
    """
    if not isinstance(address, str):
        return None
    text = address.strip()
    host = port = None
    visa = re.match(r"^TCPIP\d*::([^:]+|\[[^\]]*\]|[0-9A-Fa-f:]+)::(\d+)::SOCKET$", text, re.IGNORECASE)
    if visa:
        host, port = visa.group(1), visa.group(2)
    else:
        m = re.match(r"^(?:TCP|SOCKET)::(.+)::(\d+)$", text, re.IGNORECASE)
        if m:
            host, port = m.group(1), m.group(2)
        else:
            m = re.match(r"^(?:tcp://)?(\[[^\]]+\]|[^:\[\]/]+):(\d+)/?$", text, re.IGNORECASE)
            if m:
                host, port = m.group(1), m.group(2)
    if host is None:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    if not (_valid_host(host) and _valid_port(port)):
        return None
    return {"host": host, "port": int(port)}


_CONF_KEYS = ("host", "port", "timeout")


def parse_conf_string(conf_string):
    """Parse a ``cmd_tcp`` configuration string, ``host=...,port=...[,timeout=...]``.

    Whitespace around keys and values is ignored.  ``timeout`` is a
    non-negative float (seconds).

    Returns:
        dict with ``host`` (str), ``port`` (int) and ``timeout`` (float, or
        ``None`` when not given).

    Raises:
        TypeError: ``conf_string`` is not a ``str``.
        ValueError: a missing, unknown, repeated or malformed key; the message
            names it.
    """
    if not isinstance(conf_string, str):
        raise TypeError(f"conf_string must be a str like 'host=10.0.0.2,port=5025', "
                        f"got {type(conf_string).__name__}: {conf_string!r}")
    found = {}
    for part in conf_string.split(","):
        if not part.strip():
            raise ValueError(f"conf_string {conf_string!r} has an empty entry")
        key, sep, value = part.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            raise ValueError(f"conf_string {conf_string!r}: entry {part.strip()!r} is not key=value")
        if key not in _CONF_KEYS:
            raise ValueError(f"conf_string {conf_string!r}: unknown key {key!r}; known keys are {', '.join(_CONF_KEYS)}")
        if key in found:
            raise ValueError(f"conf_string {conf_string!r}: key {key!r} given twice")
        found[key] = value
    for key in ("host", "port"):
        if key not in found:
            raise ValueError(f"conf_string {conf_string!r} lacks the required key {key!r}")
    host = found["host"]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not _valid_host(host):
        raise ValueError(f"conf_string {conf_string!r}: host {found['host']!r} is not a valid host name or IP address")
    if not _valid_port(found["port"]):
        raise ValueError(f"conf_string {conf_string!r}: port {found['port']!r} is not an integer in 1..65535")
    timeout = None
    if "timeout" in found:
        timeout = _parse_timeout(found["timeout"], f"conf_string {conf_string!r}: timeout")
    return {"host": host, "port": int(found["port"]), "timeout": timeout}


def _parse_timeout(text, what):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"{what} {text!r} must be a finite number of seconds >= 0")
    return value


def format_traffic(data, limit=256):
    """Render bytes for a DEBUG log line: hex plus printable text."""
    data = bytes(data)
    shown = data[:limit]
    more = f" (+{len(data) - limit} bytes)" if len(data) > limit else ""
    return f"{shown.hex(' ')} |{encode_escapes(shown, commas=False)}|{more}"
