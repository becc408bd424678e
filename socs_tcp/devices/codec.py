"""Sans-IO encoding and decoding for device files: no sockets, no state.

Requests out and replies in, for the three protocols of a device file:

* text: :func:`format_request` fills the request template with checked
  arguments; :func:`parse_text` turns one reply frame into named, typed
  values (one value, separated items with arrays and status pairs, or regex
  groups; maps, flags, scale and offset);
* binary: :func:`encode_binary` packs a request (with its checksums),
  :func:`binary_reply_length` reads a reply's length field,
  :func:`decode_binary_reply` checks a reply's checksum and reads its fields
  at fixed byte positions (any byte order, word-swapped floats, a trailing
  array as long as the frame);
* Modbus TCP: :func:`modbus_request` builds the MBAP header and PDU,
  :func:`modbus_frame_length` and :func:`parse_modbus` read a reply;
* text frames with a checksum: :func:`seal_text` appends it,
  :func:`unseal_text` checks and removes it.

The simulator uses the inverse functions at the bottom (:func:`render_text`,
:func:`encode_fields`, :func:`match_text_request`, ...).  Every decoding
failure raises :class:`~socs_tcp.devices.errors.DeviceReplyError` naming the
operation and the bytes.
"""

import math
import operator
import re
import string
import struct

from ..core.checksums import checksum
from .errors import DeviceError, DeviceReplyError
from .spec import WIRE_TYPES, ArraySpec

__all__ = [
    "format_request", "parse_text", "encode_binary", "decode_binary", "binary_reply_length", "check_frame", "check_checksum",
    "decode_binary_reply", "seal_text", "unseal_text", "error_reply", "encode_error_reply",
    "modbus_request", "modbus_frame_length", "parse_modbus", "MODBUS_EXCEPTIONS", "to_big", "from_big",
    "render_text", "encode_fields", "encode_binary_reply", "match_text_request", "feed_values",
]

#: Modbus exception codes (Modbus Application Protocol v1.1b3, section 7)
MODBUS_EXCEPTIONS = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}

_formatter = string.Formatter()
_TEMPLATES = {}  # request template -> its parsed parts


# ----------------------------------------------------------------------
# text requests

def format_request(op, args, forbidden="", params=None):
    """The request text of ``op`` with checked ``args`` filled in.

    ``forbidden`` lists characters a str argument may not contain (the
    terminators), so that an argument can never end a command early.
    ``params`` (``{name: (ArgSpec, value)}``) fills the device's params.
    """
    out = []
    arg_map = op.arg_map
    parts = _TEMPLATES.get(op.request)
    if parts is None:
        parts = _TEMPLATES[op.request] = tuple(_formatter.parse(op.request))
    for literal, name, spec, _ in parts:
        out.append(literal)
        if name is None:
            continue
        arg = arg_map.get(name)
        if arg is None:
            arg, value = params[name]
        else:
            value = args.get(name)
        if value is None:
            continue
        if arg.type == "str":
            bad = [c for c in forbidden if c in value]
            if bad:
                raise ValueError(f"{op.name}: argument {name!r} contains {bad[0]!r}, which would end the "
                                 f"command early: {value!r}")
        out.append(format(arg.wire(value), spec) if spec else arg.text(value))
    return "".join(out)


# ----------------------------------------------------------------------
# text replies

_TRUE = {"1", "on", "true", "yes"}
_FALSE = {"0", "off", "false", "no"}


def _convert(op_name, f, raw, reply):
    """One reply item as the field's typed value."""
    text = raw.strip()
    if f.map is not None:
        if text in f.map:
            return f.map[text]
        try:
            key = str(int(float(text)))
        except (ValueError, OverflowError):
            key = None
        if key in f.map:
            return f.map[key]
        raise DeviceReplyError(op_name, reply, f"field {f.name!r}: {text!r} is not one of {sorted(f.map)}")
    try:
        if f.exponent is not None:
            return _from_exponent(f.exponent, text)
        if f.type == "float":
            value = float(text)
        elif f.type == "int":
            if f.base is not None:
                value = int(text, f.base)
            else:
                try:
                    value = int(text)
                except ValueError:
                    try:
                        value = int(text, 0)  # 0x1f, 0o17, 0b101
                    except ValueError:
                        number = float(text)
                        if not number.is_integer():
                            raise
                        value = int(number)
        elif f.type == "bool":
            if f.true_text is not None or f.false_text is not None:
                if text == f.true_text:
                    return True
                if text == f.false_text:
                    return False
                raise ValueError
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        else:
            return text
    except (ValueError, OverflowError):
        raise DeviceReplyError(op_name, reply, f"field {f.name!r}: {text!r} is not a {f.type}") from None
    try:
        return _scaled(f, value)
    except (ValueError, OverflowError) as e:
        raise DeviceReplyError(op_name, reply, f"field {f.name!r}: {e}") from None


