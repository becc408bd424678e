"""Test support for tests/test_docker_site.py: a private Docker engine, the
locally built images, and the compose site brought up on loopback.

Nothing here is for production.  The images built from this folder are
test doubles of images that cannot be pulled where the test runs (no image
registry can be reached):

* ``socs-tcp-test/debian:bookworm`` -- ``debootstrap --variant=minbase
  bookworm`` and ``docker import``, with the machine's own Debian mirror,
  apt proxy and apt settings;
* ``socs-tcp-test/python:3.11`` (``python/``) -- double of ``python:3.11-slim``,
  the base the repository's Dockerfile is built on (build argument
  ``BASE_IMAGE``);
* ``socs-tcp-test/ocs:<tag>`` (``ocs/``) -- double of ``simonsobs/ocs``;
* ``socs-tcp-test/crossbar:<tag>`` (``crossbar/``) -- double of
  ``simonsobs/ocs-crossbar``;
* ``socs-tcp-test/influxdb:1.8`` (``influxdb/``) -- double of ``influxdb:1.8``.

Network rules (all traffic stays on loopback): dockerd runs with
``--bridge=none --iptables=false --ip-forward=false``, every build uses
``--network host``, and the compose override gives every service host
networking and maps the service names to 127.0.0.1, so no Docker network is
ever created.

The stand-in images and the Debian root file system are cached between runs
(see :class:`ImageCache`), keyed by a hash of everything that goes into them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"

#: Bump to invalidate every cached image (when the way they are made changes).
CACHE_VERSION = "1"
#: Cached images older than this are rebuilt, so that Debian and PyPI updates get in.
CACHE_MAX_AGE = 14 * 24 * 3600
DEBIAN_SUITE = "bookworm"
DEBIAN_IMAGE = "socs-tcp-test/debian:bookworm"
PYTHON_IMAGE = "socs-tcp-test/python:3.11"
INFLUXDB_IMAGE = "socs-tcp-test/influxdb:1.8"
PROJECT_IMAGE = "socs-tcp:latest"
#: The service the test leaves out: no Grafana image can be had without a registry.
LEFT_OUT = ("grafana",)
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "FTP_PROXY", "ALL_PROXY")


class DockerUnavailable(RuntimeError):
    """This machine cannot run the private Docker engine; the message says why."""


def _run(cmd, *, env=None, cwd=None, timeout=600, check=True, input=None, stdout=subprocess.PIPE):
    proc = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, input=input, stdout=stdout,
                          stderr=subprocess.PIPE if stdout == subprocess.PIPE else subprocess.STDOUT)
    if check and proc.returncode != 0:
        out = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else ""
        err = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else ""
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {proc.returncode}:\n{out[-4000:]}\n{err[-4000:]}")
    return proc


def prerequisite_problems():
    """Why this machine cannot run the compose test (an empty list when it can)."""
    problems = []
    if not sys.platform.startswith("linux"):
        problems.append(f"the Docker engine needs Linux, this is {sys.platform}")
        return problems
    if os.geteuid() != 0:
        problems.append("dockerd must be started as root (run ./scripts/test as root)")
    for exe, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("docker-compose", "docker-compose"),
                         ("debootstrap", "debootstrap")):
        if shutil.which(exe) is None:
            problems.append(f"{exe} is not installed (Debian package {package}; ./scripts/test installs it as root)")
    if not Path("/etc/debian_version").exists():
        problems.append("debootstrap needs a Debian machine with its apt sources (no /etc/debian_version)")
    elif not Path("/usr/share/keyrings/debian-archive-keyring.gpg").exists():
        problems.append("no /usr/share/keyrings/debian-archive-keyring.gpg (package debian-archive-keyring)")
    return problems


# ---------------------------------------------------------------- the machine's package settings


def host_debian_sources(root="/etc/apt"):
    """``[(uri, suite, components)]`` of the machine's apt sources for Debian bookworm (one-line and deb822)."""
    root = Path(root)
    entries = []
    files = []
    if (root / "sources.list").exists():
        files.append(root / "sources.list")
    files += sorted((root / "sources.list.d").glob("*.list")) + sorted((root / "sources.list.d").glob("*.sources"))
    for path in files:
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.split()
                if "deb" not in fields.get("types", []) or fields.get("enabled", ["yes"])[0] == "no":
                    continue
                for uri in fields.get("uris", []):
                    for suite in fields.get("suites", []):
                        entries.append((uri, suite, fields.get("components", ["main"])))
        else:
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if len(words) >= 3 and words[0] == "deb":
                    words = [w for w in words[1:] if not w.startswith("[")] if "[" in line else words[1:]
                    entries.append((words[0], words[1], words[2:] or ["main"]))
    return [(uri, suite, comps) for uri, suite, comps in entries
            if suite.split("-")[0].split("/")[0] == DEBIAN_SUITE and "debian" in uri]


