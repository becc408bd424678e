"""Docs for a device file: the OCS docstrings of its agent's operations and its rst page.

Layer 4, pure logic: a :class:`~socs_tcp.devices.DeviceSpec` in, text out.
One module makes both texts so they can never disagree:

- :func:`agent_tasks` - the OCS tasks a :class:`DeviceAgent`
  (``socs_tcp_agents.device``) registers for a device file: one per
  command and query, under the file's name for it, plus the extra names of
  the file's ``agent`` section (e.g. Cryomech ``power_ptc(state)``).
- :func:`task_docstring` and :func:`acq_docstring` - their docstrings in the
  OCS format (first line ``name(arg=default)``, ``**Task** -``,
  ``Parameters:``, a ``session.data`` example), which the agent sets as each
  generated op's ``__doc__``; OCS hands the docstring of every registered op to
  clients (``OCSClient`` help, ``ocs-client-cli``).
- :func:`render_page` - the reStructuredText page of the device: tasks
  with their arguments, types, limits and defaults; the published fields
  with units and limits; site-config and docker-compose snippets; an
  ``OCSClient`` example; and, when the file says which SOCS agent it
  replaces, the file's length next to that agent's and driver's.
- :func:`add_cli` - ``python -m socs_tcp.devices docs NAME_OR_PATH [--out FILE]``.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

__all__ = ["AgentTask", "agent_tasks", "agent_modes", "acq_parameters", "task_docstring", "acq_docstring", "example_value",
           "render_page", "write_pages", "add_cli"]

_FEED_EXAMPLE_TIME = 1700000000.0


@dataclass
class AgentTask:
    """One OCS task of a device agent.

    Attributes:
        name: the OCS task name.
        kind: ``'query'`` or ``'command'`` (runs one operation), ``'init'``
            (connects and runs its operation once; may start ``acq``) or
            ``'stop'`` (stops ``acq``).
        operation: the :class:`~socs_tcp.devices.OperationSpec` it runs, or ``None``.
        args: the task's parameters (:class:`~socs_tcp.devices.ArgSpec`).
        rename: task parameter name -> operation argument name, where they differ.
        writes: the task changes the device's state (gated by ``--write-privs``).
        description: one paragraph for the docstring.
        alias_of: for an alias, the name of the operation it runs.
    """

    name: str
    kind: str
    operation: Any = None
    args: list = field(default_factory=list)
    rename: dict = field(default_factory=dict)
    writes: bool = False
    description: str = ""
    alias_of: str | None = None


# ---------------------------------------------------------------- the OCS surface


def agent_tasks(spec) -> list[AgentTask]:
    """The tasks of the agent for *spec*: one per operation in file order
    (except those the ``agent.hide`` list hides), then the extra tasks of the
    file's ``agent.tasks`` section (aliases, ``init``, ``stop``)."""
    agent = spec.agent
    hidden = set(agent.hide or ())
    out = []
    for name, op in spec.operations.items():
        if name in hidden:
            continue
        out.append(AgentTask(name=name, kind=op.kind, operation=op, args=list(op.args), writes=bool(op.writes),
                             description=(op.description or "").strip()))
    for name, item in (agent.tasks or {}).items():
        op = spec.operations.get(item.operation) if item.operation else None
        description = (item.description or (op.description if op is not None else "") or "").strip()
        if item.kind == "alias":
            out.append(AgentTask(name=name, kind=op.kind, operation=op, args=list(item.params),
                                 rename=dict(item.args), writes=bool(op.writes), description=description,
                                 alias_of=op.name))
        elif item.kind == "init":
            out.append(AgentTask(name=name, kind="init", operation=op, args=list(item.params),
                                 writes=bool(op.writes) if op is not None else False, description=description))
        else:
            out.append(AgentTask(name=name, kind="stop", description=description))
    return out


