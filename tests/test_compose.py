"""The docker-compose site: docker-compose.yml, deploy/default.yaml, deploy/crossbar/config.json,
Dockerfile and .dockerignore, checked for validity and for consistency with each other.

No Docker engine is needed: ``docker-compose config`` validates the compose file,
the other checks read the files, resolve agent classes through the real
``ocs.plugins`` entry points and parse every instance's arguments with the
agent's own parser, and the integration test starts the repository's crossbar
config with a real crossbar (port rewritten to a free loopback one) and runs
the site's agents and the compose health checks against it.

Each check is a helper that returns a list of problems (empty when all is
well), so a failure names every bad service, instance, path or port at once;
the helpers' own failure paths are tested on small broken examples.
"""

import copy
import importlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from argparse import Namespace
from importlib.metadata import entry_points
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
#: The published ports, read by docker-compose with COMPOSE_FILE when it runs without -f.
COMPOSE_OVERRIDE = ROOT / "docker-compose.override.yml"
SITE_FILE = ROOT / "deploy" / "default.yaml"
CROSSBAR_CONFIG = ROOT / "deploy" / "crossbar" / "config.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

#: Instance ids the site must have (the dashboards and the docs use the same ones).
SITE_INSTANCES = {"registry": "RegistryAgent", "influxdb-publisher": "InfluxDBAgent",
                  "scpi-psu": "ScpiInstrumentAgent", "tcp-bus": "TCPBusAgent", "message-link": "MessageLinkAgent",
                  "access-dir": "AccessDirector"}
#: Image of OCS's own agents: it has only the ``ocs`` plugin installed.
OCS_IMAGE = "simonsobs/ocs"
LOOPBACK_IPS = ("127.0.0.1", "::1")
#: Variables the compose file interpolates; removed so ``docker-compose config`` shows the defaults.
COMPOSE_VARIABLES = ("LOGLEVEL", "OCS_TAG", "GRAFANA_ADMIN_PASSWORD", "COMPOSE_FILE", "COMPOSE_PROJECT_NAME")


def in_ci():
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def load_yaml(path):
    with open(path) as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def compose():
    """The site as ``docker-compose up`` runs it: docker-compose.yml plus the ports of docker-compose.override.yml."""
    return with_override(load_yaml(COMPOSE_FILE), load_yaml(COMPOSE_OVERRIDE))


def with_override(base, override):
    """*base* with the ``ports`` of *override* added, as docker-compose merges them (the only key the override sets)."""
    merged = copy.deepcopy(base)
    for name, svc in (override.get("services") or {}).items():
        extra = set(svc) - {"ports"}
        assert not extra, f"{COMPOSE_OVERRIDE.name} service {name!r} sets {sorted(extra)}; it should hold only ports"
        assert name in merged["services"], f"{COMPOSE_OVERRIDE.name} names service {name!r}, not in {COMPOSE_FILE.name}"
        merged["services"][name].setdefault("ports", []).extend(svc.get("ports") or [])
    return merged


@pytest.fixture(scope="module")
def site():
    return load_yaml(SITE_FILE)


@pytest.fixture(scope="module")
def crossbar_config():
    return json.loads(CROSSBAR_CONFIG.read_text())


# --------------------------------------------------------------------------
# helpers: compose structure


def services(compose):
    """The ``services`` mapping of a compose dict (``{}`` if there is none)."""
    return compose.get("services") or {}


def environment(service):
    """A service's ``environment`` as a dict, from either the mapping or the ``KEY=VALUE`` list form."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            key, _, value = str(item).partition("=")
            out[key] = value
        return out
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def agent_services(compose):
    """``{service: environment}`` of the services that run an OCS agent (those with ``INSTANCE_ID``)."""
    return {name: environment(svc) for name, svc in services(compose).items() if "INSTANCE_ID" in environment(svc)}


def network_names(compose):
    """Every name a container on the compose network resolves: service names, hostnames, aliases."""
    names = set()
    for name, svc in services(compose).items():
        names.add(name)
        if svc.get("hostname"):
            names.add(svc["hostname"])
        networks = svc.get("networks") or {}
        if isinstance(networks, dict):
            for net in networks.values():
                names.update((net or {}).get("aliases") or [])
    return names


def parse_port(entry):
    """``(host_ip, host_port, container_port)`` of a ``ports:`` entry (short or long syntax)."""
    if isinstance(entry, dict):
        return entry.get("host_ip"), entry.get("published"), entry.get("target")
    text = str(entry).split("/", 1)[0]
    ip = None
    if text.startswith("["):
        ip, _, text = text[1:].partition("]")
        text = text.lstrip(":")
        host_port, _, container = text.rpartition(":")
        return ip, host_port or None, container
    parts = text.split(":")
    if len(parts) == 1:
        return None, None, parts[0]
    if len(parts) == 2:
        return None, parts[0], parts[1]
    return ":".join(parts[:-2]), parts[-2] or None, parts[-1]


def published_ports(compose):
    """``{host_port: service}`` of every published port (as strings)."""
    out = {}
    for name, svc in services(compose).items():
        for entry in svc.get("ports") or []:
            _, host_port, container = parse_port(entry)
            out[str(host_port or container)] = name
    return out


def site_host_block(site, host):
    return ((site or {}).get("hosts") or {}).get(host) or {}


def site_instances(site, host):
    """``{instance-id: instance}`` of one host block of a site config."""
    return {inst.get("instance-id"): inst for inst in site_host_block(site, host).get("agent-instances") or []}


def flat_arguments(instance):
    """An instance's ``arguments`` as a flat list of strings (OCS also accepts nested lists)."""
    out = []
    for item in instance.get("arguments") or []:
        if isinstance(item, list):
            out.extend(str(x) for x in item)
        else:
            out.append(str(item))
    return out


def effective_hub(site, host):
    """The hub of *site* as OCS resolves it for *host* (a host block may override the URLs and realm)."""
    hub = dict((site or {}).get("hub") or {})
    block = site_host_block(site, host)
    hub.update({k: block[k] for k in ("wamp_server", "wamp_http", "wamp_realm") if k in block})
    return hub


