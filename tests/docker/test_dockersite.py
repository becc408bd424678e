"""Unit tests of the compose test's support code (tests/docker/dockersite.py): the parsing of the
machine's apt and pip settings, the site rewrite for free loopback ports, the cache, and the
reasons given when a machine cannot run the engine.  No Docker engine is started here."""

import os
import time

import dockersite
import pytest
import yaml


def test_debian_sources_from_deb822_and_one_line_files(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://mirror.example/debian bookworm-updates main contrib\n"
        "deb-src http://mirror.example/debian bookworm main\ndeb http://other.example/ubuntu jammy main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.example/debian\nSuites: bookworm bookworm-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\n\n"
        "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
    assert dockersite.host_debian_sources(tmp_path) == [
        ("http://mirror.example/debian", "bookworm-updates", ["main", "contrib"]),
        ("http://deb.example/debian", "bookworm", ["main"]),
        ("http://deb.example/debian", "bookworm-security", ["main"])]


def test_no_debian_source_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "sources.list.d").mkdir()
    monkeypatch.setattr(dockersite, "host_debian_sources", lambda root="/etc/apt": [])
    images = object.__new__(dockersite.Images)
    with pytest.raises(dockersite.DockerUnavailable, match="no Debian bookworm entry"):
        images.debian_inputs()


