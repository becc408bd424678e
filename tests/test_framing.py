"""MessageFramer: terminated text messages over a byte stream (pure logic)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socs_tcp.core.framing import FrameDecodeError, MessageFramer
from socs_tcp.errors import ReadOverflowError


def test_encode_adds_terminator_and_feed_strips_it():
    framer = MessageFramer("\0")
    assert framer.encode("hello") == b"hello\0"
    framer.feed(b"hello\0")
    assert framer.next_message() == "hello"
    assert framer.next_message() is None


def test_several_messages_in_one_read():
    framer = MessageFramer("\r\n")
    framer.feed(b'{"a":1}\r\n{"b":2}\r\n{"c"')
    assert list(framer) == ['{"a":1}', '{"b":2}']
    assert framer.pending == 4
    framer.feed(b":3}\r\n")
    assert list(framer) == ['{"c":3}']


def test_one_message_split_across_reads_including_terminator():
    framer = MessageFramer("\r\n")
    for piece in (b"par", b"tial\r", b"\n"):
        framer.feed(piece)
    assert list(framer) == ["partial"]


def test_multibyte_character_split_across_reads():
    framer = MessageFramer("\0")
    data = framer.encode("Temperatur 21,5 °C — ok ✓")
    for i in range(len(data)):
        framer.feed(data[i:i + 1])
    assert list(framer) == ["Temperatur 21,5 °C — ok ✓"]


def test_empty_message_is_a_message():
    framer = MessageFramer("\0")
    framer.feed(b"\0\0")
    assert list(framer) == ["", ""]


def test_message_containing_terminator_is_refused():
    framer = MessageFramer("\0")
    with pytest.raises(ValueError, match=r"contains the terminator '\\x00'"):
        framer.encode("a\0b")


def test_non_str_message_is_a_type_error():
    with pytest.raises(TypeError, match="bytes"):
        MessageFramer().encode(b"raw")


def test_unencodable_message_names_the_encoding():
    with pytest.raises(ValueError, match="ascii"):
        MessageFramer("\n", encoding="ascii").encode("µ")


def test_message_longer_than_max_size_cannot_be_sent():
    framer = MessageFramer("\n", max_size=8)
    assert framer.encode("1234567") == b"1234567\n"
    with pytest.raises(ValueError, match="max_size=8"):
        framer.encode("12345678")


@pytest.mark.parametrize("terminator, error", [
    ("", ValueError), (b"", ValueError), ("°", ValueError), (0, TypeError), (None, TypeError),
])
def test_bad_terminator(terminator, error):
    with pytest.raises(error, match="terminator"):
        MessageFramer(terminator)


@pytest.mark.parametrize("encoding", ["utf-16", "no-such-codec"])
def test_bad_encoding(encoding):
    with pytest.raises(ValueError, match=encoding):
        MessageFramer("\0", encoding=encoding)


def test_overflow_keeps_completed_messages_and_discards_the_rest():
    framer = MessageFramer("\n", max_size=16)
    with pytest.raises(ReadOverflowError, match="max_size=16"):
        framer.feed(b"ok\n" + b"x" * 40)
    assert list(framer) == ["ok"]
    assert framer.pending == 0
    framer.feed(b"next\n")
    assert list(framer) == ["next"]


def test_large_read_of_many_small_messages_is_not_an_overflow():
    framer = MessageFramer("\n", max_size=16)
    framer.feed(b"msg\n" * 1000)
    assert sum(1 for _ in framer) == 1000


def test_overflow_across_feeds():
    framer = MessageFramer("\0", max_size=10)
    framer.feed(b"x" * 10)
    with pytest.raises(ReadOverflowError):
        framer.feed(b"y")


def test_invalid_text_is_reported_and_skipped():
    framer = MessageFramer("\0")
    framer.feed(b"good\0\xff\xfe\0after\0")
    assert framer.next_message() == "good"
    with pytest.raises(FrameDecodeError) as info:
        framer.next_message()
    assert info.value.frame == b"\xff\xfe"
    assert "utf-8" in str(info.value)
    assert framer.next_message() == "after"


def test_replace_errors_decode_bad_bytes_instead_of_raising():
    framer = MessageFramer("\0", errors="replace")
    framer.feed(b"a\xffb\0")
    assert framer.next_message() == "a\ufffdb"


def test_reset_discards_everything_and_counts_it():
    framer = MessageFramer("\0")
    framer.feed(b"one\0tw")
    assert framer.reset() == len(b"one\0tw")
    assert framer.next_message() is None and framer.pending == 0


messages = st.lists(st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",))), max_size=20)


@given(messages, st.lists(st.integers(1, 7), min_size=1, max_size=10))
def test_round_trip_under_any_split(texts, sizes):
    framer = MessageFramer("\0")
    stream = b"".join(framer.encode(t) for t in texts)
    received, i, k = [], 0, 0
    while i < len(stream):
        step = sizes[k % len(sizes)]
        framer.feed(stream[i:i + step])
        received.extend(framer)
        i, k = i + step, k + 1
    assert received == texts
    assert framer.pending == 0


@given(st.binary(max_size=300), st.integers(1, 64))
def test_arbitrary_bytes_raise_only_documented_errors(data, max_size):
    framer = MessageFramer("\r\n", max_size=max_size)
    for i in range(0, len(data), 7):
        try:
            framer.feed(data[i:i + 7])
        except ReadOverflowError:
            pass
        while True:
            try:
                if framer.next_message() is None:
                    break
            except FrameDecodeError:
                continue
    assert framer.pending <= max_size


# ---------------------------------------------------------------- text lines: "\n" and "\r\n" alike


@pytest.mark.parametrize("terminator", ["\r\n", "\n"])
def test_lines_mode_accepts_lf_and_crlf_in_any_mix(terminator):
    framer = MessageFramer(terminator, lines=True)
    framer.feed(b'{"a":1}\n{"b":2}\r\n{"c":3}\n\r\n')
    assert list(framer) == ['{"a":1}', '{"b":2}', '{"c":3}', ""]
    assert framer.pending == 0


def test_lines_mode_strips_only_one_cr_and_only_before_lf():
    framer = MessageFramer("\r\n", lines=True)
    framer.feed(b"a\r\r\nb\rc\n")
    assert list(framer) == ["a\r", "b\rc"]


def test_lines_mode_cr_and_lf_split_across_reads():
    framer = MessageFramer("\r\n", lines=True)
    for piece in (b"par", b"tial\r", b"\n", b"next", b"\n"):
        framer.feed(piece)
    assert list(framer) == ["partial", "next"]


@pytest.mark.parametrize("terminator, wire", [("\r\n", b"x\r\n"), ("\n", b"x\n")])
def test_lines_mode_writes_its_own_terminator(terminator, wire):
    assert MessageFramer(terminator, lines=True).encode("x") == wire


@pytest.mark.parametrize("message", ["a\nb", "a\rb", "end\r"])
def test_lines_mode_refuses_a_line_break_in_a_message(message):
    with pytest.raises(ValueError, match="line break"):
        MessageFramer("\n", lines=True).encode(message)


def test_lines_mode_bad_utf8_costs_only_that_line():
    framer = MessageFramer("\r\n", lines=True)
    framer.feed(b"good1\n\xff\xfe\r\ngood2\n")
    assert framer.next_message() == "good1"
    with pytest.raises(FrameDecodeError):
        framer.next_message()
    assert framer.next_message() == "good2"


def test_lines_mode_needs_a_line_terminator_and_a_bool():
    with pytest.raises(ValueError, match=r"lines=True needs .*'\\x00'"):
        MessageFramer("\0", lines=True)
    with pytest.raises(TypeError, match="lines must be True or False"):
        MessageFramer("\n", lines=1)


def test_without_lines_mode_crlf_framing_is_unchanged():
    framer = MessageFramer("\r\n")
    framer.feed(b"a\nb\r\n")
    assert list(framer) == ["a\nb"]


@given(st.lists(st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)),
                        max_size=20), max_size=10),
       st.lists(st.booleans(), min_size=10, max_size=10), st.integers(1, 7))
def test_lines_mode_any_mix_of_endings_and_read_sizes(messages, crlf, chunk):
    framer = MessageFramer("\r\n", lines=True)
    wire = b"".join(m.encode() + (b"\r\n" if crlf[i] else b"\n") for i, m in enumerate(messages))
    got = []
    for i in range(0, len(wire), chunk):
        framer.feed(wire[i:i + chunk])
        got.extend(framer)
    assert got == messages
