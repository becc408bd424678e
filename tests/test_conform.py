"""Conformance of the shipped device files against real traffic: recordings
made through the recording proxy from the independent emulators in
``tests/emulators`` (committed under ``tests/data/recordings``), and the
emulators live.

Regenerate the committed recordings with ``python tests/test_conform.py``.
"""

import importlib
import json
import os
import subprocess
import sys

import pytest

from socs_tcp.devices import list_devices
from socs_tcp.devices.conform import MISMATCHED, PARSED, SKIPPED, UNPARSABLE, choose_args, conform
from socs_tcp.testing.proxy import RecordingProxy
from socs_tcp.testing.recording import read_recording

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RECORDINGS = os.path.join(HERE, "data", "recordings")
sys.path.insert(0, HERE)  # the emulators package


def emulator_class(name):
    """The independent emulator of a shipped device, or None."""
    try:
        module = importlib.import_module(f"emulators.{name}")
    except ImportError:
        return None
    classes = [getattr(module, n) for n in getattr(module, "__all__", dir(module)) if n.endswith("Emulator")]
    return classes[0] if classes else None


EMULATED = [name for name in list_devices() if emulator_class(name) is not None]


def recording_path(name):
    return os.path.join(RECORDINGS, f"{name}.jsonl")


def record_through_proxy(name, path, **options):
    """Run conformance against the live emulator through the recording
    proxy: returns the live report; the recording is at ``path``."""
    emulator = emulator_class(name)().start()
    try:
        with RecordingProxy("127.0.0.1", emulator.port, path) as proxy:
            report = conform(name, address=proxy.address, **options)
        return report
    finally:
        emulator.stop()


def run_cli(*args):
    """``python -m socs_tcp.devices conform ...`` (the module alone when the
    devices command line does not have the subcommand yet)."""
    res = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "conform", *args], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    if res.returncode == 2 and "invalid choice" in res.stderr:
        res = subprocess.run([sys.executable, "-m", "socs_tcp.devices.conform", *args], capture_output=True,
                             text=True, cwd=ROOT, timeout=120)
    return res


def test_every_emulated_device_has_a_committed_recording():
    assert EMULATED, "no shipped device file has an independent emulator"
    missing = [name for name in EMULATED if not os.path.exists(recording_path(name))]
    assert not missing, f"run python tests/test_conform.py to record {missing}"


@pytest.mark.parametrize("name", EMULATED)
def test_live_emulator_through_the_proxy_then_its_replay(name, tmp_path):
    path = tmp_path / f"{name}.jsonl"
    live = record_through_proxy(name, path)
    assert live.ok, "\n".join(live.lines())
    rec = read_recording(path)
    assert rec.complete and rec.header["source"] == "proxy"
    replayed = conform(name, recording=path)
    assert replayed.ok, "\n".join(replayed.lines())
    assert [(r.name, r.status, r.values) for r in replayed.results] == [(r.name, r.status, r.values)
                                                                        for r in live.results]


@pytest.mark.parametrize("name", EMULATED)
def test_committed_recording_conforms(name):
    path = recording_path(name)
    if not os.path.exists(path):
        pytest.fail(f"{path} missing: run python tests/test_conform.py")
    report = conform(name, recording=path)
    assert report.ok, "\n".join(report.lines())
    ran = [r for r in report.results if r.status != SKIPPED]
    assert ran and all(r.status == PARSED and r.values for r in ran)
    assert os.path.getsize(path) < 64 * 1024  # small test data


def test_writes_only_with_allow_writes(tmp_path):
    name = next(n for n in EMULATED if any(op.writes for op in _spec(n).operations.values()))
    report = record_through_proxy(name, tmp_path / "w.jsonl")
    skipped = {r.name for r in report.results if r.status == SKIPPED and "writes" in r.detail}
    writes = {op.name for op in _spec(name).operations.values() if op.writes}
    assert skipped == writes
    rec = read_recording(tmp_path / "w.jsonl")
    sent = rec.data("out")
    report = record_through_proxy(name, tmp_path / "w2.jsonl", allow_writes=True)
    ran = {r.name for r in report.results if r.status != SKIPPED}
    assert writes & ran  # the commands ran this time
    assert len(read_recording(tmp_path / "w2.jsonl").data("out")) > len(sent)


def _spec(name):
    from socs_tcp.devices import load
    return load(name)


