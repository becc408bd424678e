"""Run SOCS's own agent integration tests, unchanged, against DeviceAgent.

SOCS (github.com/simonsobs/socs) tests its Pfeiffer TPG 366 and Cryomech CPA
agents with ``tests/integration/test_pfeiffer_tpg366_agent_integration.py``
and ``tests/integration/test_cryomech_cpa_agent_integration.py``.  This script
runs those two files as they are, from a SOCS checkout, with DeviceAgent and
the shipped device files in place of the SOCS agents:

* the SOCS agent scripts the tests start (``../socs/agents/<name>/agent.py``,
  under ``coverage``) are replaced by two-line launchers that run
  :func:`socs_tcp_agents.device.agent.main` for that instance;
* the site file (``tests/default.yaml``) keeps SOCS's instances, classes and
  arguments, and adds ``--device-file`` to each: the only difference;
* the crossbar router that SOCS gets from docker-compose (``docker_services``
  of pytest-docker) is a native one (:class:`socs_tcp_stack.stack.Crossbar`)
  on the port SOCS's site file names;
* SOCS's own ``socs.testing.device_emulator`` serves the fixture replies,
  imported from the checkout (no SOCS install: its ``_version.py`` is stubbed).

SOCS's fixtures use fixed loopback ports (crossbar 18001, the TPG 366 on
8000, the compressor on 5502); the script refuses to start when one is taken.
It needs ``coverage`` and ``pyserial`` importable (``--deps DIR`` adds a
``pip install --target DIR coverage pyserial`` folder to the path), and is
not part of the test suite, because it needs a SOCS checkout.

Usage::

    python tests/run_socs_agent_tests.py /path/to/socs [--deps DIR] [pytest args...]
    python tests/run_socs_agent_tests.py --git-dir /path/to/socs.git [--rev HEAD] ...

Exit status: pytest's.
"""

import argparse
import io
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ["tests/integration/test_pfeiffer_tpg366_agent_integration.py",
         "tests/integration/test_cryomech_cpa_agent_integration.py"]
FROM_SOCS = [*TESTS, "tests/integration/__init__.py", "tests/integration/util.py", "tests/pytest.ini",
             "tests/.coveragerc", "socs/__init__.py", "socs/testing/__init__.py", "socs/testing/device_emulator.py"]
PORTS = (18001, 8000, 5502)

#: agent script path in the SOCS tests -> (instance id, device file)
AGENTS = {"pfeiffer_tpg366": ("pfeiffer366", "tpg366"), "cryomech_cpa": ("cryomech", "cryomech_cpa")}

LAUNCHER = """\
import sys
from socs_tcp_agents.device.agent import main
main(sys.argv[1:] + ["--instance-id", {iid!r}])
"""

# SOCS's tests/default.yaml entries for the two agents, with --device-file added
SITE = """\
hub:
  wamp_server: ws://127.0.0.1:18001/ws
  wamp_http: http://127.0.0.1:18001/call
  wamp_realm: test_realm
  address_root: observatory
  registry_address: observatory.registry
hosts:
  localhost:
    agent-instances:
      - agent-class: CryomechCPAAgent
        instance-id: cryomech
        arguments: [['--ip-address', '127.0.0.1'], ['--serial-number', 'CPA1234TEST-111111A'], ['--mode', 'init'],
                    ['--port', 5502], ['--device-file', 'cryomech_cpa']]
      - agent-class: PfeifferAgent
        instance-id: pfeiffer366
        arguments: [['--ip_address', '127.0.0.1'], ['--port', '8000'], ['--mode', 'test'],
                    ['--device-file', 'tpg366']]
"""

CONFTEST = """\
# Stands in for pytest-docker and pytest-cov: a native crossbar router on the
# port of SOCS's site file instead of its docker-compose service.
import pytest

from socs_tcp_stack.stack import Crossbar


@pytest.fixture(scope="session")
def docker_services(tmp_path_factory):
    router = Crossbar(tmp_path_factory.mktemp("crossbar"), port=18001, realm="test_realm",
                      address_root="observatory")
    router.start()
    try:
        yield router
    finally:
        router.stop()


@pytest.fixture
def cov():
    return None
"""


def port_taken(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def copy_from_checkout(source, work):
    for rel in FROM_SOCS:
        src = Path(source) / rel
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing: is {source} a SOCS checkout?")
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, work / rel)


def copy_from_git(git_dir, rev, work):
    data = subprocess.run(["git", "--git-dir", str(git_dir), "archive", "--format=tar", rev, *FROM_SOCS],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(work, filter="data")


def build(work):
    (work / "socs" / "_version.py").write_text('__version__ = "0+socs-tcp-harness"\n')
    for name, (iid, _) in AGENTS.items():
        folder = work / "socs" / "agents" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "agent.py").write_text(LAUNCHER.format(iid=iid))
    (work / "tests" / "default.yaml").write_text(SITE)
    (work / "tests" / "conftest.py").write_text(CONFTEST)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", nargs="?", help="a SOCS source checkout (work tree)")
    parser.add_argument("--git-dir", help="a SOCS git directory to read the files from instead")
    parser.add_argument("--rev", default="HEAD", help="revision to read with --git-dir (default HEAD)")
    parser.add_argument("--deps", help="folder with coverage and pyserial (pip install --target DIR ...)")
    args, pytest_args = parser.parse_known_args(argv)
    if bool(args.checkout) == bool(args.git_dir):
        parser.error("give a SOCS checkout or --git-dir, one of them")
    taken = [p for p in PORTS if port_taken(p)]
    if taken:
        parser.error(f"SOCS's fixtures need loopback ports {PORTS}; in use now: {taken}")
    with tempfile.TemporaryDirectory(prefix="socs-agent-tests-") as tmp:
        work = Path(tmp)
        if args.git_dir:
            copy_from_git(args.git_dir, args.rev, work)
        else:
            copy_from_checkout(args.checkout, work)
        build(work)
        env = dict(os.environ)
        paths = [str(work), str(work / "tests")] + ([args.deps] if args.deps else [])
        env["PYTHONPATH"] = os.pathsep.join(paths + [env["PYTHONPATH"]] if env.get("PYTHONPATH") else paths)
        # the SOCS runner starts 'python -m coverage run ...': this interpreter first on PATH
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env.pop("OCS_CONFIG_DIR", None)
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", *[t.split("/", 1)[1] for t in TESTS],
               *pytest_args]
        return subprocess.run(cmd, cwd=work / "tests", env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