def host_apt_conf():
    """apt settings of the machine that builds must share: proxies and the Release date checks."""
    try:
        dump = _run(["apt-config", "dump"], timeout=30).stdout.decode()
    except (OSError, RuntimeError):
        return ""
    keep = []
    for line in dump.splitlines():
        key = line.split(" ", 1)[0]
        if key.lower().startswith("acquire::") and ("proxy" in key.lower() or key in (
                "Acquire::Check-Valid-Until", "Acquire::Check-Date", "Acquire::Retries")):
            keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


def host_pip_conf():
    """``/etc/pip.conf`` for the builds: the machine's index, trusted hosts, timeout and proxy.

    Local settings (``file:`` indexes, find-links folders, constraint files) stay out: those
    paths do not exist inside a build.  The CA bundle goes in through ``PIP_CERT``.
    """
    settings = {}
    try:
        out = _run([sys.executable, "-m", "pip", "config", "list"], timeout=60).stdout.decode()
    except (OSError, RuntimeError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1].strip()
        settings[name] = value.strip().strip("'\"")
    for name in ("index-url", "extra-index-url", "trusted-host", "default-timeout", "timeout", "proxy", "retries"):
        env_value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env_value:
            settings[name] = env_value
    lines = ["[global]"]
    for name in ("index-url", "extra-index-url"):
        urls = [u for u in settings.get(name, "").split() if urllib.parse.urlsplit(u).scheme in ("http", "https")]
        if urls:
            lines.append(f"{name} = {' '.join(urls)}")
    for name in ("trusted-host", "proxy", "retries"):
        if settings.get(name):
            lines.append(f"{name} = {settings[name]}")
    timeout = settings.get("default-timeout") or settings.get("timeout")
    if timeout:
        lines.append(f"timeout = {timeout}")
    return "\n".join(lines) + "\n"


def host_ca_bundle():
    for candidate in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise DockerUnavailable("no CA bundle found (PIP_CERT, SSL_CERT_FILE, /etc/ssl/certs/ca-certificates.crt)")


def proxy_build_args():
    """Docker's predefined proxy build arguments, from the environment, for builds that need the index."""
    args = []
    for name in PROXY_VARIABLES:
        for variant in (name, name.lower()):
            if os.environ.get(variant):
                args += ["--build-arg", f"{variant}={os.environ[variant]}"]
    return args


def compose_ocs_tag(compose_file=COMPOSE_FILE):
    """The OCS release the compose file names (the default of ``${OCS_TAG:-...}`` in its OCS images)."""
    compose = yaml.safe_load(Path(compose_file).read_text())
    tags = set()
    for name, svc in (compose.get("services") or {}).items():
        image = str(svc.get("image") or "")
        if image.startswith(("simonsobs/ocs:", "simonsobs/ocs-crossbar:")):
            tag = image.split(":", 1)[1]
            if tag.startswith("${"):
                _, sep, default = tag.strip("${}").partition(":-")
                if not sep:
                    raise ValueError(f"{compose_file}: service {name!r} image {image!r} has no default tag")
                tag = default
            tags.add(tag)
    if len(tags) != 1:
        raise ValueError(f"{compose_file}: expected one OCS tag on the simonsobs images, found {sorted(tags)}")
    return tags.pop()


# ---------------------------------------------------------------- the private engine


