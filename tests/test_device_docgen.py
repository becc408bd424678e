"""Docs made from device files (socs_tcp.devices.docgen): the OCS docstrings
of the generated ops and the rst page of each device.

The committed pages in docs/devices/ must be exactly what the generator
makes from the shipped files, so the docs can never drift from the files.
"""

import argparse
import io
import re
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from socs_tcp_agents.device.agent import declare_params

from socs_tcp.devices import docgen, list_devices, load, loads

ROOT = Path(__file__).resolve().parent.parent
PAGES = ROOT / "docs" / "devices"
REGENERATE = ("python -c \"from socs_tcp.devices.docgen import write_pages; write_pages('docs/devices')\"")


@pytest.mark.parametrize("name", list_devices())
def test_committed_page_matches_the_generator(name):
    page = PAGES / f"{name}.rst"
    assert page.exists(), f"docs/devices/{name}.rst is missing; make it with {REGENERATE}"
    assert page.read_text(encoding="utf-8") == docgen.render_page(load(name)), (
        f"docs/devices/{name}.rst differs from its device file; regenerate it with {REGENERATE}")


def test_every_device_page_is_in_the_devices_toctree():
    index = (PAGES / "index.rst").read_text()
    for name in list_devices():
        assert re.search(rf"^\s+{re.escape(name)}\s*$", index, re.M), f"{name} is not in docs/devices/index.rst"


@pytest.mark.parametrize("name", list_devices())
def test_every_task_docstring_is_in_the_ocs_format(name):
    spec = load(name)
    for task in docgen.agent_tasks(spec):
        doc = docgen.task_docstring(task)
        lines = doc.splitlines()
        args = ", ".join(a.name if a.required else f"{a.name}={a.default!r}" for a in task.args)
        assert lines[0] == f"{task.name}({args})" and lines[1] == ""
        assert lines[2].startswith("**Task** - ")
        assert ("Parameters:" in lines) == bool(task.args)
        for arg in task.args:
            assert any(line.startswith(f"    {arg.name} (") for line in lines), (task.name, arg.name)
        if task.kind != "stop":
            assert "        >>> response.session['data']" in lines
    doc = docgen.acq_docstring(spec)
    rate = ", ".join(f"{name}={default!r}" for name, _, default, _ in docgen.acq_parameters(spec))
    assert doc.splitlines()[0] == f"acq({rate})"
    assert rate.startswith("wait=1.0" if name == "pfeiffer_tc400" else f"sampling_frequency={spec.polling.rate!r}")
    assert "**Process** - " in doc and "session.degraded" in doc


def test_tpg366_docstrings_match_the_socs_agents_signatures():
    spec = load("tpg366")
    assert docgen.acq_docstring(spec).startswith("acq(sampling_frequency=2.5, test_mode=False)\n")
    tasks = {t.name: t for t in docgen.agent_tasks(spec)}
    assert docgen.task_docstring(tasks["pressure"]).startswith("pressure(channel)\n\n**Task** - ")
    assert "channel (int): gauge channel. 1 to 6. Required." in docgen.task_docstring(tasks["pressure"])
    assert tasks["close"].kind == "stop"


def test_cryomech_tasks_are_the_socs_agents():
    tasks = {t.name: t for t in docgen.agent_tasks(load("cryomech_cpa"))}
    assert docgen.task_docstring(tasks["init"]).startswith("init(auto_acquire=False)\n")
    assert docgen.task_docstring(tasks["power_ptc"]).startswith("power_ptc(state)\n")
    assert tasks["power_ptc"].writes and not tasks["init"].writes
    assert "One of 'on', 'off'." in docgen.task_docstring(tasks["power_ptc"])


def test_docstring_examples_use_the_files_sample_values():
    spec = load("tpg366")
    values = docgen.example_values(spec.polling.feed_fields)
    assert values == {f"pressure_ch{i + 1}": v for i, v in enumerate([1.0e-3, 2.0e-3, 3.0e-6, 4.0e-6, 5.0e-7, 6.0e-7])}
    unit = spec.operations["unit"].fields[0]
    assert docgen.example_value(unit) == "mbar"          # the enum text of the sample "0"


def test_page_lists_tasks_arguments_fields_snippets_and_line_counts():
    spec = load("tpg366")
    page = docgen.render_page(spec)
    for text in ("``pressure(channel)``", "``set_unit(unit)``", "one of 'mbar', 'Torr'", "1 to 6",
                 "``pressure_ch1``", "mbar", "alarm > 1; warning > 0.01", "agent-class: DeviceAgent",
                 "['--device-file', 'tpg366']", "INSTANCE_ID: tpg366", "OCSClient('tpg366')",
                 "client.pressure(channel=1)", "152 + 162 (agent + driver) = 314", f"{spec.source_lines} (non-blank",
                 "SOCS ``PfeifferAgent``", "acq(sampling_frequency=2.5, test_mode=False)", "Start-up modes"):
        assert text in page, text
    page = docgen.render_page(load("cryomech_cpa"))
    assert "233 + 196 (agent + driver) = 429" in page and "``init(auto_acquire=False)``" in page
    assert "``acq`` (default)" in page or "``none`` (default)" in page


