"""Bad device files: each class of error, with its exact message (file:line: key: message).

Every problem names the file, the line and the dotted key; unknown keys are
errors; all problems of a file are reported together.
"""

import pytest

from socs_tcp.devices import DeviceFileError, DeviceFileProblem, find, load, loads

BASE = """device: demo
connection:
  port: 5025
"""

FIELD_KEYS = ("type, unit, description, alarm, warning, map, enum, flags, flag_type, array, status, scale, offset, "
              "true_text, false_text, base, wire, byte, register, order, exponent, sim")
TOP_KEYS = ("device, title, description, replaces, connection, params, enums, transactions, errors, queries, commands, "
            "polling, agent, sim")

CASES = {
    # the example of the issue: a misspelt type
    "unknown type": (
        BASE + 'queries:\n  volt:\n    request: "VOLT?"\n    reply: flaot\n',
        ["demo.yaml:7: queries.volt.reply: unknown type 'flaot' (one of: float, int, str, bool)"]),
    "unknown top-level key": (
        BASE + 'colour: red\nqueries:\n  volt: {request: "VOLT?", reply: float}\n',
        [f"demo.yaml:4: colour: unknown key (allowed: {TOP_KEYS})"]),
    "unknown field key": (
        BASE + "queries:\n  v:\n    request: V\n    reply:\n      fields:\n        v: {type: float, units: K}\n",
        [f"demo.yaml:9: queries.v.reply.fields.v.units: unknown key (allowed: {FIELD_KEYS})"]),
    "missing required key": (
        "connection: {port: 1}\nqueries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:1: missing required key 'device'"]),
    "duplicate name": (
        BASE + "queries:\n  v: {request: V, reply: float}\n  v: {request: W, reply: float}\n",
        ["demo.yaml:6: queries.v: duplicate name"]),
    "port out of range": (
        "device: demo\nconnection:\n  port: 70000\nqueries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:3: connection.port: must be in 1..65535, got 70000"]),
    "unknown protocol": (
        "device: demo\nconnection:\n  port: 1\n  protocol: serial\nqueries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:4: connection.protocol: unknown protocol 'serial' (one of: text, binary, modbus)"]),
    "key for another protocol": (
        "device: demo\nconnection:\n  port: 1\n  protocol: binary\n  in_terminator: \"\\n\"\nqueries:\n"
        "  s:\n    request: [0x30]\n    reply: {length: 1, fields: {a: {wire: u8, byte: 0}}}\n",
        ["demo.yaml:5: connection.in_terminator: only for protocol: text (this is binary)"]),
    "placeholder that is no argument": (
        BASE + 'commands:\n  set:\n    request: "VOLT {volts}"\n    args:\n      volt: {type: float}\n',
        ["demo.yaml:6: commands.set.request: placeholder {volts} is not an argument (arguments: volt)"]),
    "min above max": (
        BASE + 'commands:\n  set:\n    request: "VOLT {volt}"\n    args:\n      volt: {type: float, min: 5, max: 1}\n',
        ["demo.yaml:8: commands.set.args.volt: min 5 is above max 1"]),
    "default outside the limits": (
        BASE + 'commands:\n  set:\n    request: "VOLT {volt}"\n'
        '    args:\n      volt: {type: float, min: 0, max: 10, default: 11}\n',
        ["demo.yaml:8: commands.set.args.volt.default: bad default: argument 'volt' must be <= 10, got 11.0"]),
    "unknown enum": (
        BASE + 'commands:\n  set:\n    request: "MODE {mode}"\n    args:\n      mode: {enum: modes}\n',
        ["demo.yaml:8: commands.set.args.mode.enum: unknown enum 'modes' (no 'enums' section)"]),
    "bad regex": (
        BASE + "queries:\n  idn:\n    request: \"*IDN?\"\n    reply:\n"
        "      regex: '(?P<maker>[^,]*'\n      fields: {maker: str}\n",
        ["demo.yaml:8: queries.idn.reply.regex: not a valid regular expression: missing ), unterminated subpattern "
         "at position 0"]),
    "field without a regex group": (
        BASE + "queries:\n  idn:\n    request: \"*IDN?\"\n    reply:\n      regex: '^(?P<maker>[^,]*),(?P<model>.*)$'\n"
        "      fields: {maker: str, serial: str}\n",
        ["demo.yaml:8: queries.idn.reply.regex: has no group (?P<serial>...) for field 'serial'"]),
    "unknown transaction": (
        BASE + "queries:\n  v:\n    request: V\n    transaction: handshake\n    reply: float\n",
        ["demo.yaml:7: queries.v.transaction: unknown transaction 'handshake' (none defined under 'transactions')"]),
    "query on a transaction without reply": (
        BASE + 'transactions:\n  ping:\n    steps:\n      - send: "{request}"\n      - expect: OK\nqueries:\n'
        "  v:\n    request: V\n    transaction: ping\n    reply: float\n",
        ["demo.yaml:11: queries.v: transaction 'ping' has no 'reply' step, so a query cannot use it"]),
    "step with two actions": (
        BASE + 'transactions:\n  t:\n    steps:\n      - send: "{request}"\n        expect: OK\n'
        "queries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:6: transactions.t.steps: needs a 'send' step",
         "demo.yaml:7: transactions.t.steps[0]: a step has exactly one of send, expect, reply, read, discard, pause, "
         "got send, expect"]),
    "binary field beyond the reply": (
        "device: demo\nconnection: {port: 1, protocol: binary}\nqueries:\n  s:\n    request: [0x30]\n    reply:\n"
        "      length: 2\n      fields:\n        t: {wire: i16, byte: 1}\n",
        ["demo.yaml:9: queries.s.reply.fields.t: bytes 1..2 are beyond the reply length 2"]),
    "flag bit beyond the wire type": (
        "device: demo\nconnection: {port: 1, protocol: binary}\nqueries:\n  s:\n    request: [0x30]\n    reply:\n"
        "      length: 1\n      fields:\n        r:\n          wire: u8\n          byte: 0\n"
        "          flags: {relay_1: 0, relay_8: 9}\n",
        ["demo.yaml:12: queries.s.reply.fields.r.flags.relay_8: bit 9 is beyond the u8 (bits 0..7)"]),
    "simulated value that does not fit the wire": (
        "device: demo\nconnection: {port: 1, protocol: binary}\nqueries:\n  s:\n    request: [0x78]\n    reply:\n"
        "      length: 1\n      fields:\n        v: {wire: u8, byte: 0, scale: 0.1, sim: {value: 120}}\n",
        ["demo.yaml:9: queries.s.reply.fields.v.sim.value: 120 (sent as 1200) does not fit a u8 (0..255)"]),
    "simulated value outside the enum": (
        BASE + "enums:\n  rng: {off: 0, low: 1}\nqueries:\n  r:\n    request: R?\n"
        "    reply: {enum: rng, sim: {value: maximum}}\n",
        ["demo.yaml:9: queries.r.reply.sim.value: 'maximum' is not one of the field's names ['low', 'off'] "
         "(or wire values ['0', '1'])"]),
    "simulated text that YAML read as a boolean": (
        BASE + "queries:\n  m:\n    request: M?\n    reply: {type: str, sim: {value: on}}\n",
        ["demo.yaml:7: queries.m.reply.sim.value: True is not text (YAML reads unquoted on/off/yes/no as a boolean: "
         "quote it)"]),
    "unquoted ON as text": (
        BASE + "commands:\n  o:\n    request: OUTP {s}\n    args: {s: {type: bool, true_text: ON, false_text: 'OFF'}}\n",
        ['demo.yaml:7: commands.o.args.s.true_text: must be text, got \'ON\', which YAML reads as True when unquoted: '
         'write "ON"']),
    "literal byte out of range": (
        "device: demo\nconnection: {port: 1, protocol: binary}\ncommands:\n  s:\n    request: [0x130]\n",
        ["demo.yaml:5: commands.s.request[0]: a literal byte must be an integer 0..255, got '0x130'"]),
    "argument that does not fit its wire type": (
        "device: demo\nconnection: {port: 1, protocol: binary}\ncommands:\n  s:\n    request: [0x31, {arg: n, wire: u8}]\n"
        "    args: {n: {type: int, min: 0, max: 300}}\n",
        ["demo.yaml:5: commands.s.request[1]: argument 'n' needs min and max within 0..255 to fit a u8"]),
    "modbus register outside the read": (
        "device: demo\nconnection: {port: 502, protocol: modbus}\n"
        "queries:\n  s:\n    modbus: {function: 4, address: 1, count: 2}\n"
        "    reply:\n      fields:\n        t: {wire: f32, order: CDAB, register: 2}\n",
        ["demo.yaml:7: queries.s.reply.fields.t: registers 2..3 are outside the ones read (1..2)"]),
    "flags on a float": (
        BASE + "queries:\n  s:\n    request: S\n    reply:\n      fields:\n        s: {type: float, flags: {A: 0}}\n",
        ["demo.yaml:9: queries.s.reply.fields.s.flags: flags need an int field (this is float)"]),
    "status valid value unknown": (
        BASE + 'queries:\n  s:\n    request: S\n    reply:\n      split: ","\n      fields:\n'
        '        p: {type: float, status: {map: {"0": ok}, valid: [good]}}\n',
        ["demo.yaml:10: queries.s.reply.fields.p.status.valid: 'good' is not a status value or name"]),
    "error queue regex without code": (
        BASE + "errors:\n  queue:\n    query: \"SYST:ERR?\"\n"
        "    parse: '^(?P<num>\\d+)'\nqueries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:7: errors.queue.parse: needs a named group 'code' (and optionally 'message')"]),
    "polling an unknown query": (
        BASE + "queries:\n  v: {request: V, reply: float}\npolling:\n  feed: f\n  items:\n    - query: w\n",
        ["demo.yaml:9: polling.items[0].query: unknown operation 'w'"]),
    "polling a command": (
        BASE + "commands:\n  go: {request: GO}\npolling:\n  feed: f\n  items:\n    - query: go\n",
        ["demo.yaml:9: polling.items[0].query: 'go' changes the device (writes); acq polls reads only"]),
    "array feed name without placeholder": (
        BASE + 'queries:\n  v:\n    request: V\n    reply:\n      split: ","\n      fields:\n'
        "        x: {type: float, array: {count: 3}}\npolling:\n  feed: f\n  items:\n    - query: v\n      fields: {x: x_all}\n",
        ["demo.yaml:15: polling.items[0].fields.x: 'x' is an array: the name needs {n}, {i} or {label}"]),
    "agent task for an unknown operation": (
        BASE + "queries:\n  v: {request: V, reply: float}\nagent:\n  tasks:\n    power: {operation: set_power}\n",
        ["demo.yaml:8: agent.tasks.power.operation: unknown operation 'set_power'"]),
    "guard on a write": (
        BASE + "commands:\n  go:\n    request: GO\n    guard:\n"
        "      checks:\n        - {query: go, field: x, min: 0, message: no}\n",
        ["demo.yaml:9: commands.go.guard.checks[0].query: 'go' is not a read-only query of this device"]),
    "operation named like a driver method": (
        BASE + "queries:\n  read: {request: R, reply: float}\n",
        ["demo.yaml:5: queries.read: 'read' is a method or attribute of the driver (socs_tcp.devices.Device); "
         "choose another name"]),
    "errors section of a binary device": (
        "device: demo\nconnection: {port: 1, protocol: binary}\nerrors:\n  reply: {match: '^x$'}\n"
        "queries:\n  v: {request: [0x01], reply: {length: 1, fields: {v: {wire: u8, byte: 0}}}}\n",
        ["demo.yaml:3: errors: only for protocol: text (describe a binary error reply by its fields, or refuse it "
         "with the reply's 'starts_with')"]),
    "errors section of a Modbus device": (
        "device: demo\nconnection: {port: 502, protocol: modbus}\nerrors: {}\n"
        "queries:\n  v: {modbus: {function: 4, address: 1, count: 1}, reply: {fields: {v: {wire: u16, register: 1}}}}\n",
        ["demo.yaml:3: errors: only for protocol: text (the driver raises Modbus exception replies as DeviceError)"]),
    "terminator typed in single quotes": (
        "device: demo\nconnection: {port: 1, in_terminator: '\\r\\n'}\nqueries:\n  v: {request: V, reply: float}\n",
        ["demo.yaml:2: connection.in_terminator: '\\\\r\\\\n' holds a backslash and 'r': in single quotes or "
         "unquoted, YAML keeps the backslash; write control characters in double quotes (\"\\r\\n\")"]),
    "no follow-on problems from a broken operation": (
        BASE + "queries:\n  t:\n    request: T? {ch}\n    args: {ch: {type: int, min: 1, max: two}}\n"
        "    reply: {fields: {t: {type: flaot}}}\n"
        "polling:\n  feed: f\n  items:\n    - query: t\n      args: {ch: 1}\n      fields: [t]\n"
        "agent:\n  tasks:\n    temp: {kind: alias, operation: t, args: {channel: ch}}\n",
        ["demo.yaml:7: queries.t.args.ch.max: must be an integer, got 'two'",
         "demo.yaml:8: queries.t.reply.fields.t: unknown type 'flaot' (one of: float, int, str, bool)"]),
    "a setter whose state variable no field reads": (
        BASE + "queries:\n  sp:\n    request: SETP? {loop}\n    args: {loop: {type: int, min: 1, max: 2}}\n"
        "    reply: {type: float, sim: {state: 'setp_{loop}'}}\ncommands:\n  set_sp:\n    request: SETP {loop},{v}\n"
        "    args: {loop: {type: int, min: 1, max: 2}, v: float}\n    sim: {sets: {'setpoint_{loop}': '{v}'}}\n",
        ["demo.yaml:13: commands.set_sp.sim.sets.setpoint_{loop}: no field reads the state variable 'setpoint_{loop}', "
         "so setting it changes no reply (fields read: setp_{loop}; give the field sim: {state: ...})"]),
    "an error queue regex that does not read its own no-error reply": (
        BASE + "errors:\n  queue:\n    query: SYST:ERR?\n    parse: '^(?P<code>[-+?\\d+),\"(?P<message>[^\"]*)\"'\n"
        "    ok: [0]\ncommands:\n  c: {request: C}\n",
        ["demo.yaml:7: errors.queue.parse: does not read its own 'no error' reply '0,\"No error\"' as code 0 "
         "(it reads code '0,')"]),
    "a broken enum is reported once": (
        BASE + "enums:\n  nplc: ['0.02', '0.2', '0.2']\ncommands:\n  s: {request: 'N {n}', args: {n: {enum: nplc}}}\n",
        ["demo.yaml:5: enums.nplc: duplicate choice '0.2'"]),
    "empty file": ("", ["demo.yaml:1: the file is empty"]),
    "not YAML": (
        BASE + 'queries:\n  volt: {request: "VOLT?"\n    reply: float\n',
        ["demo.yaml:6: not valid YAML: expected ',' or '}', but got '<scalar>' (column 5; while parsing a flow "
         "mapping at line 5; a '{' without its '}', or a value in it that holds ',' ':' '{' or '#' unquoted)"]),
    "YAML indented wrongly": (
        BASE + "queries:\n  v:\n    request: V\n   reply: float\n",
        ["demo.yaml:7: not valid YAML: expected <block end>, but found '<block mapping start>' (column 4; while "
         "parsing a block mapping at line 5; this line's indentation does not match the lines above it)"]),
    "YAML with a tab": (
        BASE + "queries:\n\tv: {request: V, reply: float}\n",
        ["demo.yaml:5: not valid YAML: found character '\\t' that cannot start any token (column 1; YAML indents "
         "with spaces, not tabs)"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_message(name):
    text, expected = CASES[name]
    with pytest.raises(DeviceFileError) as info:
        loads(text, "demo.yaml")
    assert str(info.value).splitlines() == expected
    # the structured form says the same
    assert [str(p) for p in info.value.errors] == expected
    assert all(isinstance(p, DeviceFileProblem) and p.file == "demo.yaml" for p in info.value.errors)


def test_every_problem_is_reported_in_line_order():
    text = BASE + ('queries:\n  a: {request: A, reply: flaot}\n  b: {request: B, reply: {type: int, unit: [K]}}\n'
                   'commands:\n  c: {request: "C {x}"}\n')
    with pytest.raises(DeviceFileError) as info:
        loads(text, "demo.yaml")
    assert str(info.value).splitlines() == [
        "demo.yaml:5: queries.a.reply: unknown type 'flaot' (one of: float, int, str, bool)",
        "demo.yaml:6: queries.b.reply.unit: must be a single value, got a list",
        "demo.yaml:8: commands.c.request: placeholder {x} is not an argument (this operation has none)",
    ]
    assert [p.line for p in info.value.errors] == [5, 6, 8]
    assert info.value.errors[0].key == "queries.a.reply"


def test_error_is_a_value_error_and_names_a_file_given_by_path(tmp_path):
    path = tmp_path / "gauge.yaml"
    path.write_text(BASE + 'queries:\n  volt:\n    request: "VOLT?"\n    reply: flaot\n')
    with pytest.raises(ValueError) as info:
        load(path)
    assert str(info.value) == f"{path}:7: queries.volt.reply: unknown type 'flaot' (one of: float, int, str, bool)"


def test_shipped_name_is_named_by_its_file_name():
    # a shipped file is reported as NAME.yaml, a path as given
    spec = load("tpg366")
    assert spec.path == find("tpg366")
    assert spec.path.name == "tpg366.yaml"


def test_missing_file_and_unknown_name():
    with pytest.raises(FileNotFoundError, match="no shipped device file 'tpg999'; shipped: "):
        load("tpg999")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load("/nonexistent/dir/x.yaml")
    with pytest.raises(TypeError, match="short name or a path"):
        load(42)


def test_reserved_names_are_the_drivers_attributes():
    from socs_tcp.devices import Device
    from socs_tcp.devices.spec import RESERVED_NAMES

    dev = Device(load("tpg366"), "127.0.0.1", 1, connect=False)
    public = {n for n in dir(type(dev)) if not n.startswith("_")} | {n for n in vars(dev) if not n.startswith("_")}
    assert public <= RESERVED_NAMES


JUNK = [None, 0, -1, 1.5, float("inf"), "", "x", "flaot", "{x}", "(?P<", "1..2", [], [1, "a"], {}, {"a": 1},
        {"type": "int"}, True, 70000, "{request}", ["\r", ""]]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def test_any_damage_to_a_shipped_file_is_a_device_file_error_not_a_crash():
    import copy

    import yaml
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from socs_tcp.devices import list_devices

    docs = {name: yaml.safe_load(find(name).read_text()) for name in list_devices()}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(docs)), st.data())
    def check(name, data):
        doc = copy.deepcopy(docs[name])
        places = list(_paths(doc))[1:]
        for _ in range(data.draw(st.integers(1, 3))):
            path = data.draw(st.sampled_from(places))
            node = doc
            try:
                for k in path[:-1]:
                    node = node[k]
                if data.draw(st.booleans()) and isinstance(node, dict):
                    del node[path[-1]]
                else:
                    node[path[-1]] = copy.deepcopy(data.draw(st.sampled_from(JUNK)))
            except (KeyError, IndexError, TypeError):
                pass
        try:
            loads(yaml.safe_dump(doc), "f.yaml")
        except DeviceFileError as e:
            assert e.errors and all(str(p).startswith("f.yaml:") for p in e.errors)
    check()
