"""Bounded pattern matching: expect() never outlives its deadline, whatever
the pattern, and keeps the flags of compiled patterns."""

import re
import threading
import time

import pytest
import regex

from socs_tcp import LinkTimeoutError, TCPInterface, cmd_tcp
from socs_tcp.core.buffer import ReceiveBuffer
from socs_tcp.core.deadline import Deadline
from socs_tcp.core.readers import compile_pattern, extract_match

LINK_TIMEOUT = 5.0
TIMEOUT = 0.5
BOUND = 5 * TIMEOUT
#: patterns that backtrack catastrophically on many 'a's and no 'b': with
#: Python's re, (a+)+b on 28 'a's takes tens of seconds, and (a|aa)+b on 40
#: 'a's takes minutes (and the regex package's own guards do not help it)
CATASTROPHIC = [("(a+)+b", 28), ("(a|aa)+b", 40), ("(a|a)+b", 40)]


@pytest.fixture
def spam_device(make_emulator):
    """Replies to SPAM<n> with n 'a's and '!'."""
    return make_emulator({}, write_termination="\n",
                         default_response=lambda cmd: "a" * int(cmd[4:]) + "!" if cmd.startswith("SPAM") else "?")


def held_by_another_thread(lock):
    if lock.acquire(blocking=False):
        lock.release()
        return False
    return True


def link(device, **kwargs):
    return TCPInterface("127.0.0.1", device.port, LINK_TIMEOUT, **kwargs)


@pytest.mark.parametrize("pattern, count", CATASTROPHIC)
def test_a_catastrophic_pattern_times_out_within_the_deadline(spam_device, pattern, count):
    dev = link(spam_device)
    dev.write(f"SPAM{count}\n")
    started = time.monotonic()
    with pytest.raises(LinkTimeoutError):
        dev.expect(pattern, timeout=TIMEOUT)
    took = time.monotonic() - started
    assert took < BOUND, f"expect({pattern!r}, timeout={TIMEOUT}) took {took:.2f} s"
    # nothing received is lost: the line is still there for the next read
    assert dev.read_until("\n", timeout=2.0) == "a" * count + "!"
    dev.close()


def test_the_lock_is_free_again_within_the_deadline(spam_device):
    """A second thread waiting to query gets the link soon after expect's timeout."""
    dev = link(spam_device, termination="\n")
    dev.write("SPAM40\n")
    errors = []

    def expect():
        try:
            dev.expect("(a|aa)+b", timeout=TIMEOUT)
        except LinkTimeoutError as e:
            errors.append(e)
    worker = threading.Thread(target=expect)
    started = time.monotonic()
    worker.start()
    while not held_by_another_thread(dev.lock):   # wait for the expect to take the link
        assert worker.is_alive() and time.monotonic() - started < BOUND, "expect never took the link"
        time.sleep(0.005)
    assert dev.query("SPAM3", timeout=LINK_TIMEOUT).endswith("!")
    took = time.monotonic() - started
    worker.join(BOUND)
    assert errors and not worker.is_alive()
    assert took < BOUND, f"a query behind a catastrophic expect waited {took:.2f} s"
    dev.close()


def test_cmd_tcp_expect_is_bounded_too(spam_device):
    cmd_tcp.init_tcp("pattern", f"host=127.0.0.1,port={spam_device.port},timeout={LINK_TIMEOUT}")
    try:
        cmd_tcp.write_tcp("pattern", "SPAM40\n")
        started = time.monotonic()
        with pytest.raises(LinkTimeoutError, match="backtrack"):
            cmd_tcp.expect_tcp("pattern", "(a|aa)+b", TIMEOUT)
        assert time.monotonic() - started < BOUND
    finally:
        cmd_tcp.deinit_tcp("pattern")


def test_a_good_pattern_still_matches_across_chunks(make_emulator):
    device = make_emulator({"BOOT": "booting...\nboot ok\nREADY>"}, write_termination="")
    device.split_replies(3, 0.01)
    dev = link(device)
    dev.write("BOOT\n")
    assert dev.expect(r"READY>", timeout=LINK_TIMEOUT) == "booting...\nboot ok\nREADY>"
    dev.close()


# ---------------------------------------------------------------- compiling: flags and errors


@pytest.mark.parametrize("pattern", [
    re.compile("ready", re.IGNORECASE), re.compile(b"ready", re.IGNORECASE),
    regex.compile("ready", regex.IGNORECASE), "(?i)ready", b"(?i)ready",
])
def test_ignorecase_from_a_compiled_pattern_or_inline(pattern):
    compiled = compile_pattern(pattern, "utf-8")
    assert isinstance(compiled.pattern, bytes)
    assert compiled.search(b"device READY now")


def test_multiline_and_dotall_flags_are_kept():
    assert compile_pattern(re.compile("^ok$", re.MULTILINE), "utf-8").search(b"x\nok\ny")
    assert not compile_pattern(re.compile("^ok$"), "utf-8").search(b"x\nok\ny")
    assert compile_pattern(re.compile("a.b", re.DOTALL), "utf-8").search(b"a\nb")


@pytest.mark.parametrize("pattern, exc, needle", [
    ("(unclosed", ValueError, "not a valid regular expression"),
    (12, TypeError, "pattern must be a str, bytes or compiled regex, got int"),
    (None, TypeError, "got NoneType"),
])
def test_bad_patterns_are_refused_naming_them(pattern, exc, needle):
    with pytest.raises(exc, match=needle):
        compile_pattern(pattern, "utf-8")


def test_the_buffer_search_timeout_keeps_the_bytes():
    buffer = ReceiveBuffer()
    buffer.feed(b"a" * 40 + b"!\n")
    slow = compile_pattern("(a|aa)+b", "utf-8")
    with pytest.raises(TimeoutError):
        buffer.maybe_extract_match(slow, timeout=0.05)
    assert buffer.peek() == b"a" * 40 + b"!\n"
    with pytest.raises(LinkTimeoutError, match="did not finish within the operation's timeout of 0.05 s"):
        extract_match(buffer, slow, Deadline.start(0.05, None))
    assert len(buffer) == 42
    consumed, match = extract_match(buffer, compile_pattern("!", "utf-8"), Deadline.start(0.0, None))
    assert consumed == b"a" * 40 + b"!" and match.group() == b"!"


def test_a_compiled_bytes_pattern_is_used_as_it_is():
    """A pattern the caller compiled once (as the device driver does) costs no
    recompilation per operation."""
    import regex

    from socs_tcp.core.readers import compile_pattern
    compiled = regex.compile(rb"\r\n|\r", regex.MULTILINE)
    assert compile_pattern(compiled, "ascii") is compiled
