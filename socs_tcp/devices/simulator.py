"""A simulator made from a device file.

Run it::

    python -m socs_tcp.devices simulate tpg366 --port 8000 [--host 127.0.0.1] [--seed 1]

The first stdout line is ``listening on HOST:PORT``; SIGINT or SIGTERM stops
it with exit code 0.  In a test::

    with DeviceSimulator("tpg366") as sim:
        dev = Device.from_file("tpg366", sim.address)

Layers
    :class:`SimulatorLogic`
        The device's behaviour, sans-IO: one per client connection, bytes in,
        reply bytes out.  It recognises every request the file describes
        (text templates, binary frames, Modbus ADUs), walks multi-step
        transactions (the TPG's ACK, then data after ENQ), keeps the error
        token and error queue of the file, and answers from a shared
        :class:`SimulatorState`.
    :class:`SimulatorState`
        The values: state variables (``sim.state`` and the fields'
        ``sim.state`` names), set by commands (``sim.sets``) and read by
        queries, so a setter changes what the getters return; sample values,
        ranges and noise from the fields' ``sim`` keys.
    :class:`DeviceSimulator`
        The TCP server: a :class:`~socs_tcp.testing.DeviceEmulator`, so it has
        the emulator's faults (``set_delay``, ``split_replies``,
        ``merge_replies``, ``slow_drip``, ``drop_after``,
        ``drop_connections``, ``refuse_connections``, ``go_silent``,
        ``send_garbage``, ``flood``, ``restart``) and records every request in
        ``received``.

Requests that the file does not describe get the device's error: the error
token (``errors.reply``; with ``sim_code``/``sim_message`` for the follow-up
query), an entry in the error queue (``-113,"Undefined header"``), a Modbus
exception, or no answer.  Out-of-limit arguments are treated the same way
(``-222,"Data out of range"`` for an error queue).
"""

import argparse
import collections
import logging
import random
import re
import signal
import struct
import sys
import threading

from ..core.checks import format_host_port, listen_port_argument
from ..core.checksums import checksum
from ..testing.emulator import DeviceEmulator
from . import codec
from .spec import WIRE_TYPES, DeviceSpec, load, param_assignments

__all__ = ["DeviceSimulator", "SimulatorLogic", "SimulatorState", "make_parser", "main"]

log = logging.getLogger("socs_tcp.devices.simulator")

_MAX_QUEUE = 16


class SimulatorState:
    """The simulated device's values, shared by every connection."""

    def __init__(self, spec, seed=None, noise=True, params=None):
        self.spec = spec
        #: the device's params (a bus address): the file's defaults, or ``params``
        self.params = spec.param_values(params)
        self.rng = random.Random(seed)
        self.noise = noise
        self.lock = threading.RLock()
        self.values = dict(spec.sim_state)
        #: the last error for the error token's follow-up query: (code, message)
        self.last_error = ("0", "")
        #: the SCPI-style error queue: (code, message)
        self.errors = collections.deque(maxlen=_MAX_QUEUE)

    def set(self, name, value):
        """Set a state variable (what a command's ``sim.sets`` does)."""
        with self.lock:
            self.values[name] = value

    def get(self, name, default=None):
        with self.lock:
            return self.values.get(name, default)

    def field_value(self, f, args):
        """The value a query returns for field ``f`` with arguments ``args``."""
        sim = f.sim
        if sim is not None and sim.state is not None:
            key = sim.state.format(**{k: v for k, v in args.items()})
            with self.lock:
                if key not in self.values:
                    self.values[key] = self._fresh(f, sim)
                return self._normal(f, self.values[key])
        value = self._fresh(f, sim)
        if self.noise and sim is not None and sim.noise and f.type == "float":
            # six significant digits, as an instrument would print them
            if isinstance(value, list):
                value = [None if v is None else float(f"{v + self.rng.gauss(0, sim.noise):.6g}") for v in value]
            elif value is not None:
                value = float(f"{value + self.rng.gauss(0, sim.noise):.6g}")
        return self._normal(f, value)

    def _fresh(self, f, sim):
        if sim is not None and sim.value is not None:
            return sim.value
        if sim is not None and sim.range is not None:
            lo, hi = sim.range
            lo = 0.0 if lo is None else lo
            hi = lo + 1.0 if hi is None else hi
            one = (lambda: self.rng.randint(int(lo), int(hi))) if f.type == "int" else (lambda: self.rng.uniform(lo, hi))
            if f.array is not None:
                return [one() for _ in range(f.array.size)]
            return one()
        default = _default(f)
        if f.array is not None:
            return [default] * f.array.size
        return default

    @staticmethod
    def _normal(f, value):
        """Enum-mapped fields hold names; accept wire values too."""
        if f.map is None:
            return value
        names = set(f.map.values())

        def one(v):
            if v in names:
                return v
            return f.map.get(str(v), next(iter(f.map.values())))
        return [one(v) for v in value] if isinstance(value, list) else one(value)


