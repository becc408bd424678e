"""Layer 1: the bounded receive buffer (no sockets)."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socs_tcp.core.buffer import ReceiveBuffer
from socs_tcp.errors import ReadOverflowError


def test_until_keeps_bytes_after_the_terminator():
    buf = ReceiveBuffer()
    buf.feed(b"one\ntwo\nthr")
    assert buf.maybe_extract_until((b"\n",)) == (b"one", b"\n")
    assert buf.maybe_extract_until((b"\n",)) == (b"two", b"\n")
    assert buf.maybe_extract_until((b"\n",)) is None
    buf.feed(b"ee\n")
    assert buf.maybe_extract_until((b"\n",)) == (b"three", b"\n")
    assert len(buf) == 0


def test_earliest_terminator_wins_and_longest_on_ties():
    buf = ReceiveBuffer()
    buf.feed(b"a\r\nb;c")
    assert buf.maybe_extract_until((b";", b"\r", b"\r\n")) == (b"a", b"\r\n")
    assert buf.maybe_extract_until((b";", b"\r\n")) == (b"b", b";")
    assert buf.peek() == b"c"


def test_terminator_split_across_feeds():
    buf = ReceiveBuffer()
    terms = (b"\r\n",)
    for piece in (b"hel", b"lo\r"):
        buf.feed(piece)
        assert buf.maybe_extract_until(terms) is None
    buf.feed(b"\nrest")
    assert buf.maybe_extract_until(terms) == (b"hello", b"\r\n")
    assert buf.peek() == b"rest"


def test_drip_feed_is_linear():
    """One byte at a time: each search resumes where the last stopped, so the
    total bytes examined stay proportional to the message length."""
    buf = ReceiveBuffer()
    terms = (b"\n",)
    for _ in range(20000):
        buf.feed(b"x")
        assert buf.maybe_extract_until(terms) is None
        assert buf._scanned == len(buf)
    buf.feed(b"\n")
    frame, _ = buf.maybe_extract_until(terms)
    assert len(frame) == 20000


def test_exact_and_some():
    buf = ReceiveBuffer()
    buf.feed(b"abcdef")
    assert buf.maybe_extract_exact(7) is None
    assert buf.maybe_extract_exact(2) == b"ab"
    assert buf.extract_some(100) == b"cdef"
    assert buf.extract_some(10) == b""


def test_match_spans_feeds():
    buf = ReceiveBuffer()
    regex = re.compile(rb"READY>")
    buf.feed(b"boot...REA")
    assert buf.maybe_extract_match(regex) is None
    buf.feed(b"DY> tail")
    consumed, match = buf.maybe_extract_match(regex)
    assert consumed == b"boot...READY>" and match.group(0) == b"READY>"
    assert buf.peek() == b" tail"


def test_overflow_is_clear_and_keeps_buffer():
    buf = ReceiveBuffer(max_size=8)
    buf.feed(b"12345")
    with pytest.raises(ReadOverflowError, match="max_read_size=8"):
        buf.feed(b"6789")
    assert buf.peek() == b"12345"
    assert buf.room == 3


@pytest.mark.parametrize("extract", [ReceiveBuffer.maybe_extract_exact, ReceiveBuffer.extract_some])
def test_negative_counts_are_refused_and_take_nothing(extract):
    buf = ReceiveBuffer()
    buf.feed(b"abc")
    with pytest.raises(ValueError, match="negative number of bytes: -1"):
        extract(buf, -1)
    assert buf.peek() == b"abc"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_max_size(bad):
    with pytest.raises(ValueError, match="max_size"):
        ReceiveBuffer(bad)


@given(st.lists(st.binary(max_size=8), max_size=30),
       st.lists(st.sampled_from([b"\n", b"\r\n", b";", b"\x00"]), min_size=1, max_size=3, unique=True))
def test_frames_match_a_reference_split(chunks, terms):
    """However the stream is chunked, the frames are those of a one-shot split."""
    terms = tuple(terms)
    stream = b"".join(chunks)
    buf = ReceiveBuffer()
    frames = []
    for chunk in chunks:
        buf.feed(chunk)
        while (found := buf.maybe_extract_until(terms)) is not None:
            frames.append(found[0])
    expected = []
    rest = stream
    while True:
        hits = [(rest.find(t), -len(t), t) for t in terms if rest.find(t) >= 0]
        if not hits:
            break
        pos, _, term = min(hits)
        expected.append(rest[:pos])
        rest = rest[pos + len(term):]
    assert frames == expected
    assert buf.peek() == rest


@given(st.binary(max_size=200), st.integers(1, 50))
def test_exact_reads_lose_nothing(stream, n):
    buf = ReceiveBuffer()
    out = []
    for i in range(0, len(stream), 7):
        buf.feed(stream[i:i + 7])
        while (frame := buf.maybe_extract_exact(n)) is not None:
            out.append(frame)
    assert b"".join(out) + buf.drain() == stream
