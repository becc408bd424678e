"""Coverage-guided fuzz target for :class:`socs_tcp.core.buffer.ReceiveBuffer`.

The input is read as a program of buffer operations (feed, extract until a
terminator set, extract exactly n, extract a regex match, extract some, put
back, drain), run against the buffer and against a plain ``bytes`` model;
any difference, and any exception other than the documented
``ReadOverflowError`` on overflow, is a finding.

    .venv/bin/python fuzz/fuzz_buffer.py -max_total_time=60
"""

import re
import sys

import atheris

with atheris.instrument_imports():
    from socs_tcp.core.buffer import ReceiveBuffer
    from socs_tcp.errors import ReadOverflowError

TERMINATOR_SETS = ((b"\n",), (b"\r\n",), (b"\r\n", b"\n"), (b"aa",), (b"ab", b"b"), (b"aba",),
                   (b"\r", b"\r\n", b";"), (b"xyz", b"y"))
PATTERNS = tuple(re.compile(p) for p in (rb"a+b", rb"\r?\n", rb"(?s)x.y", rb"ab|ba", rb"\d{2}"))


def _until(data, terms):
    hits = [(data.find(t), -len(t), t) for t in terms if t in data]
    if not hits:
        return None
    pos, _, term = min(hits)
    return data[:pos], term


def test_one_input(data):
    fdp = atheris.FuzzedDataProvider(data)
    max_size = fdp.ConsumeIntInRange(1, 96)
    buf = ReceiveBuffer(max_size)
    model = b""
    for _ in range(fdp.ConsumeIntInRange(0, 64)):
        op = fdp.ConsumeIntInRange(0, 6)
        if op == 0:
            chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 24))
            if len(model) + len(chunk) > max_size:
                try:
                    buf.feed(chunk)
                except ReadOverflowError:
                    pass
                else:
                    raise AssertionError("feed past max_size did not raise")
            else:
                buf.feed(chunk)
                model += chunk
        elif op == 1:
            terms = TERMINATOR_SETS[fdp.ConsumeIntInRange(0, len(TERMINATOR_SETS) - 1)]
            expected = _until(model, terms)
            assert buf.maybe_extract_until(terms) == expected, (model, terms)
            if expected is not None:
                model = model[len(expected[0]) + len(expected[1]):]
        elif op == 2:
            n = fdp.ConsumeIntInRange(0, 32)
            frame = buf.maybe_extract_exact(n)
            assert frame == (model[:n] if len(model) >= n else None)
            if frame is not None:
                model = model[n:]
        elif op == 3:
            regex = PATTERNS[fdp.ConsumeIntInRange(0, len(PATTERNS) - 1)]
            match = regex.search(model)
            found = buf.maybe_extract_match(regex)
            if match is None:
                assert found is None
            else:
                assert found[0] == model[:match.end()]
                model = model[match.end():]
        elif op == 4:
            n = fdp.ConsumeIntInRange(0, 32)
            assert buf.extract_some(n) == model[:n]
            model = model[n:]
        elif op == 5:
            back = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
            if len(model) + len(back) > max_size:
                try:
                    buf.unread(back)
                except ReadOverflowError:
                    pass
                else:
                    raise AssertionError("unread past max_size did not raise")
            else:
                buf.unread(back)
                model = back + model
        else:
            assert buf.drain() == model
            model = b""
        assert buf.peek() == model and buf.room == max_size - len(model)


def main():
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