def plugin_agents():
    """``{agent-class: (plugin name, {'module': ..., 'entry_point': ...})}`` from the ``ocs.plugins`` entry points.

    The first plugin that provides a class wins, as in ``ocs-agent-cli``.
    """
    table = {}
    for ep in entry_points(group="ocs.plugins"):
        module = ep.load()
        for cls, info in module.agents.items():
            table.setdefault(cls, (ep.name, info))
    return table


# --------------------------------------------------------------------------
# helpers: checks returning lists of problems


def instance_problems(compose, site):
    """Agent services without a site instance (and the other way round), duplicates, missing SITE_HOST."""
    problems = []
    seen = {}
    hosts_used = set()
    for name, env in agent_services(compose).items():
        iid = env["INSTANCE_ID"]
        host = env.get("SITE_HOST")
        if not host:
            problems.append(f"service {name!r} (INSTANCE_ID={iid!r}) has no SITE_HOST")
            continue
        hosts_used.add(host)
        if iid in seen:
            problems.append(f"INSTANCE_ID {iid!r} is used by both services {seen[iid]!r} and {name!r}")
        seen[iid] = name
        if host not in ((site or {}).get("hosts") or {}):
            problems.append(f"service {name!r}: SITE_HOST {host!r} is not a host block of the site config")
        elif iid not in site_instances(site, host):
            problems.append(f"service {name!r}: instance {iid!r} is not in host {host!r} of the site config")
    for host in sorted(hosts_used):
        for iid in site_instances(site, host):
            if iid not in seen:
                problems.append(f"site instance {iid!r} (host {host!r}) is run by no service")
    return problems


def agent_class_problems(site, plugins):
    """Agent classes of the site that no ``ocs.plugins`` entry point provides, or whose entry point cannot be loaded."""
    problems = []
    for host in ((site or {}).get("hosts") or {}):
        for iid, inst in site_instances(site, host).items():
            cls = inst.get("agent-class")
            if cls not in plugins:
                problems.append(f"instance {iid!r}: agent-class {cls!r} is provided by no ocs.plugins entry point")
                continue
            info = plugins[cls][1]
            try:
                module = importlib.import_module(info["module"])
            except Exception as exc:
                problems.append(f"instance {iid!r}: module {info['module']!r} of {cls!r} cannot be imported: {exc!r}")
                continue
            entry = info.get("entry_point", "main")
            if not callable(getattr(module, entry, None)):
                problems.append(f"instance {iid!r}: {info['module']}.{entry} (entry point of {cls!r}) is not a function")
    return problems


def image_plugin_problems(compose, site, plugins):
    """Agent services on the OCS image that run an agent class which only this package provides."""
    problems = []
    for name, env in agent_services(compose).items():
        image = str(services(compose)[name].get("image") or "")
        if image.split(":", 1)[0] != OCS_IMAGE:
            continue
        inst = site_instances(site, env.get("SITE_HOST")).get(env["INSTANCE_ID"]) or {}
        cls = inst.get("agent-class")
        plugin = plugins.get(cls, ("?",))[0]
        if cls and plugin != "ocs":
            problems.append(f"service {name!r} runs {cls!r} (plugin {plugin!r}) on {image!r}, which has only OCS's agents")
    return problems


def bind_mount_problems(compose, root):
    """Bind mounts whose host path does not exist under *root*."""
    problems = []
    for name, svc in services(compose).items():
        for vol in svc.get("volumes") or []:
            if isinstance(vol, dict):
                if vol.get("type") != "bind":
                    continue
                source = str(vol.get("source", ""))
            else:
                source = str(vol).split(":", 1)[0]
                if not source.startswith((".", "/", "~")):
                    continue  # a named volume
            path = Path(os.path.expanduser(source))
            if not path.is_absolute():
                path = root / path
            if not path.exists():
                problems.append(f"service {name!r}: bind-mounted host path {source!r} does not exist")
    return problems


def port_problems(compose):
    """Published ports not bound to loopback."""
    problems = []
    for name, svc in services(compose).items():
        for entry in svc.get("ports") or []:
            ip, _, _ = parse_port(entry)
            if ip not in LOOPBACK_IPS:
                problems.append(f"service {name!r}: port {entry!r} is not bound to 127.0.0.1")
    return problems


def policy_problems(compose):
    """Services without a restart policy or without a real health check."""
    problems = []
    for name, svc in services(compose).items():
        if svc.get("restart") in (None, "", "no"):
            problems.append(f"service {name!r} has no restart policy")
        health = svc.get("healthcheck")
        if not isinstance(health, dict) or health.get("disable") or not health.get("test"):
            problems.append(f"service {name!r} has no health check")
            continue
        test = health["test"]
        if isinstance(test, list) and (not test or test[0] == "NONE" or len(test) < 2):
            problems.append(f"service {name!r} has an empty health check {test!r}")
    return problems


def _host_of_argument(option, value):
    """The host an argument value points at, or None if it names no host."""
    if option == "--address":
        from socs_tcp_agents.common import device_address

        try:
            return device_address(Namespace(address=value, host=None, port=None))[0]
        except (ValueError, KeyError) as exc:
            raise ValueError(f"--address {value!r} is not an address: {exc}") from None
    if option == "--host":
        return value
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9.-]*):(\d{1,5})", value)
    return m.group(1) if m else None


def address_problems(compose, site):
    """Hosts named in the agents' site arguments, hub URLs and SITE_HUB/SITE_HTTP that no service answers to.

    For the host blocks the agent services run in, every name must resolve on
    the compose network.  Other host blocks are for clients on the docker host:
    their hub URLs must point at a loopback port that a service publishes.
    """
    problems = []
    names = network_names(compose)
    agent_hosts = {env.get("SITE_HOST") for env in agent_services(compose).values()}

    def check(where, host, allow_published=None):
        if host is None:
            return
        if allow_published is not None and host in LOOPBACK_IPS + ("localhost",):
            if str(allow_published) not in published_ports(compose):
                problems.append(f"{where}: loopback port {allow_published} is published by no service")
            return
        if host not in names:
            problems.append(f"{where}: host {host!r} is not a service of the compose file")

    for name, env in agent_services(compose).items():
        for var in ("SITE_HUB", "SITE_HTTP"):
            if env.get(var):
                url = urlsplit(env[var])
                check(f"service {name!r} {var}={env[var]!r}", url.hostname)
    for host in ((site or {}).get("hosts") or {}):
        hub = effective_hub(site, host)
        for key in ("wamp_server", "wamp_http"):
            if hub.get(key):
                url = urlsplit(hub[key])
                published = None if host in agent_hosts else (url.port or 80)
                check(f"site host {host!r} {key}={hub[key]!r}", url.hostname, published)
        if host not in agent_hosts:
            continue
        for iid, inst in site_instances(site, host).items():
            args = flat_arguments(inst)
            for i, arg in enumerate(args):
                option = args[i - 1] if i else None
                try:
                    target = _host_of_argument(option if option in ("--address", "--host") else None, arg)
                except ValueError as exc:
                    problems.append(f"instance {iid!r}: {exc}")
                    continue
                check(f"instance {iid!r} argument {arg!r}", target)
    return problems


