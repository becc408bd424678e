"""docker-compose for real: the image built from the repository's Dockerfile and the whole
site of docker-compose.yml brought up under a real Docker engine, then used from the host.

What runs (all traffic on loopback):

* a private dockerd (data root, exec root, pid file and socket in a temporary directory;
  ``--bridge=none --iptables=false --ip-forward=false``), stopped by its pid at the end;
* images built with ``--network host``: a Debian bookworm base (debootstrap + docker import),
  test doubles of ``python:3.11-slim``, ``simonsobs/ocs``, ``simonsobs/ocs-crossbar`` and
  ``influxdb:1.8`` (tests/docker/), and the project image from the repository's Dockerfile
  on the Python double (build argument ``BASE_IMAGE``);
* ``docker-compose -f docker-compose.yml -f <override> up -d`` with every service except
  Grafana (no Grafana image can be had without a registry).  The override gives every
  service, Grafana included, host networking and maps the service names to 127.0.0.1, and
  moves the site's ports to free loopback ports;
* the compose file's own health checks decide when each service is up; then OCSClient
  tasks on the three socs_tcp agents, feed data read back from InfluxDB, the two simulators
  stopped and started again (degraded set, then cleared), and ``docker-compose down -v``.

Needs root, Debian, dockerd, docker-compose and debootstrap (./scripts/test installs them).
Where the machine cannot run it, the test fails and says why; ``SOCS_TCP_SKIP_DOCKER=1``
skips it instead (never silently: the reason shows in the pytest summary).

The stand-in images and the Debian root file system are cached between runs in
/var/cache/socs_tcp-docker (root) or ~/.cache/socs_tcp-docker, or ``SOCS_TCP_DOCKER_CACHE``;
see tests/docker/dockersite.py.
"""

import contextlib
import os
import sys
import time
from pathlib import Path

import pytest
from ocs_replies import ok

sys.path.insert(0, str(Path(__file__).resolve().parent / "docker"))
import dockersite  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(3600)]

DEADLINE = 90.0   # generous upper bound for any one condition awaited below


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def wait_for(condition, timeout, what):
    """Poll ``condition()`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except Exception as exc:  # a reply that is not there yet (agent restarting, query refused)
            last = exc
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last value: {last!r}")


@pytest.fixture(scope="module")
def say(pytestconfig):
    """Print to the terminal past pytest's capture, so a reader of the run sees the progress."""
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")

    def say(text):
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\n[docker] {text}", flush=True)
    return say


@pytest.fixture(scope="module")
def engine(say):
    if os.environ.get("SOCS_TCP_SKIP_DOCKER", "").strip() == "1":
        pytest.skip("SOCS_TCP_SKIP_DOCKER=1: the docker-compose site test is switched off")
    problems = dockersite.prerequisite_problems()
    if problems:
        pytest.fail("this machine cannot run the docker-compose site test (set SOCS_TCP_SKIP_DOCKER=1 to skip it):\n"
                    + "\n".join(f"  - {p}" for p in problems), pytrace=False)
    for stale in dockersite.stale_engine_directories():
        say(f"removing {stale}, left over by a docker test run that was killed: "
            f"{dockersite.remove_engine_directory(stale) or 'done'}")
    started = time.monotonic()
    docker = dockersite.DockerEngine(say=say)
    try:
        docker.start()
        assert docker.networks() == ["host", "none"], "dockerd created a network of its own"
        yield docker
    finally:
        problems = docker.stop()
        say(f"dockerd stopped, {docker.root} removed; whole docker test {time.monotonic() - started:.0f} s")
        assert not problems, problems


@pytest.fixture(scope="module")
def images(engine, say):
    cache = dockersite.ImageCache(dockersite.default_cache_dir())
    say(f"image cache: {cache.directory or 'off'}")
    built = dockersite.Images(engine, cache, say=say).all()
    say(f"all images ready in {built.timings['all images']:.0f} s")
    return built


@pytest.fixture(scope="module")
def site(engine, images, say):
    site = dockersite.Site(engine, images, say=say).write()
    say(f"site ports: {site.ports}; services: {', '.join(site.started)} (grafana left out)")
    try:
        started = time.monotonic()
        say("docker-compose up -d; every service must turn healthy by the compose file's own health checks")
        site.up()
        site.wait_healthy(timeout=600, since=started)
        say(f"every service healthy {time.monotonic() - started:.0f} s after docker-compose up")
        # an agent with a director policy refuses clients until the access director's rules reach it
        for instance, policy in site.access_policies().items():
            wait_for(lambda i=instance: site.api(i)["access_control"]["update_count"] >= 1, DEADLINE,
                     f"{instance} to receive its access rules ({policy})")
            say(f"  {instance} has its access rules from {policy}")
        yield site
    except BaseException:
        with_logs = site.logs(tail=60) if site.up_called else ""
        say("site failed; last logs:\n" + with_logs)
        raise
    finally:
        if site.up_called:
            site.down()


@pytest.fixture(scope="module")
def operator(site):
    """The level-2 password of the site's access director file: the device-writing tasks need it."""
    return site.passwords()[2]


def acq_session(client):
    return client.acq.status().session


# ---------------------------------------------------------------- the tests, in the order they run