def agent_modes(spec) -> tuple[dict, str]:
    """``({mode: {op name: startup params}}, default mode)`` for ``--mode``.

    The file's ``agent.modes`` when it has them (TPG366: ``acq``, ``test``;
    Cryomech: ``none``, ``init``, ``acq``, as the SOCS agents name them),
    else ``acq`` (start ``acq``; the default when the file polls), ``test``
    (one ``acq`` cycle) and, with an ``init`` task, ``init``.  ``idle``
    (start nothing) is always there.
    """
    agent = spec.agent
    modes = {mode: dict(ops) for mode, ops in (agent.modes or {}).items()}
    if not modes:
        inits = [t.name for t in agent_tasks(spec) if t.kind == "init"]
        if inits:
            modes["init"] = {inits[0]: {}}
        modes["acq"] = {"acq": {}}
        modes["test"] = {"acq": {"test_mode": True}}
    modes.setdefault("idle", {})
    default = agent.default_mode or ("acq" if spec.polling is not None and "acq" in modes else "idle")
    return modes, default


def acq_parameters(spec) -> list[tuple[str, str, Any, str]]:
    """``(name, type, default, description)`` of the parameters of ``acq``: the rate
    (named by the file's ``agent.acq_args.rate``, ``sampling_frequency`` by default), or the
    period between cycles (``agent.acq_args.period``, SOCS's ``wait``), and ``test_mode``."""
    polling = spec.polling
    rate = polling.rate if polling is not None else 1.0
    acq_args = spec.agent.acq_args or {}
    rate_name = acq_args.get("rate")
    params = []
    if rate_name:
        params.append((rate_name, "float", rate, f"acq cycles per second [Hz]; default {rate:g}, the device "
                       "file's polling rate (or the agent's --sampling-frequency)."))
    elif acq_args.get("period"):
        params.append((acq_args["period"], "float", 1.0 / rate, f"time between measurements [seconds]; default "
                       f"{1.0 / rate:g}, from the device file's polling rate (or the agent's --sampling-frequency)."))
    params.append(("test_mode", "bool", False, "run one cycle, then stop (for testing)."))
    return params


# ---------------------------------------------------------------- docstrings


def example_value(field_spec, index: int = 0) -> Any:
    """A plausible value of a field for the docstring examples.

    The field's simulator sample (``sim.value``; element *index* of a list),
    the middle of its ``sim.range``, the text of an enum's sample, or a value
    of its type inside its warning/alarm limits.
    """
    ftype = getattr(field_spec, "type", "float")
    sim = getattr(field_spec, "sim", None)
    mapping = getattr(field_spec, "map", None)
    sample = getattr(sim, "value", None) if sim is not None else None
    if isinstance(sample, (list, tuple)):
        sample = sample[index % len(sample)] if sample else None
    if mapping:
        if sample is not None and str(sample) in mapping:
            return mapping[str(sample)]
        return next(iter(mapping.values()))
    if sample is None and sim is not None and getattr(sim, "range", None):
        low, high = sim.range
        sample = (low + high) / 2
    if sample is not None:
        try:
            if ftype == "int":
                return int(sample)
            if ftype == "float":
                return float(sample)
            if ftype == "bool":
                return bool(sample)
            return str(sample)
        except (TypeError, ValueError):
            pass
    if ftype == "bool":
        return True
    if ftype == "str":
        return "text"
    low = high = None
    for limits in (getattr(field_spec, "warning", None), getattr(field_spec, "alarm", None)):
        if limits:
            low, high = limits
            break
    if low is not None and high is not None:
        value = (low + high) / 2
    elif low is not None:
        value = low + 1
    elif high is not None:
        value = high / 2 if high > 0 else high - 1
    else:
        value = 1.0
    return int(round(value)) if ftype == "int" else float(value)


def example_values(fields) -> dict:
    """``{name: example_value}`` for a list of fields; array elements that share
    one list of samples (``pressure_ch1`` .. ``pressure_ch6``) take one element each."""
    seen: dict[int, int] = {}
    out = {}
    for f in fields:
        key = id(getattr(f, "sim", None))
        index = seen.get(key, 0)
        seen[key] = index + 1
        out[f.name] = example_value(f, index)
    return out


def _default_text(arg) -> str:
    return "" if arg.required else f"={arg.default!r}"


def _signature(name: str, args) -> str:
    return f"{name}({', '.join(a.name + _default_text(a) for a in args)})"


