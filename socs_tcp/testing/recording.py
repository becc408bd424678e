"""The recording format: a TCP device session as JSON lines.

A recording is a UTF-8 text file with one JSON object per line.  The first
line is a header; every other line is one event.  Format name
``socs_tcp-recording``, version 1::

    {"format": "socs_tcp-recording", "version": 1, "started": "2026-12-01T09:30:00.000000+00:00",
     "source": "proxy", "device": "10.10.10.5:4001", "part": 1}
    {"t": 0.0, "conn": 1, "event": "connect", "peer": "127.0.0.1:53122"}
    {"t": 0.0012, "conn": 1, "dir": "out", "text": "PR1\\r\\n"}
    {"t": 0.0150, "conn": 1, "dir": "in", "text": "\\u0006\\r\\n"}
    {"t": 0.0301, "conn": 1, "dir": "in", "hex": "00ff12"}
    {"t": 2.5, "conn": 1, "event": "close", "by": "device", "reason": "end of stream"}
    {"t": 3.0, "event": "end", "events": 4}

Keys:

``t``
    seconds since ``started`` (monotonic clock, microsecond resolution).
``conn``
    connection id: 1, 2, ... in the order the connections were made.
``dir``
    ``"out"``: bytes the client (driver, agent) sent to the device;
    ``"in"``: bytes the device sent to the client.  One data event per chunk,
    exactly as it came off the socket.
``text`` / ``hex`` / ``b64``
    the chunk, exactly one of them.  The writer uses ``text`` when the bytes
    are valid UTF-8 made of printable characters, tab, CR and LF (so a text
    protocol stays readable), else ``hex``.  ``text`` is the bytes decoded as
    UTF-8 (JSON escapes keep control characters exact); readers also accept
    ``b64`` (standard base64).
``event``
    ``connect`` (with ``peer``: the other end's ``host:port``), ``close``
    (with ``by``: ``client``, ``device``, ``proxy`` or ``interface``, and a
    ``reason``), ``truncated`` (the size cap was reached: nothing after it
    was recorded; ``dropped`` counts the events left out) and ``end`` (the
    recorder was closed cleanly; ``events`` counts the events written).  A
    file without ``end`` was cut short (crash, kill -9).

Size is bounded: ``max_bytes`` caps a file.  With ``keep=0`` (the default)
recording stops at the cap with a ``truncated`` event; with ``keep=N`` the
file is rotated instead (``FILE`` becomes ``FILE.1``, ``FILE.1`` becomes
``FILE.2``, ... up to ``FILE.N``; the oldest goes), and each new part starts
with its own header (``part`` counts up, ``open`` lists the connections
still open, whose data continue without a new ``connect`` event).

:func:`read_recording` checks every line and raises :class:`RecordingError`
naming the file, the line and the key.  :class:`Recorder` is the small
interface :class:`~socs_tcp.TCPInterface` calls (``record=``) to record
in-process; :class:`RecordingWriter` is the thread-safe writer under both it
and the recording proxy.
"""

import base64
import binascii
import datetime
import json
import logging
import os
import threading
import time

__all__ = ["FORMAT", "VERSION", "Event", "Recording", "RecordingError", "RecordingWriter", "Recorder",
           "read_recording", "encode_chunk", "decode_chunk"]

log = logging.getLogger("socs_tcp.testing")

FORMAT = "socs_tcp-recording"
VERSION = 1
_DIRS = ("out", "in")
_BYS = ("client", "device", "proxy", "interface")
_EVENTS = ("connect", "close", "truncated", "end")
_HEADER_KEYS = {"format", "version", "started", "source", "device", "part", "open"}
_DATA_KEYS = {"t", "conn", "dir", "text", "hex", "b64"}
_EVENT_KEYS = {
    "connect": {"t", "conn", "event", "peer"},
    "close": {"t", "conn", "event", "by", "reason"},
    "truncated": {"t", "event", "dropped", "reason"},
    "end": {"t", "event", "events"},
}
# room kept under the cap for the closing "truncated" and "end" lines
_RESERVE = 256


