"""Driver-simulator agreement: for every request the driver can send, the
simulator made from the same file answers in a form the driver parses.

A property test over every shipped file and every example file of the docs: hypothesis draws an operation and
arguments within the file's limits; the driver sends them over a real
loopback socket to the simulator, and the reply must parse into every
declared field with its declared type.  (That the files describe the real
devices is tested against the independent emulators in test_devices_driver.)
"""

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socs_tcp.devices import Device, DeviceInterlockError, list_devices, load
from socs_tcp.devices.simulator import DeviceSimulator

PYTHON_TYPES = {"float": float, "int": int, "bool": bool, "str": str}


def arg_strategy(arg):
    if arg.type == "bool":
        return st.booleans()
    if arg.type == "enum":
        return st.sampled_from(arg.choices)
    if arg.type == "int":
        lo = -10 ** 9 if arg.min is None else int(arg.min)
        hi = 10 ** 9 if arg.max is None else int(arg.max)
        return st.integers(lo, hi)
    if arg.type == "float":
        return st.floats(-1e9 if arg.min is None else arg.min, 1e9 if arg.max is None else arg.max,
                         allow_nan=False, allow_infinity=False)
    alphabet = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-")
    text = st.text(alphabet, max_size=arg.max_length or 24)
    if arg.pattern:
        text = text.filter(lambda s: re.fullmatch(arg.pattern, s))
    return text


def args_strategy(op):
    return st.fixed_dictionaries({a.name: arg_strategy(a) for a in op.args})


def check_types(op, values):
    assert set(values) == {f.name for f in op.fields}, op.name
    for f in op.fields:
        value = values[f.name]
        items = value if f.array is not None else [value]
        if f.array is not None:
            assert isinstance(value, list) and 1 <= len(value) <= f.array.size, (op.name, f.name, value)
        for v in items:
            if v is None:
                assert f.status is not None, (op.name, f.name)
                continue
            want = PYTHON_TYPES[f.type]
            assert isinstance(v, want) and not (want is int and isinstance(v, bool)), (op.name, f.name, v)
            if f.map is not None:
                assert v in f.map.values(), (op.name, f.name, v)


#: the example files of the docs, held to the same standard as the shipped ones
EXAMPLES = sorted(str(p) for p in (Path(__file__).resolve().parent.parent / "docs" / "devices" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("name", list_devices() + EXAMPLES)
def test_simulator_answers_every_request_in_a_form_the_driver_parses(name):
    spec = load(name)
    ops = list(spec.operations.values())
    with DeviceSimulator(spec, seed=7) as sim:
        dev = Device.from_file(spec, sim.address, timeout=5)
        try:
            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @given(st.data())
            def check(data):
                op = data.draw(st.sampled_from(ops), label="operation")
                args = data.draw(args_strategy(op), label="args")
                try:
                    values = dev.call(op.name, **args)
                except DeviceInterlockError:
                    assert op.guard is not None
                    return
                check_types(op, values)
            check()
            # and every operation at least once, whatever hypothesis drew
            for op in ops:
                args = {a.name: (a.default if not a.required else _first(a)) for a in op.args}
                try:
                    check_types(op, dev.call(op.name, **args))
                except DeviceInterlockError:
                    assert op.guard is not None
            if spec.polling is not None:
                assert set(dev.poll()) <= {f.name for f in spec.polling.feed_fields}
        finally:
            dev.close()
        assert sim.connections >= 1


def _first(arg):
    if arg.type == "enum":
        return arg.choices[0]
    if arg.type == "bool":
        return True
    if arg.type == "str":
        return "x"
    value = arg.min if arg.min is not None else (arg.max if arg.max is not None else 1)
    return int(value) if arg.type == "int" else float(value)


@pytest.mark.parametrize("name", [n for n in list_devices() if load(n).error_queue or load(n).reply_error])
def test_simulator_answers_the_error_queries_in_the_files_form(name):
    spec = load(name)
    with DeviceSimulator(spec) as sim:
        sim.push_error(-222 if spec.error_queue else 5, "Data out of range" if spec.error_queue else "Input buffer full")
        dev = Device.from_file(spec, sim.address, timeout=5)
        try:
            enc = spec.connection.encoding
            if spec.error_queue is not None:
                reply = dev.wrnrd_until((spec.error_queue.query + spec.connection.out_terminator).encode(enc),
                                        spec.connection.in_terminator[0].encode(enc))
                m = spec.error_queue.parse.search(reply.decode(enc))
                assert m and m.group("code") == "-222" and m.group("message") == "Data out of range"
            rerr = spec.reply_error
            if rerr is not None and rerr.query:
                reply = dev.wrnrd_until((rerr.query + spec.connection.out_terminator).encode(enc),
                                        [t.encode(enc) for t in spec.connection.in_terminator])
                m = rerr.parse.search(reply.decode(enc).strip())
                assert m and m.group("code") == "5"
        finally:
            dev.close()
