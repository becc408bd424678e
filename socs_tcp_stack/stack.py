"""Start a local OCS stack natively (no Docker): a crossbar router plus agents.

Layer 6 (deployment).  Used by the pytest fixtures and by the local launcher,
so both run exactly the same components as ``docker-compose.yml`` does:
``crossbar start`` for the WAMP router and ``ocs-agent-cli`` for every agent,
each as a subprocess of its own process group, with its output in a log file.

Pieces, smallest first:

- :func:`free_port` - an unused loopback TCP port.
- :func:`write_crossbar_config` - ``<dir>/.crossbar/config.json`` for OCS
  (one realm, roles ``iocs_agent`` / ``iocs_controller``, one web transport
  with the ``ws``, ``call`` and ``info`` paths).
- :func:`write_site_config` - an OCS site YAML that points agents and clients
  at that router.
- :class:`Crossbar` - start / stop / restart the router, readiness checked
  through ``http://127.0.0.1:PORT/info``.
- :class:`AgentProcess` - one ``ocs-agent-cli`` process and a readiness check
  through the HTTP caller bridge.
- :class:`Stack` - owns a working directory, a :class:`Crossbar`, a site file
  and the agents; stops them in reverse order.
- :class:`InfluxDB` - an InfluxDB 1.x server (``influxd``) on free loopback
  ports with its data in a working directory, and ``query``/``write``
  helpers over HTTP; where OCS's ``InfluxDBAgent`` publishes the feeds.

Everything binds to loopback only.  Every process started here is stopped by
process group id (SIGTERM/SIGINT first, SIGKILL after a deadline), by the
``stop()`` methods, by the context managers, and as a last resort by an
``atexit`` hook.  Waits are polls against a deadline, never fixed sleeps.

Surviving a router restart
--------------------------
An OCS agent that loses the router does not exit at once: autobahn's
``ApplicationRunner(auto_reconnect=True)`` retries with twisted's default
``backoffPolicy()`` (about 1.5 s, then x1.5 per attempt, plus up to 1 s of
jitter, capped at 60 s), while ``OCSAgent.onDisconnect`` checks, on a similar
back-off schedule, whether the session has rejoined and shuts the agent down
once ``crossbar_timeout`` seconds have passed.  That check runs only at its
own back-off ticks and does not look again after the last one, so with the
OCS default of 10 s an agent must be back before roughly 7-10 s have passed
(crossbar itself needs a few seconds to start), which a restart does not
reliably meet.  :func:`write_site_config` therefore writes
``crossbar_timeout: 60`` (:data:`DEFAULT_CROSSBAR_TIMEOUT`) into every host
block - that is where OCS reads it, not from ``hub`` - which leaves room for a
restart while agents still exit by themselves, about a minute after the router
is really gone.  ``0`` would make agents wait forever.  :class:`Crossbar`
restarts on the same port with the same config, so agents reconnect to the
URL they already have.  A running process (``acq``) keeps running through
the restart; the agent re-registers its ops when it rejoins.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("socs_tcp_stack.stack")

LOOPBACK = "127.0.0.1"

#: Seconds an agent keeps trying to reach a lost router before it exits (OCS default: 10).
DEFAULT_CROSSBAR_TIMEOUT = 60

#: Environment variables that ``ocs-agent-cli`` turns into command-line arguments;
#: removed from the agents' environment so a caller's shell cannot redirect them.
_OCS_CLI_ENV = ("INSTANCE_ID", "SITE_HOST", "SITE_HUB", "SITE_HTTP", "CROSSBAR_TIMEOUT")

_POLL = 0.1  # seconds between readiness polls

# urllib honours http_proxy & co.; the local stack must never go through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# --------------------------------------------------------------------------
# small helpers


def _check_loopback(host: str) -> str:
    """Return *host* if it is a loopback address, else raise ``ValueError``."""
    if host == "localhost":
        return host
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        raise ValueError(f"host must be a loopback IP address, got {host!r}") from None
    if not ok:
        raise ValueError(f"host must be a loopback address, got {host!r}")
    return host


def _executable(name: str) -> str:
    """The console script *name* installed next to the running interpreter (else on PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"cannot find the {name!r} executable next to {sys.executable} or on PATH")
    return found


