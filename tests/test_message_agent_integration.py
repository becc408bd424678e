"""MessageLinkAgent as users run it: real crossbar, the agent started with
ocs-agent-cli, a real OCSClient, and the JSON-lines simulator as a process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ocs_replies import failed, ok
from socs_tcp_agents.message_link.agent import _field_name, flatten_fields, parse_details

from socs_tcp_stack.stack import Stack

#: the real command-line client, next to this Python
OCS_CLIENT_CLI = str(Path(sys.executable).with_name("ocs-client-cli"))

TIMEOUT = 10.0      # the agent's --timeout: connect deadline and default command deadline


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


# ---------------------------------------------------------------- pure helpers (no processes)


def test_flatten_fields_nested_lists_and_names():
    fields, dropped = flatten_fields({
        "ring": [20.1, 20.2], "pos": {"x": 1, "y": {"z": True}}, "name": "M2", "n": None,
        "bad-key.x": 1.5, "3d": 7, "nan": float("nan"), "inf": float("inf"), "compName": "MTMount",
        "matrix": [[1, 2], [3]], "empty": [], "caf\u00e9": 1})
    assert dropped == 0
    assert fields == {"ring_0": 20.1, "ring_1": 20.2, "pos_x": 1, "pos_y_z": True, "name": "M2",
                      "bad_key_x": 1.5, "f_3d": 7, "compName": "MTMount",
                      "matrix_0_0": 1, "matrix_0_1": 2, "matrix_1_0": 3, "caf_": 1}
    assert all(type(v) in (int, float, str, bool) for v in fields.values())


def test_flatten_fields_collisions_limits_and_long_names():
    fields, dropped = flatten_fields({"a-b": 1, "a_b": 2, "a.b": 3})
    assert fields == {"a_b": 1, "a_b_2": 2, "a_b_3": 3} and dropped == 0
    fields, dropped = flatten_fields({"v": list(range(10))}, max_fields=4)
    assert list(fields) == ["v_0", "v_1", "v_2", "v_3"] and dropped == 6
    long_name = _field_name("x" * 300)
    assert len(long_name) <= 255 and long_name.startswith("x")
    assert _field_name("") == "f_" and _field_name("_1") == "f__1" and _field_name("__ok") == "__ok"


@pytest.mark.parametrize("value, expected", [
    ({"value": 1}, {"value": 1}), ('{"value": 1}', {"value": 1}), ("", {}), ("  ", {}), ({}, {})])
def test_parse_details_accepts_objects(value, expected):
    assert parse_details(value) == expected


@pytest.mark.parametrize("value", ["[1, 2]", "not json", "5", 5, [1]])
def test_parse_details_refuses_other_values(value):
    with pytest.raises(ValueError):
        parse_details(value)


# ---------------------------------------------------------------- processes


class SimProcess:
    """``python -m socs_tcp.simulators.jsonlines`` as a process, restartable on the same port."""

    def __init__(self, log_path, port=0, extra=()):
        self.log_path = log_path
        self.port = port
        self.extra = [str(a) for a in extra]
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "socs_tcp.simulators.jsonlines", "--port", str(self.port),
                 "--telemetry-interval", "0.2", "--heartbeat-interval", "0.5", *self.extra],
                stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        line = self.proc.stdout.readline()   # returns "" if the process dies first
        if not line.startswith("listening on 127.0.0.1:"):
            self.kill()
            raise RuntimeError(f"simulator did not start: {line!r}; log {self.log_path}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def kill(self):
        """SIGKILL: the device dies without closing anything itself."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.proc = None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


@pytest.fixture(scope="module")
def sims(tmp_path_factory):
    logs = tmp_path_factory.mktemp("sims")
    made = {"prefixed": SimProcess(logs / "prefixed.log"), "bare": SimProcess(logs / "bare.log", extra=["--bare-ids"])}
    try:
        for sim in made.values():
            sim.start()
        yield made
    finally:
        for sim in made.values():
            sim.stop()


@pytest.fixture(scope="module")
def stack(sims):
    st = Stack()
    try:
        st.add_instance("MessageLinkAgent", "link", [
            "--address", f"127.0.0.1:{sims['prefixed'].port}", "--timeout", TIMEOUT, "--update-interval", 0.2,
            "--reconnect-initial", 0.1, "--reconnect-cap", 0.5])
        st.add_instance("MessageLinkAgent", "bare", [
            "--host", "127.0.0.1", "--port", sims["bare"].port, "--timeout", TIMEOUT, "--update-interval", 0.2,
            "--telemetry-ids", "temperature", "--mode", "idle"])
        st.start()
        st.start_agent("link")
        st.start_agent("bare")
        yield st
    finally:
        st.stop()


@pytest.fixture(scope="module")
def link(stack):
    return stack.client("link")