def _from_exponent(e, text):
    """``"100023"`` with 4 mantissa and 2 exponent digits, offset -23: 1000 * 10 ** 0."""
    if len(text) != e.mantissa_digits + e.digits or not text.isdigit():
        raise ValueError(text)
    mantissa, power = int(text[:e.mantissa_digits]), int(text[e.mantissa_digits:]) + e.offset
    # divide by a whole power of ten, so 1234e-6 reads as 0.001234, not 0.0012339999999999999
    return mantissa / 10 ** -power if power < 0 else float(mantissa * 10 ** power)


def _to_exponent(e, value):
    """The inverse of :func:`_from_exponent` (the simulator): the mantissa as large as its digits allow."""
    value = abs(float(value))
    top = 10 ** e.mantissa_digits
    if value == 0:
        return f"{0:0{e.mantissa_digits}d}{-e.offset:0{e.digits}d}" if -e.offset >= 0 else "0" * (
            e.mantissa_digits + e.digits)
    power = math.floor(math.log10(value)) - (e.mantissa_digits - 1)
    mantissa = round(value / 10.0 ** power)
    if mantissa >= top:
        mantissa //= 10
        power += 1
    stored = min(max(power - e.offset, 0), 10 ** e.digits - 1)
    return f"{mantissa:0{e.mantissa_digits}d}{stored:0{e.digits}d}"


def _scaled(f, value):
    if f.scale is not None or f.offset is not None:
        scale = 1 if f.scale is None else f.scale
        inverse = 1 / scale if scale else 0
        if inverse and abs(inverse - round(inverse)) < 1e-9 and abs(inverse) > 1:
            value = value / round(inverse)  # 0.1 as "divide by 10": 267 -> 26.7, not 26.700000000000003
        else:
            value = value * scale
        value = value + (0 if f.offset is None else f.offset)
        if f.type == "int":
            value = int(round(value))
    if f.type == "float":
        value = float(value)
    elif f.type == "int" and isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"{f.name}: {value} is not an integer")
        value = int(value)
    return value


def _add_flags(f, value, out):
    if f.flags:
        for flag, bit in f.flags.items():
            on = (value >> bit) & 1
            out[flag] = bool(on) if f.flag_type == "bool" else int(on)


def parse_text(op, text, raw=None):
    """Parse one reply frame (str, terminator removed) into ``{field: value}``."""
    reply = op.reply
    raw = text.encode("utf-8", "replace") if raw is None else raw
    if reply.strip:
        text = text.strip()
    out = {}
    if reply.mode == "single":
        f = reply.fields[0]
        value = _convert(op.name, f, text, raw)
        out[f.name] = value
        _add_flags(f, value, out)
        return out
    if reply.mode == "regex":
        m = reply.regex.search(text)
        if m is None:
            raise DeviceReplyError(op.name, raw, f"does not match {reply.regex.pattern!r}")
        for f in reply.fields:
            g = m.group(f.name)
            if g is None:
                raise DeviceReplyError(op.name, raw, f"group {f.name!r} did not match")
            value = _convert(op.name, f, g, raw)
            out[f.name] = value
            _add_flags(f, value, out)
        return out
    # split
    items = text.split(reply.split)
    if text == "":
        items = []
    pos = 0
    fields = reply.fields
    for index, f in enumerate(fields):
        per = 2 if f.status is not None else 1
        if f.array is None:
            count = 1
        elif f.array.count is not None:
            count = f.array.count
        else:
            rest = sum((2 if g.status is not None else 1) * (g.array.count if g.array else 1) for g in fields[index + 1:])
            count = (len(items) - pos - rest) // per
            if count < 1 or count > f.array.max or (len(items) - pos - rest) % per:
                raise DeviceReplyError(op.name, raw, f"field {f.name!r}: {len(items) - pos - rest} items, expected "
                                                     f"{per} to {per * f.array.max} in steps of {per}")
        need = pos + count * per
        if need > len(items):
            raise DeviceReplyError(op.name, raw, f"{len(items)} items separated by {reply.split!r}, expected "
                                                 f"{_expected_items(fields)}")
        values, statuses = [], []
        for _ in range(count):
            if f.status is not None:
                if f.status.position == "before":
                    s_raw, v_raw = items[pos], items[pos + 1]
                else:
                    v_raw, s_raw = items[pos], items[pos + 1]
                status = _status_value(op, f, s_raw, raw)
                statuses.append(status)
                if _status_valid(f.status, s_raw.strip(), status):
                    values.append(_convert(op.name, f, v_raw, raw))
                else:
                    values.append(f.status.invalid_value)
            else:
                values.append(_convert(op.name, f, items[pos], raw))
            pos += per
        if f.array is None:
            out[f.name] = values[0]
            if f.status is not None and f.status.field:
                out[f.status.field] = statuses[0]
            if values[0] is not None:
                _add_flags(f, values[0], out)
        else:
            out[f.name] = values
            if f.status is not None and f.status.field:
                out[f.status.field] = statuses
    if pos != len(items):
        raise DeviceReplyError(op.name, raw, f"{len(items)} items separated by {reply.split!r}, expected "
                                             f"{_expected_items(fields)}")
    return out


