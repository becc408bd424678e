"""The JSON-lines wire format of the message links, with no I/O.

Operations
    :func:`classify_id` tells what a message ``id`` is (command, event,
    telemetry, reply).  :class:`JsonLinesWire` turns a message (a header and
    its details) into the bytes of one line, and received bytes into
    messages: ``feed(data)``, then ``next_message()`` returns the next message
    as a ``dict``, or ``None`` until a whole line has arrived.

Goals
    * One copy of the format, shared by the asyncio client
      (:mod:`socs_tcp.messages.jsonlines`) and the test server
      (:mod:`socs_tcp.testing.jsonserver`).
    * Peers may end lines with ``"\\r\\n"`` (what ``ts_m2com`` writes) or with
      ``"\\n"`` alone (what most JSON Lines writers do); both are read.  What
      is written is ``"\\r\\n"`` unless ``"\\n"`` is asked for.
    * A malformed line costs only that line: it is reported as
      :class:`InvalidMessageError` (which names it) and the lines before and
      after it are still delivered.
    * Bad outgoing details are refused before anything is written, with an
      error that names the value.

Plan
    Lines are cut by :class:`~socs_tcp.core.framing.MessageFramer` in its
    text-line mode (bounded buffer, multi-byte characters split across reads,
    undecodable lines skipped); each line is parsed with :mod:`json` when it
    is taken.

Message ids
    * ``cmd_<name>`` -- a command, with an integer ``sequence_id`` that the
      sender increments per command;
    * ``evt_<name>`` / ``tel_<name>`` -- an event / telemetry, optionally
      with ``compName`` naming the component it concerns (controllers often
      publish their own events and telemetry under the bare name, e.g.
      ``"inPosition"``);
    * ``ack`` / ``noack`` -- the receiver accepted the command (it is known
      and well formed) or refused it, with the command's ``sequence_id``;
    * ``success`` / ``fail`` -- the final status of an accepted command.

    Any other key of the object is a detail (parameter or value) of the
    message: ``{"id": "cmd_move", "sequence_id": 3, "x": 0.1}``.
"""

import enum
import json

from .framing import FrameDecodeError, MessageFramer

__all__ = [
    "TERMINATOR", "LINE_ENDINGS", "REPLY_IDS", "MsgType", "classify_id", "coerce_type", "check_name",
    "check_line_ending", "encode_details", "join_message", "reply_reason", "InvalidMessageError", "JsonLinesWire",
]

#: The line ending written by default (that of ``ts_m2com``).
TERMINATOR = "\r\n"

#: The line endings that can be written; both are always read.
LINE_ENDINGS = ("\r\n", "\n")

#: Ids of the replies to a command, in the order they can arrive.
REPLY_IDS = ("ack", "noack", "success", "fail")

#: Characters of a bad message quoted in errors and logs.
TEXT_IN_LOG = 500


class MsgType(enum.Enum):
    """Kinds of message a client writes; the value names the kind, :attr:`prefix` starts the ``id``.

    The ``ts_m2com`` spellings ``MsgType.Command``, ``MsgType.Event`` and
    ``MsgType.Telemetry`` are aliases of the upper-case members.
    """

    #: Commands, ``cmd_<name>`` with a ``sequence_id``, answered by the device.
    COMMAND = "command"
    #: Events, ``evt_<name>``.
    EVENT = "event"
    #: Telemetry, ``tel_<name>``.
    TELEMETRY = "telemetry"
    Command = "command"
    Event = "event"
    Telemetry = "telemetry"

    @property
    def prefix(self):
        """``"cmd_"``, ``"evt_"`` or ``"tel_"``."""
        return _PREFIXES[self]


_PREFIXES = {MsgType.COMMAND: "cmd_", MsgType.EVENT: "evt_", MsgType.TELEMETRY: "tel_"}


def classify_id(msg_id):
    """Split a message ``id`` into its kind and name.

    Returns:
        tuple: ``(MsgType, name)`` for a prefixed id (``"tel_position"`` ->
        ``(MsgType.TELEMETRY, "position")``), ``("reply", msg_id)`` for one of
        :data:`REPLY_IDS`, and ``(None, msg_id)`` for anything else (a bare
        event or telemetry name, whose kind the protocol leaves to the
        reader).
    """
    if not isinstance(msg_id, str):
        return None, msg_id
    if msg_id in REPLY_IDS:
        return "reply", msg_id
    for kind, prefix in _PREFIXES.items():
        if msg_id.startswith(prefix) and len(msg_id) > len(prefix):
            return kind, msg_id[len(prefix):]
    return None, msg_id


def coerce_type(msg_type):
    """A :class:`MsgType` from a member or its value (any case).

    Raises:
        ValueError: anything else, named in the message.
    """
    if isinstance(msg_type, MsgType):
        return msg_type
    if isinstance(msg_type, str):
        try:
            return MsgType(msg_type.lower())
        except ValueError:
            pass
    raise ValueError(f"message type {msg_type!r} is not supported; use one of "
                     f"{', '.join(repr(m.value) for m in (MsgType.COMMAND, MsgType.EVENT, MsgType.TELEMETRY))}")


def check_name(name, what="message name"):
    """A message, command or component name: a non-empty ``str`` without
    white space or control characters."""
    if not isinstance(name, str):
        raise TypeError(f"{what} must be str, got {type(name).__name__} {name!r}")
    if not name or any(c.isspace() or not c.isprintable() for c in name):
        raise ValueError(f"{what} must be a non-empty string without white space or control characters, got {name!r}")
    return name