def _default(f):
    if f.map is not None:
        return next(iter(f.map.values()))
    return {"float": 0.0, "int": 0, "bool": False, "str": ""}[f.type]


class SimulatorLogic:
    """One client's conversation with the simulated device (sans-IO).

    :meth:`feed` takes received bytes and returns ``(request, reply)``
    pairs: the request as recorded (text or bytes) and the reply bytes
    (``None`` for no reply).
    """

    def __init__(self, spec, state):
        self.spec = spec
        self.state = state
        conn = spec.connection
        self.protocol = conn.protocol
        self.enc = conn.encoding
        self.buffer = bytearray()
        self.pending = None  # (op, args, remaining steps) of a transaction waiting for the client
        self.params = {p.name: (p, state.params[p.name]) for p in spec.params}
        self.param_wire = {p.name: p.wire(state.params[p.name]) for p in spec.params}
        # a flag field kept in a state variable of its own (sim.state) is that word's bits: a command that
        # sets one flag changes the word, and one that sets the word sets every flag
        self.flag_words = {}                  # word state -> its flags {name: bit}
        self.flag_bits = {}                   # flag -> (word state, bit, field)
        for op in spec.operations.values():
            for f in op.value_fields:
                if f.flags and f.sim is not None and f.sim.state and "{" not in f.sim.state:
                    self.flag_words[f.sim.state] = f.flags
                    for flag, bit in f.flags.items():
                        self.flag_bits[flag] = (f.sim.state, bit, f)
        if self.protocol == "text":
            self.out_term = conn.out_terminator.encode(self.enc) or b"\n"
            self.in_term = conn.in_terminator[0].encode(self.enc)
            bare = set()
            for t in list(spec.transactions.values()):
                for s in t.steps:
                    if s.action == "send" and s.terminator == [] and "{" not in s.value:
                        bare.add(s.value.encode(self.enc))
            for s in conn.init:
                if s.action == "send" and s.terminator == []:
                    bare.add(s.value.encode(self.enc))
            self.bare = sorted(bare, key=len, reverse=True)
            self.checksum = conn.checksum
            self.init_replies = self._init_replies(conn.init)
            ops = [op for op in spec.operations.values()]
            # literal requests first, then templates with the longest literal part
            ops.sort(key=lambda op: ("{" in op.request, -len(re.sub(r"\{[^}]*\}", "", op.request))))
            self.text_ops = [(op, codec.request_regex(op, self.params)) for op in ops]
            # the same requests with any value of the params: a telegram for another unit on the bus
            self.other_units = [codec.request_regex(op) for op in ops if spec.params and "{" in op.request
                                and any(p.name in op.request for p in spec.params)]
            self.recover = set((spec.reply_error.recover or {}).values()) if spec.reply_error else set()
        elif self.protocol == "binary":
            self.binary_ops = sorted(spec.operations.values(), key=lambda op: -_request_length(op))

    # ------------------------------------------------------------------
    def feed(self, data):
        self.buffer += data
        out = []
        while True:
            if self.protocol == "text":
                item = self._next_text()
            elif self.protocol == "binary":
                item = self._next_binary()
            else:
                item = self._next_modbus()
            if item is None:
                return out
            out.append(item)

    # ------------------------------------------------------------------
    # text
    def _next_text(self):
        buf = self.buffer
        while buf[:1] in (b"\r", b"\n") and not any(buf.startswith(b) for b in self.bare):
            del buf[:1]
        for bare in self.bare:
            if buf.startswith(bare):
                del buf[:len(bare)]
                return bare.decode(self.enc), self._bare(bare.decode(self.enc))
        at = buf.find(self.out_term)
        if at < 0:
            return None
        raw = bytes(buf[:at])
        del buf[:at + len(self.out_term)]
        if self.checksum is not None:
            try:
                raw = codec.unseal_text("request", self.checksum, raw.strip(), self.enc)
            except ValueError as e:
                log.info("simulator %s: request ignored: %s", self.spec.name, e)
                return raw.decode(self.enc, "replace").strip(), None
        text = raw.decode(self.enc, "replace").strip()
        return text, self._text(text)

    def _bare(self, literal):
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        op, args, steps = pending
        if steps and steps[0].action == "send" and steps[0].value == literal:
            return self._walk(op, args, steps[1:])
        return None

    def _text(self, text):
        pending, self.pending = self.pending, None
        if pending is not None:
            # the next line of a transaction the client is walking (a literal send step)
            op, args, steps = pending
            if steps and steps[0].action == "send" and "{request}" not in steps[0].value \
                    and self._filled(steps[0].value).strip() == text:
                return self._walk(op, args, steps[1:])
        spec = self.spec
        queue = spec.error_queue
        if queue is not None and text.upper() == queue.query.upper():
            code, message = self.state.errors.popleft() if self.state.errors else (queue.ok[0], "No error")
            return self._line(queue.format.format(code=code, message=message))
        rerr = spec.reply_error
        if rerr is not None and rerr.query and text == rerr.query:
            code, message = self.state.last_error
            return self._line(rerr.format.format(code=code, message=message))
        if text in self.recover:
            self.state.last_error = ("0", "")
            return self._ack_command()
        for op, regex in self.text_ops:
            args = codec.match_text_request(op, regex, text)
            if args is None:
                continue
            try:
                args = op.check_args(**{k: v for k, v in args.items() if v is not None})
            except (TypeError, ValueError) as e:
                return self._error(-222, "Data out of range", str(e))
            self._apply(op, args)
            steps = op.transaction.steps if op.transaction is not None else None
            if steps is None:
                if op.reply is None:
                    return None
                return self._line(codec.render_text(op, self._values(op, args), self.param_wire))
            # the first send is the request the client just sent
            first = next(i for i, s in enumerate(steps) if s.action == "send")
            return self._walk(op, args, steps[first + 1:])
        if text in self.init_replies:
            return self.init_replies[text]
        if any(regex.match(text) for regex in self.other_units):
            log.info("simulator %s: %r is for another unit (params %s): no answer", spec.name, text,
                     self.param_wire)
            return None
        return self._error(-113, "Undefined header", f"unknown request {text!r}")

    def _init_replies(self, steps):
        """What the device answers to each line the file's ``connection.init``
        sends (the ``expect`` and ``read`` steps after it): a request the
        device knows, even when no operation sends it."""
        replies = {}
        current = None
        for step in steps:
            if step.action == "send":
                if step.terminator == []:
                    current = None            # a bare send: answered by the bare-request path
                    continue
                current = (step.value.format(**self.param_wire) if "{" in step.value else step.value).strip()
                replies.setdefault(current, None)
            elif current is not None and step.action in ("expect", "read"):
                term = self.in_term if step.terminator is None else (step.terminator[0].encode(self.enc)
                                                                     if step.terminator else b"")
                text = self._filled(step.value) if step.action == "expect" else ""
                replies[current] = (replies[current] or b"") + self._frame(text.encode(self.enc), term)
        return replies

    def _walk(self, op, args, steps):
        out = b""
        for i, step in enumerate(steps):
            term = self.in_term if step.terminator is None else (step.terminator[0].encode(self.enc)
                                                                 if step.terminator else b"")
            if step.action == "expect":
                out += self._frame(self._filled(step.value).encode(self.enc), term)
            elif step.action == "reply":
                out += self._frame(codec.render_text(op, self._values(op, args), self.param_wire).encode(self.enc), term)
            elif step.action == "read":
                out += self._frame(b"", term)
            elif step.action == "send":
                self.pending = (op, args, steps[i:])
                break
        return out or None

    def _ack_command(self):
        ct = self.spec.connection.command_transaction
        if ct is None:
            return None
        out = b""
        for step in ct.steps[1:]:
            if step.action == "expect":
                term = self.in_term if step.terminator is None else (step.terminator[0].encode(self.enc)
                                                                     if step.terminator else b"")
                out += self._frame(step.value.encode(self.enc), term)
        return out or None

    def _error(self, code, message, why):
        log.info("simulator %s: %s", self.spec.name, why)
        spec = self.spec
        if spec.reply_error is not None:
            rerr = spec.reply_error
            self.state.last_error = (rerr.sim_code or "1", rerr.sim_message or message)
            if rerr.terminator is not None:
                return rerr.terminator.encode(self.enc)
            if spec.sim_unknown is not None:
                return self._line(self._filled(spec.sim_unknown))
            if rerr.query is None and rerr.format:
                # the error reply itself carries the code: write it as the file reads it
                code, text = self.state.last_error
                return self._line(rerr.format.format(**{**self.param_wire, "code": code, "message": text}))
            return self._line("?")
        if spec.error_queue is not None:
            self.state.errors.append((str(code), message))
            return None
        if spec.sim_unknown is not None:
            return self._line(self._filled(spec.sim_unknown))
        return None

    def _line(self, text):
        return self._frame(text.encode(self.enc), self.in_term)

    def _filled(self, template):
        """A step's text with the device's params filled in."""
        return template.format(**self.param_wire) if "{" in template else template

    def _frame(self, data, term):
        """One frame the device sends: ``data``, its checksum (if the file has one) unless it is a bare
        frame without a terminator, and ``term``."""
        if self.checksum is not None and term:
            data = codec.seal_text(self.checksum, data, self.enc)
        return data + term

    # ------------------------------------------------------------------
    # shared
    def _values(self, op, args):
        out = {}
        for f in op.value_fields:
            value = self.state.field_value(f, args)
            if f.flags and isinstance(value, int):
                # flag bits follow state variables named like the flags (set by commands)
                for flag, bit in f.flags.items():
                    on = self.state.get(flag)
                    if on is not None:
                        value = value | (1 << bit) if on else value & ~(1 << bit)
            out[f.name] = value
        return out

    def _apply(self, op, args):
        state = self.state
        for template, expr in (op.sim_sets or {}).items():
            name = template.format(**args)
            value = _resolve(expr, args)
            with state.lock:
                if name in self.flag_bits:
                    word, bit, f = self.flag_bits[name]
                    current = state.field_value(f, {})
                    current = int(current) if isinstance(current, (int, float)) else 0
                    state.set(word, current | (1 << bit) if value else current & ~(1 << bit))
                    continue
                state.set(name, value)
                for flag in self.flag_words.get(name, ()):
                    state.values.pop(flag, None)

    # ------------------------------------------------------------------
    # binary
    def _next_binary(self):
        buf = self.buffer
        if not buf:
            return None
        waiting = False
        for op in self.binary_ops:
            n = _request_length(op)
            args = _match_binary(op, bytes(buf[:n]))
            if args is False:
                continue
            if args is None:
                waiting = True
                continue
            raw = bytes(buf[:n])
            del buf[:n]
            try:
                args = op.check_args(**{k: v for k, v in args.items() if v is not None})
            except (TypeError, ValueError) as e:
                log.info("simulator %s: %s: %s", self.spec.name, op.name, e)
                error = op.reply.error if op.reply is not None else None
                if error is not None and error.sim_code is not None:
                    return raw, codec.encode_error_reply(op.reply, error.sim_code)
                return raw, None
            self._apply(op, args)
            if op.reply is None:
                return raw, None
            return raw, codec.encode_binary_reply(op.reply, self._values(op, args))
        if waiting:
            return None
        junk = bytes(buf[:1])
        del buf[:1]
        log.info("simulator %s: unknown request byte %s dropped", self.spec.name, junk.hex())
        return junk, None

    # ------------------------------------------------------------------
    # Modbus TCP
    def _next_modbus(self):
        buf = self.buffer
        if len(buf) < 7:
            return None
        tid, proto, length, unit = struct.unpack(">HHHB", buf[:7])
        if length < 2 or length > 254:
            frame = bytes(buf)
            buf.clear()
            return frame, None
        if len(buf) < 6 + length:
            return None
        frame = bytes(buf[:6 + length])
        del buf[:6 + length]
        if proto != 0:
            return frame, None
        pdu = frame[7:]
        fn = pdu[0]

        def reply(body):
            return frame, struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
        if fn not in (3, 4, 6) or len(pdu) != 5:
            return reply(bytes([fn | 0x80, 1]))
        address, value = struct.unpack(">HH", pdu[1:5])
        for op in self.spec.operations.values():
            m = op.modbus
            if m is None or m.function != fn:
                continue
            if fn in (3, 4):
                if address < m.address or address + value > m.address + m.count:
                    continue
                values = self._values(op, {})
                data = codec.encode_fields(op.reply.fields if op.reply else [], values, 2 * m.count, base=m.address)
                start = (address - m.address) * 2
                data = data[start:start + 2 * value]
                return reply(bytes([fn, len(data)]) + data)
            if address != m.address:
                continue
            args = {}
            if isinstance(m.value, str):
                name = m.value[1:-1]
                arg = op.arg_map[name]
                if arg.type == "enum":
                    keys = [k for k, v in arg.values.items() if int(v) == value]
                    if not keys:
                        return reply(bytes([fn | 0x80, 3]))
                    args[name] = keys[0]
                elif arg.type == "bool":
                    args[name] = bool(value)
                else:
                    args[name] = value
                try:
                    args = op.check_args(**args)
                except (TypeError, ValueError):
                    return reply(bytes([fn | 0x80, 3]))
            elif value != m.value:
                return reply(bytes([fn | 0x80, 3]))
            self._apply(op, args)
            return reply(pdu)
        return reply(bytes([fn | 0x80, 2]))


