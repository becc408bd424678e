"""The bounded receive buffer: bytes in, complete frames out, no I/O.

Operations
    ``feed(data)`` appends received bytes.  ``maybe_extract_until(terms)``,
    ``maybe_extract_exact(n)`` and ``maybe_extract_match(regex)`` each return
    a complete frame, or ``None`` when the buffer does not hold one yet (the
    caller then receives more and asks again).  ``extract_some(n)`` takes
    whatever is there, ``drain()`` takes everything.

Goals
    * Nothing received is lost: bytes after a frame stay for the next call.
    * Bounded memory: ``feed`` refuses to grow the buffer past ``max_size``.
    * A device that drips one byte at a time costs O(n) in total, not O(n^2):
      a terminator search resumes where the previous one stopped.

Plan
    One ``bytearray``.  ``_scanned`` remembers how many leading bytes are known
    to hold no complete terminator of the terminator set ``_scanned_for``; a
    new search with the same set starts ``longest terminator - 1`` bytes
    before that point (a terminator may straddle the old end).  Any extraction
    or a different terminator set resets the mark.  Regular expressions cannot
    resume safely in general, so ``maybe_extract_match`` searches the whole
    buffer each time; ``max_size`` bounds its length, and a ``timeout``
    (patterns of the ``regex`` package) bounds its time.
"""

from ..errors import ReadOverflowError

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """Bounded byte buffer with frame extraction.

    Args:
        max_size: the most bytes the buffer may hold.  ``feed`` past it raises
            :class:`~socs_tcp.errors.ReadOverflowError`.

    Attributes:
        data (bytearray): the buffered bytes.  It is changed in place and
            never replaced, so a hot path can test it for emptiness without
            a method call; change it only through the methods.
    """

    __slots__ = ("data", "max_size", "_scanned", "_scanned_for")

    def __init__(self, max_size=1 << 20):
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.data = bytearray()
        self.max_size = max_size
        self._scanned = 0
        self._scanned_for = None

    def __len__(self):
        return len(self.data)

    def __bool__(self):
        return bool(self.data)

    def peek(self):
        """A copy of the buffered bytes, not consumed."""
        return bytes(self.data)

    @property
    def room(self):
        """How many more bytes ``feed`` accepts."""
        return self.max_size - len(self.data)

    def feed(self, data):
        """Append received bytes.

        Raises:
            ReadOverflowError: the buffer would exceed ``max_size``.  The
                buffer is left unchanged; the caller decides what to discard.
        """
        buffered = self.data
        if len(buffered) + len(data) > self.max_size:
            raise ReadOverflowError(
                f"receive buffer overflow: {len(buffered)} buffered + {len(data)} new bytes "
                f"exceed max_read_size={self.max_size} without completing a read")
        buffered += data  # in place: no attribute store

    def unread(self, data):
        """Put ``data`` back in front of the buffered bytes.

        For a read that gave up part-way: what it took is returned so the
        next read sees the stream in order.

        Raises:
            ReadOverflowError: the buffer would exceed ``max_size``; it is
                left unchanged.
        """
        if len(self.data) + len(data) > self.max_size:
            raise ReadOverflowError(
                f"cannot put back {len(data)} bytes: with {len(self.data)} buffered they exceed "
                f"max_read_size={self.max_size}")
        self.data[:0] = data
        self._scanned = 0
        self._scanned_for = None

    def _take(self, end, skip=0):
        frame = bytes(self.data[:end])
        del self.data[:end + skip]
        self._scanned = 0
        self._scanned_for = None
        return frame

    def maybe_extract_until(self, terminators):
        """Extract the bytes before the earliest terminator.

        Args:
            terminators: tuple of non-empty ``bytes``.  When two match at the
                same position the longer one wins (``\\r\\n`` over ``\\r``).

        Returns:
            ``(frame, terminator)`` with the terminator removed from the
            buffer but not included in ``frame``; or ``None``.
        """
        data = self.data
        if not data:
            return None
        if len(terminators) == 1:
            # the common case, written out (this runs once per reply)
            term = terminators[0]
            start = 0
            if self._scanned_for is not None and self._scanned_for == terminators:
                start = self._scanned - len(term) + 1
                if start < 0:
                    start = 0
            pos = data.find(term, start)
            if pos < 0:
                self._scanned = len(data)
                self._scanned_for = terminators
                return None
            frame = bytes(data[:pos])
            del data[:pos + len(term)]
            self._scanned = 0
            self._scanned_for = None
            return frame, term
        longest = max(len(t) for t in terminators)
        start = 0
        if self._scanned_for == terminators:
            start = max(0, self._scanned - longest + 1)
        best = -1
        best_term = None
        for term in terminators:
            limit = len(data) if best < 0 else best + len(term)
            pos = data.find(term, start, limit)
            if pos < 0:
                continue
            if best < 0 or pos < best or (pos == best and len(term) > len(best_term)):
                best, best_term = pos, term
        if best < 0:
            self._scanned = len(data)
            self._scanned_for = terminators
            return None
        return self._take(best, len(best_term)), best_term

    def maybe_extract_exact(self, n):
        """Extract exactly ``n`` bytes, or ``None`` if fewer are buffered.

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"cannot extract a negative number of bytes: {n}")
        if len(self.data) < n:
            return None
        return self._take(n)

    def maybe_extract_match(self, regex, timeout=None):
        """Extract everything up to the end of the first match of ``regex``.

        Args:
            regex: a compiled ``bytes`` pattern.
            timeout: seconds the search may take, for a pattern compiled with
                the ``regex`` package (``None``: no limit).  A search that
                takes longer raises :class:`TimeoutError` and extracts
                nothing.

        Returns:
            ``(consumed, match)`` where ``consumed`` runs from the start of the
            buffer to the end of the match; or ``None``.
        """
        # search a snapshot: a match object over the bytearray would change
        # when the consumed bytes are deleted
        data = bytes(self.data)
        match = regex.search(data) if timeout is None else regex.search(data, timeout=timeout)
        if match is None:
            return None
        return self._take(match.end()), match

    def extract_some(self, n):
        """Extract up to ``n`` bytes (possibly ``b""``).

        Raises:
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"cannot extract a negative number of bytes: {n}")
        return self._take(min(n, len(self.data)))

    def drain(self):
        """Extract and return everything buffered."""
        return self._take(len(self.data))
