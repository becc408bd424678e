"""The agents as users run them: real crossbar, agents started with
ocs-agent-cli, a real OCSClient, devices on loopback."""

import threading
import time

import pytest
from ocs_replies import failed, ok

from socs_tcp.simulators.scpi import ScpiSimulator
from socs_tcp.testing import DeviceEmulator
from socs_tcp_stack.stack import Stack

pytestmark = pytest.mark.integration

TIMEOUT = 1.0      # device timeout given to the agents
RATE = 5.0         # acq cycles per second
#: generous bound for "acq notices a lost device": a few device timeouts and
#: cycles plus the OCS round trips, so a loaded machine still passes
NOTICE = 3 * (TIMEOUT + 1 / RATE) + 5


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
    emu = DeviceEmulator({"VOLT?": "1.25", "*IDN?": "ACME,BUS,1"}, write_termination="\n",
                         default_response=lambda cmd: f"echo:{cmd}").start()
    yield emu
    emu.shutdown()


@pytest.fixture(scope="module")
def simulator():
    sim = ScpiSimulator(port=0).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def stack(device, simulator):
    st = Stack()
    try:
        st.add_instance("TCPBusAgent", "bus", [
            "--address", f"127.0.0.1:{device.port}", "--timeout", TIMEOUT, "--sample-rate", RATE,
            "--acq-query", "volt=VOLT?", "idn=*IDN?"])
        st.add_instance("ScpiInstrumentAgent", "psu", [
            "--address", f"127.0.0.1:{simulator.port}", "--timeout", TIMEOUT, "--sample-rate", RATE,
            "--mode", "idle"])
        st.start()
        st.start_agent("bus")
        st.start_agent("psu")
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def bus(stack):
    return stack.client("bus")


@pytest.fixture(scope="module")
def psu(stack):
    return stack.client("psu")


# ---------------------------------------------------------------- bus tasks


def test_every_bus_task_round_trips(bus, device):
    assert ok(bus.connect())["response"] is True
    assert ok(bus.wrnrd_until(data="*IDN?\n", eot="\\n"))["response"] == "ACME,BUS,1"
    assert ok(bus.write(data="abc\n"))["response"] == 4
    assert ok(bus.read_until(eot="\\n"))["response"] == "echo:abc"
    assert ok(bus.write_bin(data="78790a"))["response"] == 3
    assert ok(bus.read_bin_until(eot="\\n", timeout=2.0))["response"] == "6563686f3a7879"
    assert ok(bus.wrnrd(data="q\n", bytes_to_read=7))["response"] == "echo:q\n"
    assert ok(bus.wrnrd_bin(data="710a", bytes_to_read=2))["response"] == "6563"
    assert ok(bus.read(bytes_to_read=5))["response"] == "ho:q\n"
    assert ok(bus.wrnrd_bin_until(data="710a", eot="\\x3a"))["response"] == "6563686f"
    assert ok(bus.read_bin(bytes_to_read=2))["response"] == "710a"
    ok(bus.write(data="marker\n"))
    data = ok(bus.expect(pattern="mark[a-z]+\\n", timeout=2.0))
    assert data["response"] == "echo:marker\n"
    assert data["elapsed"] >= 0 and data["timestamp"] > 0
    assert ok(bus.disconnect())["response"] is False


@pytest.mark.parametrize("task, params, needle", [
    ("wrnrd_until", {"eot": "\\n"}, "data"),                              # missing parameter
    ("wrnrd", {"data": "x", "bytes_to_read": -1}, "bytes_to_read"),      # check fails
    ("read", {"bytes_to_read": "many"}, "bytes_to_read"),                 # wrong type
    ("wrnrd_until", {"data": "x", "eot": "\\n", "timeout": -1}, "timeout"),
])
def test_bad_parameters_are_rejected_by_ocs(bus, task, params, needle):
    reply = getattr(bus, task)(**params)
    assert reply.status == -1
    assert needle in reply.msg


@pytest.mark.parametrize("task, params, needle", [
    ("write_bin", {"data": "0a0"}, "odd length"),
    ("wrnrd_bin", {"data": "zz", "bytes_to_read": 1}, "non-hex character 'z'"),
    ("wrnrd_until", {"data": "x\n", "eot": "\\q"}, "unknown escape"),
    ("expect", {"pattern": "(unclosed"}, "not a valid regular expression"),
])
def test_bad_values_fail_the_task_with_a_clear_message(bus, device, task, params, needle):
    before = len(device.received)
    message = failed(getattr(bus, task)(**params))
    assert "bad parameter" in message and needle in message
    assert len(device.received) == before, "nothing may be sent for bad input"
    assert ok(bus.wrnrd_until(data="alive\n", eot="\\n"))["response"] == "echo:alive"

# ---------------------------------------------------------------- acq, degraded, recovery


def acq_data(client):
    return client.acq.status().session