class RecordingError(ValueError):
    """A recording file (or line) that does not follow the format.  The
    message names the file, the line number and the key."""


class Event:
    """One recorded event.

    Attributes:
        t (float): seconds since the start of the recording.
        kind (str): ``'data'``, ``'connect'``, ``'close'``, ``'truncated'`` or ``'end'``.
        conn (int or None): connection id.
        dir (str or None): ``'out'`` (client to device) or ``'in'`` (device to client), for data.
        data (bytes): the chunk (``b''`` for non-data events).
        peer, by, reason: for connect and close events.
        line (int): line number in the file (0 when not read from a file).
    """

    __slots__ = ("t", "kind", "conn", "dir", "data", "peer", "by", "reason", "line")

    def __init__(self, t, kind, conn=None, dir=None, data=b"", peer=None, by=None, reason=None, line=0):
        self.t = t
        self.kind = kind
        self.conn = conn
        self.dir = dir
        self.data = data
        self.peer = peer
        self.by = by
        self.reason = reason
        self.line = line

    def __repr__(self):
        if self.kind == "data":
            return f"Event(t={self.t}, conn={self.conn}, {self.dir} {self.data!r})"
        return f"Event(t={self.t}, {self.kind}, conn={self.conn}, by={self.by}, reason={self.reason!r})"

    def __eq__(self, other):
        if not isinstance(other, Event):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in self.__slots__ if k != "line")


class Recording:
    """A recording read from a file: ``header`` (dict), ``events`` (list of
    :class:`Event`), ``complete`` (the file ends with an ``end`` event),
    ``truncated`` (the cap was reached) and ``path``."""

    def __init__(self, header, events, path=None):
        self.header = header
        self.events = events
        self.path = path
        self.complete = bool(events) and events[-1].kind == "end"
        self.truncated = any(ev.kind == "truncated" for ev in events)

    def connections(self):
        """Connection ids in order of first appearance."""
        seen = {}
        for ev in self.events:
            if ev.conn is not None and ev.conn not in seen:
                seen[ev.conn] = True
        return list(seen)

    def data(self, direction, conn=None):
        """All bytes recorded in ``direction`` (``'out'``/``'in'``), of one
        connection or of all, joined in order."""
        return b"".join(ev.data for ev in self.events
                        if ev.kind == "data" and ev.dir == direction and (conn is None or ev.conn == conn))

    def __repr__(self):
        return f"Recording({self.path!r}, {len(self.events)} events, complete={self.complete})"


# ----------------------------------------------------------------------
# chunks
def _is_text(text):
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def encode_chunk(data):
    """The JSON keys for one chunk: ``{'text': ...}`` when ``data`` is
    printable UTF-8 (plus tab, CR, LF), else ``{'hex': ...}``."""
    data = bytes(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _is_text(text):
        return {"text": text}
    return {"hex": data.hex()}


def decode_chunk(obj, where="chunk"):
    """The bytes of a data event's ``text``/``hex``/``b64`` key (exactly one).
    Raises :class:`RecordingError` naming ``where`` and the key."""
    present = [k for k in ("text", "hex", "b64") if k in obj]
    if len(present) != 1:
        raise RecordingError(f"{where}: a data event needs exactly one of 'text', 'hex', 'b64', got {present or 'none'}")
    key = present[0]
    value = obj[key]
    if not isinstance(value, str):
        raise RecordingError(f"{where}: {key}: must be a string, got {type(value).__name__}: {value!r}")
    try:
        if key == "text":
            return value.encode("utf-8")
        if key == "hex":
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, UnicodeEncodeError, binascii.Error) as exc:
        raise RecordingError(f"{where}: {key}: not valid {key} data ({exc}): {value[:60]!r}") from None


# ----------------------------------------------------------------------
# reading
def _check_keys(obj, allowed, where):
    extra = sorted(set(obj) - allowed)
    if extra:
        raise RecordingError(f"{where}: {extra[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")