def _resolve(expr, args):
    if isinstance(expr, dict):
        value = args.get(expr.get("from"))
        table = expr.get("map") or {}
        return table.get(value, table.get(str(value), value))
    if isinstance(expr, str) and expr.startswith("{") and expr.endswith("}") and expr[1:-1] in args:
        return args[expr[1:-1]]
    return expr


def _request_length(op):
    return sum(item.size for item in op.request or [])


def _match_binary(op, data):
    """Arguments if ``data`` is this request; None if it may be (too short); False if not."""
    args = {}
    pos = 0
    for item in op.request:
        if item.literal is not None:
            chunk = data[pos:pos + len(item.literal)]
            if not item.literal.startswith(chunk):
                return False
            if len(chunk) < len(item.literal):
                return None
            pos += len(item.literal)
            continue
        if item.checksum is not None:
            c = item.checksum
            chunk = data[pos:pos + c.size]
            if len(chunk) < c.size:
                return None
            if int.from_bytes(chunk, c.order) != checksum(c.type, data[c.start:pos]):
                return False
            pos += c.size
            continue
        size = WIRE_TYPES[item.wire][0]
        chunk = data[pos:pos + size]
        if len(chunk) < size:
            return None
        code = WIRE_TYPES[item.wire][1]
        value = struct.unpack(">" + code, codec.to_big(chunk, item.order))[0]
        arg = op.arg_map[item.arg]
        if arg.type == "enum":
            keys = [k for k, v in arg.values.items() if v == value]
            if not keys:
                return False
            value = keys[0]
        elif arg.type == "bool":
            value = bool(value)
        elif item.scale is not None or item.offset is not None:
            value = value * (item.scale or 1) + (item.offset or 0)
            value = int(round(value)) if arg.type == "int" else float(value)
        args[item.arg] = value
        pos += size
    return args