@pytest.fixture(scope="module")
def bare(stack):
    return stack.client("bare")



def monitor_session(client):
    return client.monitor.status().session


def latest(client, kind, name):
    return ((monitor_session(client).get("data") or {}).get(kind) or {}).get(name)


# ---------------------------------------------------------------- monitor: telemetry and events

@pytest.mark.integration
def test_monitor_starts_at_startup_and_fills_session_data(link):
    session = wait_for(lambda: monitor_session(link)["status"] == "running" and monitor_session(link), 15,
                       "monitor running")
    temperature = wait_for(lambda: latest(link, "telemetry", "temperature"), 15, "telemetry in session.data")
    assert set(temperature["values"]) == {"ring_0", "ring_1", "ring_2", "intake", "exhaust", "setpoint"}
    assert all(isinstance(v, float) for v in temperature["values"].values())
    heartbeat = wait_for(lambda: latest(link, "events", "heartbeat"), 15, "heartbeat event in session.data")
    assert isinstance(heartbeat["values"]["counter"], int) and heartbeat["timestamp"] > 0
    data = monitor_session(link)["data"]
    assert data["connected"] is True and data["degraded"] is False and data["last_error"] is None
    assert data["messages_received"] > 0 and data["invalid_messages"] == 0
    assert data["stats"]["connects"] >= 1
    assert session["degraded"] is False


@pytest.mark.integration
def test_feeds_carry_telemetry_events_and_health(link, stack):
    """Subscribe to the agent's feeds with ocs-client-cli listen (a real WAMP subscriber)."""
    wait_for(lambda: latest(link, "telemetry", "temperature"), 15, "the link to be up")
    out_path = stack.workdir / "listen.jsonl"
    cmd = [OCS_CLIENT_CLI, *stack.client_args, "listen", "--json", "observatory.link.feeds."]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OCS_CONFIG_DIR=str(stack.workdir))
    with open(out_path, "wb") as out:
        listener = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        def blocks_seen():
            seen = {}
            for line in out_path.read_text(errors="replace").splitlines():
                try:
                    item = json.loads(line)
                except ValueError:
                    continue
                topic = item["topic"].rsplit(".", 1)[-1]
                if topic not in ("telemetry", "events", "link_health"):
                    continue   # e.g. the OCS heartbeat feed
                for block in item["message"][0].values():
                    seen.setdefault((topic, block["block_name"]), block["data"])
            wanted = {("telemetry", "temperature"), ("events", "heartbeat"), ("link_health", "health")}
            return seen if wanted <= set(seen) else None

        seen = wait_for(blocks_seen, 30, "telemetry, events and health on the feeds")
    finally:
        os.killpg(listener.pid, signal.SIGKILL)
        listener.wait(timeout=10)
    assert set(seen[("telemetry", "temperature")]) == {"ring_0", "ring_1", "ring_2", "intake", "exhaust",
                                                        "setpoint"}
    assert "counter" in seen[("events", "heartbeat")]
    health = seen[("link_health", "health")]
    assert {"connected", "reconnects", "bytes_in", "transactions"} <= set(health)
    assert health["connected"][-1] == 1


# ---------------------------------------------------------------- command task


@pytest.mark.integration
def test_command_success_with_dict_and_json_details(link):
    data = ok(link.command(name="setTemperature", details={"value": 25.0}))
    assert data["status"] == "success" and data["acked"] is True and data["name"] == "setTemperature"
    assert isinstance(data["sequence_id"], int) and data["reply"] == {"id": "success",
                                                                      "sequence_id": data["sequence_id"]}
    first = data["sequence_id"]
    data = ok(link.command(name="setTemperature", details='{"value": 21.5}'))
    assert data["sequence_id"] == first + 1
    data = ok(link.command(name="getStatus"))
    assert data["reply"]["setpoint"] == 21.5 and data["elapsed"] >= 0
    wait_for(lambda: (latest(link, "events", "setpointChanged") or {}).get("values", {}).get("setpoint") == 21.5,
             10, "the setpointChanged event")
    wait_for(lambda: (latest(link, "telemetry", "temperature") or {}).get("values", {}).get("setpoint") == 21.5,
             10, "the new setpoint in telemetry")