def _limits_text(arg) -> str:
    parts = []
    if arg.type == "enum" and arg.choices:
        parts.append("one of " + ", ".join(repr(c) for c in arg.choices))
    lo, hi = getattr(arg, "min", None), getattr(arg, "max", None)
    if lo is not None and hi is not None:
        parts.append(f"{lo:g} to {hi:g}")
    elif lo is not None:
        parts.append(f"at least {lo:g}")
    elif hi is not None:
        parts.append(f"at most {hi:g}")
    if getattr(arg, "unit", None):
        parts.append(f"in {arg.unit}")
    return ", ".join(parts)


def _ocs_type(arg) -> str:
    return {"enum": "str", "int": "int", "float": "float", "bool": "bool", "str": "str"}.get(arg.type, arg.type)


def _sentence(text: str) -> str:
    text = " ".join((text or "").split())
    if text and text[-1] not in ".!?:":
        text += "."
    return text


def _arg_line(arg) -> str:
    bits = [_sentence(arg.description)] if arg.description else []
    limits = _limits_text(arg)
    if limits:
        bits.append(_sentence(limits[0].upper() + limits[1:]))
    bits.append("Required." if arg.required else f"Default {arg.default!r}.")
    return f"{arg.name} ({_ocs_type(arg)}): " + " ".join(bits)


