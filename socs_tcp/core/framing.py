"""Terminated text messages over a byte stream, with no I/O.

Operations
    ``encode(message)`` turns one text message into the bytes to send, with
    the terminator added.  ``feed(data)`` takes received bytes;
    ``next_message()`` returns the next complete message as text, or ``None``
    until one has arrived.  Iterating the framer yields every complete
    message.

Goals
    * Several messages in one read and one message split across reads are
      the same to the caller.
    * A multi-byte character split across reads decodes correctly: frames are
      cut on the terminator's bytes and decoded whole.
    * A message that cannot be framed (it contains the terminator, or is not
      a ``str``) is refused before anything is sent.
    * Memory is bounded: one message longer than ``max_size`` is a
      :class:`~socs_tcp.errors.ReadOverflowError`, not an ever-growing buffer.
    * A frame that is not valid text is reported as :class:`FrameDecodeError`
      and skipped; the messages after it are still delivered.

Plan
    A :class:`~socs_tcp.core.buffer.ReceiveBuffer` does the terminator search
    (resumable, so a device that drips bytes costs O(n)).  ``feed`` moves
    complete frames into a queue as it goes, so a large read that holds many
    messages never needs more than ``max_size`` of buffer at once.  Frames are
    decoded when taken, so one bad frame does not hide the others.

Text lines
    With ``lines=True`` (terminator ``"\\n"`` or ``"\\r\\n"``) the framer
    reads text lines the way most line-oriented peers write them: it cuts on
    ``"\\n"`` alone and removes one ``"\\r"`` before it, so a peer that ends
    its lines with ``"\\n"`` and one that ends them with ``"\\r\\n"`` give the
    same messages.  ``encode`` still writes the terminator it was given, and
    refuses a message with a line break (``"\\r"`` or ``"\\n"``) in it.

The terminator must be ASCII and the encoding ASCII-compatible (UTF-8,
Latin-1, ASCII): that is what makes cutting on the terminator's bytes safe.
The tcpcom links use ``"\\0"``, the JSON-lines links ``"\\r\\n"`` in lines
mode.
"""

import codecs
from collections import deque

from ..errors import ReadOverflowError
from .buffer import ReceiveBuffer

__all__ = ["MessageFramer", "FrameDecodeError"]


class FrameDecodeError(ValueError):
    """A received frame is not valid text in the framer's encoding.

    The frame has been consumed; the next call returns the next message.
    """

    def __init__(self, message, frame):
        super().__init__(message)
        #: The raw bytes of the frame, without the terminator.
        self.frame = frame


