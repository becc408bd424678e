"""Layer 1: pure logic, no sockets, threads or event loops.

Bytes in, values out: argument checks, deadlines, codecs, the receive buffer,
message framing, reconnect policy and link statistics.  Everything here is
unit-testable with plain bytes and fuzzable with hypothesis.
"""