def _wrap(text: str, indent: str, width: int = 76) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(indent) + len(line) + 1 + len(word) > width:
            lines.append(indent + line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(indent + line)
    return lines


def _pyrepr(value: dict) -> str:
    return "{" + ", ".join(f"{k!r}: {v!r}" for k, v in value.items()) + "}"


def _task_body(task: AgentTask) -> str:
    body = _sentence(task.description)
    if task.kind == "init":
        body = body or "Connect to the device and read it once."
        if task.operation is not None:
            body += f" Runs the operation ``{task.operation.name}``."
        if any(a.name == "auto_acquire" for a in task.args):
            body += (" With auto_acquire it then starts the acq process, even when the device did not answer "
                     "(acq runs degraded until it does).")
    elif task.kind == "stop":
        body = body or "Stop the acq process."
    elif task.alias_of:
        renamed = ", ".join(f"{k} is its {v}" for k, v in task.rename.items() if k != v)
        body = (body + " " if body else "") + f"Runs the operation ``{task.alias_of}``" + (
            f" ({renamed})." if renamed else ".")
    else:
        body = body or f"The device file's {task.kind} ``{task.name}``."
    if task.writes:
        body += (" Changes the device's state: with an access policy it needs the credential level "
                 "of --write-privs.")
    return body


def task_docstring(task: AgentTask) -> str:
    """The OCS-format docstring of one generated task (see :func:`agent_tasks`):
    ``name(arg=default)``, ``**Task** - ...``, ``Parameters:`` and a session.data example."""
    lines = [_signature(task.name, task.args), ""]
    lines += _wrap("**Task** - " + _task_body(task), "")
    if task.args:
        lines += ["", "Parameters:"]
        for arg in task.args:
            text = _wrap(_arg_line(arg), "    ")
            lines.append(text[0])
            lines += ["    " + line for line in text[1:]]
    lines += ["", "Notes:"]
    if task.kind == "stop":
        lines += _wrap("Returns at once; acq ends after its current cycle.", "    ")
        return "\n".join(lines) + "\n"
    fields = task.operation.fields if task.operation is not None else []
    if fields:
        lines += _wrap("The parsed reply, one typed value per field, is in session.data::", "    ")
    else:
        lines += _wrap("The device's reply has no fields; session.data holds the timing::", "    ")
    example = {"values": example_values(fields), "timestamp": _FEED_EXAMPLE_TIME, "elapsed": 0.002}
    lines += ["", "        >>> response.session['data']"]
    lines += _wrap(_pyrepr(example), "        ")
    return "\n".join(lines) + "\n"


def acq_docstring(spec) -> str:
    """The OCS-format docstring of the ``acq`` process for *spec*."""
    params = acq_parameters(spec)
    polling = spec.polling
    sig = "acq(" + ", ".join(f"{n}={d!r}" for n, _, d, _ in params) + ")"
    lines = [sig, ""]
    if polling is None:
        body = ("**Process** - The device file declares no polling: each cycle only publishes the link's "
                "health to the ``link_health`` feed.")
        values = {}
    else:
        names = ", ".join(f"``{f.name}``" for f in polling.feed_fields)
        body = (f"**Process** - Poll the device at {polling.rate:g} Hz (by default) and publish {names} to the "
                f"``{polling.feed}`` feed (block ``{polling.block}``), and the link's health to the ``link_health`` "
                "feed. While the device is unreachable (or answers with garbage) the process keeps running with "
                "session.degraded = True; the first good reading clears it.")
        values = example_values(polling.feed_fields)
    lines += _wrap(body, "")
    lines += ["", "Parameters:"]
    for name, ptype, _, text in params:
        wrapped = _wrap(f"{name} ({ptype}): {text}", "    ")
        lines += [wrapped[0]] + ["    " + line for line in wrapped[1:]]
    lines += ["", "Notes:"]
    lines += _wrap("The latest values and the connection state are in session.data::", "    ")
    example = {"values": values, "timestamp": _FEED_EXAMPLE_TIME, "connected": True, "degraded": False,
               "last_error": None, "cycles": 42, "missed_cycles": 0}
    lines += ["", "        >>> response.session['data']"]
    lines += _wrap(_pyrepr(example)[:-1] + ", 'stats': {...}}", "        ")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the rst page

_RST_SPECIAL = re.compile(r"([\\*`|])")
_TRAILING_UNDERSCORE = re.compile(r"(\w)_(?=\W|$)")


_LITERAL_SPAN = re.compile(r"(``[^`]+``)")


def _esc(text: Any) -> str:
    """Text of a device file made safe for rst: ````literal```` spans are kept (the
    files use them), everything else is escaped, so no emphasis, role,
    substitution or reference happens by accident."""
    text = " ".join(str(text if text is not None else "").split())
    parts = _LITERAL_SPAN.split(text)
    for i in range(0, len(parts), 2):
        parts[i] = _TRAILING_UNDERSCORE.sub(r"\1\\_", _RST_SPECIAL.sub(r"\\\1", parts[i]))
    return "".join(parts)


def _lit(text: Any) -> str:
    text = str(text)
    if "``" in text or not text.strip():
        return f":literal:`{text}`" if text.strip() else "(empty)"
    return f"``{text}``"


def _heading(text: str, char: str) -> list[str]:
    return [text, char * len(text), ""]


def _table(header: list[str], rows: list[list[str]], widths: list[int]) -> list[str]:
    out = [".. list-table::", "   :header-rows: 1", f"   :widths: {' '.join(str(w) for w in widths)}", ""]
    for row in [header, *rows]:
        for i, cell in enumerate(row):
            cell = cell if cell else "--"
            out.append(("   * - " if i == 0 else "     - ") + cell)
    out.append("")
    return out


def _limits_of(field_spec) -> str:
    parts = []
    for word, limits in (("alarm", field_spec.alarm), ("warning", field_spec.warning)):
        if not limits:
            continue
        low, high = limits
        text = ", ".join(x for x in ((f"< {low:g}" if low is not None else ""),
                                     (f"> {high:g}" if high is not None else "")) if x)
        parts.append(f"{word} {text}")
    return "; ".join(parts)


def _replaces_lines(spec) -> list[str]:
    replaces = getattr(spec, "replaces", None)
    if not replaces:
        return []
    agent = replaces.get("agent")
    socs_lines = replaces.get("socs_lines")
    docs_lines = replaces.get("docs_lines")
    total = None
    if socs_lines is not None:
        try:
            total = sum(int(p) for p in str(socs_lines).replace("+", " ").split())
        except ValueError:
            total = None
    lines = _heading("Lines of code", "-")
    rows = [[f"This device file ({_lit(spec.path.name if spec.path else spec.name)})",
             f"{spec.source_lines} (non-blank, non-comment lines)"]]
    if socs_lines is not None:
        text = f"{_esc(socs_lines)} (agent + driver)"
        if total is not None and "+" in str(socs_lines):
            text += f" = {total}"
        rows.append([f"SOCS {_lit(agent) if agent else 'agent'}", text])
    if docs_lines is not None:
        rows.append(["SOCS docs page for it", f"{_esc(docs_lines)}"])
    lines += [f"The device file takes the place of the SOCS agent {_lit(agent)} and its driver "
              "(the description above says which of that agent's names it keeps)." if agent else
              "The device file takes the place of a hand-written agent and driver.", ""]
    lines += _table(["What", "Lines"], rows, [50, 50])
    if total:
        lines += [f"The device file is {spec.source_lines / total:.0%} of the agent and driver it replaces; "
                  "this page, too, is generated from it.", ""]
    return lines


def _arg_rows(args) -> list[list[str]]:
    rows = []
    for arg in args:
        rows.append([_lit(arg.name), _esc(arg.type), "required" if arg.required else _lit(repr(arg.default)),
                     _esc(_limits_text(arg)), _esc(arg.description)])
    return rows


def _example_args(task: AgentTask) -> str:
    parts = []
    for arg in task.args:
        if not arg.required:
            continue
        if arg.type == "enum" and arg.choices:
            value = arg.choices[0]
        elif arg.type == "int":
            value = int(arg.min) if arg.min is not None else 1
        elif arg.type == "float":
            value = float(arg.min) if arg.min is not None else 1.0
        elif arg.type == "bool":
            value = True
        else:
            value = "text"
        parts.append(f"{arg.name}={value!r}")
    return ", ".join(parts)


def _is_shipped(spec) -> bool:
    """Whether *spec* was loaded from the package's own device files."""
    from .spec import files_dir
    return spec.path is not None and spec.path.resolve().parent == files_dir().resolve()


def _device_file_argument(spec) -> str:
    """What ``--device-file`` names: a shipped file by name, any other by its path in a container."""
    if _is_shipped(spec):
        return spec.name
    return f"/config/devices/{spec.path.name if spec.path else spec.name + '.yaml'}"


def render_page(spec, instance_id: str | None = None) -> str:
    """The reStructuredText page of the device file *spec* (ends with a newline)."""
    iid = instance_id or spec.name.replace("_", "-")
    agent_class = spec.agent.agent_class or "DeviceAgent"
    conn = spec.connection
    tasks = agent_tasks(spec)
    polling = spec.polling
    title = f"{spec.title} ({spec.name})"
    source = spec.name if _is_shipped(spec) else (spec.path.name if spec.path else f"{spec.name}.yaml")
    lines = [f".. This page is generated from the device file by 'python -m socs_tcp.devices docs {source}'.",
             "   Edit the device file, not this page.", "", f".. _device-{spec.name}:", ""]
    lines += _heading(title, "=")
    if spec.description:
        lines += [_esc(spec.description), ""]
    if _is_shipped(spec):
        path, ref, agent_page = f"socs_tcp/devices/files/{spec.path.name}", spec.name, ":doc:`/agents/device`"
        where = ""
    else:
        path = ref = source
        agent_page = "see the DeviceAgent page of the socs_tcp docs"
        where = (f"  In a container, mount the folder of the file at ``/config/devices`` and give "
                 f"``--device-file {_device_file_argument(spec)}``.")
    lines += [f"Device file: {_lit(path)}, run by the agent class {_lit(agent_class)} "
              f"({agent_page}) with ``--device-file {ref}``.{where}  Check it with "
              f"``python -m socs_tcp.devices check {ref}``, simulate it with "
              f"``python -m socs_tcp.devices simulate {ref} --port N`` and get its Grafana dashboard with "
              f"``python -m socs_tcp.devices dashboard {ref}``.", ""]
    lines += _replaces_lines(spec)

    lines += _heading("Connection", "-")
    rows = [["Protocol", _lit(conn.protocol)], ["Default port", _lit(conn.port) if conn.port else "--"]]
    for attr, label in (("timeout", "Timeout (s)"), ("connect_timeout", "Connect timeout (s)")):
        value = getattr(conn, attr, None)
        if value is not None:
            rows.append([label, _lit(value)])
    if conn.checksum is not None:
        c = conn.checksum
        rows.append(["Checksum", f"{_lit(c.type)} of each telegram, written as {_lit(c.format)}"])
    lines += _table(["Setting", "Value"], rows, [40, 60])
    if spec.params:
        lines += _heading("Params", "~")
        lines += ["Set per device (the agent's ``--param NAME=VALUE``, the driver's ``params={...}``, the "
                  "simulator's ``--param``):", ""]
        rows = [[_lit(p.name), _esc(p.type), _lit(p.default), _esc(_limits_text(p)), _esc(p.description or "")]
                for p in spec.params]
        lines += _table(["Param", "Type", "Default", "Limits", "Meaning"], rows, [18, 10, 12, 20, 40])

    lines += _heading("Tasks", "-")
    lines += ["One OCS task per command and query of the file (and the extra names of its ``agent`` section).  "
              "Arguments are checked before anything is sent: a bad value is refused by OCS "
              "(``OCSReply.status == -1``, the reason in ``msg``).  Tasks "
              "marked *writes* change the device's state and need the credential level of ``--write-privs`` "
              "when the agent has an access policy.  A query's parsed reply is in "
              "``session['data']['values']``.", ""]
    rows = []
    for task in tasks:
        kind = f"alias of {_lit(task.alias_of)}" if task.alias_of else _esc(task.kind)
        what = _esc(_task_body(task))
        fields = task.operation.fields if task.operation is not None else []
        rows.append([_lit(_signature(task.name, task.args)), kind + (", *writes*" if task.writes else ""),
                     what, ", ".join(_lit(f.name) for f in fields)])
    lines += _table(["Task", "Kind", "What it does", "Reply fields"], rows, [28, 14, 40, 18])
    with_args = [t for t in tasks if t.args]
    if with_args:
        lines += _heading("Task arguments", "~")
        for task in with_args:
            lines += [f"{_lit(task.name)}:", ""]
            lines += _table(["Argument", "Type", "Default", "Limits", "Meaning"], _arg_rows(task.args),
                            [16, 10, 14, 25, 35])
    ops_with_fields = [op for op in spec.operations.values() if op.fields]
    if ops_with_fields:
        lines += _heading("Reply fields", "~")
        rows = []
        for op in ops_with_fields:
            for f in op.fields:
                rows.append([_lit(op.name), _lit(f.name), _esc(f.type), _esc(f.unit or ""), _esc(f.description)])
        lines += _table(["Operation", "Field", "Type", "Unit", "Meaning"], rows, [18, 20, 10, 10, 42])

    lines += _heading("The acq process", "-")
    params = acq_parameters(spec)
    sig = "acq(" + ", ".join(f"{n}={d!r}" for n, _, d, _ in params) + ")"
    if polling is None:
        lines += [f"{_lit(sig)} publishes only the link health (``link_health`` feed): the file has no polling.", ""]
    else:
        lines += [f"{_lit(sig)} runs the file's polling list every cycle and publishes to the feed "
                  f"{_lit(polling.feed)}, block {_lit(polling.block)}, and the link health to ``link_health``.  "
                  f"It sets ``session.degraded`` while the device is unreachable and clears it on the first good "
                  f"reading; ``test_mode=True`` runs one cycle, then stops.", ""]
        rows = [[_lit(f.name), _esc(f.type), _esc(f.unit or ""), _esc(_limits_of(f)), _esc(f.description)]
                for f in polling.feed_fields]
        lines += _table(["Feed field", "Type", "Unit", "Alarm / warning", "Meaning"], rows, [22, 8, 10, 22, 38])
        items = []
        for item in polling.items:
            args = ", ".join(f"{k}={v!r}" for k, v in (item.args or {}).items())
            fields = ", ".join(f"{src} -> {dst}" if src != dst else dst for src, dst in item.fields.items())
            items.append([_lit(f"{item.operation}({args})"), _esc(fields)])
        lines += ["Each cycle runs, in order:", ""]
        lines += _table(["Operation", "Reply field -> feed field"], items, [40, 60])

    lines += ["What clients see as the docstring of ``acq``:", "", ".. code-block:: text", ""]
    lines += ["   " + line if line else "" for line in acq_docstring(spec).splitlines()] + [""]

    modes, default = agent_modes(spec)
    lines += _heading("Start-up modes", "-")
    rows = []
    for mode, ops in modes.items():
        started = ", ".join(f"{op}({', '.join(f'{k}={v!r}' for k, v in (params or {}).items())})"
                            for op, params in ops.items())
        rows.append([_lit(mode) + (" (default)" if mode == default else ""), _lit(started) if started else "nothing"])
    lines += _table(["--mode", "Starts"], rows, [30, 70])

    lines += _heading("Site configuration", "-")
    address = f"10.10.10.30:{conn.port}" if conn.port else "10.10.10.30:PORT"
    mode = default
    lines += [".. code-block:: yaml", "",
              "   hosts:", "     docker:", "       agent-instances:",
              f"         - agent-class: {agent_class}", f"           instance-id: {iid}",
              "           arguments:", f"             - ['--device-file', '{_device_file_argument(spec)}']",
              *[f"             - ['--param', '{p.name}={p.default}']" for p in spec.params],
              f"             - ['--address', '{address}']", f"             - ['--mode', '{mode}']", ""]
    lines += _heading("Docker compose", "-")
    lines += [".. code-block:: yaml", "", "   services:", f"     {iid}:", "       image: socs-tcp",
              "       network_mode: host", "       environment:", f"         INSTANCE_ID: {iid}",
              "         SITE_HOST: docker", "         SITE_HUB: ws://localhost:8001/ws",
              "         SITE_HTTP: http://localhost:8001/call", "         LOGLEVEL: info",
              "       volumes:", "         - ./deploy:/config:ro", "       restart: unless-stopped", ""]

    lines += _heading("Client example", "-")
    code = ["from ocs.ocs_client import OCSClient", "", f"client = OCSClient({iid!r})"]
    queries = sorted((t for t in tasks if t.kind == "query" and not t.alias_of), key=lambda t: not t.args)
    if queries:
        q = queries[0]
        code += [f"reply = client.{q.name}({_example_args(q)})", "print(reply.session['data']['values'])"]
    commands = [t for t in tasks if t.writes]
    if commands:
        c = commands[0]
        code += [f"client.{c.name}({_example_args(c)})"]
    code += ["client.acq.start()", "print(client.acq.status().session['data'])", "client.acq.stop()"]
    lines += [".. code-block:: python", ""] + ["   " + c if c else "" for c in code] + [""]
    return "\n".join(lines).rstrip() + "\n"


def write_pages(directory, names=None) -> list:
    """Write ``<name>.rst`` for each shipped device file (or each of *names*)
    into *directory*; returns the paths written.  The docs keep these pages
    (``docs/devices/``), and a test checks they match the files."""
    import pathlib

    from . import list_devices, load

    directory = pathlib.Path(directory)
    written = []
    for name in names or list_devices():
        path = directory / f"{name}.rst"
        path.write_text(render_page(load(name)), encoding="utf-8")
        written.append(path)
    return written


# ---------------------------------------------------------------- CLI


def _run(args) -> int:
    from . import load

    try:
        spec = load(args.device)
        text = render_page(spec)
        if args.out:
            with open(args.out, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            sys.stdout.write(text)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    return 0


def add_cli(subparsers) -> None:
    """Add ``docs NAME_OR_PATH [--out FILE]`` to the ``python -m socs_tcp.devices`` parser.

    Writes the rst page to *FILE* (or stdout); exit status 0, or 1 with the
    problem on stderr.  The handler is the subparser's ``func`` default.
    """
    parser = subparsers.add_parser(
        "docs", help="write the reStructuredText page of a device file",
        description="Write the rst page of a device file: tasks, arguments, fields, units, limits, "
                    "site-config and docker-compose snippets and a client example.")
    parser.add_argument("device", metavar="NAME_OR_PATH", help="shipped device name (see 'list') or path to a file")
    parser.add_argument("--out", metavar="FILE", help="write the page here instead of stdout")
    parser.set_defaults(func=_run)