class MessageFramer:
    """Frame and unframe terminated text messages.

    Args:
        terminator: the end-of-message marker, a non-empty ASCII ``str``
            (or ``bytes``).
        encoding: an ASCII-compatible text encoding.
        max_size: the longest message accepted, in bytes, terminator
            included.
        errors: how undecodable bytes are handled, as for :meth:`bytes.decode`.
            With ``"strict"`` (the default) a bad frame raises
            :class:`FrameDecodeError` from :meth:`next_message`.
        lines: text-line mode (see the module documentation): received
            frames end at ``"\\n"``, with one ``"\\r"`` before it removed.
            Only with the terminator ``"\\n"`` or ``"\\r\\n"``.

    Raises:
        TypeError: ``terminator`` is neither ``str`` nor ``bytes``, or
            ``lines`` is not a bool.
        ValueError: an empty or non-ASCII terminator, an unknown or
            non-ASCII-compatible encoding, a bad ``max_size``, or ``lines``
            with another terminator.
    """

    __slots__ = ("terminator", "lines", "_term_bytes", "_terms", "encoding", "errors", "_buffer", "_frames")

    def __init__(self, terminator="\0", encoding="utf-8", max_size=1 << 20, errors="strict", *, lines=False):
        if isinstance(terminator, str):
            raw = terminator.encode("utf-8", "surrogatepass")
        elif isinstance(terminator, bytes):
            raw = terminator
        else:
            raise TypeError(f"terminator must be str or bytes, got {type(terminator).__name__} {terminator!r}")
        if not raw or not raw.isascii():
            raise ValueError(f"terminator must be a non-empty ASCII string, got {terminator!r}")
        try:
            codecs.lookup(encoding)
        except (LookupError, TypeError):
            raise ValueError(f"unknown encoding {encoding!r}") from None
        if "A\0\r\n".encode(encoding, "strict") != b"A\0\r\n":
            raise ValueError(f"encoding {encoding!r} is not ASCII-compatible; frames cannot be cut on bytes")
        if not isinstance(lines, bool):
            raise TypeError(f"lines must be True or False, got {type(lines).__name__}: {lines!r}")
        if lines and raw not in (b"\n", b"\r\n"):
            raise ValueError(f"lines=True needs the terminator '\\n' or '\\r\\n', got {terminator!r}")
        self.terminator = raw.decode("ascii")
        self.lines = lines
        self._term_bytes = raw
        self._terms = (b"\n",) if lines else (raw,)
        self.encoding = encoding
        self.errors = errors
        self._buffer = ReceiveBuffer(max_size)
        self._frames = deque()

    @property
    def max_size(self):
        """The longest message accepted, in bytes, terminator included."""
        return self._buffer.max_size

    @property
    def pending(self):
        """Bytes received that do not yet form a complete message."""
        return len(self._buffer)

    def encode(self, message):
        """Return the bytes that carry ``message``, terminator added.

        Raises:
            TypeError: ``message`` is not a ``str``.
            ValueError: ``message`` contains the terminator, cannot be
                encoded, or is longer than ``max_size``.
        """
        if not isinstance(message, str):
            raise TypeError(f"message must be str, got {type(message).__name__} {message!r:.80}")
        if self.lines:
            if "\n" in message or "\r" in message:
                raise ValueError(f"a line cannot contain a line break ('\\r' or '\\n'): {message!r:.80}")
        elif self.terminator in message:
            raise ValueError(f"message contains the terminator {self.terminator!r}: {message!r:.80}")
        try:
            data = message.encode(self.encoding) + self._term_bytes
        except UnicodeEncodeError as exc:
            raise ValueError(f"message cannot be encoded as {self.encoding}: {message!r:.80} ({exc.reason})") from None
        if len(data) > self.max_size:
            raise ValueError(f"message of {len(data)} bytes exceeds max_size={self.max_size}")
        return data

    def feed(self, data):
        """Take received bytes; complete messages are queued for :meth:`next_message`.

        Raises:
            ReadOverflowError: a single message grew past ``max_size``.  The
                messages completed before it stay queued; the incomplete
                bytes are discarded (the stream is out of step, so the caller
                should close the connection).
        """
        buffer = self._buffer
        view = memoryview(data)
        while True:
            room = buffer.room
            buffer.feed(view[:room])
            view = view[room:]
            if self.lines:
                while (found := buffer.maybe_extract_until(self._terms)) is not None:
                    frame = found[0]
                    self._frames.append(frame[:-1] if frame.endswith(b"\r") else frame)
            else:
                while (found := buffer.maybe_extract_until(self._terms)) is not None:
                    self._frames.append(found[0])
            if not view:
                return
            if not buffer.room:
                dropped = len(buffer.drain()) + len(view)
                raise ReadOverflowError(
                    f"message longer than max_size={self.max_size} bytes without a terminator "
                    f"{self.terminator!r}; {dropped} bytes discarded")

    def next_message(self):
        """The next complete message as text, or ``None``.

        Raises:
            FrameDecodeError: the next frame is not valid text (it is
                consumed, so the following call moves on).
        """
        if not self._frames:
            return None
        frame = self._frames.popleft()
        try:
            return frame.decode(self.encoding, self.errors)
        except UnicodeDecodeError as exc:
            raise FrameDecodeError(
                f"received frame is not valid {self.encoding} ({exc.reason} at byte {exc.start}): {frame!r:.120}",
                frame) from None

    def __iter__(self):
        while (message := self.next_message()) is not None:
            yield message

    def reset(self):
        """Forget everything received (a new connection starts clean).

        Returns:
            int: the number of bytes discarded.
        """
        # (in lines mode a frame's stripped "\r" is not counted)
        term = 1 if self.lines else len(self._term_bytes)
        dropped = len(self._buffer.drain()) + sum(len(f) + term for f in self._frames)
        self._frames.clear()
        return dropped