def test_acq_publishes_and_survives_a_device_outage(bus, device, stack):
    assert bus.acq.start().status == 0
    try:
        first = wait_for(lambda: (acq_data(bus).get("data") or {}).get("values"), 10, "acq values")
        assert first == {"volt": 1.25, "idn": "ACME,BUS,1"}
        assert acq_data(bus)["degraded"] is False

        device.refuse_connections()              # the device goes away
        killed = time.monotonic()
        wait_for(lambda: acq_data(bus)["degraded"], NOTICE, "degraded to be set")
        assert time.monotonic() - killed < NOTICE
        session = acq_data(bus)
        assert session["status"] == "running"
        assert session["data"]["connected"] is False and session["data"]["last_error"]
        assert stack.agents["bus"].alive()

        started = time.monotonic()
        message = failed(bus.wrnrd_until(data="x\n", eot="\\n"))
        assert time.monotonic() - started < 5 * TIMEOUT, "tasks must fail fast while the device is down"
        assert "device error" in message and "ConnectFailedError" in message

        device.refuse_connections(False)         # the device is back
        last_ts = session["data"].get("timestamp", 0)
        wait_for(lambda: not acq_data(bus)["degraded"], 10, "degraded to clear")
        wait_for(lambda: acq_data(bus)["data"].get("timestamp", 0) > last_ts, 10, "new feed data")
        assert acq_data(bus)["data"]["values"]["volt"] == 1.25
        log = stack.agents["bus"].log_text()
        assert log.count("device unreachable, acq degraded") == 1, "an outage is logged once, not every cycle"
        assert "acq no longer degraded" in log
    finally:
        bus.acq.stop()
        bus.acq.wait(timeout=10)
    assert acq_data(bus)["status"] == "done"


def test_tasks_during_acq_never_cross_replies(bus, device):
    """Three different write-and-read tasks (OCS runs one instance of each
    task at a time) hammer the link while acq polls it."""
    assert bus.acq.start().status == 0
    crossed, errors = [], []

    def call(kind, token):
        if kind == "until":
            return bus.wrnrd_until(data=token + "\n", eot="\\n"), f"echo:{token}"
        if kind == "exact":
            return bus.wrnrd(data=token + "\n", bytes_to_read=len(token) + 6), f"echo:{token}\n"
        reply = bus.wrnrd_bin_until(data=(token + "\n").encode().hex(), eot="\\n")
        return reply, f"echo:{token}".encode().hex()

    def worker(kind):
        for i in range(20):
            token = f"{kind}-{i:03d}"
            reply, expected = call(kind, token)
            if reply.status != 0 or not reply.session["success"]:
                errors.append(reply.msg)
            elif reply.session["data"]["response"] != expected:
                crossed.append((token, reply.session["data"]["response"]))
    try:
        wait_for(lambda: (acq_data(bus).get("data") or {}).get("values"), 10, "acq running")
        threads = [threading.Thread(target=worker, args=(kind,)) for kind in ("until", "exact", "bin")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # acq kept cycling after the tasks: how many cycles fit in the tasks' time is the
        # machine's business, so wait for one more instead of counting them
        cycles = acq_data(bus)["data"]["cycles"]
        data = wait_for(lambda: (lambda d: d if d["cycles"] > cycles else None)(acq_data(bus)["data"]),
                        10 + 2 / RATE, "an acq cycle after the tasks")
    finally:
        bus.acq.stop()
        bus.acq.wait(timeout=10)
    assert errors == [] and crossed == []
    assert data["values"] == {"volt": 1.25, "idn": "ACME,BUS,1"}, "acq never read a task's reply"
    assert data["degraded"] is False


# ---------------------------------------------------------------- SCPI agent


def test_scpi_agent_tasks(psu):
    identity = ok(psu.init())["response"]
    assert identity["manufacturer"] and identity["model"] and identity["idn"].count(",") == 3
    ok(psu.command(command="VOLT 2.5"))
    assert float(ok(psu.query(query="VOLT?"))["response"]) == pytest.approx(2.5)
    message = failed(psu.command(command="VOLT 99"))
    assert "-222" in message and "VOLT 99" in message
    message = failed(psu.query(query="NOSUCH?", timeout=0.3))
    assert "-113" in message
    assert psu.query(query="two\nlines").status == -1


def test_scpi_acq_degrades_and_recovers(psu, simulator, stack):
    assert psu.acq.start().status == 0
    try:
        values = wait_for(lambda: (acq_data(psu).get("data") or {}).get("values"), 10, "scpi values")
        assert set(values) == {"voltage", "current", "temperature"}
        assert all(isinstance(v, float) for v in values.values())
        port = simulator.port
        simulator.stop()
        wait_for(lambda: acq_data(psu)["degraded"], NOTICE, "degraded")
        assert stack.agents["psu"].alive()
        replacement = ScpiSimulator(port=port).start()
        try:
            wait_for(lambda: not acq_data(psu)["degraded"], 10, "degraded to clear")
        finally:
            replacement.stop()
    finally:
        psu.acq.stop()
        psu.acq.wait(timeout=10)

def test_acq_test_mode_runs_one_cycle(psu):
    assert psu.acq.start(test_mode=True).status == 0
    psu.acq.wait(timeout=10)
    session = acq_data(psu)
    assert session["status"] == "done" and session["success"] is True
    assert session["data"]["cycles"] == 1

# ---------------------------------------------------------------- router restart


def test_agents_rejoin_after_a_crossbar_restart(stack, bus, device):
    stack.crossbar.restart()
    reply = wait_for(lambda: _try(lambda: bus.wrnrd_until(data="back\n", eot="\\n")), 45, "agent to rejoin")
    assert reply.session["data"]["response"] == "echo:back"
    assert stack.agents["bus"].alive() and stack.agents["psu"].alive()


def _try(call):
    try:
        reply = call()
    except Exception:  # the router or the agent is not back yet
        return None
    return reply if reply.status == 0 and reply.session.get("success") else None