def _expected_items(fields):
    fixed = 0
    variable = None
    for f in fields:
        per = 2 if f.status is not None else 1
        if f.array is None:
            fixed += per
        elif f.array.count is not None:
            fixed += per * f.array.count
        else:
            variable = (per, f.array.max)
    if variable is None:
        return str(fixed)
    return f"{fixed + variable[0]} to {fixed + variable[0] * variable[1]}"


def _status_value(op, f, s_raw, raw):
    text = s_raw.strip()
    if f.status.map is None:
        if not _numeric_status(f.status):
            return text  # status words ("OK", "ERR") are kept as they are
        try:
            return int(text)
        except ValueError:
            raise DeviceReplyError(op.name, raw, f"status of {f.name!r}: {text!r} is not an integer") from None
    if text in f.status.map:
        return f.status.map[text]
    try:
        key = str(int(text))
    except ValueError:
        key = None
    if key in f.status.map:
        return f.status.map[key]
    raise DeviceReplyError(op.name, raw, f"status of {f.name!r}: {text!r} is not one of {sorted(f.status.map)}")


def _numeric_status(status_spec):
    """Whether statuses are numbers (every valid value is an integer)."""
    return all(re.fullmatch(r"[-+]?\d+", v) for v in status_spec.valid or ["0"])


def _status_valid(status_spec, raw_text, value):
    valid = status_spec.valid or []
    if raw_text in valid or str(value) in valid:
        return True
    try:
        return str(int(raw_text)) in valid
    except ValueError:
        return False


# ----------------------------------------------------------------------
# binary

def to_big(data, order):
    """Reorder the bytes of one value from ``order`` to big-endian."""
    if order in ("big", "ABCD"):
        return data
    if order in ("little", "DCBA"):
        return data[::-1]
    if order == "CDAB":
        return data[2:4] + data[0:2]
    if order == "BADC":
        return bytes((data[1], data[0], data[3], data[2]))
    raise ValueError(f"unknown byte order {order!r}")


def from_big(data, order):
    """Inverse of :func:`to_big` (each reordering is its own inverse)."""
    return to_big(data, order)


def _pack(wire, order, value):
    size, code = WIRE_TYPES[wire]
    if not code.isupper() and code not in "fd" and isinstance(value, float):
        value = int(value)
    if code in "fd":
        value = float(value)
    elif isinstance(value, float):
        value = int(round(value))
    return from_big(struct.pack(">" + code, value), order)


def _unpack(wire, order, data):
    code = WIRE_TYPES[wire][1]
    return struct.unpack(">" + code, to_big(data, order))[0]


def encode_binary(op, args):
    """The request bytes of a binary operation."""
    out = bytearray()
    arg_map = op.arg_map
    for item in op.request:
        if item.literal is not None:
            out += item.literal
            continue
        if item.checksum is not None:
            c = item.checksum
            out += checksum(c.type, out[c.start:]).to_bytes(c.size, c.order)
            continue
        arg = arg_map[item.arg]
        value = args.get(item.arg)
        if value is None:
            value = 0
        wire = arg.wire(value)
        if arg.type == "bool":
            wire = 1 if value else 0
        elif item.scale is not None or item.offset is not None:
            wire = (value - (item.offset or 0)) / (item.scale or 1)
            if WIRE_TYPES[item.wire][1] not in "fd":
                wire = int(round(wire))
        try:
            out += _pack(item.wire, item.order, wire)
        except struct.error as e:
            raise ValueError(f"{op.name}: argument {item.arg!r} = {value!r} does not fit a {item.wire}: {e}") from None
    return bytes(out)


_PLANS = {}  # id(fields) -> (fields, base, plan): each reply's layout, worked out once