def crossbar_problems(config, site, compose):
    """Disagreements between the crossbar config, the site's hub and the compose file."""
    problems = []
    hub = (site or {}).get("hub") or {}
    realm, root = hub.get("wamp_realm"), hub.get("address_root")
    routers = [w for w in config.get("workers", []) if w.get("type") == "router"]
    if len(routers) != 1:
        return [f"crossbar config has {len(routers)} router workers, expected 1"]
    realms = {r.get("name"): r for r in routers[0].get("realms", [])}
    if realm not in realms:
        problems.append(f"crossbar config has no realm {realm!r} (site wamp_realm); it has {sorted(realms)}")
    else:
        roles = {r.get("name"): r for r in realms[realm].get("roles", [])}
        for role, may_register in (("iocs_agent", True), ("iocs_controller", False)):
            if role not in roles:
                problems.append(f"crossbar realm {realm!r} has no role {role!r}")
                continue
            perms = roles[role].get("permissions", [])
            if not any(p.get("uri") == f"{root}." and p.get("match") == "prefix" for p in perms):
                problems.append(f"role {role!r} has no prefix permission on {root + '.'!r} (site address_root)")
            if any(bool((p.get("allow") or {}).get("register")) != may_register for p in perms):
                problems.append(f"role {role!r} must {'' if may_register else 'not '}be allowed to register")
    transports = [t for t in routers[0].get("transports", []) if t.get("type") == "web"]
    if len(transports) != 1:
        return problems + [f"crossbar config has {len(transports)} web transports, expected 1"]
    transport = transports[0]
    paths = transport.get("paths", {})
    for path, kind in (("ws", "websocket"), ("call", "caller"), ("info", "nodeinfo")):
        if (paths.get(path) or {}).get("type") != kind:
            problems.append(f"crossbar web transport has no {kind!r} path {path!r}")
    if (paths.get("call") or {}).get("realm") not in (None, realm):
        problems.append(f"crossbar /call bridge is on realm {paths['call']['realm']!r}, not {realm!r}")
    port = transport.get("endpoint", {}).get("port")
    for name, env in agent_services(compose).items():
        for var in ("SITE_HUB", "SITE_HTTP"):
            if env.get(var) and (urlsplit(env[var]).port or 80) != port:
                problems.append(f"service {name!r} {var}={env[var]!r} is not on crossbar's port {port}")
    crossbar_ports = [parse_port(p)[2] for p in (services(compose).get("crossbar") or {}).get("ports") or []]
    if crossbar_ports and str(port) not in [str(p) for p in crossbar_ports]:
        problems.append(f"the crossbar service publishes container ports {crossbar_ports}, not crossbar's port {port}")
    return problems


def compose_config(compose_file, docker_compose=None):
    """Run ``docker-compose -f FILE config``; return the rendered compose dict, or raise ``AssertionError`` with its stderr."""
    exe = docker_compose or shutil.which("docker-compose")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    proc = subprocess.run([exe, "-f", str(compose_file), "config"], cwd=str(Path(compose_file).parent),
                          capture_output=True, text=True, timeout=120, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"docker-compose config rejected {compose_file} (exit {proc.returncode}):\n"
                             f"{proc.stderr.strip()}")
    return yaml.safe_load(proc.stdout)


# --------------------------------------------------------------------------
# helpers: Dockerfile and .dockerignore


def dockerfile_instructions(text):
    """``[(INSTRUCTION, arguments)]`` of a Dockerfile: comments dropped, continuation lines joined."""
    out = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
        current = ""
    return out


def dockerfile_problems(text, root):
    """What the runtime stage of the Dockerfile must have, and COPY sources that do not exist."""
    problems = []
    instructions = dockerfile_instructions(text)
    # ARGs declared before the first FROM may be used in FROM lines; their defaults are what real builds get
    global_args = {}
    for word, args in instructions:
        if word == "FROM":
            break
        if word == "ARG":
            key, _, value = args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')

    def expand(value):
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args.get(m.group(1) or m.group(2), m.group(0)), value)

    stages = []
    for word, args in instructions:
        if word == "FROM":
            args = expand(args)
            stages.append([])
        if stages:
            stages[-1].append((word, args))
    if not stages:
        return ["Dockerfile has no FROM"]
    final = stages[-1]
    base = (final[0][1].split() or [""])[0]
    if not re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", base):
        problems.append(f"runtime stage is based on {base!r}, expected python:3.11-slim")
    users = [args for word, args in final if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"runtime stage does not switch to a non-root USER (USER {users[-1] if users else None!r})")
    env = {}
    for word, args in final:
        if word == "ENV":
            for item in shlex.split(args):
                key, sep, value = item.partition("=")
                if sep:
                    env[key] = value
    if env.get("OCS_CONFIG_DIR") != "/config":
        problems.append(f"runtime stage sets OCS_CONFIG_DIR={env.get('OCS_CONFIG_DIR')!r}, expected '/config'")
    entry = [args for word, args in final if word == "ENTRYPOINT"]
    try:
        entry_value = json.loads(entry[-1]) if entry else None
    except ValueError:
        entry_value = entry[-1]
    if entry_value != ["dumb-init", "ocs-agent-cli"]:
        problems.append(f"ENTRYPOINT is {entry_value!r}, expected ['dumb-init', 'ocs-agent-cli']")
    if not any(word == "RUN" and "dumb-init" in args for word, args in instructions):
        problems.append("no RUN step installs dumb-init")
    for word, args in instructions:
        if word not in ("COPY", "ADD"):
            continue
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(p.startswith("--from") for p in shlex.split(args)):
            continue
        for source in parts[:-1]:
            if not (root / source).exists():
                problems.append(f"{word} source {source!r} does not exist")
    return problems