def test_pip_conf_keeps_remote_indexes_and_drops_local_paths(monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/pypi/simple https://extra.example/simple")
    monkeypatch.setenv("PIP_TRUSTED_HOST", "pypi.mirror.example")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    text = dockersite.host_pip_conf()
    assert text.startswith("[global]\n")
    assert "index-url = https://pypi.mirror.example/simple\n" in text
    assert "extra-index-url = https://extra.example/simple\n" in text
    assert "trusted-host = pypi.mirror.example\n" in text
    assert "file:" not in text and "/opt/wheels" not in text and "constraint" not in text


def test_proxy_build_args_come_from_the_environment(monkeypatch):
    for name in dockersite.PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    assert dockersite.proxy_build_args() == []
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert dockersite.proxy_build_args() == ["--build-arg", "https_proxy=http://proxy.example:3128"]


def test_ocs_tag_comes_from_the_compose_file(tmp_path):
    assert dockersite.compose_ocs_tag() == "v0.12.1"
    bad = tmp_path / "compose.yml"
    bad.write_text(yaml.safe_dump({"services": {"a": {"image": "simonsobs/ocs:${OCS_TAG}"}}}))
    with pytest.raises(ValueError, match="service 'a' image 'simonsobs/ocs:\\$\\{OCS_TAG\\}' has no default tag"):
        dockersite.compose_ocs_tag(bad)
    bad.write_text(yaml.safe_dump({"services": {"a": {"image": "simonsobs/ocs:v1"},
                                                "b": {"image": "simonsobs/ocs-crossbar:v2"}}}))
    with pytest.raises(ValueError, match=r"expected one OCS tag .* found \['v1', 'v2'\]"):
        dockersite.compose_ocs_tag(bad)


def test_missing_argument_in_the_site_file_is_named():
    with pytest.raises(ValueError, match="instance 'x': no --address argument in \\['--port', '1'\\]"):
        dockersite._replace_argument(["--port", 1], "--address", "h:2", "instance 'x'")
    assert dockersite._replace_argument(["--a", 1, "--port", 5025, "--b"], "--port", 7, "w") == ["--a", 1, "--port", 7,
                                                                                                   "--b"]
    with pytest.raises(ValueError, match="'nohost' is not host:port"):
        dockersite._retarget("nohost", 5, "instance 'x'")


class _FakeEngine:
    def __init__(self, root):
        self.root = root


class _FakeImages:
    crossbar_image = "socs-tcp-test/crossbar:v0.12.1"
    ocs_image = "socs-tcp-test/ocs:v0.12.1"


def test_site_moves_every_port_and_gives_every_service_host_networking(tmp_path):
    site = dockersite.Site(_FakeEngine(tmp_path), _FakeImages()).write()
    ports = site.ports
    assert len(set(ports.values())) == len(ports)
    override = yaml.safe_load(site.override.read_text())["services"]
    assert set(override) == set(site.services) and "grafana" in override and "grafana" not in site.started
    for name, svc in override.items():
        assert svc["network_mode"] == "host", name
        assert f"{name}:127.0.0.1" in svc["extra_hosts"], name
        assert "ports" not in svc and "networks" not in svc, name
    assert override["scpi-sim"]["command"][override["scpi-sim"]["command"].index("--port") + 1] == str(ports["scpi"])
    assert override["influxdb"]["environment"]["INFLUXDB_HTTP_BIND_ADDRESS"] == f"127.0.0.1:{ports['influxdb']}"
    assert override["tcp-bus"]["environment"]["SITE_HTTP"] == f"http://crossbar:{ports['crossbar']}/call"
    site_file = yaml.safe_load(site.site_file().read_text())
    text = yaml.safe_dump(site_file)
    for default in (":8001/", "scpi-sim:5025", "jsonlines-sim:50010"):
        assert default not in text, default
    assert site_file["hosts"]["localhost"]["wamp_http"] == f"http://127.0.0.1:{ports['crossbar']}/call"
    # files the containers read (as other users) are readable by everyone
    assert os.stat(site.site_file()).st_mode & 0o004 and os.stat(site.deploy).st_mode & 0o005 == 0o005


def test_cache_keeps_only_complete_and_fresh_entries(tmp_path):
    cache = dockersite.ImageCache(tmp_path / "cache")
    assert cache.get("img", "k1") is None
    with pytest.raises(RuntimeError, match="build failed"):
        with cache.put("img", "k1") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("build failed")
    assert cache.get("img", "k1") is None and list((tmp_path / "cache").iterdir()) == []
    with cache.put("img", "k1") as tmp:
        tmp.write_bytes(b"whole")
    assert cache.get("img", "k1").read_bytes() == b"whole"
    with cache.put("img", "k2") as tmp:
        tmp.write_bytes(b"newer")
    assert cache.get("img", "k1") is None, "an older key of the same image is removed"
    old = time.time() - dockersite.CACHE_MAX_AGE - 60
    os.utime(cache.path("img", "k2"), (old, old))
    assert cache.get("img", "k2") is None, "a stale entry is rebuilt"
    off = dockersite.ImageCache(None)
    with off.put("img", "k") as tmp:
        assert tmp is None
    assert off.get("img", "k") is None


def test_cache_dir_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("SOCS_TCP_DOCKER_CACHE", str(tmp_path))
    assert dockersite.default_cache_dir() == tmp_path
    monkeypatch.setenv("SOCS_TCP_DOCKER_CACHE", "")
    assert dockersite.default_cache_dir() is None


def test_reasons_when_the_machine_cannot_run_docker(monkeypatch):
    monkeypatch.setattr(dockersite.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(dockersite.shutil, "which", lambda exe: None)
    problems = dockersite.prerequisite_problems()
    assert "dockerd must be started as root (run ./scripts/test as root)" in problems
    assert "dockerd is not installed (Debian package docker.io; ./scripts/test installs it as root)" in problems
    assert "debootstrap is not installed (Debian package debootstrap; ./scripts/test installs it as root)" in problems
    monkeypatch.setattr(dockersite.sys, "platform", "darwin")
    assert dockersite.prerequisite_problems() == ["the Docker engine needs Linux, this is darwin"]


def test_dockerd_that_cannot_start_is_reported_with_its_log(monkeypatch):
    engine = dockersite.DockerEngine(say=lambda text: None)
    monkeypatch.setattr(engine, "command", lambda: ["sh", "-c", "echo no permission to run dockerd >&2; exit 3"])
    try:
        with pytest.raises(dockersite.DockerUnavailable, match="(?s)dockerd exited with 3 at start-up.*no permission"):
            engine.start(timeout=30)
    finally:
        assert engine.stop() == []
    assert not engine.root.exists()


def test_only_engine_directories_of_dead_runs_are_stale(tmp_path):
    dead = tmp_path / "socs_tcp-docker-dead"
    dead.mkdir()
    (dead / "dockerd.pid").write_text("999999999\n")         # no such process
    alive = tmp_path / "socs_tcp-docker-alive"
    alive.mkdir()
    (alive / "dockerd.pid").write_text(f"{os.getpid()}\n")   # a live process, but not a dockerd of that directory
    young = tmp_path / "socs_tcp-docker-starting"
    young.mkdir()                                            # no pid file yet: a run starting up
    old = tmp_path / "socs_tcp-docker-old"
    old.mkdir()
    long_ago = time.time() - dockersite.STALE_AFTER - 60
    os.utime(old, (long_ago, long_ago))
    (tmp_path / "unrelated").mkdir()
    assert dockersite.stale_engine_directories(tmp_path) == sorted([alive, dead, old])
    (dead / "data").mkdir()
    assert dockersite.remove_engine_directory(dead) == []
    assert not dead.exists() and young.exists()
