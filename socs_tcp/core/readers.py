"""Readers: when a read is complete, over :mod:`socs_tcp.core.buffer`.

Operations
    ``terminators(eot, encoding)`` turns an ``eot`` argument into the tuple
    of byte strings that :meth:`~socs_tcp.core.buffer.ReceiveBuffer.maybe_extract_until`
    takes.  ``check_count(n, max_size)`` checks an exact read's size.
    ``compile_pattern(pattern, encoding)`` makes the bytes regular
    expression of ``expect``, and ``extract_match(buffer, regex, deadline)``
    searches the buffer for it without ever outliving the deadline.
    ``describe(what, arg)`` says what a read waits for, for error messages.

Goals
    * The common forms of ``eot`` cost next to nothing on every call: one
      ``bytes`` terminator or a list of one (what ``TCPBusAgent`` passes) are
      taken after a type check, and a string is parsed once: one small
      cache per encoding holds the parsed strings (up to 256); nothing else
      is cached.
    * A regular expression can never hold the link for longer than the
      operation's deadline.  Python's :mod:`re` cannot be interrupted, so
      patterns are compiled with the `regex <https://pypi.org/project/regex/>`_
      package, whose searches take a ``timeout``.
    * No I/O: bytes and values only.
"""

import re

import regex as _regex

from ..errors import LinkTimeoutError
from .codec import parse_terminators

__all__ = ["terminators", "check_count", "compile_pattern", "extract_match", "describe", "PATTERN_TYPES"]

#: the least time a search is given, in seconds, even past the deadline
MIN_SEARCH = 0.001

#: what ``expect`` accepts as an already compiled pattern
PATTERN_TYPES = (re.Pattern, _regex.Pattern)

_parsed = {}          # encoding -> {eot str: terminators}
_PARSED_MAX = 256

# re flags that mean something for a bytes pattern, and their regex equivalents
# (re.ASCII and re.UNICODE do not apply to bytes; the numeric values differ)
_FLAGS = ((re.IGNORECASE, _regex.IGNORECASE), (re.LOCALE, _regex.LOCALE), (re.MULTILINE, _regex.MULTILINE),
          (re.DOTALL, _regex.DOTALL), (re.VERBOSE, _regex.VERBOSE))
_REGEX_FLAGS = _regex.IGNORECASE | _regex.LOCALE | _regex.MULTILINE | _regex.DOTALL | _regex.VERBOSE


def terminators(eot, encoding):
    """``eot`` as a tuple of non-empty byte strings (see
    :func:`socs_tcp.core.codec.parse_terminators` for the accepted forms).

    Raises:
        TypeError, ValueError: as :func:`~socs_tcp.core.codec.parse_terminators`.
    """
    kind = type(eot)
    if kind is bytes:
        if eot:
            return (eot,)
    elif kind is str:
        cache = _parsed.get(encoding)
        if cache is None:
            cache = _parsed[encoding] = {}
        terms = cache.get(eot)
        if terms is None:
            terms = parse_terminators(eot, encoding)
            if len(cache) < _PARSED_MAX:
                cache[eot] = terms
        return terms
    elif (kind is list or kind is tuple) and len(eot) == 1 and type(eot[0]) is bytes and eot[0]:
        return (eot[0],)
    return parse_terminators(eot, encoding)


def check_count(n, max_size):
    """``n``, the size of an exact read, checked against ``max_size``.

    Raises:
        TypeError: ``n`` is not an int.
        ValueError: ``n`` is negative or larger than ``max_size``.
    """
    if type(n) is not int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"bytes_to_read must be an int, got {type(n).__name__}: {n!r}")
    if n < 0:
        raise ValueError(f"bytes_to_read must be >= 0, got {n}")
    if n > max_size:
        raise ValueError(f"bytes_to_read={n} exceeds max_read_size={max_size}")
    return n


def compile_pattern(pattern, encoding):
    """The bytes regular expression for ``pattern``.

    Args:
        pattern: a ``str`` (encoded with ``encoding``), ``bytes``, or a
            pattern compiled with :mod:`re` or :mod:`regex`.  A compiled
            pattern's text is recompiled as bytes with its flags
            (``IGNORECASE``, ``MULTILINE``, ``DOTALL``, ``VERBOSE``,
            ``LOCALE``); ``ASCII`` and ``UNICODE`` do not apply to bytes and
            are dropped.  Inline flags such as ``"(?i)ready"`` work too.
        encoding: the link's text encoding.

    Raises:
        TypeError: ``pattern`` is of another type.
        ValueError: ``pattern`` is not a valid regular expression; the
            message names it.
    """
    if isinstance(pattern, _regex.Pattern) and isinstance(pattern.pattern, bytes):
        return pattern  # already what the link needs: no recompilation per operation
    flags = 0
    if isinstance(pattern, re.Pattern):
        for mine, theirs in _FLAGS:
            if pattern.flags & mine:
                flags |= theirs
        pattern = pattern.pattern
    elif isinstance(pattern, _regex.Pattern):
        flags = pattern.flags & _REGEX_FLAGS
        pattern = pattern.pattern
    if isinstance(pattern, str):
        pattern = pattern.encode(encoding)
    if not isinstance(pattern, (bytes, bytearray)):
        raise TypeError(f"pattern must be a str, bytes or compiled regex, got {type(pattern).__name__}: {pattern!r}")
    try:
        return _regex.compile(bytes(pattern), flags)
    except _regex.error as e:
        raise ValueError(f"pattern {bytes(pattern)!r} is not a valid regular expression: {e}") from None


def extract_match(buffer, regex, deadline):
    """:meth:`~socs_tcp.core.buffer.ReceiveBuffer.maybe_extract_match`
    bounded by ``deadline`` (a :class:`~socs_tcp.core.deadline.Deadline`).

    Returns:
        what the buffer returns: ``(consumed, match)`` or ``None``.

    Raises:
        LinkTimeoutError: the search itself did not finish before the
            deadline (a pattern that backtracks catastrophically).  The
            buffered bytes are kept.
    """
    if not buffer:
        return None
    left = deadline.remaining()
    try:
        # regex treats timeout=0 as already spent: a search past the deadline
        # (or with timeout=0) still gets MIN_SEARCH to look at what is there
        return buffer.maybe_extract_match(regex, timeout=None if left is None else max(left, MIN_SEARCH))
    except TimeoutError:
        raise LinkTimeoutError(
            f"searching {len(buffer)} buffered bytes for the pattern {regex.pattern!r} did not finish within the "
            f"operation's timeout of {deadline.timeout} s (does the pattern backtrack catastrophically, "
            "as '(a|aa)+b' does?); the bytes stay buffered") from None


def describe(what, arg):
    """What a read waits for, in words (called only for an error message)."""
    if what == "until":
        return f"a terminator in {list(arg)}"
    if what == "exact":
        return f"{arg} bytes"
    if what == "match":
        return f"a match of {arg.pattern!r}"
    return what
