"""``python -m socs_tcp.devices``: check, list, and the subcommands of the other modules."""

import subprocess
import sys

import pytest

from socs_tcp.devices import __main__ as cli
from socs_tcp.devices import list_devices, load


def test_check_every_shipped_file(capsys):
    assert cli.main(["check", *list_devices()]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [f"ok: {n} ({len(load(n).operations)} operations)" for n in list_devices()]


def test_check_a_bad_file_exits_1_with_file_line_errors(tmp_path, capsys):
    bad = tmp_path / "gauge.yaml"
    bad.write_text("device: gauge\nconnection:\n  port: 8000\n  parity: even\nqueries:\n"
                   "  p: {request: PR1, reply: {type: flaot}}\n")
    assert cli.main(["check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{bad}:4: connection.parity: unknown key (allowed: port, protocol, encoding, out_terminator, in_terminator, "
        "timeout, connect_timeout, min_gap, stale_input, strip, prompt, init, query_transaction, command_transaction, "
        "unit, transaction_id, checksum)",
        f"{bad}:6: queries.p.reply: unknown type 'flaot' (one of: float, int, str, bool)",
    ]


def test_check_a_missing_file(capsys):
    assert cli.main(["check", "no_such_device"]) == 1
    assert capsys.readouterr().err.startswith("no_such_device: no shipped device file 'no_such_device'; shipped: ")


def test_list_first_column_is_the_short_name(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list_devices()
    assert lines[list_devices().index("tpg366")].split(None, 1)[1] == load("tpg366").title


def test_check_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "check", "tpg366"], capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "ok: tpg366 (5 operations)\n")


def test_a_missing_subcommand_module_does_not_break_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_PLUGINS", ("no_such_module",) + cli._PLUGINS)
    assert cli.main(["check", "ds378"]) == 0
    assert capsys.readouterr().out == f"ok: ds378 ({len(load('ds378').operations)} operations)\n"


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        cli.main(["simulate", "tpg366"])  # --port is required
    assert info.value.code == 2


@pytest.mark.parametrize("module", ["socs_tcp.devices simulate tpg366", "socs_tcp.replay rec.jsonl",
                                    "socs_tcp.simulators.scpi", "socs_tcp.simulators.jsonlines"])
def test_a_bad_listening_port_is_a_usage_error_naming_it(module):
    for port, message in (("99999", "port must be in 0..65535, got 99999"), ("x", "port must be an integer, got 'x'")):
        done = subprocess.run([sys.executable, "-m", *module.split(), "--port", port], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.strip().splitlines()[-1].endswith(f"error: argument --port: {message}")


def test_a_simulator_refuses_a_bad_port_when_made():
    from socs_tcp.devices.simulator import DeviceSimulator
    with pytest.raises(ValueError, match="port must be in 0..65535, got 70000"):
        DeviceSimulator("tpg366", port=70000)
    with pytest.raises(TypeError, match="port must be an int, got str: '5000'"):
        DeviceSimulator("tpg366", port="5000")