def _number(obj, key, where, *, integer=False, minimum=0):
    if key not in obj:
        raise RecordingError(f"{where}: {key}: missing")
    value = obj[key]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or value < minimum or value != value or value == float("inf"):
        kind = "an int" if integer else "a number"
        raise RecordingError(f"{where}: {key}: must be {kind} >= {minimum}, got {value!r}")
    return value


def _string(obj, key, where, choices=None, required=True):
    if key not in obj:
        if required:
            raise RecordingError(f"{where}: {key}: missing")
        return None
    value = obj[key]
    if not isinstance(value, str) or (choices is not None and value not in choices):
        want = f"one of {', '.join(choices)}" if choices else "a string"
        raise RecordingError(f"{where}: {key}: must be {want}, got {value!r}")
    return value


def parse_header(obj, where):
    """Check a header line (a dict); returns it."""
    if not isinstance(obj, dict):
        raise RecordingError(f"{where}: the header must be a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise RecordingError(f"{where}: format: not a socs_tcp recording (expected {FORMAT!r}, got {obj.get('format')!r})")
    version = obj.get("version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise RecordingError(f"{where}: version: must be an int, got {version!r}")
    if version != VERSION:
        raise RecordingError(f"{where}: version: unsupported version {version} (this reader knows {VERSION})")
    _check_keys(obj, _HEADER_KEYS, where)
    return obj


def parse_event(obj, where="event", line=0):
    """Check one event line (a dict) and return the :class:`Event`."""
    if not isinstance(obj, dict):
        raise RecordingError(f"{where}: an event must be a JSON object, got {type(obj).__name__}")
    t = _number(obj, "t", where)
    if "dir" in obj:
        _check_keys(obj, _DATA_KEYS, where)
        direction = _string(obj, "dir", where, _DIRS)
        conn = _number(obj, "conn", where, integer=True, minimum=1)
        return Event(t, "data", conn, direction, decode_chunk(obj, where), line=line)
    kind = _string(obj, "event", where, _EVENTS) if "event" in obj else None
    if kind is None:
        raise RecordingError(f"{where}: dir: missing (an event line has either 'dir' or 'event')")
    _check_keys(obj, _EVENT_KEYS[kind], where)
    if kind == "connect":
        conn = _number(obj, "conn", where, integer=True, minimum=1)
        return Event(t, kind, conn, peer=_string(obj, "peer", where, required=False), line=line)
    if kind == "close":
        conn = _number(obj, "conn", where, integer=True, minimum=1)
        return Event(t, kind, conn, by=_string(obj, "by", where, _BYS),
                     reason=_string(obj, "reason", where, required=False), line=line)
    if kind == "truncated":
        return Event(t, kind, reason=_string(obj, "reason", where, required=False), line=line)
    return Event(t, kind, line=line)


def read_recording(path, *, allow_partial=False):
    """Read and check a recording file.

    Args:
        path: the file.
        allow_partial (bool): accept a last line cut short (a recorder that
            was killed) by dropping it; otherwise it is an error.

    Returns:
        :class:`Recording`.

    Raises:
        RecordingError: ``FILE:LINE: KEY: problem`` for the first bad line.
        OSError: the file cannot be read.
    """
    name = os.fspath(path)
    with open(name, "rb") as fh:
        raw_lines = fh.read().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
        cut = False
    else:
        cut = bool(raw_lines)  # no newline after the last line
    header = None
    events = []
    for number, raw in enumerate(raw_lines, 1):
        where = f"{name}:{number}"
        last = number == len(raw_lines)
        try:
            text = raw.decode("utf-8")
            obj = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            if last and cut and allow_partial:
                log.warning("%s: dropping the incomplete last line", where)
                break
            raise RecordingError(f"{where}: not a JSON line ({exc})") from None
        if header is None:
            header = parse_header(obj, where)
            continue
        events.append(parse_event(obj, where, number))
    if header is None:
        raise RecordingError(f"{name}:1: format: empty file, no header line")
    return Recording(header, events, name)


# ----------------------------------------------------------------------
# writing
def _now_iso():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


class RecordingWriter:
    """Writes a recording file, thread-safely, one flushed line per event.

    Args:
        path: the file (created or replaced).
        source (str): who records: ``'proxy'`` or ``'interface'``.
        device (str or None): the device's ``host:port``, for the header.
        max_bytes (int or None): size cap of one file (``None``: unbounded).
        keep (int): rotated files kept (0: stop at the cap instead).

    Attributes:
        events (int): events written (all parts).
        dropped (int): events left out after the cap was reached.
        parts (int): files started (1 + rotations).
    """

    def __init__(self, path, *, source="proxy", device=None, max_bytes=100 << 20, keep=0):
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int)
                                      or max_bytes < 2 * _RESERVE + 256):
            raise ValueError(f"max_bytes must be an int >= {2 * _RESERVE + 256} or None, got {max_bytes!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0, got {keep!r}")
        if source not in ("proxy", "interface"):
            raise ValueError(f"source must be 'proxy' or 'interface', got {source!r}")
        self.path = os.fspath(path)
        self.source = source
        self.device = device
        self.max_bytes = max_bytes
        self.keep = keep
        self.events = 0
        self.dropped = 0
        self.parts = 0
        self._lock = threading.Lock()
        self._t0 = time.monotonic()
        self._open_conns = set()
        self._full = False
        self._closed = False
        self._fh = None
        self._size = 0
        #: the error that stopped recording (a full disk), or None
        self.failed = None
        self._start_part()

    # -- file handling
    def _start_part(self, open_conns=()):
        self.parts += 1
        header = {"format": FORMAT, "version": VERSION, "started": _now_iso(), "source": self.source}
        if self.device is not None:
            header["device"] = self.device
        header["part"] = self.parts
        if open_conns:
            header["open"] = sorted(open_conns)
        self._fh = open(self.path, "w", encoding="utf-8", newline="\n")
        self._size = 0
        self._put(header)

    def _rotate(self):
        try:
            self._fh.close()
            for i in range(self.keep, 0, -1):
                src = self.path if i == 1 else f"{self.path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i}")
            self._start_part(self._open_conns)
        except OSError as exc:
            self.failed = exc
            log.error("recording %s: rotation failed, nothing more is recorded: %s", self.path, exc)
            return
        log.info("recording %s rotated (part %d)", self.path, self.parts)

    def _put(self, obj):
        if self.failed is not None:
            return
        line = json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
        except (OSError, ValueError) as exc:
            # a full disk must not break the link being recorded: stop recording, say so once
            self.failed = exc
            log.error("recording %s failed, nothing more is recorded: %s", self.path, exc)
            return
        self._size += len(line.encode("utf-8"))

    def _t(self):
        return round(time.monotonic() - self._t0, 6)

    def _event(self, obj):
        """Write one event (called with the lock held)."""
        if self._closed or self.failed is not None:
            return
        if self._full:
            self.dropped += 1
            return
        if self.max_bytes is not None:
            size = len(json.dumps(obj, ensure_ascii=False, separators=(", ", ": ")).encode("utf-8")) + 1
            if self._size + size > self.max_bytes - _RESERVE:
                if self.keep > 0 and size < self.max_bytes - 2 * _RESERVE - 256:
                    self._rotate()
                else:
                    self._full = True
                    self.dropped += 1
                    log.warning("recording %s reached its cap of %d bytes: nothing more is recorded",
                                self.path, self.max_bytes)
                    return
        self._put(obj)
        self.events += 1

    # -- events
    def connect(self, conn, peer=None):
        """Record that connection ``conn`` was made (``peer``: the other end)."""
        obj = {"t": None, "conn": conn, "event": "connect"}
        if peer is not None:
            obj["peer"] = peer
        with self._lock:
            self._open_conns.add(conn)
            obj["t"] = self._t()
            self._event(obj)

    def data(self, conn, direction, data):
        """Record a chunk: ``direction`` ``'out'`` (client to device) or ``'in'``."""
        if direction not in _DIRS:
            raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")
        if not data:
            return
        with self._lock:
            obj = {"t": self._t(), "conn": conn, "dir": direction}
            obj.update(encode_chunk(data))
            self._event(obj)

    def close_conn(self, conn, by, reason=""):
        """Record that connection ``conn`` closed (``by`` whom, and why)."""
        if by not in _BYS:
            raise ValueError(f"by must be one of {', '.join(_BYS)}, got {by!r}")
        with self._lock:
            if conn not in self._open_conns:
                return
            self._open_conns.discard(conn)
            self._event({"t": self._t(), "conn": conn, "event": "close", "by": by, "reason": str(reason)})

    def close(self):
        """Finish the file: a ``truncated`` event if the cap was reached, then
        ``end``.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            if self._full:
                self._put({"t": self._t(), "event": "truncated", "dropped": self.dropped,
                           "reason": f"size cap of {self.max_bytes} bytes reached"})
            self._put({"t": self._t(), "event": "end", "events": self.events})
            self._closed = True
            try:
                self._fh.close()
            except OSError as exc:
                log.error("recording %s: closing failed: %s", self.path, exc)

    @property
    def closed(self):
        return self._closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Recorder:
    """Records one link in-process: what :class:`~socs_tcp.TCPInterface`
    calls when given ``record=``.

    The four hooks are ``on_connect(addr)``, ``on_send(data)``,
    ``on_recv(data)`` and ``on_close(reason)``; each connection gets the next
    connection id.  A close whose reason says the device (peer) closed is
    recorded with ``by`` = ``device``, any other with ``interface``.  ``out`` is what the link sent, ``in`` what it received,
    as for the proxy.

    Args:
        target: a path (a :class:`RecordingWriter` is made, with
            ``**writer_options``) or an existing :class:`RecordingWriter`
            (shared by several links, each with its own connection ids then
            being the caller's business: prefer one file per link).
    """

    def __init__(self, target, **writer_options):
        if isinstance(target, RecordingWriter):
            self.writer = target
            self._owns = False
        else:
            writer_options.setdefault("source", "interface")
            self.writer = RecordingWriter(target, **writer_options)
            self._owns = True
        self._lock = threading.Lock()
        self._next = 0
        self.conn = None

    @classmethod
    def coerce(cls, value, device=None):
        """``None`` -> ``None``; a :class:`Recorder` (or any object with the
        four hooks) as is; a path -> a new :class:`Recorder`."""
        if value is None:
            return None
        if all(callable(getattr(value, name, None)) for name in ("on_connect", "on_send", "on_recv", "on_close")):
            return value
        if isinstance(value, (str, os.PathLike)):
            return cls(value, device=device)
        raise TypeError(f"record must be a path, a Recorder or None, got {type(value).__name__}: {value!r}")

    def on_connect(self, addr):
        with self._lock:
            if self.conn is not None:
                self.writer.close_conn(self.conn, "interface", "reconnect")
            self._next += 1
            self.conn = self._next
        self.writer.connect(self.conn, addr)

    def on_send(self, data):
        if self.conn is not None:
            self.writer.data(self.conn, "out", data)

    def on_recv(self, data):
        if self.conn is not None:
            self.writer.data(self.conn, "in", data)

    def on_close(self, reason):
        with self._lock:
            conn, self.conn = self.conn, None
        if conn is not None:
            text = str(reason)
            by = "device" if any(k in text for k in ("device closed", "peer closed", "end of stream")) else "interface"
            self.writer.close_conn(conn, by, reason)

    def close(self):
        """Close the current connection's record and, when this recorder made
        the writer, finish the file."""
        self.on_close("recorder closed")
        if self._owns:
            self.writer.close()