def _pattern_regex(pattern):
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out.append("(?:.*/)?")
            else:
                out.append(".*")
            continue
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1:end]
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def parse_dockerignore(text):
    """``[(negated, regex)]`` from ``.dockerignore`` text (Docker's rules: last match wins, a match on a parent counts)."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        if negated:
            line = line[1:].strip()
        line = posixpath.normpath(line.lstrip("/"))
        patterns.append((negated, _pattern_regex(line)))
    return patterns


def dockerignore_excludes(patterns, path):
    """True if *path* (relative, with ``/``) is left out of the build context."""
    parts = path.split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for negated, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = not negated
    return excluded


def context_files(root, patterns):
    """Every file under *root* that the build context keeps."""
    kept = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        rel_dir = "" if rel_dir == "." else rel_dir + "/"
        dirnames[:] = [d for d in dirnames if not (d in (".git", ".venv") and not rel_dir)]
        for name in filenames:
            rel = rel_dir + name
            if not dockerignore_excludes(patterns, rel):
                kept.append(rel)
    return sorted(kept)


def needed_in_context(root):
    """Files the image build needs: the project metadata and the sources of both packages."""
    needed = ["pyproject.toml", "README.md"]
    for package in ("socs_tcp", "agents"):
        needed += sorted(p.relative_to(root).as_posix() for p in (root / package).rglob("*.py")
                         if "__pycache__" not in p.parts)
    return needed


def dockerignore_problems(patterns, root, needed=None, unwanted=()):
    """Needed files that the context leaves out, and unwanted ones it keeps."""
    problems = [f"{path} is needed by the image but excluded from the build context"
                for path in (needed if needed is not None else needed_in_context(root))
                if dockerignore_excludes(patterns, path)]
    problems += [f"{path} should not be in the build context" for path in unwanted
                 if not dockerignore_excludes(patterns, path)]
    return problems


# --------------------------------------------------------------------------
# the real files


def test_docker_compose_accepts_the_file(compose):
    exe = shutil.which("docker-compose")
    if exe is None:
        if in_ci():
            pytest.fail("docker-compose is not installed (scripts/test installs it with apt-get); "
                        "it is needed to validate docker-compose.yml")
        pytest.skip("docker-compose is not installed; cannot validate docker-compose.yml")
    rendered = compose_config(COMPOSE_FILE, exe)
    assert set(services(rendered)) == set(services(compose))
    # The health check scripts must reach the containers as written: no "$" interpolated away
    # ("docker-compose config" prints a "$$" escape as written; the container gets one "$").
    for name, svc in services(compose).items():
        assert services(rendered)[name]["healthcheck"]["test"] == svc["healthcheck"]["test"], name


def test_compose_file_runs_with_host_networking_and_the_override_publishes_the_ports(compose):
    """Docker refuses published ports with host networking (the compose test), so they live in the override file,
    which a plain ``docker-compose up`` reads too."""
    assert [name for name, svc in services(load_yaml(COMPOSE_FILE)).items() if svc.get("ports")] == []
    exe = shutil.which("docker-compose")
    if exe is None:
        if in_ci():
            pytest.fail("docker-compose is not installed (scripts/test installs it with apt-get)")
        pytest.skip("docker-compose is not installed")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES}
    proc = subprocess.run([exe, "config"], cwd=str(ROOT), capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    rendered = yaml.safe_load(proc.stdout)
    assert published_ports(rendered) == {"8001": "crossbar", "8086": "influxdb", "3000": "grafana"}
    assert published_ports(rendered) == published_ports(compose)
    assert port_problems(rendered) == []


def test_override_with_other_keys_is_refused():
    with pytest.raises(AssertionError, match="service 'crossbar' sets \\['image'\\]"):
        with_override(_mini_compose(), {"services": {"crossbar": {"image": "x"}}})
    with pytest.raises(AssertionError, match="names service 'nope'"):
        with_override(_mini_compose(), {"services": {"nope": {"ports": ["127.0.0.1:1:1"]}}})


def test_compose_config_reports_a_broken_file(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed")
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  web:\n    image: nginx\n    restart: sometimes-maybe\n    ports: 80\n")
    with pytest.raises(AssertionError, match="docker-compose config rejected"):
        compose_config(broken, exe)


def test_site_has_the_documented_instances(site):
    instances = site_instances(site, "docker")
    assert {iid: inst["agent-class"] for iid, inst in instances.items()} == SITE_INSTANCES
    assert site_host_block(site, "docker")["crossbar_timeout"] == 60
    influx = flat_arguments(instances["influxdb-publisher"])
    assert influx[influx.index("--database") + 1] == "ocs_feeds"
    assert influx[influx.index("--host") + 1] == "influxdb"


def test_every_agent_service_has_its_instance(compose, site):
    assert set(env["INSTANCE_ID"] for env in agent_services(compose).values()) == set(SITE_INSTANCES)
    assert instance_problems(compose, site) == []


def test_every_agent_class_resolves_through_the_plugins(site):
    plugins = plugin_agents()
    assert plugins["TCPBusAgent"][0] == "socs_tcp"
    assert plugins["RegistryAgent"][0] == "ocs"
    assert agent_class_problems(site, plugins) == []


def test_ocs_image_runs_only_ocs_agents(compose, site):
    assert image_plugin_problems(compose, site, plugin_agents()) == []


@pytest.mark.parametrize("instance_id", sorted(SITE_INSTANCES))
def test_site_arguments_are_accepted_by_the_agent(instance_id):
    """OCS merges the site arguments into the agent's own parser exactly as at startup."""
    from ocs import site_config

    cls = SITE_INSTANCES[instance_id]
    info = plugin_agents()[cls][1]
    module = importlib.import_module(info["module"])
    args = site_config.parse_args(agent_class=cls, parser=module.make_parser(),
                                  args=["--site-file", str(SITE_FILE), "--site-host", "docker",
                                        "--instance-id", instance_id])
    assert args.instance_id == instance_id
    assert args.site_hub == "ws://crossbar:8001/ws"
    assert args.crossbar_timeout == 60