def test_every_service_is_healthy_and_no_network_exists(site, engine):
    for service in site.started:
        status, state = site.health(service)
        assert status == "healthy", (service, state)
    assert site.health("grafana") == (None, {}), "grafana must not run in this test"
    assert engine.networks() == ["host", "none"]
    for service in site.started:
        inspect = engine.docker("inspect", "--format", "{{.HostConfig.NetworkMode}}", site.container(service))
        assert inspect.stdout.decode().strip() == "host", service


def test_tcp_bus_agent_answers_from_the_host(site, operator):
    bus = site.client("tcp-bus", privs=operator)
    reply = ok(bus.wrnrd_until(data="*IDN?\n", eot="\\n"))
    assert reply["response"].count(",") == 3, reply
    session = wait_for(lambda: (acq_session(bus).get("data") or {}).get("values") and acq_session(bus), DEADLINE,
                       "tcp-bus acq values")
    assert session["status"] == "running" and session["degraded"] is False
    assert set(session["data"]["values"]) == {"output_voltage", "idn"}


def test_scpi_agent_answers_from_the_host(site, operator):
    psu = site.client("scpi-psu", privs=operator)
    identity = ok(psu.init())["response"]
    assert identity["model"].startswith("SIM-PSU"), identity
    assert "SIM-PSU" in ok(psu.query(query="*IDN?"))["response"]
    session = wait_for(lambda: (acq_session(psu).get("data") or {}).get("values") and acq_session(psu), DEADLINE,
                       "scpi-psu acq values")
    assert session["degraded"] is False


def test_message_link_agent_answers_from_the_host(site, operator):
    link = site.client("message-link", privs=operator)

    def telemetry():
        session = link.monitor.status().session
        return ((session.get("data") or {}).get("telemetry") or {}).get("temperature") and session
    session = wait_for(telemetry, DEADLINE, "message-link telemetry")
    assert session["status"] == "running" and session["degraded"] is False
    data = ok(link.command(name="getStatus"))
    assert data["status"] == "success" and data["acked"] is True, data


def test_access_director_guards_the_device_writing_tasks(site, operator):
    """Without the level-2 password (none, or a wrong one) a write task is refused before it starts."""
    assert set(site.access_policies()) == {"tcp-bus", "scpi-psu", "message-link"}
    for instance, call in (("tcp-bus", lambda c: c.wrnrd_until(data="*IDN?\n", eot="\\n")),
                           ("scpi-psu", lambda c: c.query(query="*IDN?")),
                           ("message-link", lambda c: c.command(name="getStatus"))):
        assert site.api(instance)["access_control"]["policy"] == "director"
        for privs in (None, operator + "-wrong"):
            reply = call(site.client(instance, privs=privs))
            assert reply.status == -1 and "requires credential level 2" in reply.msg, (instance, privs, reply)
        assert ok(call(site.client(instance, privs=operator))), instance
    # reads and status stay open
    assert site.client("tcp-bus").acq.status().status == 0


def test_feed_data_reaches_influxdb_through_the_publisher(site):
    def count(measurement, feed):
        series = site.influx_query(f'SELECT count(*) FROM "{measurement}" WHERE "feed" = \'{feed}\'')
        return series and max(v for v in series[0]["values"][0][1:] if isinstance(v, int))
    assert wait_for(lambda: count("observatory.tcp-bus", "tcp_bus"), DEADLINE, "tcp_bus feed in InfluxDB") > 0
    assert wait_for(lambda: count("observatory.scpi-psu", "scpi"), DEADLINE, "scpi feed in InfluxDB") > 0
    assert wait_for(lambda: count("observatory.message-link", "telemetry"), DEADLINE, "telemetry feed in InfluxDB") > 0
    fields = site.influx_query('SHOW FIELD KEYS FROM "observatory.tcp-bus"')
    assert "output_voltage" in {row[0] for row in fields[0]["values"]}


def test_simulators_stopped_set_degraded_and_started_again_clear_it(site, say):
    """``docker-compose stop scpi-sim`` (and jsonlines-sim): the agents keep running, degraded; ``start``: they recover."""
    bus, psu, link = site.client("tcp-bus"), site.client("scpi-psu"), site.client("message-link")
    sessions = {"tcp-bus": lambda: acq_session(bus), "scpi-psu": lambda: acq_session(psu),
                "message-link": lambda: link.monitor.status().session}
    site.compose("stop", "scpi-sim", "jsonlines-sim")
    say("scpi-sim and jsonlines-sim stopped")
    for name, session in sessions.items():
        wait_for(lambda s=session: s()["degraded"], DEADLINE, f"{name} degraded")
        current = session()
        assert current["status"] == "running" and current["data"]["connected"] is False, current
        say(f"  {name} degraded")
    last = acq_session(bus)["data"]["timestamp"]
    site.compose("start", "scpi-sim", "jsonlines-sim")
    say("scpi-sim and jsonlines-sim started again")
    for name, session in sessions.items():
        wait_for(lambda s=session: s()["degraded"] is False, DEADLINE, f"{name} degraded to clear")
        say(f"  {name} no longer degraded")
    wait_for(lambda: acq_session(bus)["data"]["timestamp"] > last, DEADLINE, "new tcp-bus data")
    site.wait_healthy(["scpi-sim", "jsonlines-sim"], timeout=300)


def test_down_removes_every_container_network_and_volume(site, engine):
    assert engine.lines("volume", "ls", "-q"), "the influxdb-data volume should exist before down"
    site.down()
    assert engine.lines("ps", "-aq") == []
    assert engine.lines("volume", "ls", "-q") == []
    assert engine.networks() == ["host", "none"]