def _descendants(pids):
    """Every live process whose ancestry includes one of *pids*."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if child not in out:
                out.append(child)
                todo.append(child)
    return out


def _processes_mentioning(text):
    """Pids of processes whose command line contains *text* (our temporary directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _mounts_under(path):
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mount_point = line.split()[4].encode().decode("unicode_escape")
            if mount_point == path or mount_point.startswith(path + "/"):
                out.append(mount_point)
    return out


class DockerEngine:
    """dockerd with its data root, exec root, pid file and socket in a temporary directory."""

    def __init__(self, say=print):
        self.say = say
        self.root = Path(tempfile.mkdtemp(prefix="socs_tcp-docker-"))
        os.chmod(self.root, 0o755)  # containers running as other users read the site files under it
        self.socket = self.root / "docker.sock"
        self.pidfile = self.root / "dockerd.pid"
        self.log_path = self.root / "dockerd.log"
        self.proc = None
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("DOCKER_", "COMPOSE_")) and k not in ("BUILDKIT_PROGRESS",)}
        self.env.update(DOCKER_HOST=f"unix://{self.socket}", DOCKER_BUILDKIT="0", COMPOSE_DOCKER_CLI_BUILD="0",
                        DOCKER_CONFIG=str(self.root / "client-config"))

    def command(self):
        return ["dockerd", "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                "--pidfile", str(self.pidfile), "-H", f"unix://{self.socket}",
                "--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"]

    def start(self, timeout=90):
        self.say(f"dockerd: starting in {self.root}")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerUnavailable(f"dockerd exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            if self.socket.exists():
                proc = _run(["docker", "version", "--format", "{{.Server.Version}}"], env=self.env, check=False,
                            timeout=30)
                if proc.returncode == 0:
                    self.say(f"dockerd: {proc.stdout.decode().strip()} ready (pid {self.proc.pid})")
                    return self
            if time.monotonic() > deadline:
                raise DockerUnavailable(f"dockerd did not answer on {self.socket} within {timeout} s:\n"
                                        f"{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    def docker(self, *args, timeout=600, check=True, input=None):
        return _run(["docker", *map(str, args)], env=self.env, timeout=timeout, check=check, input=input)

    def lines(self, *args):
        return [line for line in self.docker(*args).stdout.decode().splitlines() if line.strip()]

    def networks(self):
        return sorted(self.lines("network", "ls", "--format", "{{.Name}}"))

    def remove_everything(self):
        """Best effort: force-remove every container (used on the way out after a failure)."""
        ids = self.lines("ps", "-aq") if self.alive() else []
        if ids:
            self.docker("rm", "-f", "-v", *ids, timeout=120, check=False)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=60):
        """Stop dockerd by its pid, kill what it leaves behind, unmount and remove the directory."""
        problems = []
        try:
            if self.alive():
                with contextlib.suppress(Exception):
                    self.remove_everything()
                os.kill(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    problems.append(f"dockerd (pid {self.proc.pid}) did not stop within {timeout} s; killed")
                    os.kill(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(30)
        finally:
            problems += remove_engine_directory(self.root)
        return problems


def remove_engine_directory(root):
    """Kill what still runs from an engine directory, unmount what is mounted under it, and remove it.

    containerd and the containerd-shim processes of an engine name its directory on their command
    lines; they are killed with everything that runs under them.
    """
    problems = []
    try:
        ours = _processes_mentioning(str(root))
        leftovers = _descendants(ours) + ours
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if leftovers:
            problems.append(f"killed processes left behind by dockerd: {leftovers}")
        for mount_point in sorted(_mounts_under(str(root)), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if Path(root).exists():
        problems.append(f"{root} could not be removed")
    return problems


#: An engine directory without a dockerd pid file and older than this is left over from a run that was killed.
STALE_AFTER = 6 * 3600


def stale_engine_directories(tmpdir=None):
    """Engine directories of earlier runs that were killed before they could clean up.

    A directory whose dockerd (pid file) is still alive belongs to a run in progress -- another
    developer's, perhaps -- and is left alone, as is a young one without a pid file yet.
    """
    stale = []
    for root in sorted(Path(tmpdir or tempfile.gettempdir()).glob("socs_tcp-docker-*")):
        pidfile = root / "dockerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if time.time() - root.stat().st_mtime > STALE_AFTER:
                    stale.append(root)
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            cmdline = ""
        if str(root) not in cmdline:
            stale.append(root)
    return stale


# ---------------------------------------------------------------- images and their cache


def default_cache_dir():
    configured = os.environ.get("SOCS_TCP_DOCKER_CACHE")
    if configured is not None:
        return Path(configured) if configured.strip() else None
    if os.geteuid() == 0:
        return Path("/var/cache/socs_tcp-docker")
    return Path.home() / ".cache" / "socs_tcp-docker"


class ImageCache:
    """Saved images (``docker save`` tarballs) and the Debian root file system, keyed by input hashes.

    A file is written under a temporary name and renamed into place, so an interrupted or
    parallel run never loads half a file; files older than :data:`CACHE_MAX_AGE` are rebuilt,
    and older keys of the same image are removed when a new one is saved.
    Set ``SOCS_TCP_DOCKER_CACHE`` to another folder, or to an empty value to cache nothing.
    """

    def __init__(self, directory):
        self.directory = Path(directory) if directory else None
        if self.directory:
            self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, name, key):
        return self.directory / f"{name}-{key}.tar" if self.directory else None

    def get(self, name, key):
        path = self.path(name, key)
        if path and path.exists() and time.time() - path.stat().st_mtime < CACHE_MAX_AGE:
            return path
        return None

    @contextlib.contextmanager
    def put(self, name, key):
        """Yields a temporary path to write; it becomes the entry for (name, key) if the block succeeds."""
        if not self.directory:
            yield None
            return
        final = self.path(name, key)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".part", dir=self.directory)
        os.close(fd)
        try:
            yield Path(tmp)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        for old in self.directory.glob(f"{name}-*.tar"):
            if old != final:
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()


def _hash(*parts):
    digest = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _tree_hash(directory):
    parts = []
    for path in sorted(Path(directory).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            parts += [path.relative_to(directory).as_posix(), path.read_bytes(), oct(path.stat().st_mode & 0o111)]
    return _hash(*parts)


class Images:
    """Builds (or loads from the cache) the base, the stand-ins and the project image."""

    def __init__(self, engine, cache, say=print):
        self.engine = engine
        self.cache = cache
        self.say = say
        self.timings = {}
        self.keys = {}
        self.ocs_tag = compose_ocs_tag()
        self.ocs_image = f"socs-tcp-test/ocs:{self.ocs_tag}"
        self.crossbar_image = f"socs-tcp-test/crossbar:{self.ocs_tag}"

    def _timed(self, what, func):
        started = time.monotonic()
        result = func()
        self.timings[what] = time.monotonic() - started
        self.say(f"image {what}: {result} in {self.timings[what]:.0f} s")
        return result

    # -- Debian root file system
    def debian_inputs(self):
        sources = host_debian_sources()
        if not sources:
            raise DockerUnavailable("no Debian bookworm entry in this machine's apt sources (/etc/apt/sources.list"
                                    "{,.d}); debootstrap needs the mirror the machine uses")
        mirror = next((uri for uri, suite, _ in sources if suite == DEBIAN_SUITE), sources[0][0])
        sources_list = "".join(f"deb {uri} {suite} {' '.join(comps)}\n" for uri, suite, comps in sources)
        return mirror, sources_list, host_apt_conf()

    def debian(self):
        mirror, sources_list, apt_conf = self.debian_inputs()
        key = _hash(CACHE_VERSION, DEBIAN_SUITE, "minbase", mirror, sources_list, apt_conf)
        self.keys[DEBIAN_IMAGE] = key

        def make():
            cached = self.cache.get("debian-rootfs", key)
            if cached:
                self._import(cached)
                return f"imported the cached root file system {cached.name}"
            rootfs = self.engine.root / "rootfs"
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            _run(["debootstrap", "--variant=minbase", DEBIAN_SUITE, str(rootfs), mirror], env=env, timeout=1200)
            (rootfs / "etc/apt/sources.list").write_text(sources_list)
            if apt_conf:
                (rootfs / "etc/apt/apt.conf.d/90socs-tcp-test-host").write_text(apt_conf)
            shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
            (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
            with self.cache.put("debian-rootfs", key) as tmp:
                target = tmp or self.engine.root / "rootfs.tar"
                _run(["tar", "-C", str(rootfs), "--numeric-owner", "--exclude=./proc/*", "--exclude=./sys/*",
                      "--exclude=./dev/*", "-cf", str(target), "."], timeout=600)
                self._import(target)
            shutil.rmtree(rootfs, ignore_errors=True)
            return f"debootstrap {DEBIAN_SUITE} from {mirror} and docker import"
        return self._timed(DEBIAN_IMAGE, make)

    def _import(self, tarball):
        with open(tarball, "rb") as fh:
            proc = subprocess.run(["docker", "import", "-", DEBIAN_IMAGE], stdin=fh, env=self.engine.env,
                                  capture_output=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"docker import failed: {proc.stderr.decode(errors='replace')}")

    # -- images built from the Dockerfiles in this folder
    def stand_in(self, tag, folder, parent, build_args=(), extra_files=None):
        """Build tests/docker/<folder> as *tag* on *parent* (or load it from the cache)."""
        context = self.engine.root / "contexts" / folder
        shutil.copytree(HERE / folder, context)
        for name, content in (extra_files or {}).items():
            (context / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        parent_arg = "DEBIAN_IMAGE" if parent == DEBIAN_IMAGE else "BASE_IMAGE"
        args = [f"{parent_arg}={parent}", *build_args]
        key = _hash(CACHE_VERSION, tag, _tree_hash(context), self.keys[parent], *args)
        self.keys[tag] = key
        cache_name = tag.replace("/", "_").replace(":", "_")

        def make():
            cached = self.cache.get(cache_name, key)
            if cached:
                self.engine.docker("load", "-i", cached, timeout=900)
                return f"loaded from the cache ({cached.name})"
            self.build(tag, context, args)
            with self.cache.put(cache_name, key) as tmp:
                if tmp:
                    self.engine.docker("save", "-o", tmp, tag, timeout=900)
            return f"built from tests/docker/{folder}"
        return self._timed(tag, make)

    def build(self, tag, context, build_args):
        cmd = ["build", "--network", "host", "--pull=false", "-t", tag]
        for arg in build_args:
            cmd += ["--build-arg", arg]
        log = self.engine.root / f"build-{tag.replace('/', '_').replace(':', '_')}.log"
        with open(log, "wb") as out:
            proc = subprocess.run(["docker", *cmd, *proxy_build_args(), str(context)], env=self.engine.env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=1800)
        if proc.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
            raise RuntimeError(f"docker build of {tag} from {context} failed ({proc.returncode}):\n{tail}")

    def all(self):
        started = time.monotonic()
        self.debian()
        self.stand_in(PYTHON_IMAGE, "python", DEBIAN_IMAGE,
                      extra_files={"ca-certificates.crt": host_ca_bundle().read_bytes(), "pip.conf": host_pip_conf()})
        self.stand_in(INFLUXDB_IMAGE, "influxdb", DEBIAN_IMAGE)
        self.stand_in(self.ocs_image, "ocs", PYTHON_IMAGE, build_args=[f"OCS_VERSION={self.ocs_tag.lstrip('v')}"])
        self.stand_in(self.crossbar_image, "crossbar", PYTHON_IMAGE)
        # the project image, from the repository's Dockerfile, every run (its sources change)
        def project():
            self.build(PROJECT_IMAGE, ROOT, [f"BASE_IMAGE={PYTHON_IMAGE}"])
            return f"built from {ROOT / 'Dockerfile'} on {PYTHON_IMAGE}"
        self._timed(PROJECT_IMAGE, project)
        self.timings["all images"] = time.monotonic() - started
        return self


# ---------------------------------------------------------------- the site on loopback


def free_ports(count, host="127.0.0.1"):
    """*count* distinct TCP ports on loopback that are free right now (picked by the OS)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _replace_argument(arguments, flag, value, where):
    flat = [str(a) for a in arguments]
    if flag not in flat:
        raise ValueError(f"{where}: no {flag} argument in {flat}")
    index = flat.index(flag)
    return [*arguments[:index + 1], value, *arguments[index + 2:]]


def _retarget(address, port, where):
    host, sep, _ = str(address).rpartition(":")
    if not sep:
        raise ValueError(f"{where}: {address!r} is not host:port")
    return f"{host}:{port}"


class Site:
    """The compose site with its ports moved to free loopback ports, on host networking."""

    def __init__(self, engine, images, project="socs_tcp_dockertest", say=print):
        self.engine = engine
        self.images = images
        self.project = project
        self.say = say
        self.dir = engine.root / "site"
        self.deploy = self.dir / "deploy"
        names = ("crossbar", "scpi", "jsonlines", "influxdb", "influxdb_rpc")
        self.ports = dict(zip(names, free_ports(len(names))))
        self.compose_data = yaml.safe_load(COMPOSE_FILE.read_text())
        self.services = list(self.compose_data["services"])
        self.started = [s for s in self.services if s not in LEFT_OUT]
        self.override = self.dir / "docker-compose.test.yml"
        self.up_called = False

    # -- files
    def write(self):
        shutil.copytree(DEPLOY, self.deploy)
        for path in [self.dir, *self.deploy.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        self.site_file().write_text(yaml.safe_dump(self.site_config(), sort_keys=False))
        crossbar = self.deploy / "crossbar" / "config.json"
        crossbar.write_text(json.dumps(self.crossbar_config(json.loads(crossbar.read_text())), indent=2))
        self.override.write_text(yaml.safe_dump(self.override_config(), sort_keys=False))
        return self

    def site_file(self):
        return self.deploy / "default.yaml"

    def site_config(self):
        site = yaml.safe_load((DEPLOY / "default.yaml").read_text())
        cb = self.ports["crossbar"]
        site["hub"]["wamp_server"] = f"ws://crossbar:{cb}/ws"
        site["hub"]["wamp_http"] = f"http://crossbar:{cb}/call"
        site["hosts"]["localhost"]["wamp_server"] = f"ws://127.0.0.1:{cb}/ws"
        site["hosts"]["localhost"]["wamp_http"] = f"http://127.0.0.1:{cb}/call"
        for inst in site["hosts"]["docker"]["agent-instances"]:
            where = f"deploy/default.yaml instance {inst['instance-id']!r}"
            args = inst["arguments"]
            if inst["agent-class"] in ("TCPBusAgent", "ScpiInstrumentAgent"):
                address = args[[str(a) for a in args].index("--address") + 1]
                args = _replace_argument(args, "--address", _retarget(address, self.ports["scpi"], where), where)
            elif inst["agent-class"] == "MessageLinkAgent":
                address = args[[str(a) for a in args].index("--address") + 1]
                args = _replace_argument(args, "--address", _retarget(address, self.ports["jsonlines"], where), where)
            elif inst["agent-class"] == "InfluxDBAgent":
                args = _replace_argument(args, "--port", self.ports["influxdb"], where)
            inst["arguments"] = args
        return site

    def crossbar_config(self, config):
        config = copy.deepcopy(config)
        endpoint = config["workers"][0]["transports"][0]["endpoint"]
        endpoint.update(interface="127.0.0.1", port=self.ports["crossbar"])
        return config

    def override_config(self):
        """Host networking for every service (Grafana too, so that no network is created), the service
        names mapped to 127.0.0.1, the stand-in images, and the ports moved to free ones."""
        extra_hosts = [f"{name}:127.0.0.1" for name in self.services]
        cb = self.ports["crossbar"]
        out = {}
        for name, svc in self.compose_data["services"].items():
            entry = {"network_mode": "host", "extra_hosts": extra_hosts}
            env = svc.get("environment") or {}
            if "INSTANCE_ID" in env:
                entry["environment"] = {"SITE_HUB": f"ws://crossbar:{cb}/ws", "SITE_HTTP": f"http://crossbar:{cb}/call"}
                entry["volumes"] = [f"{self.deploy}:/config:ro"]
            out[name] = entry
        out["crossbar"]["image"] = self.images.crossbar_image
        out["crossbar"]["volumes"] = [f"{self.deploy / 'crossbar' / 'config.json'}:/ocs/.crossbar/config.json:ro"]
        for name, svc in self.compose_data["services"].items():
            if str(svc.get("image") or "").startswith("simonsobs/ocs:"):
                out[name]["image"] = self.images.ocs_image
        out["influxdb"]["image"] = INFLUXDB_IMAGE
        out["influxdb"]["environment"] = {
            "INFLUXDB_HTTP_BIND_ADDRESS": f"127.0.0.1:{self.ports['influxdb']}",
            "INFLUXDB_BIND_ADDRESS": f"127.0.0.1:{self.ports['influxdb_rpc']}"}
        for name, port in (("scpi-sim", self.ports["scpi"]), ("jsonlines-sim", self.ports["jsonlines"])):
            command = [str(c) for c in self.compose_data["services"][name]["command"]]
            command = _replace_argument(command, "--port", str(port), f"docker-compose.yml service {name!r}")
            out[name]["command"] = _replace_argument(command, "--host", "127.0.0.1", f"service {name!r}")
        return {"services": out}

    # -- compose
    def compose(self, *args, timeout=600, check=True):
        cmd = ["docker-compose", "--no-ansi", "-p", self.project, "-f", str(COMPOSE_FILE), "-f", str(self.override),
               *map(str, args)]
        return _run(cmd, env=self.engine.env, cwd=ROOT, timeout=timeout, check=check)

    def up(self):
        self.up_called = True
        return self.compose("up", "-d", "--no-build", *self.started, timeout=900)

    def container(self, service):
        ids = self.compose("ps", "-q", service).stdout.decode().split()
        return ids[0] if ids else None

    def state(self, service):
        cid = self.container(service)
        if cid is None:
            return None
        return json.loads(self.engine.docker("inspect", "--format", "{{json .State}}", cid).stdout)

    def health(self, service):
        state = self.state(service) or {}
        return (state.get("Health") or {}).get("Status"), state

    def health_log(self, service):
        _, state = self.health(service)
        return [(h.get("ExitCode"), (h.get("Output") or "").strip()[-300:]) for h in (state.get("Health") or {})
                .get("Log", [])][-3:]

    def logs(self, *services, tail=40):
        proc = self.compose("logs", "--no-color", f"--tail={tail}", *services, check=False, timeout=120)
        return proc.stdout.decode(errors="replace")

    def wait_healthy(self, services=None, timeout=300, since=None):
        """Wait until each service's own health check reports healthy; says when each one does
        (seconds since *since*, a ``time.monotonic()`` value, by default the call)."""
        services = list(services or self.started)
        started = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        pending = dict.fromkeys(services, None)
        while pending:
            for service in list(pending):
                status, state = self.health(service)
                if status != pending[service]:
                    pending[service] = status
                    if status == "healthy":
                        self.say(f"  {service:20s} healthy, {time.monotonic() - started:5.1f} s")
                        del pending[service]
                        continue
                state = state or {}
                if state.get("Status") in ("exited", "dead") or state.get("RestartCount"):
                    raise AssertionError(f"service {service!r} stopped ({state.get('Status')}, exit code "
                                         f"{state.get('ExitCode')}, restarts {state.get('RestartCount')}):\n"
                                         f"{self.logs(service)}")
                if status == "unhealthy":
                    raise AssertionError(f"service {service!r} is unhealthy: {self.health_log(service)}\n"
                                         f"{self.logs(service)}")
            if not pending:
                break
            if time.monotonic() > deadline:
                details = "\n".join(f"{s}: {st} {self.health_log(s)}" for s, st in pending.items())
                raise AssertionError(f"not healthy within {timeout} s:\n{details}\n{self.logs(*pending)}")
            time.sleep(1.0)
        return time.monotonic() - started

    def down(self):
        self.up_called = False
        return self.compose("down", "-v", "--remove-orphans", timeout=600)

    # -- from the host
    def client_args(self):
        return ["--site-file", str(self.site_file()), "--site-host", "localhost"]

    def client(self, instance_id, privs=None):
        from ocs.ocs_client import OCSClient

        return OCSClient(instance_id, privs=privs, args=self.client_args())

    def api(self, instance_id):
        """The agent's ``get_api`` reply (operations, their levels, its access control state)."""
        from ocs import site_config

        return site_config.get_control_client(instance_id, args=self.client_args()).get_api()

    def access_policies(self):
        """``{instance-id: policy}`` of the site's instances that give ``--access-policy``."""
        out = {}
        for inst in yaml.safe_load(self.site_file().read_text())["hosts"]["docker"]["agent-instances"]:
            flat = [str(a) for a in inst.get("arguments") or []]
            if "--access-policy" in flat:
                out[inst["instance-id"]] = flat[flat.index("--access-policy") + 1]
        return out

    def passwords(self, director_file="access-director.yaml"):
        """``{level: password}`` of the default block of the site's access director file."""
        config = yaml.safe_load((self.deploy / director_file).read_text())
        if config.get("passwords_block_default_hashfunc") != "none":
            raise ValueError(f"deploy/{director_file}: the test needs clear-text passwords "
                             "(passwords_block_default_hashfunc: none)")
        (default,) = [block for block in config["passwords"] if block.get("default")]
        return {level: default[f"password_{level}"] for level in (1, 2, 3) if f"password_{level}" in default}

    def influx_query(self, query, db="ocs_feeds"):
        url = (f"http://127.0.0.1:{self.ports['influxdb']}/query?"
               + urllib.parse.urlencode({"db": db, "q": query, "epoch": "s"}))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=10) as response:
            reply = json.load(response)
        results = reply.get("results") or [{}]
        if "error" in results[0]:
            raise ValueError(f"InfluxDB refused {query!r}: {results[0]['error']}")
        return results[0].get("series") or []