def test_client_on_the_docker_host_reaches_the_published_port():
    """Without --site-host, a client on the host falls back to the "localhost" block (loopback, published port)."""
    from ocs import site_config

    parsed = site_config.add_arguments().parse_args(["--site-file", str(SITE_FILE), "--site-host", "localhost"])
    site_cfg, host, _ = site_config.get_config(parsed, "*control*")
    assert site_cfg.hub.data["wamp_http"] == "http://127.0.0.1:8001/call"
    assert host.instances == []


def access_problems(site, deploy_dir, config_dir="/config"):
    """Access policies naming no AccessDirector of their host block, and director files missing or unusable."""
    problems = []
    for host in ((site or {}).get("hosts") or {}):
        instances = site_instances(site, host)
        directors = {iid for iid, inst in instances.items() if inst.get("agent-class") == "AccessDirector"}
        for iid, inst in instances.items():
            args = flat_arguments(inst)
            if "--access-policy" in args:
                policy = args[args.index("--access-policy") + 1]
                kind, _, name = policy.partition(":")
                if kind == "director" and name not in directors:
                    problems.append(f"instance {iid!r}: --access-policy {policy!r} names no AccessDirector of host {host!r}")
            if iid in directors:
                path = args[args.index("--config-file") + 1] if "--config-file" in args else None
                if not path or not path.startswith(config_dir + "/"):
                    problems.append(f"instance {iid!r}: --config-file {path!r} is not under {config_dir}/ (the mounted deploy/)")
                    continue
                local = Path(deploy_dir) / path[len(config_dir) + 1:]
                if not local.is_file():
                    problems.append(f"instance {iid!r}: --config-file {path!r} is not in {deploy_dir}")
                    continue
                config = load_yaml(local) or {}
                defaults = [b for b in config.get("passwords") or [] if b.get("default")]
                if not defaults or defaults[0].get("password_1") != "":
                    problems.append(f"{local.name}: no default block with password_1 '' (reads would need a password)")
    return problems


def test_access_director_and_policies_agree(site):
    assert access_problems(site, SITE_FILE.parent) == []
    policies = {iid: flat_arguments(inst) for iid, inst in site_instances(site, "docker").items()}
    for iid in ("tcp-bus", "scpi-psu", "message-link"):
        assert policies[iid][policies[iid].index("--access-policy") + 1] == "director:access-dir", iid


def test_access_problems_are_named(tmp_path):
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"][0]["arguments"] += ["--access-policy", "director:nobody"]
    site["hosts"]["docker"]["agent-instances"].append(
        {"agent-class": "AccessDirector", "instance-id": "dir", "arguments": ["--config-file", "/config/missing.yaml"]})
    assert access_problems(site, tmp_path) == [
        "instance 'bus': --access-policy 'director:nobody' names no AccessDirector of host 'docker'",
        f"instance 'dir': --config-file '/config/missing.yaml' is not in {tmp_path}"]
    (tmp_path / "missing.yaml").write_text("passwords:\n  - default: true\n    password_2: x\n")
    assert access_problems(site, tmp_path)[1] == "missing.yaml: no default block with password_1 '' (reads would need a password)"
    site["hosts"]["docker"]["agent-instances"][1]["arguments"] = ["--config-file", "relative.yaml"]
    assert access_problems(site, tmp_path)[1] == ("instance 'dir': --config-file 'relative.yaml' is not under /config/ "
                                                  "(the mounted deploy/)")


def test_every_bind_mount_exists(compose):
    assert bind_mount_problems(compose, ROOT) == []


def test_every_published_port_is_on_loopback(compose):
    assert published_ports(compose)  # crossbar, influxdb and grafana publish ports
    assert port_problems(compose) == []


def test_every_service_has_restart_and_healthcheck(compose):
    assert policy_problems(compose) == []


def test_every_address_points_at_a_service(compose, site):
    assert address_problems(compose, site) == []


def test_depends_on_names_existing_services_with_conditions(compose):
    problems = []
    for name, svc in services(compose).items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"service {name!r}: depends_on without conditions")
            continue
        for dep, spec in deps.items():
            if dep not in services(compose):
                problems.append(f"service {name!r} depends on unknown service {dep!r}")
            if (spec or {}).get("condition") not in ("service_started", "service_healthy",
                                                      "service_completed_successfully"):
                problems.append(f"service {name!r}: depends_on {dep!r} has no valid condition")
    assert problems == []
    for name in agent_services(compose):
        assert services(compose)[name]["depends_on"]["crossbar"]["condition"] == "service_healthy", name


def test_crossbar_config_matches_the_site(crossbar_config, site, compose):
    assert crossbar_problems(crossbar_config, site, compose) == []


def test_crossbar_config_is_in_step_with_the_local_stack(crossbar_config, site):
    """Same as :func:`socs_tcp_stack.stack.make_crossbar_config`, except that it listens on every interface."""
    from socs_tcp_stack.stack import make_crossbar_config

    hub = site["hub"]
    transport = crossbar_config["workers"][0]["transports"][0]
    assert transport["endpoint"]["interface"] == "0.0.0.0"  # inside the container; published on loopback
    local = copy.deepcopy(crossbar_config)
    local["workers"][0]["transports"][0]["endpoint"]["interface"] = "127.0.0.1"
    assert local == make_crossbar_config(transport["endpoint"]["port"], realm=hub["wamp_realm"],
                                         address_root=hub["address_root"], host="127.0.0.1")


def test_dockerfile_builds_the_agent_image():
    assert dockerfile_problems(DOCKERFILE.read_text(), ROOT) == []


def test_compose_builds_from_this_dockerfile(compose):
    built = {name: svc["build"] for name, svc in services(compose).items() if "build" in svc}
    assert built, "no service builds the socs-tcp image"
    for name, build in built.items():
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (ROOT / context / dockerfile).is_file(), name
        assert services(compose)[name]["image"].startswith("socs-tcp"), name


def test_dockerignore_keeps_what_the_image_needs():
    patterns = parse_dockerignore(DOCKERIGNORE.read_text())
    unwanted = [".git/HEAD", ".venv/bin/python", "tests/test_compose.py", "docs/index.rst",
                "socs_tcp/__pycache__/buffer.cpython-311.pyc", "agents/tcp_bus/__pycache__/agent.cpython-311.pyc",
                "socs_tcp.egg-info/PKG-INFO", "deploy/default.yaml"]
    assert dockerignore_problems(patterns, ROOT, unwanted=unwanted) == []


