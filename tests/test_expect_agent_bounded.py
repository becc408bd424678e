"""A catastrophic pattern sent to TCPBusAgent's ``expect`` task cannot freeze
the agent: the task fails within a small multiple of its timeout and ``acq``
goes on publishing.  Real crossbar, the agent started with ocs-agent-cli, a
real OCSClient, and a real feed subscriber (``ocs-client-cli listen``)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ocs_replies import failed, ok

from socs_tcp.testing import DeviceEmulator
from socs_tcp_stack.stack import Stack

pytestmark = pytest.mark.integration

OCS_CLIENT_CLI = str(Path(sys.executable).with_name("ocs-client-cli"))
TIMEOUT = 1.0       # the agent's --timeout, and the expect task's timeout
RATE = 5.0          # acq cycles per second
#: 40 'a's and no 'b': (a|aa)+b backtracks for minutes over them with any
#: backtracking engine; the acq reply leaves them buffered after its line
SPAM = "a" * 40 + "!"
PATTERN = "(a|aa)+b"
#: generous: the task's own timeout plus OCS round trips on a loaded machine
BOUND = 5 * TIMEOUT + 5


def wait_for(condition, timeout, what):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="module")
def device():
    # every acq reply carries the catastrophic text after its line, so the
    # link's buffer holds it whenever the expect task gets the link
    emu = DeviceEmulator({"VOLT?": "1.25\n" + SPAM}, write_termination="\n").start()
    yield emu
    emu.shutdown()


@pytest.fixture(scope="module")
def stack(device):
    st = Stack()
    try:
        st.add_instance("TCPBusAgent", "bus", [
            "--address", f"127.0.0.1:{device.port}", "--timeout", TIMEOUT, "--sample-rate", RATE,
            "--acq-query", "volt=VOLT?"])
        st.start()
        st.start_agent("bus")
        yield st
    finally:
        st.stop()


@pytest.fixture
def feed(stack):
    """A real subscriber to the agent's tcp_bus feed; yields a function that
    returns the timestamps of the ``queries`` blocks received so far."""
    out_path = stack.workdir / "listen-expect.jsonl"
    cmd = [OCS_CLIENT_CLI, *stack.client_args, "listen", "--json", "observatory.bus.feeds.tcp_bus"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OCS_CONFIG_DIR=str(stack.workdir))
    with open(out_path, "wb") as out:
        listener = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def timestamps():
        seen = []
        for line in out_path.read_text(errors="replace").splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            for block in item["message"][0].values():
                if block.get("block_name") == "queries":
                    seen.extend(t for t, v in zip(block["timestamps"], block["data"].get("volt", [])) if v == 1.25)
        return seen
    timestamps.raw = lambda: out_path.read_text(errors="replace")[-2000:]
    try:
        yield timestamps
    finally:
        os.killpg(listener.pid, signal.SIGKILL)
        listener.wait(timeout=10)


def test_a_catastrophic_expect_fails_in_time_and_acq_keeps_publishing(stack, feed):
    bus = stack.client("bus")
    assert bus.acq.start().status == 0
    try:
        try:
            wait_for(feed, 30, "acq data on the tcp_bus feed")
        except AssertionError as e:
            raise AssertionError(f"{e}; the subscriber printed: {feed.raw()}") from None
        started = time.time()
        assert bus.expect.start(pattern=PATTERN, timeout=TIMEOUT).status == 0
        # new feed data, published after the catastrophic expect began, arrives
        # long before a search over 40 'a's could finish
        wait_for(lambda: [t for t in feed() if t > started + TIMEOUT], BOUND,
                 "acq data published after the expect task began")
        reply = bus.expect.wait(timeout=BOUND)
        message = failed(reply)
        assert "backtrack" in message, message   # the search itself was cut off
        took = reply.session["end_time"] - reply.session["start_time"]
        assert took < BOUND, f"the expect task took {took:.1f} s with timeout={TIMEOUT}"
        # the agent is healthy: the next task runs at once
        assert ok(bus.connect())["response"] is True
    finally:
        bus.acq.stop()
        bus.acq.wait(timeout=10)