def _reorder(items, order):
    """``items`` (the bytes of one value, or their indexes) in big-endian order."""
    if order in ("big", "ABCD"):
        return list(items)
    if order in ("little", "DCBA"):
        return list(items)[::-1]
    if order == "CDAB":
        return list(items[2:4]) + list(items[0:2])
    return [items[1], items[0], items[3], items[2]]  # BADC


def _plan(fields, base):
    """One struct for the whole reply: the byte indexes of every value, put in
    big-endian order, and the struct format that unpacks them all at once."""
    entry = _PLANS.get(id(fields))
    if entry is not None and entry[0] is fields and entry[1] == base:
        return entry[2]
    indexes, fmt, layout = [], ">", []
    for f in fields:
        size, code = WIRE_TYPES[f.wire]
        start = f.byte if f.byte is not None else (f.register - base) * 2
        n = f.array.size if f.array is not None else 1
        for k in range(n):
            indexes += _reorder(range(start + k * size, start + (k + 1) * size), f.order)
            fmt += code
        if f.map is not None or f.scale is not None or f.offset is not None or f.type not in ("int", "float"):
            kind = _OTHER
        elif (f.type == "float") == (code in "fd"):
            kind = _SAME
        else:
            kind = _TO_FLOAT if f.type == "float" else _TO_INT
        layout.append((f, start, size, n, kind))
    getter = operator.itemgetter(*indexes) if len(indexes) > 1 else (lambda data, i=indexes[0]: (data[i],))
    plan = (layout, getter, struct.Struct(fmt), max(indexes) + 1)
    if len(_PLANS) > 256:
        _PLANS.clear()
    _PLANS[id(fields)] = (fields, base, plan)
    return plan


def decode_binary(op_name, fields, data, base=0, raw=None):
    """Values of ``fields`` read from ``data`` (field positions minus ``base``)."""
    raw = data if raw is None else raw
    layout, getter, unpacker, needed = _plan(fields, base)
    if len(data) < needed:
        for f, start, size, n, _ in layout:
            if start + n * size > len(data):
                raise DeviceReplyError(op_name, raw, f"field {f.name!r} needs bytes {start}..{start + n * size - 1}, "
                                                     f"the reply has {len(data)}")
    raw_values = unpacker.unpack(bytes(getter(data)))
    out = {}
    pos = 0
    for f, _, _, n, kind in layout:
        if n == 1 and kind == _SAME:
            value = raw_values[pos]
            pos += 1
        else:
            values = [_converted(op_name, raw, f, kind, v) for v in raw_values[pos:pos + n]]
            pos += n
            if f.array is not None:
                out[f.name] = values
                continue
            value = values[0]
        out[f.name] = value
        if f.flags:
            _add_flags(f, int(raw_values[pos - 1]), out)
    return out


_SAME, _TO_FLOAT, _TO_INT, _OTHER = range(4)


def binary_reply_length(op_name, reply, header):
    """The whole length of a reply whose length field is in ``header`` (its
    first ``reply.length_field.header`` bytes); a length the frame cannot
    have raises :class:`DeviceReplyError`."""
    n = reply.length_field
    value = int.from_bytes(header[n.byte:n.header], n.order)
    total = value + n.plus
    least = n.header + (reply.checksum.size if reply.checksum is not None and reply.checksum.byte < 0 else 0)
    if not least <= total <= n.max:
        raise DeviceReplyError(op_name, header, f"length field {value} (bytes {n.byte}..{n.header - 1}) gives a "
                                                f"reply of {total} bytes, expected {least}..{n.max}")
    return total


# ----------------------------------------------------------------------
# text frames with a checksum (connection.checksum)

def seal_text(c, frame, encoding):
    """``frame`` (bytes, no terminator) with its separator and checksum text appended."""
    return frame + c.separator.encode(encoding) + format(checksum(c.type, frame[c.start:]), c.format).encode(encoding)


def unseal_text(op_name, c, frame, encoding):
    """``frame`` without its separator and checksum text; :class:`DeviceReplyError`
    when they are missing or the checksum is wrong."""
    sep = c.separator.encode(encoding)
    width = len(format(0, c.format))
    if len(frame) < c.start + len(sep) + width:
        raise DeviceReplyError(op_name, frame, f"{len(frame)} bytes are too short for a {width}-character checksum"
                                               + (f" after {c.separator!r}" if sep else ""))
    body, mark, got = frame[:len(frame) - width - len(sep)], frame[len(frame) - width - len(sep):-width], \
        frame[-width:]
    if mark != sep:
        raise DeviceReplyError(op_name, frame, f"no {c.separator!r} before the checksum")
    want = format(checksum(c.type, body[c.start:]), c.format).encode(encoding)
    if got != want:
        raise DeviceReplyError(op_name, frame, f"checksum {got.decode(encoding, 'replace')!r}, computed "
                                               f"{want.decode(encoding)!r} ({c.type} of the characters "
                                               f"{'from ' + str(c.start) + ' ' if c.start else ''}before it)")
    return body