def test_build_context_builds_the_package(tmp_path):
    """The files the build context keeps are enough to build the wheel the image installs."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("setuptools is not installed in this environment; cannot build without network")
    context = tmp_path / "context"
    for rel in context_files(ROOT, parse_dockerignore(DOCKERIGNORE.read_text())):
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    out = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--wheel-dir", str(out), str(context)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = out.glob("socs_tcp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points_txt = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for module in ("socs_tcp/interface.py", "socs_tcp/simulators/scpi.py", "socs_tcp_agents/common.py",
                   "socs_tcp_agents/tcp_bus/agent.py", "socs_tcp_agents/scpi_instrument/agent.py"):
        assert module in names, module
    assert "[ocs.plugins]" in entry_points_txt and "socs_tcp.plugin" in entry_points_txt


# --------------------------------------------------------------------------
# the helpers report what is wrong, by name


def _mini_compose():
    return {"services": {
        "crossbar": {"image": "simonsobs/ocs-crossbar", "ports": ["127.0.0.1:8001:8001"], "restart": "always",
                     "healthcheck": {"test": ["CMD", "true"]}},
        "dev": {"image": "socs-tcp", "restart": "always", "healthcheck": {"test": ["CMD", "true"]}},
        "bus": {"image": "socs-tcp", "restart": "always", "healthcheck": {"test": ["CMD", "true"]},
                "environment": {"INSTANCE_ID": "bus", "SITE_HOST": "docker", "SITE_HUB": "ws://crossbar:8001/ws",
                                "SITE_HTTP": "http://crossbar:8001/call"},
                "volumes": ["./deploy:/config:ro", "data:/data"]},
    }}


def _mini_site():
    return {"hub": {"wamp_server": "ws://crossbar:8001/ws", "wamp_http": "http://crossbar:8001/call",
                    "wamp_realm": "test_realm", "address_root": "observatory"},
            "hosts": {"docker": {"agent-instances": [
                {"agent-class": "TCPBusAgent", "instance-id": "bus", "arguments": ["--address", "dev:5025"]}]},
                "localhost": {"wamp_server": "ws://127.0.0.1:8001/ws", "wamp_http": "http://127.0.0.1:8001/call",
                              "agent-instances": []}}}


def test_mini_examples_are_clean():
    assert instance_problems(_mini_compose(), _mini_site()) == []
    assert address_problems(_mini_compose(), _mini_site()) == []
    assert port_problems(_mini_compose()) == []
    assert policy_problems(_mini_compose()) == []
    assert bind_mount_problems(_mini_compose(), ROOT) == []


def test_missing_instance_is_named():
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"] = []
    problems = instance_problems(_mini_compose(), site)
    assert problems == ["service 'bus': instance 'bus' is not in host 'docker' of the site config"]


def test_instance_without_service_is_named():
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"].append({"agent-class": "TCPBusAgent", "instance-id": "orphan"})
    assert instance_problems(_mini_compose(), site) == ["site instance 'orphan' (host 'docker') is run by no service"]


def test_unknown_site_host_and_duplicate_instance_are_named():
    compose = _mini_compose()
    compose["services"]["bus2"] = copy.deepcopy(compose["services"]["bus"])
    compose["services"]["bus2"]["environment"]["SITE_HOST"] = "nowhere"
    compose["services"]["bus3"] = copy.deepcopy(compose["services"]["bus"])
    problems = instance_problems(compose, _mini_site())
    assert "service 'bus2': SITE_HOST 'nowhere' is not a host block of the site config" in problems
    assert "INSTANCE_ID 'bus' is used by both services 'bus2' and 'bus3'" in problems


def test_unknown_agent_class_is_named():
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"][0]["agent-class"] = "NoSuchAgent"
    assert agent_class_problems(site, plugin_agents()) == [
        "instance 'bus': agent-class 'NoSuchAgent' is provided by no ocs.plugins entry point"]


def test_unimportable_agent_module_and_missing_entry_point_are_named():
    plugins = {"TCPBusAgent": ("fake", {"module": "socs_tcp_no_such_module", "entry_point": "main"})}
    (problem,) = agent_class_problems(_mini_site(), plugins)
    assert "'socs_tcp_no_such_module' of 'TCPBusAgent' cannot be imported" in problem
    plugins = {"TCPBusAgent": ("fake", {"module": "socs_tcp.plugin", "entry_point": "no_such_function"})}
    assert agent_class_problems(_mini_site(), plugins) == [
        "instance 'bus': socs_tcp.plugin.no_such_function (entry point of 'TCPBusAgent') is not a function"]


def test_package_agent_on_the_ocs_image_is_named():
    compose = _mini_compose()
    compose["services"]["bus"]["image"] = "simonsobs/ocs:v0.12.1"
    assert image_plugin_problems(compose, _mini_site(), plugin_agents()) == [
        "service 'bus' runs 'TCPBusAgent' (plugin 'socs_tcp') on 'simonsobs/ocs:v0.12.1', which has only OCS's agents"]


def test_missing_bind_mount_is_named():
    compose = _mini_compose()
    compose["services"]["bus"]["volumes"].append("./deploy/no-such-dir:/x:ro")
    compose["services"]["bus"]["volumes"].append({"type": "bind", "source": "./nope.json", "target": "/y"})
    assert bind_mount_problems(compose, ROOT) == [
        "service 'bus': bind-mounted host path './deploy/no-such-dir' does not exist",
        "service 'bus': bind-mounted host path './nope.json' does not exist"]


@pytest.mark.parametrize("entry", ["8001:8001", "0.0.0.0:8001:8001", "8001", {"target": 8001, "published": 8001},
                                   "[::]:8001:8001/tcp"])
def test_port_not_on_loopback_is_named(entry):
    compose = _mini_compose()
    compose["services"]["crossbar"]["ports"] = [entry]
    assert port_problems(compose) == [f"service 'crossbar': port {entry!r} is not bound to 127.0.0.1"]


@pytest.mark.parametrize("entry", ["127.0.0.1:8001:8001", "127.0.0.1::8001", "[::1]:8001:8001/tcp",
                                   {"host_ip": "127.0.0.1", "target": 8001, "published": 8001}])
def test_loopback_ports_pass(entry):
    compose = _mini_compose()
    compose["services"]["crossbar"]["ports"] = [entry]
    assert port_problems(compose) == []


def test_missing_restart_and_healthcheck_are_named():
    compose = _mini_compose()
    del compose["services"]["dev"]["restart"]
    compose["services"]["bus"]["healthcheck"] = {"disable": True}
    compose["services"]["crossbar"]["healthcheck"] = {"test": ["NONE"]}
    assert policy_problems(compose) == ["service 'crossbar' has an empty health check ['NONE']",
                                        "service 'dev' has no restart policy",
                                        "service 'bus' has no health check"]


def test_address_of_a_missing_service_is_named():
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"][0]["arguments"] = [
        "--address", "tcp://scpi-sim:5025", "--acq-query", "volt=MEAS:VOLT?", "other-dev:7777"]
    assert address_problems(_mini_compose(), site) == [
        "instance 'bus' argument 'tcp://scpi-sim:5025': host 'scpi-sim' is not a service of the compose file",
        "instance 'bus' argument 'other-dev:7777': host 'other-dev' is not a service of the compose file"]


def test_bad_address_and_wrong_hub_are_named():
    site = _mini_site()
    site["hosts"]["docker"]["agent-instances"][0]["arguments"] = ["--address", "not an address"]
    site["hosts"]["docker"]["wamp_server"] = "ws://router:8001/ws"
    site["hosts"]["localhost"]["wamp_http"] = "http://127.0.0.1:9999/call"
    compose = _mini_compose()
    compose["services"]["bus"]["environment"]["SITE_HTTP"] = "http://crossbar.example:8001/call"
    problems = address_problems(compose, site)
    assert any(p.startswith("instance 'bus': --address 'not an address' is not an address") for p in problems)
    assert "site host 'docker' wamp_server='ws://router:8001/ws': host 'router' is not a service of the compose file" \
        in problems
    assert "site host 'localhost' wamp_http='http://127.0.0.1:9999/call': loopback port 9999 is published by no service" \
        in problems
    assert ("service 'bus' SITE_HTTP='http://crossbar.example:8001/call': host 'crossbar.example' is not a service "
            "of the compose file") in problems
    # a hostname or network alias counts as a name on the compose network
    compose["services"]["crossbar"]["networks"] = {"default": {"aliases": ["router", "crossbar.example"]}}
    assert not any("router" in p or "crossbar.example" in p for p in address_problems(compose, site))


def test_crossbar_disagreements_are_named(crossbar_config):
    site = _mini_site()
    compose = _mini_compose()
    assert crossbar_problems(crossbar_config, site, compose) == []
    bad = copy.deepcopy(crossbar_config)
    roles = bad["workers"][0]["realms"][0]["roles"]
    roles[1]["permissions"][0]["allow"]["register"] = True
    roles[0]["permissions"][0]["uri"] = "lab."
    del bad["workers"][0]["transports"][0]["paths"]["info"]
    bad["workers"][0]["transports"][0]["endpoint"]["port"] = 8002
    assert crossbar_problems(bad, site, compose) == [
        "role 'iocs_agent' has no prefix permission on 'observatory.' (site address_root)",
        "role 'iocs_controller' must not be allowed to register",
        "crossbar web transport has no 'nodeinfo' path 'info'",
        "service 'bus' SITE_HUB='ws://crossbar:8001/ws' is not on crossbar's port 8002",
        "service 'bus' SITE_HTTP='http://crossbar:8001/call' is not on crossbar's port 8002",
        "the crossbar service publishes container ports ['8001'], not crossbar's port 8002"]
    site["hub"]["wamp_realm"] = "other_realm"
    assert crossbar_problems(crossbar_config, site, compose) == [
        "crossbar config has no realm 'other_realm' (site wamp_realm); it has ['test_realm']",
        "crossbar /call bridge is on realm 'test_realm', not 'other_realm'"]


def test_dockerfile_problems_are_named(tmp_path):
    text = ("FROM python:3.12 AS build\nRUN pip install .\nFROM debian:12\nCOPY --from=build /opt /opt\n"
            "COPY missing_dir ./x\nENV OCS_CONFIG_DIR=/etc/ocs\nENTRYPOINT [\"ocs-agent-cli\"]\n")
    assert dockerfile_problems(text, tmp_path) == [
        "runtime stage is based on 'debian:12', expected python:3.11-slim",
        "runtime stage does not switch to a non-root USER (USER None)",
        "runtime stage sets OCS_CONFIG_DIR='/etc/ocs', expected '/config'",
        "ENTRYPOINT is ['ocs-agent-cli'], expected ['dumb-init', 'ocs-agent-cli']",
        "no RUN step installs dumb-init",
        "COPY source 'missing_dir' does not exist"]
    assert "runtime stage does not switch to a non-root USER (USER 'root')" in dockerfile_problems(
        "FROM python:3.11-slim\nUSER root\n", tmp_path)


def test_dockerfile_base_image_argument_is_resolved(tmp_path):
    """FROM ${BASE_IMAGE} is checked with the ARG's default, which is what real builds use."""
    good = "ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE} AS build\nFROM $BASE_IMAGE\nUSER ocs\n"
    assert not any("runtime stage is based" in p for p in dockerfile_problems(good, tmp_path))
    bad = "ARG BASE_IMAGE=debian:12\nFROM ${BASE_IMAGE}\nUSER ocs\n"
    assert "runtime stage is based on 'debian:12', expected python:3.11-slim" in dockerfile_problems(bad, tmp_path)
    unset = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER ocs\n"
    assert "runtime stage is based on '', expected python:3.11-slim" in dockerfile_problems(unset, tmp_path)


