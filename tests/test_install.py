"""The README's two commands install quietly and check what they installed.

``scripts/lib/venv.sh`` runs every install step with its output in a log,
prints one line per step, prints the whole log when a step fails, and repairs
an environment whose autobahn serializers print errors on import.
"""

import os
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
VENV_SH = ROOT / "scripts" / "lib" / "venv.sh"


def _bash(script, env=None, cwd=ROOT):
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_license_is_an_spdx_string():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(meta["project"]["license"], str)


def test_building_the_package_prints_no_deprecation_warning(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Deprecat" not in proc.stdout + proc.stderr


def test_a_step_prints_one_line_and_hides_its_output(tmp_path):
    proc = _bash(f'. "{VENV_SH}"; step "saying hello" sh -c "echo lots of pip output; echo more >&2"',
                 env={"VENV": str(tmp_path / "venv")})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("== saying hello ... ok (")
    assert "lots of pip output" not in proc.stdout + proc.stderr
    (log,) = (tmp_path / "venv" / "setup-logs").glob("*.log")
    assert "lots of pip output" in log.read_text()


def test_a_failed_step_shows_its_whole_output_and_fails(tmp_path):
    proc = _bash(f'set -e; . "{VENV_SH}"; step "breaking" sh -c "echo the real error >&2; exit 7"; echo not reached',
                 env={"VENV": str(tmp_path / "venv")})
    assert proc.returncode == 7
    assert "== breaking ... FAILED (exit 7)" in proc.stdout
    assert "the real error" in proc.stderr
    assert "not reached" not in proc.stdout


def _fake_venv(tmp_path, repaired_after_install):
    """A venv whose python prints an ABI traceback on import until pip reinstalls bjdata."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    state = tmp_path / "state"
    python = venv / "bin" / "python"
    python.write_text(f"""#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
    echo "$@" >> "{tmp_path}/pip-calls"
    {"touch " + str(state) if repaired_after_install else ":"}
    exit 0
fi
if [ -e "{state}" ]; then exit 0; fi
echo "AttributeError: _ARRAY_API not found" >&2
exit 0
""")
    python.chmod(0o755)
    return venv


def test_serializers_that_print_errors_are_repaired(tmp_path):
    venv = _fake_venv(tmp_path, repaired_after_install=True)
    proc = _bash(f'set -e; . "{VENV_SH}"; check_serializers', env={"VENV": str(venv)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    calls = (tmp_path / "pip-calls").read_text()
    assert "--no-binary bjdata" in calls and "--no-cache-dir" in calls
    assert "serializers import cleanly" in proc.stdout


def test_serializers_that_stay_broken_fail_with_the_traceback(tmp_path):
    venv = _fake_venv(tmp_path, repaired_after_install=False)
    proc = _bash(f'set -e; . "{VENV_SH}"; check_serializers', env={"VENV": str(venv)})
    assert proc.returncode != 0
    assert "_ARRAY_API not found" in proc.stderr


def test_the_installed_serializers_import_cleanly():
    proc = subprocess.run([sys.executable, "-c", "import autobahn.wamp.serializer, ocs.ocs_client"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