def check_frame(op_name, reply, data):
    """Raise :class:`DeviceReplyError` unless ``data`` starts as the reply must
    (``starts_with``) and carries its checksum."""
    if reply.starts_with is not None and (len(data) < len(reply.starts_with) or not starts_right(reply, data)):
        raise DeviceReplyError(op_name, data, f"starts with {data[:len(reply.starts_with)].hex(' ')}, expected "
                                              f"{reply.starts_text()}")
    if reply.checksum is not None:
        check_checksum(op_name, reply.checksum, data)


def error_reply(op_name, reply, data):
    """The :class:`DeviceError` an error frame ``data`` stands for (its checksum
    checked first: a garbled error frame is a :class:`DeviceReplyError`)."""
    e = reply.error
    if reply.checksum is not None and reply.checksum.byte < 0:
        check_checksum(op_name, reply.checksum, data)
    size = WIRE_TYPES[e.code_wire][0]
    code = int.from_bytes(data[e.code_byte:e.code_byte + size], e.code_order, signed=e.code_wire.startswith("i"))
    return DeviceError(op_name, code, e.messages.get(code, ""))


def encode_error_reply(reply, code):
    """The error frame with ``code`` (the simulator's answer to a bad request)."""
    e = reply.error
    data = bytearray(e.length)
    data[:len(e.starts_with)] = e.starts_with
    size = WIRE_TYPES[e.code_wire][0]
    data[e.code_byte:e.code_byte + size] = code.to_bytes(size, e.code_order, signed=e.code_wire.startswith("i"))
    if reply.checksum is not None and reply.checksum.byte < 0:
        _put_checksum(reply.checksum, data)
    return bytes(data)


def _put_checksum(c, data):
    """Write the checksum ``c`` into the frame ``data`` (a bytearray) at its place."""
    pos = c.position(len(data))
    data[pos:pos + c.size] = checksum(c.type, data[c.start:pos]).to_bytes(c.size, c.order)


def starts_right(reply, data):
    """Whether the bytes of ``data`` (the first ones of a reply, perhaps fewer
    than ``starts_with``) agree with ``starts_with`` (``??`` takes any)."""
    any_ = reply.starts_any
    return all(i in any_ or b == want for i, (b, want) in enumerate(zip(data, reply.starts_with)))


def check_checksum(op_name, c, data):
    """Raise :class:`DeviceReplyError` unless ``data`` carries its checksum ``c``."""
    pos = c.position(len(data))
    if pos <= c.start or pos + c.size > len(data):
        raise DeviceReplyError(op_name, data, f"{len(data)} bytes are too short for the checksum")
    want = checksum(c.type, data[c.start:pos])
    got = int.from_bytes(data[pos:pos + c.size], c.order)
    if got != want:
        digits = 2 * c.size
        raise DeviceReplyError(op_name, data, f"checksum {got:#0{digits + 2}x}, computed {want:#0{digits + 2}x} "
                                              f"({c.type} of bytes {c.start}..{pos - 1})")


_VARIANTS = {}  # (id(reply), n) -> (reply, fields): a reply's fields with its trailing array n long


def _concrete(reply, n):
    """``reply.fields`` with the array whose length the device decides fixed at ``n`` elements."""
    entry = _VARIANTS.get((id(reply), n))
    if entry is not None and entry[0] is reply:
        return entry[1]
    fields = [f.renamed(f.name, array=ArraySpec(count=n, labels=f.array.labels))
              if f.array is not None and f.array.count is None else f for f in reply.fields]
    if len(_VARIANTS) > 1024:
        _VARIANTS.clear()
    _VARIANTS[(id(reply), n)] = (reply, fields)
    return fields


def _trailing(reply):
    for f in reply.fields:
        if f.array is not None and f.array.count is None:
            return f
    return None