class DeviceSimulator(DeviceEmulator):
    """A TCP server that behaves like the device a file describes.

    Args:
        spec_or_name: a :class:`~socs_tcp.devices.spec.DeviceSpec`, a short
            name or a path.
        host (str): listening address (loopback by default).
        port (int): listening port; 0 picks a free one.
        seed (int or None): seed of the noise and ranges (reproducible runs).
        noise (bool): add the fields' ``sim.noise``.
        params (dict): the device's params (``{"address": 94}``); the file's
            defaults otherwise.  A request for another value of a param (a
            telegram for another bus address) is not this device's.
    """

    def __init__(self, spec_or_name, host="127.0.0.1", port=0, *, seed=None, noise=True, params=None):
        spec = spec_or_name if isinstance(spec_or_name, DeviceSpec) else load(spec_or_name)
        super().__init__(None, None, read_termination=None, write_termination=b"", strip=False, host=host, port=port)
        self.spec = spec
        self.state = SimulatorState(spec, seed=seed, noise=noise, params=params)

    def logic(self):
        """A fresh per-connection :class:`SimulatorLogic` on this simulator's state."""
        return SimulatorLogic(self.spec, self.state)

    def set_value(self, name, value):
        """Set a state variable (as a command's ``sim.sets`` would)."""
        self.state.set(name, value)

    def push_error(self, code, message):
        """Put an entry in the simulated error queue (and the error token's follow-up answer)."""
        self.state.errors.append((str(code), message))
        self.state.last_error = (str(code), message)

    def _serve(self, conn):
        logic = self.logic()
        try:
            while self._running:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                try:
                    answers = logic.feed(data)
                except Exception:              # a file the simulator cannot serve: say which, and hang up
                    log.exception("simulator %s: cannot answer %r; closing the connection", self.spec.name,
                                  bytes(data[:64]))
                    return
                for request, reply in answers:
                    if not self._answer(conn, request, reply):
                        return
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, conn, request, reply):
        """Record one request and send its reply with the configured faults.
        Returns False when the connection was dropped."""
        with self._lock:
            self.received.append(request)
        if self._drop_after is not None:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                with self._lock:
                    self._conns.discard(conn)
                conn.close()
                return False
        if reply is None or self.silent:
            return True
        if self.delay:
            threading.Event().wait(self.delay)
        try:
            self._write(conn, reply)
        except OSError:
            return False
        return True


# ----------------------------------------------------------------------
# command line (python -m socs_tcp.devices simulate ...)

def make_parser(parser=None):
    parser = parser or argparse.ArgumentParser(prog="python -m socs_tcp.devices simulate",
                                               description="Serve a device file's simulator over TCP.")
    parser.add_argument("device", metavar="NAME_OR_PATH", help="shipped short name or path of a device file")
    parser.add_argument("--port", type=listen_port_argument, required=True, help="TCP port (0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="listening address (default 127.0.0.1)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the simulated noise")
    parser.add_argument("--no-noise", action="store_true", help="no noise on the values")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a param of the device file (its bus address, ...); repeat for several")
    return parser


def run(args):
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    spec = load(args.device)
    params = spec.param_values(param_assignments(args.param), texts=True)
    sim = DeviceSimulator(spec, host=args.host, port=args.port, seed=args.seed, noise=not args.no_noise,
                          params=params)
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        sim.start()
        sys.stdout.write(f"listening on {format_host_port(sim.host, sim.port)}\n")
        sys.stdout.flush()
        while not stop.wait(0.5):
            pass
    finally:
        sim.shutdown()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


def main(argv=None):
    return run(make_parser().parse_args(argv))