def _first_data_line(lines, direction):
    for i, line in enumerate(lines):
        obj = json.loads(line)
        if obj.get("dir") == direction and i > 1:
            yield i, obj


def test_unparsable_reply_is_reported_with_its_bytes(tmp_path):
    name = "tpg366" if "tpg366" in EMULATED else EMULATED[0]
    path = tmp_path / "bad.jsonl"
    record_through_proxy(name, path)
    lines = path.read_text().splitlines()
    # replace every device reply that carries data (not a bare ACK) with junk
    changed = 0
    for i, obj in _first_data_line(lines, "in"):
        data = obj.get("text", "")
        if "," in data or obj.get("hex", "") and len(obj["hex"]) > 12:
            obj.pop("text", None)
            obj.pop("hex", None)
            obj["text"] = "JUNK" + ("\r" if name == "tpg366" else "\n")
            lines[i] = json.dumps(obj)
            changed += 1
    assert changed
    path.write_text("\n".join(lines) + "\n")
    report = conform(name, recording=path)
    assert not report.ok
    bad = [r for r in report.results if r.status == UNPARSABLE]
    assert bad and all(r.offending is not None and b"JUNK" in r.offending for r in bad)
    assert "JUNK" in bad[0].line()
    res = run_cli(name, "--recording", str(path))
    assert res.returncode == 1, res.stderr
    assert "unparsable" in res.stdout and "JUNK" in res.stdout


def test_request_missing_from_recording_is_mismatched(tmp_path):
    name = EMULATED[0]
    path = tmp_path / "req.jsonl"
    record_through_proxy(name, path)
    rec_lines = path.read_text().splitlines()
    # keep the header and the first connection's connect only: no request is in the recording
    kept = [rec_lines[0]] + [line for line in rec_lines[1:] if json.loads(line).get("event") in ("connect", "end")][:1]
    path.write_text("\n".join(kept) + "\n")
    report = conform(name, recording=path)
    ran = [r for r in report.results if r.status != SKIPPED]
    assert ran and all(r.status == MISMATCHED for r in ran)
    assert all("not in the recording" in r.detail and r.offending for r in ran)
    assert not report.ok


def test_cli_good_recording_and_bad_inputs(tmp_path):
    name = EMULATED[0]
    res = run_cli(name, "--recording", recording_path(name))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith(f"conform {name} against recording")
    assert "parsed" in res.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: x\nflaot: 1\n")
    res = run_cli(str(bad), "--recording", recording_path(name))
    assert res.returncode == 2 and "bad.yaml:" in res.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"format": "socs_tcp-recording", "version": 1}\n{"t": 0, "conn": 1, "dir": "in", "hex": "zz"}\n')
    res = run_cli(name, "--recording", str(broken))
    assert res.returncode == 2 and f"{broken}:2: hex" in res.stderr
    res = run_cli(name)
    assert res.returncode == 2 and "--recording" in res.stderr


def test_conform_needs_exactly_one_target():
    with pytest.raises(ValueError, match="exactly one"):
        conform(EMULATED[0])
    with pytest.raises(ValueError, match="exactly one"):
        conform(EMULATED[0], recording="x", address="127.0.0.1:1")


def test_choose_args_uses_polling_defaults_and_lowest_values():
    for name in list_devices():
        spec = _spec(name)
        for op in spec.operations.values():
            args = choose_args(spec, op)
            if isinstance(args, dict):
                assert op.check_args(**args) is not None


def regenerate():
    """Record every emulated device through the proxy into tests/data/recordings."""
    os.makedirs(RECORDINGS, exist_ok=True)
    for name in EMULATED:
        path = recording_path(name)
        report = record_through_proxy(name, path)
        print("\n".join(report.lines()))
        print(f"-> {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    regenerate()


def test_live_device_down_is_mismatched_not_a_crash():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    name = "tpg366" if "tpg366" in EMULATED else EMULATED[0]
    report = conform(name, address=f"127.0.0.1:{port}", timeout=1.0)
    ran = [r for r in report.results if r.status != SKIPPED]
    assert ran and all(r.status == MISMATCHED and "link failed" in r.detail for r in ran)
    assert not report.ok


def test_cli_against_a_live_emulator():
    name = "tpg366" if "tpg366" in EMULATED else EMULATED[0]
    with emulator_class(name)() as emulator:
        res = run_cli(name, "--address", emulator.address)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"conform {name} against device {emulator.address}: " in res.stdout
    assert " 0 mismatched, 0 unparsable" in res.stdout