def test_a_file_without_replaces_or_polling_still_gets_a_page():
    spec = loads(BARE, file="bare.yaml")
    page = docgen.render_page(spec)
    assert "Lines of code" not in page
    assert "publishes only the link health" in page
    assert "``idn()``" in page and "``set_name(name)``" in page


def test_rst_special_characters_in_descriptions_are_escaped_but_literals_kept():
    assert docgen._esc("a *b* |c| d_ ``x_y*`` `e`_") == r"a \*b\* \|c\| d\_ ``x_y*`` \`e\`_"


BARE = """\
device: bare
title: A bare device
description: "Tests *all* |the| escapes_ and ``literals``."
connection: {port: 5000}
queries:
  idn: {request: "*IDN?", reply: {fields: {idn: {}}}}
commands:
  set_name:
    request: "NAME {name}"
    args:
      name: {type: str, max_length: 8, description: a *short* name}
"""


def test_generated_params_are_checked_by_ocs_param_handler():
    """The agent declares each argument with ocs_agent.param; OCS's own
    ParamHandler then refuses bad values with the device file's reason."""
    from ocs.ocs_agent import ParamError, ParamHandler

    tasks = {t.name: t for t in docgen.agent_tasks(load("tpg366"))}

    def op(session, params):
        return True, "ok"
    func = declare_params(op, tasks["pressure"].args)
    assert ParamHandler({"channel": 3}).batch(func._ocs_prescreen) == {"channel": 3}
    for params, needle in [({"channel": 9}, "'channel'=9 rejected: argument 'channel' must be <= 6, got 9"),
                           ({}, "Param 'channel' is required"),
                           ({"channel": 1.5}, "must be an int"),
                           ({"channel": 1, "extra": 2}, "unexpected values: ['extra']")]:
        with pytest.raises(ParamError) as info:
            ParamHandler(params).batch(func._ocs_prescreen)
        assert needle in info.value.msg, (params, info.value.msg)

    def bare(session, params):
        return True, "ok"
    func = declare_params(bare, [])
    with pytest.raises(ParamError, match="unexpected values"):
        ParamHandler({"x": 1}).batch(func._ocs_prescreen)


def run_cli(argv):
    parser = argparse.ArgumentParser()
    docgen.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


def test_cli_writes_the_page(tmp_path):
    code, out, err = run_cli(["docs", "tpg366"])
    assert code == 0 and err == "" and out == docgen.render_page(load("tpg366"))
    target = tmp_path / "tpg366.rst"
    code, out, err = run_cli(["docs", "tpg366", "--out", str(target)])
    assert code == 0 and out == "" and target.read_text() == docgen.render_page(load("tpg366"))


def test_cli_reports_bad_files_and_bad_output_paths(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BARE.replace("idn: {}", "idn: {type: flaot}"))
    code, out, err = run_cli(["docs", str(path)])
    assert code == 1 and out == "" and "broken.yaml:6:" in err and "flaot" in err
    code, out, err = run_cli(["docs", "tpg366", "--out", str(tmp_path / "no" / "such" / "dir.rst")])
    assert code == 1 and "dir.rst" in err
    code, out, err = run_cli(["docs", "no_such_device"])
    assert code == 1 and "no_such_device" in err


def test_the_package_cli_has_the_docs_subcommand(tmp_path):
    target = tmp_path / "cryomech_cpa.rst"
    proc = subprocess.run([sys.executable, "-m", "socs_tcp.devices", "docs", "cryomech_cpa", "--out", str(target)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert target.read_text() == docgen.render_page(load("cryomech_cpa"))


def test_a_page_of_a_file_outside_the_package_names_the_file_not_a_shipped_device(tmp_path):
    path = tmp_path / "my_gauge.yaml"
    path.write_text(BARE.replace("device: bare", "device: my_gauge"))
    page = docgen.render_page(load(path))
    assert "socs_tcp/devices/files" not in page and ":doc:" not in page
    for command in ("docs", "check", "simulate", "dashboard"):
        assert f"python -m socs_tcp.devices {command} my_gauge.yaml" in page
    assert "['--device-file', '/config/devices/my_gauge.yaml']" in page
    shipped = docgen.render_page(load("tpg366"))
    assert "``python -m socs_tcp.devices check tpg366``" in shipped and "['--device-file', 'tpg366']" in shipped