def test_dockerfile_continuation_lines_are_joined():
    text = "# comment\nFROM python:3.11-slim\nRUN apt-get update \\\n    # inline comment\n    && true\nUSER ocs\n"
    assert dockerfile_instructions(text) == [("FROM", "python:3.11-slim"), ("RUN", "apt-get update  && true"),
                                             ("USER", "ocs")]


def test_dockerignore_problems_are_named():
    patterns = parse_dockerignore("*\n!pyproject.toml\n!socs_tcp\n**/__pycache__\n")
    assert dockerignore_problems(patterns, ROOT, needed=["pyproject.toml", "README.md", "socs_tcp/buffer.py"],
                                 unwanted=["socs_tcp/__pycache__/x.pyc", "socs_tcp/data.bin"]) == [
        "README.md is needed by the image but excluded from the build context",
        "socs_tcp/data.bin should not be in the build context"]


@pytest.mark.parametrize(("text", "path", "excluded"), [
    ("*", "a", True), ("*", "a/b/c.py", True), ("*\n!a", "a/b/c.py", False), ("*\n!a/", "a/b.py", False),
    ("**/*.py[cod]", "a/b/c.pyc", True), ("**/*.py[cod]", "c.pyo", True), ("**/*.py[cod]", "a/c.py", False),
    ("/docs", "docs/index.rst", True), ("docs", "src/docs/x", False), ("a/*.txt\n!a/keep.txt", "a/keep.txt", False),
    ("# a comment\n\n", "a", False), ("te?t", "test", True), ("te?t", "teest", False)])