def _tail(path: Path, start: int = 0, lines: int = 40) -> str:
    """The last *lines* lines of *path*, reading from byte offset *start*."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def group_members(pgid: int) -> list[int]:
    """Pids of the live (non-zombie) processes in process group *pgid*.

    Reads ``/proc`` where it exists; elsewhere falls back to ``killpg(pgid, 0)``
    and returns ``[pgid]`` if anything in the group can still be signalled.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ..." - comm may contain spaces and parentheses.
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) >= 3 and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _spawn(cmd: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen:
    """Start *cmd* in a new session (so its pid is also its process group id), output appended to *log_path*."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_fh:
        header = f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(cmd)}\n"
        log_fh.write(header.encode())
        log_fh.flush()
        return subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT,
                                cwd=str(cwd), env=dict(env), start_new_session=True)


def _stop_group(proc: subprocess.Popen, first_signal: int, timeout: float, kill_timeout: float = 5.0) -> int | None:
    """Send *first_signal* to the process group of *proc*; SIGKILL the group if it is not gone by *timeout*.

    Waits for the leader (reaping it) and for every other member of the group.
    Returns the leader's exit code (``None`` only if even SIGKILL did not end it).
    """
    pgid = proc.pid

    def gone() -> bool:
        return proc.poll() is not None and not group_members(pgid)

    def wait_until(deadline: float) -> bool:
        while True:
            if gone():
                return True
            if time.monotonic() >= deadline:
                return False
            try:
                proc.wait(timeout=_POLL)
            except subprocess.TimeoutExpired:
                pass
            else:
                if group_members(pgid):  # leader gone, workers still exiting
                    time.sleep(_POLL)

    if gone():
        return proc.returncode
    _signal_group(pgid, first_signal)
    if not wait_until(time.monotonic() + timeout):
        log.warning("process group %d still alive %.1f s after %s; sending SIGKILL",
                    pgid, timeout, signal.Signals(first_signal).name)
        _signal_group(pgid, signal.SIGKILL)
        if not wait_until(time.monotonic() + kill_timeout):
            log.error("process group %d survived SIGKILL: members %s", pgid, group_members(pgid))
    return proc.returncode


# Last-resort cleanup of everything started here and not yet stopped.
_live: list[Any] = []
_live_lock = threading.Lock()
_atexit_registered = False


def _track(obj: Any) -> None:
    global _atexit_registered
    with _live_lock:
        if obj not in _live:
            _live.append(obj)
        if not _atexit_registered:
            atexit.register(_stop_all_live)
            _atexit_registered = True


def _untrack(obj: Any) -> None:
    with _live_lock:
        if obj in _live:
            _live.remove(obj)


def _stop_all_live() -> None:
    with _live_lock:
        pending = list(reversed(_live))
    for obj in pending:
        try:
            log.warning("atexit: stopping %r", obj)
            obj.stop()
        except Exception:  # keep going: the others must still be stopped
            log.exception("atexit: failed to stop %r", obj)


# --------------------------------------------------------------------------
# configuration files


def _wait_until_ready(server: Any, name: str, url: str, timeout: float) -> None:
    """Poll ``server.ready()`` until it is true; stop ``server`` and raise
    ``RuntimeError`` with its log tail if the process exits or *timeout* passes."""
    deadline = time.monotonic() + timeout
    while True:
        code = server._proc.poll()
        if code is not None:
            server.stop()
            raise RuntimeError(f"{name} exited with code {code} during startup; "
                               f"log tail ({server.log_path}):\n{_tail(server.log_path, server._log_offset)}")
        if server.ready():
            return
        if time.monotonic() >= deadline:
            server.stop()
            raise RuntimeError(f"{name} did not answer {url} within {timeout} s; "
                               f"log tail ({server.log_path}):\n{_tail(server.log_path, server._log_offset)}")
        time.sleep(_POLL)


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on *host* (loopback only) that is free right now.

    The OS picks it from the ephemeral range, so parallel test runs do not
    collide; it can still be taken by someone else before it is used, which
    :meth:`Crossbar.start` detects and reports.
    """
    _check_loopback(host)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def make_crossbar_config(port: int, realm: str = "test_realm", address_root: str = "observatory",
                    host: str = LOOPBACK) -> dict:
    """The crossbar node configuration (as a dict) for one OCS realm.

    Same shape as the template OCS ships (``ocs/support/crossbar_config.json``,
    rendered by ``ocs-local-support``), with these choices:

    - role ``iocs_agent`` may call, register, publish and subscribe on every URI
      under ``address_root.``; anonymous websocket clients (the agents) get it.
    - role ``iocs_controller`` may call and subscribe there, but not register or
      publish; the HTTP caller bridge (``/call``) runs with it, so a client can
      drive agents but cannot impersonate one.
    - one web transport bound to *host* (loopback) only, with paths ``ws``
      (WAMP websocket for agents), ``call`` (the HTTP caller bridge behind
      ``wamp_http`` / ``OCSClient``) and ``info`` (nodeinfo, the readiness
      check used by :class:`Crossbar`).
    - websocket auto-ping every 10 s with a 5 s timeout (as in OCS), so a
      router that vanishes without closing its sockets is noticed.  The ping
      size is 12: the OCS template's ``auto_ping_size: 4`` is rejected by
      crossbar >= 23 ("must be between 12 and 125").
    """
    _check_loopback(host)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be an int in 1..65535, got {port!r}")
    if not address_root or "." in address_root.strip("."):
        raise ValueError(f"address_root must be a single URI component, got {address_root!r}")

    def role(name: str, register: bool, publish: bool) -> dict:
        return {
            "name": name,
            "permissions": [{
                "uri": f"{address_root}.",
                "match": "prefix",
                "allow": {"call": True, "register": register, "publish": publish, "subscribe": True},
                "disclose": {"caller": False, "publisher": False},
                "cache": True,
            }],
        }

    return {
        "version": 2,
        "controller": {},
        "workers": [{
            "type": "router",
            "realms": [{
                "name": realm,
                "roles": [role("iocs_agent", register=True, publish=True),
                          role("iocs_controller", register=False, publish=False)],
            }],
            "transports": [{
                "type": "web",
                "endpoint": {"type": "tcp", "interface": host, "port": port},
                "paths": {
                    "ws": {
                        "type": "websocket",
                        "auth": {"anonymous": {"type": "static", "role": "iocs_agent"}},
                        "options": {
                            "open_handshake_timeout": 2500,
                            "close_handshake_timeout": 1000,
                            "auto_ping_interval": 10000,
                            "auto_ping_timeout": 5000,
                            "auto_ping_size": 12,
                        },
                    },
                    "call": {"type": "caller", "realm": realm, "role": "iocs_controller", "options": {}},
                    "info": {"type": "nodeinfo"},
                },
            }],
        }],
    }


def write_crossbar_config(directory: str | os.PathLike, port: int, realm: str = "test_realm",
                          address_root: str = "observatory", host: str = LOOPBACK) -> Path:
    """Write ``<directory>/.crossbar/config.json`` (see :func:`make_crossbar_config`).

    Returns the node directory ``<directory>/.crossbar``, the value for
    ``crossbar start --cbdir``; crossbar also keeps its node key and pid file there.
    """
    cbdir = Path(directory) / ".crossbar"
    cbdir.mkdir(parents=True, exist_ok=True)
    config = make_crossbar_config(port, realm=realm, address_root=address_root, host=host)
    path = cbdir / "config.json"
    path.write_text(json.dumps(config, indent=2) + "\n")
    log.debug("wrote crossbar config %s (port %d, realm %s)", path, port, realm)
    return cbdir


def make_site_config(hub_port: int, realm: str, address_root: str,
                hosts: Mapping[str, Any], crossbar_timeout: int = DEFAULT_CROSSBAR_TIMEOUT,
                log_dir: str | os.PathLike | None = None, host: str = LOOPBACK) -> dict:
    """The OCS site configuration (as a dict); see :func:`write_site_config`."""
    _check_loopback(host)
    if not isinstance(crossbar_timeout, int) or crossbar_timeout < 0:
        raise ValueError(f"crossbar_timeout must be an int >= 0 (0 = wait forever), got {crossbar_timeout!r}")
    hub = {
        "wamp_server": f"ws://{host}:{hub_port}/ws",
        "wamp_http": f"http://{host}:{hub_port}/call",
        "wamp_realm": realm,
        "address_root": address_root,
    }
    host_blocks = {}
    for name, value in hosts.items():
        if isinstance(value, Mapping):
            block = dict(value)
            instances = block.get("agent-instances", [])
        else:
            block = {}
            instances = value
        clean = []
        seen = set()
        for inst in instances:
            if not isinstance(inst, Mapping):
                raise TypeError(f"agent instance must be a mapping, got {inst!r}")
            for key in ("agent-class", "instance-id"):
                if not inst.get(key):
                    raise ValueError(f"agent instance {dict(inst)!r} in host {name!r} has no {key!r}")
            if inst["instance-id"] in seen:
                raise ValueError(f"duplicate instance-id {inst['instance-id']!r} in host {name!r}")
            seen.add(inst["instance-id"])
            entry = dict(inst)
            entry["arguments"] = list(inst.get("arguments", []))
            clean.append(entry)
        block["agent-instances"] = clean
        block.setdefault("crossbar_timeout", crossbar_timeout)
        if log_dir is not None:
            block.setdefault("log-dir", str(Path(log_dir).resolve()))
        host_blocks[str(name)] = block
    return {"hub": hub, "hosts": host_blocks}


def write_site_config(path: str | os.PathLike, hub_port: int, realm: str, address_root: str,
                      hosts: Mapping[str, Any], crossbar_timeout: int = DEFAULT_CROSSBAR_TIMEOUT,
                      log_dir: str | os.PathLike | None = None, host: str = LOOPBACK) -> Path:
    """Write an OCS site config YAML at *path* and return its path.

    *hosts* maps a host name (use it as ``--site-host``) either to a list of
    agent instances or to a full host block ``{'agent-instances': [...], ...}``;
    an instance is ``{'agent-class': ..., 'instance-id': ..., 'arguments': [...]}``.

    What OCS 0.12 reads (``ocs/site_config.py``) and what is written:

    - ``hub``: ``wamp_server`` (ws URL, required), ``wamp_http`` (the caller
      bridge used by ``OCSClient``), ``wamp_realm`` and ``address_root``
      (required).  Nothing else is needed; ``registry_address`` is deprecated
      and ignored, ``agent-paths`` is not read any more (agents come from the
      ``ocs.plugins`` entry point).
    - each host: ``agent-instances`` (required) and ``crossbar_timeout`` - a
      *host* key, default 10 in OCS, here *crossbar_timeout*
      (:data:`DEFAULT_CROSSBAR_TIMEOUT`, see the module docstring).  With
      *log_dir*, also ``log-dir`` (absolute, must exist): agents then also log
      to ``<log-dir>/<address_root>.<instance-id>.log``.  Keys given in a host
      block are kept as they are (a host block may also override
      ``wamp_server``/``wamp_http``/``wamp_realm``).
    """
    config = make_site_config(hub_port, realm, address_root, hosts, crossbar_timeout=crossbar_timeout,
                         log_dir=log_dir, host=host)
    import yaml  # PyYAML comes with ocs; only needed here

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False, default_flow_style=False))
    log.debug("wrote site config %s", path)
    return path