def check_line_ending(line_ending, what="line_ending"):
    """One of :data:`LINE_ENDINGS`."""
    if not isinstance(line_ending, str):
        raise TypeError(f"{what} must be '\\r\\n' or '\\n', got {type(line_ending).__name__}: {line_ending!r}")
    if line_ending not in LINE_ENDINGS:
        raise ValueError(f"{what} must be '\\r\\n' or '\\n', got {line_ending!r}")
    return line_ending


def _dumps(obj):
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode_details(details, reserved):
    """Validate message details and return them as JSON text (an object).

    Args:
        details: a ``dict`` with ``str`` keys, or ``None``.
        reserved: keys the header sets, which the details may not hold.

    Raises:
        TypeError: not a dict, a non-``str`` key, or a value JSON cannot carry
            (an object, a set).
        ValueError: a reserved key, or NaN / infinity.
    """
    if details is None:
        return "{}"
    if not isinstance(details, dict):
        raise TypeError(f"msg_details must be a dict or None, got {type(details).__name__} {details!r:.80}")
    for key in details:
        if not isinstance(key, str):
            raise TypeError(f"msg_details keys must be str, got {type(key).__name__} {key!r}")
        if key in reserved:
            raise ValueError(f"msg_details already has the key {key!r}, which the message header sets")
    try:
        return _dumps(details)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"msg_details cannot be sent as JSON: {exc}") from None


def join_message(header, body_json):
    """One JSON object from a header dict and the JSON text of the details (header keys first)."""
    head = _dumps(header)
    if body_json == "{}":
        return head
    return head[:-1] + "," + body_json[1:]


def reply_reason(reply):
    """What a ``noack`` / ``fail`` reply says beyond its id, as ``": ..."`` (or ``""``)."""
    extra = {k: v for k, v in reply.items() if k not in ("id", "sequence_id")}
    if not extra:
        return ""
    for key in ("reason", "message", "error"):
        if isinstance(extra.get(key), str) and len(extra) == 1:
            return f": {extra[key]}"
    try:
        return f": {_dumps(extra)}"
    except ValueError:
        return f": {extra!r}"


class InvalidMessageError(ValueError):
    """A received line is not a JSON object (or not valid UTF-8).

    The line has been consumed: the next call of
    :meth:`JsonLinesWire.next_message` returns the next message.

    Attributes:
        text (str or bytes): the line as received (bytes when it was not
            valid UTF-8), without its line ending.
    """

    def __init__(self, message, text):
        super().__init__(message)
        self.text = text


class JsonLinesWire:
    """Messages to and from the bytes of a JSON-lines stream.

    Args:
        max_size: the longest line accepted, in bytes, line ending included.
        line_ending: what :meth:`encode` ends a line with, ``"\\r\\n"``
            (default) or ``"\\n"``.  Received lines may end with either.

    Raises:
        TypeError, ValueError: a bad ``line_ending`` or ``max_size``.
    """

    __slots__ = ("line_ending", "_framer")

    def __init__(self, max_size=1 << 20, line_ending=TERMINATOR):
        self.line_ending = check_line_ending(line_ending)
        self._framer = MessageFramer(line_ending, "utf-8", max_size, lines=True)

    @property
    def max_size(self):
        """The longest line accepted, in bytes, line ending included."""
        return self._framer.max_size

    @property
    def pending(self):
        """Bytes received that do not yet form a complete line."""
        return self._framer.pending

    def encode(self, header, body_json="{}"):
        """The bytes of one message: ``header`` (a dict) then the details
        (JSON text from :func:`encode_details`), and the line ending.

        Raises:
            ValueError: the message is longer than ``max_size``.
        """
        return self._framer.encode(join_message(header, body_json))

    def encode_object(self, message):
        """The bytes of one message given as a whole ``dict``.

        Raises:
            TypeError, ValueError: as :func:`encode_details`, or too long.
        """
        return self._framer.encode(encode_details(message, ()))

    def feed(self, data):
        """Take received bytes.

        Raises:
            ReadOverflowError: one line grew past ``max_size`` (the lines
                completed before it stay queued; the stream is out of step).
        """
        self._framer.feed(data)

    def next_message(self):
        """The next received message as a ``dict``, or ``None`` until a line
        is complete.  Blank lines are skipped.

        Raises:
            InvalidMessageError: the next line is not valid UTF-8, not JSON,
                or not a JSON object.  It is consumed; the following call
                moves on.
        """
        framer = self._framer
        while True:
            try:
                text = framer.next_message()
            except FrameDecodeError as exc:
                raise InvalidMessageError(str(exc), exc.frame) from None
            if text is None:
                return None
            if text.strip():
                break
        try:
            message = json.loads(text)
        except ValueError as exc:
            raise InvalidMessageError(f"not valid JSON ({exc}): {text[:TEXT_IN_LOG]!r}", text) from None
        if not isinstance(message, dict):
            raise InvalidMessageError(f"not a JSON object: {text[:TEXT_IN_LOG]!r}", text)
        return message

    def reset(self):
        """Forget everything received (a new connection starts clean).

        Returns:
            int: the number of bytes discarded.
        """
        return self._framer.reset()