def test_dockerignore_matching(text, path, excluded):
    assert dockerignore_excludes(parse_dockerignore(text), path) is excluded


# --------------------------------------------------------------------------
# integration: the repository's crossbar config with a real crossbar and real agents


def _healthcheck_script(compose, service):
    test = services(compose)[service]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python3", "-c"], test
    return test[3]


def _run_check(script, env_update=None):
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(env_update or {})
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)


def _rewrite_once(script, old, new):
    assert script.count(old) == 1, f"expected {old!r} exactly once in the health check:\n{script}"
    return script.replace(old, new)


@pytest.mark.integration
def test_repository_crossbar_config_runs_the_site(tmp_path, compose, site, crossbar_config):
    """Crossbar started with deploy/crossbar/config.json (port rewritten), the site's socs_tcp agents started
    with their deploy/default.yaml arguments (device address rewritten to a local simulator), a task called
    through the HTTP bridge, and the compose health checks run against all of it."""
    from socs_tcp.simulators.scpi import ScpiSimulator
    from socs_tcp_stack.stack import Stack, free_port

    hub = site["hub"]
    sim = ScpiSimulator(port=0).start()
    stack = Stack(workdir=tmp_path / "stack", realm=hub["wamp_realm"], address_root=hub["address_root"])
    try:
        port = free_port()
        config = copy.deepcopy(crossbar_config)
        endpoint = config["workers"][0]["transports"][0]["endpoint"]
        endpoint.update(interface="127.0.0.1", port=stack.port)
        (stack.crossbar.cbdir / "config.json").write_text(json.dumps(config, indent=2))
        stack.start()

        # the check reads crossbar's port from the config that the compose file mounts
        crossbar_check = _rewrite_once(_healthcheck_script(compose, "crossbar"), '"/ocs/.crossbar/config.json"',
                                       repr(str(stack.crossbar.cbdir / "config.json")))
        proc = _run_check(crossbar_check)
        assert proc.returncode == 0, proc.stderr

        instances = site_instances(site, "docker")
        # the site's access director with the site's password file (its /config path made local)
        director_args = flat_arguments(instances["access-dir"])
        config_file = director_args[director_args.index("--config-file") + 1]
        director_args[director_args.index("--config-file") + 1] = str(SITE_FILE.parent / posixpath.basename(config_file))
        stack.add_instance("AccessDirector", "access-dir", director_args)
        stack.start_agent("access-dir", timeout=60)
        for iid in ("tcp-bus", "scpi-psu"):
            args = flat_arguments(instances[iid])
            args[args.index("--address") + 1] = f"127.0.0.1:{sim.port}"
            stack.add_instance(instances[iid]["agent-class"], iid, args)
            stack.start_agent(iid, timeout=60)
        passwords = load_yaml(SITE_FILE.parent / posixpath.basename(config_file))["passwords"]
        operator = next(block["password_2"] for block in passwords if block.get("default"))

        def rules_received():
            from ocs import site_config
            return site_config.get_control_client("tcp-bus", args=stack.client_args).get_api()["access_control"][
                "update_count"] >= 1
        deadline = time.monotonic() + 60
        while not rules_received():
            assert time.monotonic() < deadline, "tcp-bus did not receive the access director's rules within 60 s"
            time.sleep(0.2)

        # the controller role (HTTP bridge) can call a task the agent role registered; a write task needs
        # the level-2 password of the site's access director file
        refused = stack.client("tcp-bus").wrnrd_until(data="*IDN?\n", eot="\\n")
        assert refused.status == -1 and "requires credential level 2" in refused.msg, refused
        reply = stack.client("tcp-bus", privs=operator).wrnrd_until(data="*IDN?\n", eot="\\n")
        assert reply.status == 0 and reply.session["success"] is True, reply
        assert "," in reply.session["data"]["response"]

        agent_check = _healthcheck_script(compose, "tcp-bus")
        env = dict(environment(services(compose)["tcp-bus"]), SITE_HTTP=stack.crossbar.http_url,
                   OCS_CONFIG_DIR=str(SITE_FILE.parent))
        proc = _run_check(agent_check, env)
        assert proc.returncode == 0, proc.stderr
        # an agent that is not running fails its check, naming its address
        proc = _run_check(agent_check, dict(env, INSTANCE_ID="registry"))
        assert proc.returncode != 0
        assert f"{hub['address_root']}.registry" in proc.stderr

        # the check reads the simulator's port from its command line (/proc/1/cmdline in the container)
        sim_check = _healthcheck_script(compose, "scpi-sim")
        argv_file = tmp_path / "cmdline"
        argv = ["dumb-init", "python3", "-m", "socs_tcp.simulators.scpi", "--host", "0.0.0.0", "--port"]
        argv_file.write_bytes("\0".join([*argv, str(sim.port), ""]).encode())
        sim_check = _rewrite_once(sim_check, '"/proc/1/cmdline"', repr(str(argv_file)))
        proc = _run_check(sim_check)
        assert proc.returncode == 0, proc.stderr
        argv_file.write_bytes("\0".join([*argv, str(port), ""]).encode())  # nothing listens there
        proc = _run_check(sim_check)
        assert proc.returncode != 0
    finally:
        stack.stop()
        sim.stop()
    proc = _run_check(crossbar_check)
    assert proc.returncode != 0, "crossbar health check passed with crossbar stopped"