# --------------------------------------------------------------------------
# crossbar


class Crossbar:
    """A crossbar router for one OCS realm, run as ``crossbar start --cbdir <workdir>/.crossbar``.

    The config is written at construction (see :func:`make_crossbar_config`); the
    port is chosen with :func:`free_port` unless given and stays the same over
    :meth:`restart`, so agents find the router again at the URL they know.
    Output goes to ``<workdir>/crossbar.log`` (appended over restarts).
    Crossbar needs about 4 s to boot (controller, then a router worker
    process, in the same process group); :meth:`start` returns as soon as
    ``/info`` answers.  A port taken by someone else between construction and
    :meth:`start` is reported as ``RuntimeError``.
    """

    def __init__(self, workdir: str | os.PathLike, port: int | None = None, realm: str = "test_realm",
                 address_root: str = "observatory", host: str = LOOPBACK, executable: str | None = None,
                 loglevel: str = "info", env: Mapping[str, str] | None = None):
        self.host = _check_loopback(host)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port(host) if port is None else port
        self.realm = realm
        self.address_root = address_root
        self.loglevel = loglevel
        self.cbdir = write_crossbar_config(self.workdir, self.port, realm=realm, address_root=address_root, host=host)
        self.log_path = self.workdir / "crossbar.log"
        self._executable = executable
        self._env = env
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        pid = self._proc.pid if self._proc else None
        return f"<Crossbar {self.host}:{self.port} pid={pid}>"

    @property
    def url(self) -> str:
        """WAMP websocket URL (site config ``wamp_server``)."""
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def http_url(self) -> str:
        """HTTP caller bridge URL (site config ``wamp_http``, ``--site-http``)."""
        return f"http://{self.host}:{self.port}/call"

    @property
    def info_url(self) -> str:
        """Nodeinfo page, used as the readiness check."""
        return f"http://{self.host}:{self.port}/info"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def alive(self) -> bool:
        """True while the crossbar node process runs."""
        return self._proc is not None and self._proc.poll() is None

    def ready(self) -> bool:
        """True if ``/info`` answers with HTTP 200 right now."""
        try:
            with _OPENER.open(self.info_url, timeout=1.0) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 30.0) -> Crossbar:
        """Launch crossbar and wait until ``/info`` answers; ``RuntimeError`` (with the log tail) if it does not."""
        if self.alive():
            raise RuntimeError(f"{self!r} is already running")
        if _port_in_use(self.host, self.port):
            raise RuntimeError(f"port {self.host}:{self.port} is already in use; cannot start crossbar there")
        # A pid file left by a killed node would make crossbar refuse to start if the pid were reused.
        stale = self.cbdir / "node.pid"
        if stale.exists():
            stale.unlink()
        exe = self._executable or _executable("crossbar")
        cmd = [exe, "start", "--cbdir", str(self.cbdir), "--loglevel", self.loglevel,
               "--logformat", "standard", "--color", "false"]
        env = dict(os.environ if self._env is None else self._env)
        env["PYTHONUNBUFFERED"] = "1"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log.info("starting crossbar on %s:%d (log %s)", self.host, self.port, self.log_path)
        self._proc = _spawn(cmd, self.log_path, env, self.workdir)
        _track(self)
        _wait_until_ready(self, "crossbar", self.info_url, timeout)
        if not self.alive():  # something else answered on our port and ours died
            raise RuntimeError(f"crossbar exited right after startup; log tail:\n"
                               f"{_tail(self.log_path, self._log_offset)}")
        log.info("crossbar ready on %s:%d (pid %d)", self.host, self.port, self._proc.pid)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the crossbar process group, SIGKILL it after *timeout*; wait for every member.

        Returns the exit code of the node process (``None`` if it was never
        started); crossbar exits with 1 after a SIGTERM, which is normal.
        Connected agents see ``wamp.close.transport_lost`` (not a normal
        close), so their running processes keep going while they reconnect.
        """
        proc = self._proc
        if proc is None:
            _untrack(self)
            return None
        code = _stop_group(proc, signal.SIGTERM, timeout)
        _untrack(self)
        log.info("crossbar (pid %d) stopped, exit code %s", proc.pid, code)
        return code

    def restart(self, timeout: float = 30.0, down_time: float = 0.0) -> Crossbar:
        """Stop, optionally stay down for *down_time* seconds, and start again on the same port."""
        self.stop()
        if down_time > 0:
            time.sleep(down_time)
        return self.start(timeout=timeout)

    def __enter__(self) -> Crossbar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# agents


class AgentProcess:
    """One OCS agent: ``ocs-agent-cli --site-file F --site-host H --instance-id I [extra args]``.

    The agent class and its arguments come from the site file.  The child's
    environment is the caller's (or *env*) minus the variables
    ``ocs-agent-cli`` would turn into arguments (``INSTANCE_ID``,
    ``SITE_HOST``, ``SITE_HUB``, ``SITE_HTTP``, ``CROSSBAR_TIMEOUT``), plus
    ``LOGLEVEL`` = *loglevel*, ``OCS_CONFIG_DIR`` = the site file's directory
    (so nothing falls back to a user's own config, whether or not it was set)
    and ``PYTHONUNBUFFERED=1``; *extra_env* is applied last.
    """

    def __init__(self, site_file: str | os.PathLike, site_host: str, instance_id: str,
                 extra_args: Iterable[str] = (), log_path: str | os.PathLike | None = None,
                 loglevel: str = "info", env: Mapping[str, str] | None = None,
                 extra_env: Mapping[str, str] | None = None, executable: str | None = None,
                 cwd: str | os.PathLike | None = None):
        self.site_file = Path(site_file).resolve()
        self.site_host = site_host
        self.instance_id = instance_id
        self.extra_args = [str(a) for a in extra_args]
        self.cwd = Path(cwd).resolve() if cwd is not None else self.site_file.parent
        self.log_path = (Path(log_path) if log_path is not None
                         else self.site_file.parent / "logs" / f"{instance_id}.log").resolve()
        self.loglevel = loglevel
        self._env = env
        self._extra_env = dict(extra_env or {})
        self._executable = executable
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0
        self._hub: dict | None = None

    def __repr__(self) -> str:
        return f"<AgentProcess {self.instance_id} pid={self.pid}>"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def client_args(self) -> list[str]:
        """Arguments that point an OCS client at the same site: ``OCSClient(iid, args=agent.client_args)``."""
        return ["--site-file", str(self.site_file), "--site-host", self.site_host]

    def command(self) -> list[str]:
        exe = self._executable or _executable("ocs-agent-cli")
        return [exe, *self.client_args, "--instance-id", self.instance_id, *self.extra_args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ if self._env is None else self._env)
        for name in _OCS_CLI_ENV:
            env.pop(name, None)
        env["LOGLEVEL"] = self.loglevel
        env["OCS_CONFIG_DIR"] = str(self.site_file.parent)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self._extra_env)
        return env

    def start(self) -> AgentProcess:
        if self.alive():
            raise RuntimeError(f"{self!r} is already running")
        if not self.site_file.exists():
            raise FileNotFoundError(f"site file {self.site_file} does not exist")
        cmd = self.command()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log.info("starting agent %s (log %s)", self.instance_id, self.log_path)
        self._proc = _spawn(cmd, self.log_path, self.environment(), self.cwd)
        _track(self)
        return self

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, self._log_offset, lines)

    # -- readiness -------------------------------------------------------

    def _hub_data(self) -> dict:
        """``hub`` of the site file, with this host's overrides, as OCS resolves it."""
        if self._hub is None:
            import yaml

            data = yaml.safe_load(self.site_file.read_text())
            hub = dict(data["hub"])
            host = (data.get("hosts") or {}).get(self.site_host) or (data.get("hosts") or {}).get("localhost") or {}
            hub.update({k: host[k] for k in ("wamp_server", "wamp_http", "wamp_realm") if k in host})
            self._hub = hub
        return self._hub

    @property
    def address(self) -> str:
        """The agent's WAMP address, ``<address_root>.<instance_id>``."""
        return f"{self._hub_data()['address_root']}.{self.instance_id}"

    def probe(self, timeout: float = 2.0) -> list:
        """Ask the agent for its tasks through the HTTP caller bridge, with a timeout.

        Returns the ``get_tasks`` list; raises ``RuntimeError`` / ``OSError`` if
        the router or the agent does not answer.  (``ocs.client_http`` posts
        without a timeout, so a polling loop should not rely on it alone.)
        """
        url = self._hub_data().get("wamp_http")
        if not url:
            raise RuntimeError(f"site file {self.site_file} has no hub.wamp_http")
        body = json.dumps({"procedure": self.address, "args": ["get_tasks"], "kwargs": {}}).encode()
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=timeout) as resp:
            reply = json.loads(resp.read().decode())
        if "error" in reply:
            raise RuntimeError(f"{self.address}: {reply['error']} {reply.get('args')}")
        return reply["args"][0]

    def wait_ready(self, client_factory: Callable[[], Any] | None = None, timeout: float = 30.0) -> Any:
        """Poll until the agent answers through the router; return the client (or the task list).

        First polls :meth:`probe` (with a per-call timeout) until ``get_tasks``
        answers.  Then, if *client_factory* is given (e.g.
        ``lambda: OCSClient(iid, args=agent.client_args)``), polls it until it
        returns without raising, calls ``get_tasks()`` on the result if it has
        one, and returns the client.  Without a factory returns the task list.
        Raises ``RuntimeError`` (with the agent's log tail) if the agent exits
        or *timeout* passes first.
        """
        deadline = time.monotonic() + timeout
        last: BaseException | None = None

        def check_deadline(what: str) -> None:
            if not self.alive():
                raise RuntimeError(f"agent {self.instance_id} exited with code {self.returncode} while {what}; "
                                   f"log tail ({self.log_path}):\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"agent {self.instance_id} not ready within {timeout} s ({what}); "
                                   f"last error: {last!r}; log tail ({self.log_path}):\n{self.log_tail()}")

        while True:
            check_deadline("waiting for get_tasks")
            try:
                tasks = self.probe(timeout=max(0.2, min(2.0, deadline - time.monotonic())))
                break
            except Exception as exc:  # not registered yet, router restarting, ...
                last = exc
            time.sleep(_POLL)
        if client_factory is None:
            return tasks
        while True:
            check_deadline("creating the client")
            try:
                client = client_factory()
                get_tasks = getattr(client, "get_tasks", None)
                if callable(get_tasks):
                    get_tasks()
                return client
            except Exception as exc:
                last = exc
            time.sleep(_POLL)

    def client(self, **kwargs: Any) -> Any:
        """An ``ocs.ocs_client.OCSClient`` for this agent, pointed at the same site file and host."""
        from ocs.ocs_client import OCSClient

        return OCSClient(self.instance_id, args=self.client_args, **kwargs)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGINT the agent's process group (OCS stops its sessions, then the reactor), SIGKILL after *timeout*.

        OCS waits 3 s after stopping its sessions, and when it still has a
        router session it leaves it and waits another 3 s, so a clean stop
        takes about 3-6 s; exit code 0.  Returns the exit code.
        """
        proc = self._proc
        if proc is None:
            _untrack(self)
            return None
        code = _stop_group(proc, signal.SIGINT, timeout)
        _untrack(self)
        log.info("agent %s (pid %d) stopped, exit code %s", self.instance_id, proc.pid, code)
        return code

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# the whole stack


class Stack:
    """A crossbar router, a site file and agents in one working directory.

    >>> with Stack() as stack:                                    # doctest: +SKIP
    ...     stack.add_instance("FakeDataAgent", "fake-data-1", ["--mode", "acq"])
    ...     stack.start_agent("fake-data-1")
    ...     client = stack.client("fake-data-1")

    Without *workdir* a temporary directory is created and removed by
    :meth:`stop` (unless *keep_workdir*).  Layout: ``.crossbar/config.json``,
    ``crossbar.log``, ``site.yaml``, ``logs/<instance-id>.log``.  Instances
    can be added before or after :meth:`start`; the site file is rewritten
    each time (running agents have already read theirs).
    """

    def __init__(self, workdir: str | os.PathLike | None = None, port: int | None = None,
                 realm: str = "test_realm", address_root: str = "observatory", site_host: str = "localhost",
                 crossbar_timeout: int = DEFAULT_CROSSBAR_TIMEOUT, loglevel: str = "info",
                 keep_workdir: bool = False, host: str = LOOPBACK):
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="socs-tcp-stack-") if workdir is None else workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep_workdir = keep_workdir
        self.realm = realm
        self.address_root = address_root
        self.site_host = site_host
        self.crossbar_timeout = crossbar_timeout
        self.loglevel = loglevel
        self.host = host
        self.crossbar = Crossbar(self.workdir, port=port, realm=realm, address_root=address_root, host=host,
                                 loglevel=loglevel)
        self.site_file = self.workdir / "site.yaml"
        self.instances: list[dict] = []
        self.agents: dict[str, AgentProcess] = {}
        self._atexit = False
        self._write_site()

    def __repr__(self) -> str:
        return f"<Stack {self.workdir} port={self.port} agents={list(self.agents)}>"

    @property
    def port(self) -> int:
        return self.crossbar.port

    @property
    def client_args(self) -> list[str]:
        """``['--site-file', F, '--site-host', H]`` for ``OCSClient(..., args=...)`` or ``ocs-client-cli``."""
        return ["--site-file", str(self.site_file), "--site-host", self.site_host]

    def _write_site(self) -> None:
        write_site_config(self.site_file, self.port, self.realm, self.address_root,
                          {self.site_host: self.instances}, crossbar_timeout=self.crossbar_timeout, host=self.host)

    def add_instance(self, agent_class: str, instance_id: str, arguments: Iterable[Any] = ()) -> dict:
        """Add an agent instance to the site file (does not start it)."""
        if any(inst["instance-id"] == instance_id for inst in self.instances):
            raise ValueError(f"instance-id {instance_id!r} is already in the site config")
        inst = {"agent-class": agent_class, "instance-id": instance_id, "arguments": [str(a) for a in arguments]}
        self.instances.append(inst)
        self._write_site()
        return inst

    def start(self, timeout: float = 30.0) -> Stack:
        """Start crossbar (agents are started with :meth:`start_agent`)."""
        if not self._atexit:
            atexit.register(self.stop)
            self._atexit = True
        try:
            self.crossbar.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def start_agent(self, instance_id: str, extra_args: Iterable[str] = (), wait: bool = True,
                    timeout: float = 30.0, extra_env: Mapping[str, str] | None = None) -> AgentProcess:
        """Start the agent *instance_id* (already added with :meth:`add_instance`); wait until it answers."""
        if not any(inst["instance-id"] == instance_id for inst in self.instances):
            raise ValueError(f"unknown instance-id {instance_id!r}; add it with add_instance() first")
        old = self.agents.get(instance_id)
        if old is not None and old.alive():
            raise RuntimeError(f"agent {instance_id!r} is already running")
        agent = AgentProcess(self.site_file, self.site_host, instance_id, extra_args=extra_args,
                             log_path=self.workdir / "logs" / f"{instance_id}.log", loglevel=self.loglevel,
                             extra_env=extra_env, cwd=self.workdir)
        self.agents.pop(instance_id, None)
        self.agents[instance_id] = agent
        agent.start()
        if wait:
            try:
                agent.wait_ready(timeout=timeout)
            except BaseException:
                agent.stop()
                raise
        return agent

    def client(self, instance_id: str, **kwargs: Any) -> Any:
        """An ``OCSClient`` for *instance_id* on this stack's site."""
        from ocs.ocs_client import OCSClient

        return OCSClient(instance_id, args=self.client_args, **kwargs)

    def stop(self) -> None:
        """Stop the agents (all at once: each takes seconds to shut down), then
        crossbar; remove an owned temporary workdir."""
        def stop_agent(agent: AgentProcess) -> None:
            try:
                agent.stop()
            except Exception:
                log.exception("failed to stop %r", agent)
        stoppers = [threading.Thread(target=stop_agent, args=(agent,), name=f"stop-{agent.instance_id}")
                    for agent in self.agents.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()
        try:
            self.crossbar.stop()
        finally:
            if self._atexit:
                atexit.unregister(self.stop)
                self._atexit = False
            if self._owns_workdir and not self.keep_workdir and self.workdir.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------
# InfluxDB (1.x), where the OCS InfluxDB publisher agent writes the feeds


class InfluxQueryError(ValueError):
    """InfluxDB refused a query or a write (bad InfluxQL, unknown database, bad line protocol, ...).

    Attributes:
        query: the query text (or a short description of the write).
        status: the HTTP status of the reply.
        message: InfluxDB's own error message.
    """

    def __init__(self, query: str, status: int, message: str):
        self.query = query
        self.status = status
        self.message = message
        super().__init__(f"InfluxDB rejected {query!r} (HTTP {status}): {message}")


def influxd_path() -> str | None:
    """The ``influxd`` (InfluxDB 1.x) executable on PATH, or ``None`` if there is none."""
    return shutil.which("influxd")


def make_influxdb_config(directory: str | os.PathLike, http_port: int, rpc_port: int, host: str = LOOPBACK,
                         loglevel: str = "warn") -> str:
    """The ``influxd`` configuration (TOML text) for a throw-away server under *directory*.

    Data, meta and WAL directories go under *directory*; the HTTP API and the
    RPC service (backup/restore, ``bind-address``) listen on *host*
    (loopback) only.  Every other listener (graphite, collectd, opentsdb,
    udp) is left disabled, usage reporting is off, the ``_internal``
    monitoring database is not written, and neither queries nor HTTP
    requests are logged, so the log holds only what matters.
    """
    _check_loopback(host)
    for name, port in (("http_port", http_port), ("rpc_port", rpc_port)):
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError(f"{name} must be an int in 1..65535, got {port!r}")
    if http_port == rpc_port:
        raise ValueError(f"http_port and rpc_port must differ, both are {http_port}")
    if loglevel not in ("debug", "info", "warn", "error"):
        raise ValueError(f"loglevel must be one of debug, info, warn, error; got {loglevel!r}")
    base = Path(directory).resolve()
    return "\n".join([
        "reporting-disabled = true",
        f'bind-address = "{host}:{rpc_port}"',
        "",
        "[meta]",
        f'  dir = "{base / "meta"}"',
        "",
        "[data]",
        f'  dir = "{base / "data"}"',
        f'  wal-dir = "{base / "wal"}"',
        "  query-log-enabled = false",
        "",
        "[monitor]",
        "  store-enabled = false",
        "",
        "[http]",
        "  enabled = true",
        f'  bind-address = "{host}:{http_port}"',
        "  log-enabled = false",
        "",
        "[logging]",
        f'  level = "{loglevel}"',
        "  suppress-logo = true",
        "",
    ])


class InfluxDB:
    """An InfluxDB 1.x server, run as ``influxd run -config <workdir>/influxdb.conf``.

    The configuration is written by :meth:`start` (see
    :func:`make_influxdb_config`): the HTTP API and the RPC service on two
    free loopback ports (:func:`free_port` unless given), data, meta and WAL
    directories under *workdir* (a temporary directory, removed by
    :meth:`stop`, when *workdir* is ``None``).  Variables ``INFLUXDB_*`` of
    the caller's environment are dropped, since ``influxd`` would let them
    override the configuration.  Output goes to ``<workdir>/influxd.log``.
    Readiness is ``/ping`` answering 204, polled against a deadline.  The
    *databases* are created once the server answers.  Like the other
    processes here it is tracked and stopped by an ``atexit`` hook if
    :meth:`stop` was never called.

    >>> with InfluxDB(databases=["ocs_feeds"]) as influx:          # doctest: +SKIP
    ...     influx.write("demo,feed=x value=1.5", db="ocs_feeds")
    ...     influx.query('SELECT last("value") FROM "demo"', db="ocs_feeds")
    [{'name': 'demo', 'columns': ['time', 'last'], 'values': [['2024-...', 1.5]]}]
    """

    def __init__(self, workdir: str | os.PathLike | None = None, http_port: int | None = None,
                 rpc_port: int | None = None, host: str = LOOPBACK, databases: Iterable[str] = (),
                 executable: str | None = None, loglevel: str = "warn", env: Mapping[str, str] | None = None):
        self.host = _check_loopback(host)
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="socs-tcp-influxdb-") if workdir is None else workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port(host) if http_port is None else http_port
        if rpc_port is None:
            rpc_port = free_port(host)
            while rpc_port == self.http_port:
                rpc_port = free_port(host)
        self.rpc_port = rpc_port
        self.databases = []
        for name in databases:
            if not isinstance(name, str) or not name:
                raise ValueError(f"database names must be non-empty strings, got {name!r}")
            self.databases.append(name)
        self.loglevel = loglevel
        self.config_path = self.workdir / "influxdb.conf"
        self.log_path = self.workdir / "influxd.log"
        # validates ports and loglevel now rather than at start()
        self._config_text = make_influxdb_config(self.workdir, self.http_port, self.rpc_port, host, loglevel)
        self._executable = executable
        self._env = env
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    def __repr__(self) -> str:
        return f"<InfluxDB {self.url} pid={self.pid}>"

    @property
    def url(self) -> str:
        """Base URL of the HTTP API, e.g. ``http://127.0.0.1:8086``."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def publisher_args(self) -> list[str]:
        """Arguments pointing OCS's ``InfluxDBAgent`` at this server (database: the first of *databases*)."""
        args = ["--host", self.host, "--port", str(self.http_port)]
        if self.databases:
            args += ["--database", self.databases[0]]
        return args

    def alive(self) -> bool:
        """True while the ``influxd`` process runs."""
        return self._proc is not None and self._proc.poll() is None

    def ready(self) -> bool:
        """True if ``/ping`` answers 204 right now."""
        try:
            with _OPENER.open(f"{self.url}/ping", timeout=1.0) as resp:
                return resp.status == 204
        except (urllib.error.URLError, OSError):
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def environment(self) -> dict[str, str]:
        """The server's environment: the caller's (or *env*) without ``INFLUXDB_*`` overrides."""
        env = dict(os.environ if self._env is None else self._env)
        for name in [n for n in env if n.startswith("INFLUXDB_")]:
            env.pop(name)
        return env

    def start(self, timeout: float = 30.0) -> InfluxDB:
        """Write the config, launch ``influxd``, wait for ``/ping``, create the databases.

        Raises:
            FileNotFoundError: no ``influxd`` executable.
            RuntimeError: a port is taken, or the server exits or does not
                answer within *timeout* (with the tail of its log).
        """
        if self.alive():
            raise RuntimeError(f"{self!r} is already running")
        exe = self._executable or influxd_path()
        if exe is None:
            raise FileNotFoundError("cannot find the 'influxd' executable (InfluxDB 1.x) on PATH; "
                                    "on Debian: apt-get install influxdb")
        for port in (self.http_port, self.rpc_port):
            if _port_in_use(self.host, port):
                raise RuntimeError(f"port {self.host}:{port} is already in use; cannot start InfluxDB there")
        self.config_path.write_text(self._config_text)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log.info("starting InfluxDB on %s (log %s)", self.url, self.log_path)
        self._proc = _spawn([exe, "run", "-config", str(self.config_path)], self.log_path, self.environment(),
                            self.workdir)
        _track(self)
        _wait_until_ready(self, "influxd", f"{self.url}/ping", timeout)
        try:
            for name in self.databases:
                self.query(f'CREATE DATABASE "{name}"')
        except BaseException:
            self.stop()
            raise
        log.info("InfluxDB ready on %s (pid %d)", self.url, self._proc.pid)
        return self

    def _request(self, path: str, params: Mapping[str, str], body: bytes | None, what: str,
                 timeout: float) -> bytes:
        query = urllib.parse.urlencode(params)
        request = urllib.request.Request(f"{self.url}{path}?{query}", data=body if body is not None else b"",
                                         method="POST")
        if path == "/write":
            request.add_header("Content-Type", "text/plain; charset=utf-8")
        try:
            with _OPENER.open(request, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode("utf-8", errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            raise InfluxQueryError(what, exc.code, str(message).strip()) from None

    def query(self, q: str, db: str | None = None, epoch: str | None = None, timeout: float = 10.0) -> list[dict]:
        """Run InfluxQL *q* (against database *db*) over HTTP and return its series.

        Each series is InfluxDB's own dict: ``name``, ``columns``, ``values``
        and, with ``GROUP BY`` tags, ``tags``.  For several statements
        separated by ``;`` the series of all of them are concatenated.  A
        statement that matches nothing gives ``[]``.  *epoch* (``'s'``,
        ``'ms'``, ``'u'``, ``'ns'``, ...) returns times as numbers instead of
        RFC 3339 strings.  The query is sent as a POST, which InfluxDB
        accepts for every kind of statement.

        Raises:
            TypeError: *q* or *db* is not a string.
            ValueError: *q* is empty or *epoch* is not a known precision.
            InfluxQueryError: InfluxDB rejected the query (a ``ValueError``
                too), with the server's message.
            OSError: the server cannot be reached.
        """
        if not isinstance(q, str):
            raise TypeError(f"query must be a str, got {type(q).__name__}: {q!r}")
        if not q.strip():
            raise ValueError(f"query must not be empty, got {q!r}")
        if db is not None and not isinstance(db, str):
            raise TypeError(f"db must be a str or None, got {type(db).__name__}: {db!r}")
        if epoch is not None and epoch not in ("h", "m", "s", "ms", "u", "ns"):
            raise ValueError(f"epoch must be one of h, m, s, ms, u, ns; got {epoch!r}")
        params = {"q": q}
        if db:
            params["db"] = db
        if epoch:
            params["epoch"] = epoch
        reply = json.loads(self._request("/query", params, None, q, timeout).decode("utf-8"))
        if "error" in reply:
            raise InfluxQueryError(q, 200, reply["error"])
        series: list[dict] = []
        for result in reply.get("results", []):
            if "error" in result:
                raise InfluxQueryError(q, 200, result["error"])
            series.extend(result.get("series", []))
        return series

    def write(self, lines: str | Iterable[str], db: str, precision: str = "ns", timeout: float = 10.0) -> None:
        """Write points in line protocol (one string, or one line per item) to database *db*.

        Raises:
            TypeError: *lines* or *db* has the wrong type.
            ValueError: nothing to write, or an unknown *precision*.
            InfluxQueryError: InfluxDB rejected the points (nothing of a
                rejected batch is guaranteed to be stored).
        """
        if isinstance(lines, bytes) or not isinstance(lines, str | Iterable):
            raise TypeError(f"lines must be a str or an iterable of str, got {type(lines).__name__}: {lines!r}")
        items = [lines] if isinstance(lines, str) else list(lines)
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"each line must be a str, got {type(item).__name__}: {item!r}")
        body = "\n".join(item.strip("\n") for item in items if item.strip())
        if not body:
            raise ValueError(f"nothing to write: {lines!r}")
        if not isinstance(db, str) or not db:
            raise TypeError(f"db must be a non-empty str, got {db!r}")
        if precision not in ("h", "m", "s", "ms", "u", "ns"):
            raise ValueError(f"precision must be one of h, m, s, ms, u, ns; got {precision!r}")
        self._request("/write", {"db": db, "precision": precision}, body.encode("utf-8"),
                      f"write of {len(body.splitlines())} line(s) to {db}", timeout)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM ``influxd`` (it flushes and exits within about a second), SIGKILL after *timeout*.

        Returns its exit code (``None`` if it was never started).  An owned
        temporary working directory is removed.
        """
        proc = self._proc
        code = None
        if proc is not None:
            code = _stop_group(proc, signal.SIGTERM, timeout)
            log.info("InfluxDB (pid %d) stopped, exit code %s", proc.pid, code)
        _untrack(self)
        if self._owns_workdir and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)
        return code

    def __enter__(self) -> InfluxDB:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