def decode_binary_reply(op_name, reply, data, check=True):
    """The values of a whole binary reply: its checksum checked (unless
    ``check`` is false: the caller did), its fields read (an array whose
    length the device decides runs to the checksum, or to the end)."""
    c = reply.checksum
    end = len(data)
    if check:
        check_frame(op_name, reply, data)
    if c is not None:
        pos = c.position(len(data))
        if pos + c.size == len(data):
            end = pos
    tail = _trailing(reply)
    if tail is None:
        return decode_binary(op_name, reply.fields, data)
    size = WIRE_TYPES[tail.wire][0]
    room = end - tail.byte
    if room < 0 or room % size or room // size > tail.array.max:
        raise DeviceReplyError(op_name, data, f"field {tail.name!r}: {max(room, 0)} bytes from byte {tail.byte} are not "
                                              f"0..{tail.array.max} values of {size} bytes")
    n = room // size
    if n == 0:
        fields = [f for f in reply.fields if f is not tail]
        out = decode_binary(op_name, fields, data) if fields else {}
        out[tail.name] = []
        return out
    return decode_binary(op_name, _concrete(reply, n), data)


def _converted(op_name, raw, f, kind, v):
    if kind == _SAME:
        return v
    if kind == _TO_FLOAT:
        return float(v)
    if kind == _TO_INT:
        if v != v or v in (math.inf, -math.inf):
            raise DeviceReplyError(op_name, raw, f"field {f.name!r}: {v} is not an integer")
        return int(v)
    try:
        return _binary_value(f, v)
    except ValueError as e:
        raise DeviceReplyError(op_name, raw, f"field {f.name!r}: {e}") from None


def _binary_value(f, value):
    if f.map is not None:
        key = str(value)
        if key not in f.map:
            raise ValueError(f"{value!r} is not one of {sorted(f.map)}")
        return f.map[key]
    if f.type == "bool":
        return bool(value)
    if f.type == "str":
        return str(value)
    return _scaled(f, value)


# ----------------------------------------------------------------------
# Modbus TCP (MBAP header + PDU)

def modbus_request(op, args, transaction_id, unit):
    """The request ADU of a Modbus operation."""
    m = op.modbus
    if m.function in (3, 4):
        pdu = struct.pack(">BHH", m.function, m.address, m.count)
    else:
        value = m.value
        if isinstance(value, str):
            name = value[1:-1]
            arg = op.arg_map[name]
            value = arg.wire(args[name])
            if arg.type == "bool":
                value = 1 if args[name] else 0
        value = int(value)
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"{op.name}: register value {value!r} is outside 0..65535")
        pdu = struct.pack(">BHH", m.function, m.address, value)
    return struct.pack(">HHHB", transaction_id, 0, len(pdu) + 1, unit) + pdu


def modbus_frame_length(header):
    """Total ADU length from the 7-byte MBAP header."""
    _, _, length, _ = struct.unpack(">HHHB", header[:7])
    return 6 + length


def parse_modbus(op, request, frame, unit):
    """Values from one reply ADU (whose transaction id was already matched)."""
    if len(frame) < 8:
        raise DeviceReplyError(op.name, frame, f"{len(frame)} bytes: too short for a Modbus TCP frame")
    tid, proto, length, got_unit = struct.unpack(">HHHB", frame[:7])
    if proto != 0:
        raise DeviceReplyError(op.name, frame, f"protocol id {proto}, expected 0 (Modbus)")
    if got_unit != unit:
        raise DeviceReplyError(op.name, frame, f"unit id {got_unit}, expected {unit}")
    if len(frame) != 6 + length:
        raise DeviceReplyError(op.name, frame, f"length field says {length}, frame has {len(frame) - 6}")
    pdu = frame[7:]
    fn = op.modbus.function
    if not pdu:
        raise DeviceReplyError(op.name, frame, "empty PDU")
    if pdu[0] == fn | 0x80:
        code = pdu[1] if len(pdu) > 1 else 0
        raise DeviceError(op.name, code, f"modbus exception: {MODBUS_EXCEPTIONS.get(code, 'unknown')}")
    if pdu[0] != fn:
        raise DeviceReplyError(op.name, frame, f"function {pdu[0]}, expected {fn}")
    if fn == 6:
        if pdu != request[7:]:
            raise DeviceReplyError(op.name, frame, "a write is answered by its echo; this is not it")
        return {}
    count = op.modbus.count
    if len(pdu) < 2 or pdu[1] != 2 * count or len(pdu) != 2 + 2 * count:
        raise DeviceReplyError(op.name, frame, f"expected {2 * count} data bytes for {count} registers")
    if op.reply is None:
        return {}
    return decode_binary(op.name, op.reply.fields, pdu[2:], base=op.modbus.address, raw=frame)


# ----------------------------------------------------------------------
# polling: call() results -> feed fields

def feed_values(item, op, values):
    """The feed fields of one poll item from the values of one call."""
    out = {}
    by_name = {f.name: f for f in op.fields}
    for src, template in item.fields.items():
        value = values.get(src)
        f = by_name[src]
        if f.array is None:
            if value is not None:
                out[template] = value
            continue
        labels = f.array.labels or [str(i + 1) for i in range(f.array.size)]
        for i, v in enumerate(value or []):
            if v is not None:
                out[template.format(n=i + 1, i=i, label=labels[i])] = v
    return out