@pytest.mark.integration
def test_command_fail_noack_and_timeout_fail_the_task_clearly(link):
    reply = link.command(name="fail")
    message = failed(reply)
    seq = reply.session["data"]["sequence_id"]
    assert f"'fail' (sequence_id {seq}) failed on the device: requested failure" in message
    assert reply.session["data"]["status"] == "fail"

    reply = link.command(name="setTemperature", details={"value": 500})
    assert "outside" in failed(reply) and reply.session["data"]["reply"]["id"] == "fail"

    reply = link.command(name="noSuchCommand")
    seq = reply.session["data"]["sequence_id"]
    assert f"'noSuchCommand' (sequence_id {seq}) was not acknowledged by the device (noack)" in failed(reply)
    assert reply.session["data"]["status"] == "noack" and reply.session["data"]["acked"] is False

    reply = link.command(name="slow", details={"duration": 2.0}, timeout=0.5)
    seq = reply.session["data"]["sequence_id"]
    assert f"'slow' (sequence_id {seq}): acknowledged but no final status within 0.5 s" in failed(reply)
    assert reply.session["data"]["status"] == "timeout" and reply.session["data"]["acked"] is True
    # the device is still busy with it; the next command waits its turn and succeeds
    assert ok(link.command(name="getStatus"))["status"] == "success"


@pytest.mark.integration
@pytest.mark.parametrize("params, needle", [
    ({}, "name"),                                                   # missing
    ({"name": "two words"}, "name"),                                # check fails
    ({"name": 5}, "name"),                                          # wrong type
    ({"name": "getStatus", "timeout": -1}, "timeout"),
    ({"name": "getStatus", "timeout": "soon"}, "timeout"),
    ({"name": "getStatus", "details": "not json"}, "details"),
    ({"name": "getStatus", "details": "[1, 2]"}, "details"),
    ({"name": "getStatus", "details": 5}, "details"),
])
def test_bad_parameters_are_rejected_by_ocs(link, params, needle):
    reply = link.command(**params)
    assert reply.status == -1 and needle in reply.msg


@pytest.mark.integration
def test_reserved_keys_in_details_fail_the_task_before_sending(link):
    before = ok(link.command(name="getStatus"))["sequence_id"]
    message = failed(link.command(name="setTemperature", details={"id": "x", "value": 1}))
    assert "bad parameter" in message and "'id'" in message
    message = failed(link.command(name="setTemperature", details={"sequence_id": 3, "value": 1}))
    assert "'sequence_id'" in message
    assert ok(link.command(name="getStatus"))["sequence_id"] == before + 1, "nothing was sent in between"


# ---------------------------------------------------------------- outage and recovery


@pytest.mark.integration
def test_device_killed_sets_degraded_and_recovery_clears_it(link, sims, stack):
    sim = sims["prefixed"]
    wait_for(lambda: latest(link, "telemetry", "temperature"), 15, "the link to be up")
    assert monitor_session(link)["degraded"] is False

    sim.kill()
    killed = time.time()
    wait_for(lambda: monitor_session(link)["degraded"], 10, "degraded to be set")
    session = monitor_session(link)
    assert session["status"] == "running" and stack.agents["link"].alive()
    wait_for(lambda: monitor_session(link)["data"]["connected"] is False, 5, "session data to show the outage")
    data = monitor_session(link)["data"]
    assert data["degraded"] is True and data["last_error"] and str(sim.port) in data["last_error"]

    message = failed(link.command(name="getStatus", timeout=2))
    assert "device unreachable" in message and "ConnectFailedError" in message

    sim.start()      # the device is back, on the same port
    wait_for(lambda: not monitor_session(link)["degraded"], 15, "degraded to clear")
    wait_for(lambda: latest(link, "telemetry", "temperature")["timestamp"] > killed, 10, "new telemetry")
    assert monitor_session(link)["data"]["connected"] is True
    assert ok(link.command(name="getStatus"))["status"] == "success"
    log = stack.agents["link"].log_text()
    assert log.count("device link down, monitor degraded") == 1, "an outage is logged once, not per attempt"
    assert "monitor no longer degraded" in log


# ---------------------------------------------------------------- idle agent, bare ids


@pytest.mark.integration
def test_idle_agent_connects_on_demand_and_classifies_bare_ids(bare):
    assert monitor_session(bare).get("status") != "running", "--mode idle does not start monitor"
    data = ok(bare.command(name="getStatus"))       # no monitor running: the task connects
    assert data["status"] == "success"
    assert bare.monitor.start(test_mode=False).status == 0
    try:
        temperature = wait_for(lambda: latest(bare, "telemetry", "temperature"), 15, "bare-id telemetry")
        assert "ring_0" in temperature["values"]
        wait_for(lambda: latest(bare, "events", "heartbeat"), 15, "bare-id heartbeat as an event")
        assert latest(bare, "events", "temperature") is None and latest(bare, "telemetry", "heartbeat") is None
    finally:
        bare.monitor.stop()
        bare.monitor.wait(timeout=15)
    session = monitor_session(bare)
    assert session["status"] == "done" and session["success"] is True


@pytest.mark.integration
def test_monitor_test_mode_runs_one_cycle(bare):
    assert bare.monitor.start(test_mode=True).status == 0
    bare.monitor.wait(timeout=15)
    session = monitor_session(bare)
    assert session["status"] == "done" and session["success"] is True
    assert session["data"]["connected"] is True