# ----------------------------------------------------------------------
# the inverse direction, for the simulator

def _render_value(f, value):
    """A field's value as reply text."""
    if value is None:
        return "0"
    if f.map is not None:
        inverse = {v: k for k, v in f.map.items()}
        return inverse.get(value, str(value))
    if f.exponent is not None:
        return _to_exponent(f.exponent, value)
    if f.type == "float":
        v = float(value)
        if f.scale is not None or f.offset is not None:
            v = (v - (f.offset or 0)) / (f.scale or 1)
            if abs(v - round(v)) < 1e-6:
                return str(int(round(v)))  # a scaled value is sent as a whole number of its steps
        return repr(v)  # shortest text that reads back as the same float
    if f.type == "int":
        v = value
        if f.scale is not None or f.offset is not None:
            v = (v - (f.offset or 0)) / (f.scale or 1)
        v = int(round(v))
        if f.base is not None and f.base != 10:
            return _in_base(v, f.base)
        return str(v)
    if f.type == "bool":
        if value:
            return f.true_text if f.true_text is not None else "1"
        return f.false_text if f.false_text is not None else "0"
    return str(value)


def _in_base(v, base):
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    sign, v = ("-", -v) if v < 0 else ("", v)
    out = ""
    while True:
        v, r = divmod(v, base)
        out = digits[r] + out
        if not v:
            return sign + out


def _status_text(f, ok=True):
    s = f.status
    want = (s.valid or ["0"])[0]
    if s.map is not None:
        inverse = {v: k for k, v in s.map.items()}
        return inverse.get(want, want)
    return want


def render_text(op, values, params=None):
    """Reply text for ``values`` ({field: value}) that :func:`parse_text` reads
    back; a regex reply's ``format`` may also use the device's ``params``
    (``{name: value}``)."""
    reply = op.reply
    if reply.mode == "single":
        return _render_value(reply.fields[0], values.get(reply.fields[0].name))
    if reply.mode == "regex":
        return reply.format.format(**{**(params or {}),
                                      **{f.name: _render_value(f, values.get(f.name)) for f in reply.fields}})
    items = []
    for f in reply.fields:
        value = values.get(f.name)
        seq = value if f.array is not None else [value]
        if f.array is not None:
            if not isinstance(seq, (list, tuple)):
                seq = [seq] * f.array.size
            if f.array.count is not None:
                seq = (list(seq) + [seq[-1] if seq else None] * f.array.count)[:f.array.count]
            else:
                seq = list(seq)[:f.array.max] or [None]
        for v in seq:
            text = _render_value(f, v)
            if f.status is not None:
                s = _status_text(f)
                items.extend([s, text] if f.status.position == "before" else [text, s])
            else:
                items.append(text)
    return reply.split.join(items)


def encode_fields(fields, values, length, base=0):
    """Bytes of ``length`` holding ``values`` at the fields' positions (binary and Modbus)."""
    out = bytearray(length)
    for f in fields:
        size = WIRE_TYPES[f.wire][0]
        start = f.byte if f.byte is not None else (f.register - base) * 2
        value = values.get(f.name, 0)
        seq = value if f.array is not None else [value]
        if f.array is not None and not isinstance(seq, (list, tuple)):
            seq = [seq] * f.array.size
        for k, v in enumerate(seq):
            if f.map is not None:
                inverse = {name: int(w) for w, name in f.map.items()}
                v = inverse.get(v, 0)
            if v is None:
                v = 0
            if isinstance(v, bool):
                v = int(v)
            if f.scale is not None or f.offset is not None:
                v = (float(v) - (f.offset or 0)) / (f.scale or 1)
            if WIRE_TYPES[f.wire][1] not in "fd":
                v = _clamp_int(f.wire, int(round(float(v))))
            out[start + k * size:start + (k + 1) * size] = _pack(f.wire, f.order, v)
    return bytes(out)


def encode_binary_reply(reply, values):
    """The bytes of a whole binary reply holding ``values``: its length field
    and checksum filled in (the inverse of :func:`decode_binary_reply`)."""
    c = reply.checksum
    fields = reply.fields
    if reply.length is not None:
        total = reply.length
    else:
        n = reply.length_field
        tail = _trailing(reply)
        if tail is not None:
            seq = values.get(tail.name)
            count = len(seq) if isinstance(seq, (list, tuple)) else tail.array.max
            fields = _concrete(reply, min(count, tail.array.max)) if count else [f for f in fields if f is not tail]
        end = n.header
        for f in fields:
            end = max(end, f.byte + WIRE_TYPES[f.wire][0] * (f.array.size if f.array is not None else 1))
        if c is not None:
            end = end + c.size if c.byte < 0 else max(end, c.byte + c.size)
        total = end
    data = bytearray(encode_fields(fields, values, total))
    if reply.starts_with is not None:
        for i, b in enumerate(reply.starts_with):
            if i not in reply.starts_any:
                data[i] = b
    if reply.length_field is not None:
        n = reply.length_field
        data[n.byte:n.header] = max(total - n.plus, 0).to_bytes(n.header - n.byte, n.order)
    if c is not None:
        _put_checksum(c, data)
    return bytes(data)


def _clamp_int(wire, v):
    size = WIRE_TYPES[wire][0]
    if wire.startswith("i"):
        lo, hi = -(1 << (8 * size - 1)), (1 << (8 * size - 1)) - 1
    else:
        lo, hi = 0, (1 << (8 * size)) - 1
    return min(max(v, lo), hi)


_ARG_PATTERNS = {
    "int": r"[-+]?\d+",
    "float": r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:inf|nan)",
    "bool": None,
    "str": r".*?",
}


def request_regex(op, params=None):
    """A compiled regex that matches the requests ``op`` sends, with a group per
    argument; a device param (``params``: ``{name: (ArgSpec, value)}``) must be
    the device's own value (any value when ``params`` is None)."""
    parts = []
    seen = set()
    for literal, name, spec, _ in _formatter.parse(op.request):
        parts.append(re.escape(literal))
        if name is None:
            continue
        arg = op.arg_map.get(name)
        if arg is None:                       # a device param: its value, or any value without params
            if params is None:
                parts.append(".+?")
            else:
                p, value = params[name]
                parts.append(re.escape(format(p.wire(value), spec) if spec else p.text(value)))
            continue
        if arg.type == "enum":
            texts = sorted({format(v, spec) if spec else str(v) for v in arg.values.values()}, key=len, reverse=True)
            pattern = "|".join(re.escape(t) for t in texts)
        elif arg.type == "bool":
            pattern = "|".join(re.escape(t) for t in sorted({arg.true_text, arg.false_text}, key=len, reverse=True))
        elif arg.type == "int" and _int_base(spec or arg.format) != 10:
            digits = {16: "0-9a-fA-F", 8: "0-7", 2: "01"}[_int_base(spec or arg.format)]
            width = _fixed_width(spec or arg.format)
            pattern = f"[{digits}]{{{width}}}" if width else f"[{digits}]+"
        elif arg.type == "int" and _fixed_width(spec or arg.format):
            pattern = rf"[-+]?\d{{{_fixed_width(spec or arg.format)}}}"
        else:
            pattern = _ARG_PATTERNS[arg.type]
        group = f"a_{name}" if name not in seen else None
        seen.add(name)
        parts.append(f"(?P<{group}>{pattern})" if group else f"(?:{pattern})")
        if not arg.required:
            parts[-1] = f"(?:{parts[-1]})?"
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def _request_spec(op, name):
    """The format spec of the first ``{name:spec}`` in ``op``'s request template."""
    for _, n, spec, _ in _formatter.parse(op.request):
        if n == name:
            return spec
    return None


def _int_base(spec):
    """The number base an int format spec writes in (``"04X"``: 16)."""
    kind = (spec or "")[-1:]
    return {"x": 16, "X": 16, "o": 8, "b": 2}.get(kind, 10)


def _fixed_width(spec):
    """The width of a zero-padded int format spec (``"04X"``: 4), else None."""
    m = re.fullmatch(r"0(\d+)[dxXob]?", spec or "")
    return int(m.group(1)) if m else None


def match_text_request(op, regex, text):
    """The arguments of a request text, or None when ``op`` did not send it."""
    m = regex.match(text)
    if m is None:
        return None
    args = {}
    for arg in op.args:
        g = m.groupdict().get(f"a_{arg.name}")
        if g is None:
            args[arg.name] = None
            continue
        if arg.type == "int":
            args[arg.name] = int(g, _int_base(_request_spec(op, arg.name) or arg.format))
        elif arg.type == "float":
            args[arg.name] = float(g)
        elif arg.type == "bool":
            args[arg.name] = g == arg.true_text
        elif arg.type == "enum":
            for k, v in arg.values.items():
                if str(v) == g or (arg.format and format(v, arg.format) == g):
                    args[arg.name] = k
                    break
        else:
            args[arg.name] = g
    return args
