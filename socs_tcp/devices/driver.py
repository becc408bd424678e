"""``Device``: the driver made from a device file.

A :class:`Device` is a :class:`~socs_tcp.TCPInterface` (so it keeps the
link's deadlines, reconnects, lock and statistics) that knows a device's
operations from its file:

* ``device.call("pressure", channel=3)`` checks the arguments (nothing is
  sent when they are bad), runs the operation's transaction under the link's
  lock, parses the reply and returns ``{field: value}``;
* ``device.pressure(channel=3)`` is the same, returning the value itself when
  the operation has one field;
* ``device.poll()`` runs every polled query once and returns the feed fields;
* ``device.transact(...)`` also returns the bytes exchanged, and
  ``device.parse(op, reply_bytes)`` parses a captured reply without any I/O.

What runs for one call, in order: wait out ``min_gap`` since the last send;
the transaction's steps (send, expect, reply, read, discard, pause), resent
from the start when an ``expect`` sees something else or nothing, at most
``attempts`` times; an error token in a reply triggers the file's recovery
(follow-up query, a command chosen by the error code, then the whole
operation again, at most ``errors.reply.attempts`` times); after a command,
the error queue is read when the file has one.  On every (re)connect the
file's ``connection.init`` steps run before anything else.  With a
``connection.checksum`` every text frame sent carries it and every frame
read is checked and stripped of it; a binary reply is checked for its
length, ``starts_with`` and checksum, and discarded and asked again (up to
``attempts``) when it fails one.  The file's ``params`` (``params=``) fill
its templates.

Failures: bad arguments raise :class:`TypeError`/:class:`ValueError`; the
link's :class:`~socs_tcp.errors.LinkError` subclasses (all
:class:`ConnectionError`) pass through; a reply of the wrong form raises
:class:`~socs_tcp.devices.errors.DeviceReplyError`; a device-reported error
raises :class:`~socs_tcp.devices.errors.DeviceError` (an interlock of the
file, :class:`~socs_tcp.devices.errors.DeviceInterlockError`).

The link underneath works in bytes (``encoding=None``): the inherited bus
operations (``query``, ``wrnrd_until``, ...) take and return ``bytes``.
Only the public :class:`~socs_tcp.TCPInterface` API and its ``_connect``
hook are used, so a subclass can add hand-written methods next to the
file's operations.
"""

import itertools
import logging
import re
import select
import time

from ..core.checks import format_host_port
from ..core.codec import format_traffic, parse_address
from ..errors import LinkTimeoutError
from ..transport.interface import TCPInterface
from . import codec
from .errors import DeviceError, DeviceInterlockError, DeviceReplyError
from .spec import DeviceSpec, Step, load

__all__ = ["Device"]

log = logging.getLogger("socs_tcp.devices")

#: After a binary reply is refused (wrong checksum, start or length), the driver
#: discards what keeps arriving until the line has been quiet this long, seconds,
#: before it sends again: the rest of a refused frame (a serial server forwards a
#: frame in pieces) must not become the start of the next reply.
SETTLE = 0.05


class _Mismatch(Exception):
    """An ``expect`` step saw something else (retry the transaction)."""

    def __init__(self, got, wanted):
        super().__init__(f"expected {wanted!r}, got {got!r}")
        self.got = got


class _BadChecksum(DeviceReplyError):
    """A text frame whose checksum is missing or wrong (the request may be sent again)."""


class _ErrorToken(Exception):
    """A reply was the device's error token."""

    def __init__(self, frame):
        super().__init__(frame)
        self.frame = frame


class Device(TCPInterface):
    """The driver of one device, made from its device file.

    Args:
        spec (DeviceSpec or str or path): the device file (loaded if not a spec).
        ip_address (str): host of the device.
        port (int or None): TCP port; default ``connection.port`` of the file.
        timeout (float or None): default deadline; default ``connection.timeout``.
        **tcp_kwargs: any other :class:`~socs_tcp.TCPInterface` keyword
            (``connect=False``, ``reconnect_policy``, ``name``, ...).
    """

    def __init__(self, spec, ip_address, port=None, timeout=None, *, params=None, **tcp_kwargs):
        if not isinstance(spec, DeviceSpec):
            spec = load(spec)
        self.spec = spec
        conn = spec.connection
        values = spec.param_values(params)
        #: the device's params as used in templates: {name: (ArgSpec, value)}
        self._params = {p.name: (p, values[p.name]) for p in spec.params}
        self._param_wire = {p.name: p.wire(values[p.name]) for p in spec.params}
        self._enc = conn.encoding
        self._text = conn.protocol == "text"
        self._last_send = None
        self._in_init = False
        self._tid = itertools.count(1)
        self._exchanges = None
        self._stale = conn.stale_input
        self._fast_ops = {}
        self._poll_plan = None
        self._term_regexes = {}
        self._in_terms = ()
        self._prompt = b""
        self._checksum = conn.checksum if self._text else None
        if self._text:
            self._out_term = conn.out_terminator.encode(self._enc)
            self._in_terms = tuple(t.encode(self._enc) for t in conn.in_terminator)
            self._forbidden = "".join(sorted(set(conn.out_terminator + "".join(conn.in_terminator))))
            self._prompt = conn.prompt.encode(self._enc) if conn.prompt else b""
        kwargs = dict(
            encoding=None,
            read_termination=list(self._in_terms) if self._text else None,
            write_termination=None,
            drain_before_query=conn.stale_input in ("drain", "close"),
            close_on_timeout=conn.stale_input == "close",
            connect_timeout=conn.connect_timeout if conn.connect_timeout is not None else (
                timeout if timeout is not None else conn.timeout),
            name=None,
        )
        kwargs.update(tcp_kwargs)
        super().__init__(ip_address, conn.port if port is None else port,
                         conn.timeout if timeout is None else timeout, **kwargs)

    @classmethod
    def from_file(cls, path_or_name, address=None, *, port=None, **tcp_kwargs):
        """A driver for the device file ``path_or_name`` at ``address``.

        ``address`` is ``host:port`` or a bare host (the port is then
        ``port`` or the file's ``connection.port``).  ``params={"address":
        94}`` sets the file's ``params`` (checked like arguments; the file's
        defaults otherwise); other keywords go to :class:`~socs_tcp.TCPInterface`.
        """
        spec = path_or_name if isinstance(path_or_name, DeviceSpec) else load(path_or_name)
        if address is None:
            raise ValueError(f"{spec.name}: an address is needed (host or host:port)")
        if not isinstance(address, str):
            raise TypeError(f"address must be a str (host or host:port), got {type(address).__name__}: {address!r}")
        host = address
        parsed = parse_address(address) if ":" in address.strip("[]") or address.startswith("[") else None
        if parsed is not None:
            host = parsed["host"]
            if port is None:
                port = parsed["port"]
        return cls(spec, host, port, **tcp_kwargs)

    def __repr__(self):
        state = "connected" if self.comm is not None else "disconnected"
        return f"<Device {self.spec.name} {self.name} {state}>"

    # ------------------------------------------------------------------
    # operations as methods
    def __getattr__(self, name):
        spec = self.__dict__.get("spec")
        if spec is not None and name in spec.operations:
            op = spec.operations[name]

            def method(**kwargs):
                values = self.call(name, **kwargs)
                if len(op.fields) == 1:
                    return values[op.fields[0].name]
                return values
            method.__name__ = name
            method.__doc__ = op.description
            return method
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.spec.operations))

    def operation(self, name):
        """The :class:`~socs_tcp.devices.spec.OperationSpec` called ``name``."""
        try:
            return self.spec.operations[name]
        except KeyError:
            raise ValueError(f"{self.spec.name} has no operation {name!r} (operations: "
                             f"{', '.join(self.spec.operations)})") from None

    def call(self, op_name, **args):
        """Run one operation; return ``{field: value}`` (``{}`` for a command)."""
        return self.transact(op_name, **args)[0]

    def transact(self, op_name, **args):
        """Like :meth:`call`, returning ``(values, exchanges)``: the list of
        ``(sent bytes, received bytes)`` pairs of this call.

        When the call fails, the exception carries the same list as its
        ``exchanges`` attribute (what was sent and received up to the failure).
        """
        op = self.operation(op_name)
        checked = op.check_args(**args)
        request = self._build(op, checked)      # raises before anything is sent
        return self._transact(op, checked, request)

    def _transact(self, op, checked, request, record=True):
        stale = self._stale
        with self.lock:
            self._exchanges = exchanges = [] if record else None
            try:
                if stale != "keep" and self.comm is not None and not self._fast(op):
                    self.drain()
                if op.guard is not None:
                    self._check_guard(op, checked)
                values = self._run_op(op, checked, request)
                return values, ([tuple(e) for e in exchanges] if record else None)
            except LinkTimeoutError as e:
                if stale == "close" and self.comm is not None:
                    log.warning("%s: %s: no reply before the deadline: closing so that a late reply cannot answer "
                                "a later call (stale_input: close)", self.name, op.name)
                    self.disconnect()
                e.exchanges = [tuple(x) for x in exchanges or ()]
                raise
            except (ConnectionError, DeviceError, DeviceReplyError) as e:
                e.exchanges = [tuple(x) for x in exchanges or ()]
                raise
            finally:
                self._exchanges = None

    def poll(self):
        """One pass over the file's polling items: ``{feed field: value}``."""
        plan = self._poll_plan
        if plan is None:
            plan = self._poll_plan = self._make_poll_plan()
        out = {}
        for op, checked, request, direct, scalars, arrays in plan:
            if direct is not None:
                # a plain query: one write-and-read of the link (which drains stale input and, for
                # stale_input: close, closes on a timeout itself), then the parse
                frame = self.wrnrd_until(direct, self._in_terms[0], timeout=op.timeout)
                try:
                    text = frame.decode(self._enc)
                except UnicodeDecodeError:
                    raise DeviceReplyError(op.name, frame, f"not {self._enc} text") from None
                values = codec.parse_text(op, text, frame)
            else:
                values = self._transact(op, checked, request, record=False)[0]
            for src, name in scalars:
                value = values.get(src)
                if value is not None:
                    out[name] = value
            for src, names in arrays:
                for name, value in zip(names, values.get(src) or ()):
                    if value is not None:
                        out[name] = value
        return out

    def _make_poll_plan(self):
        """Per polling item: the operation, its checked arguments, the request
        bytes (the same every cycle) and where each field is published."""
        polling = self.spec.polling
        if polling is None:
            raise ValueError(f"{self.spec.name} has no 'polling' section")
        plan = []
        for item in polling.items:
            op = self.spec.operations[item.operation]
            checked = op.check_args(**item.args)
            by_name = {f.name: f for f in op.fields}
            scalars, arrays = [], []
            for src, template in item.fields.items():
                f = by_name[src]
                if f.array is None:
                    scalars.append((src, template))
                else:
                    labels = f.array.labels or [str(i + 1) for i in range(f.array.size)]
                    arrays.append((src, [template.format(n=i + 1, i=i, label=labels[i]) for i in range(f.array.size)]))
            request = self._build(op, checked)
            queue = self.spec.error_queue
            direct = None
            if (self._fast(op) and self.spec.reply_error is None and not self._prompt
                    and not self.spec.connection.min_gap and self._stale != "keep"
                    and (queue is None or not (op.check_errors or (op.check_errors is None and queue.after == "all")))):
                direct = request + self._out_term
            plan.append((op, checked, request, direct, scalars, arrays))
        return plan

    def parse(self, op_name, reply):
        """Parse one captured reply of ``op_name`` (bytes, terminator optional); no I/O."""
        op = self.operation(op_name)
        if not isinstance(reply, (bytes, bytearray)):
            raise TypeError(f"reply must be bytes, got {type(reply).__name__}: {reply!r}")
        reply = bytes(reply)
        protocol = self.spec.connection.protocol
        if op.reply is None and protocol != "modbus":
            return {}
        if protocol == "text":
            frame = reply
            for term in sorted(self._in_terms + (b"\r", b"\n"), key=len, reverse=True):
                if frame.endswith(term):
                    frame = frame[:-len(term)]
                    break
            if self._checksum is not None:
                frame = codec.unseal_text(op.name, self._checksum, frame, self._enc)
            return codec.parse_text(op, self._decode_frame(op, frame), frame)
        if protocol == "binary":
            r = op.reply
            if r.error is not None and reply.startswith(r.error.starts_with) and len(reply) == r.error.length:
                raise codec.error_reply(op.name, r, reply)
            if r.length is not None:
                want = r.length
            elif len(reply) < r.length_field.header:
                raise DeviceReplyError(op.name, reply, f"{len(reply)} bytes, shorter than the length field "
                                                       f"(bytes {r.length_field.byte}..{r.length_field.header - 1})")
            else:
                want = codec.binary_reply_length(op.name, r, reply)
            if len(reply) != want:
                raise DeviceReplyError(op.name, reply, f"{len(reply)} bytes, expected {want}")
            return codec.decode_binary_reply(op.name, r, reply)
        if op.modbus.function == 6:
            return {}  # a write is answered by its echo: nothing to parse
        return codec.parse_modbus(op, None, reply, self.spec.connection.unit)

    # ------------------------------------------------------------------
    # connect-time init (the SOCS ``_connect`` hook: runs on the new socket
    # before the link uses it, so every reconnect runs it too)
    def _connect(self, address):
        sock = super()._connect(address)
        if sock is None or not self.spec.connection.init:
            return sock
        traffic = [] if self._recorder is not None else None
        try:
            self._run_init(sock, traffic)
        except (OSError, _Mismatch) as e:
            reason = f"init sequence failed: {e}"
            try:
                sock.close()
            except OSError:
                pass
            log.warning("%s: %s", self.name, reason)
            self._last_connect_error = reason
            return None
        if traffic is not None:
            # in-process recording: the connect, then the init traffic, in order
            self._recorder.on_connect(format_host_port(self.ip_address, self.port))
            for direction, data in traffic:
                (self._recorder.on_send if direction == "out" else self._recorder.on_recv)(data)
            self._connect_recorded = True
        return sock

    def _run_init(self, sock, traffic=None):
        """The ``connection.init`` steps on a fresh socket.  Input left after
        them is dropped (the link starts with an empty buffer).  With a list
        as ``traffic``, every chunk sent and received is appended to it as
        ``("out" | "in", bytes)``, for the recorder."""
        enc = self._enc
        pending = bytearray()
        for step in self.spec.connection.init:
            timeout = step.timeout if step.timeout is not None else (self.timeout or 10.0)
            if step.action == "send":
                term = self._out_term if step.terminator is None else b"".join(
                    x.encode(enc) for x in step.terminator[:1])
                raw = self._with_params(step.value).encode(enc)
                raw = (self._seal(raw) if step.terminator != [] else raw) + term
                sock.settimeout(timeout)
                sock.sendall(raw)
                if traffic is not None:
                    traffic.append(("out", raw))
                log.debug("%s: init > %s", self.name, format_traffic(raw))
            elif step.action == "pause":
                time.sleep(step.value)
            elif step.action == "discard":
                pending.clear()
                deadline = time.monotonic() + step.value
                dropped = 0
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                        break
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("the device closed the connection during init")
                    if traffic is not None:
                        traffic.append(("in", chunk))
                    dropped += len(chunk)
                if dropped:
                    log.info("%s: init discarded %d bytes", self.name, dropped)
            else:  # read / expect: one frame
                terms = self._in_terms if step.terminator is None else tuple(x.encode(enc) for x in step.terminator)
                deadline = time.monotonic() + timeout
                while True:
                    found = [(pending.find(x), x) for x in terms if pending.find(x) >= 0]
                    if found:
                        at, term = min(found, key=lambda p: (p[0], -len(p[1])))
                        frame = bytes(pending[:at])
                        del pending[:at + len(term)]
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                        raise TimeoutError(f"no reply to the init step on line {step.line} within {timeout} s")
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("the device closed the connection during init")
                    if traffic is not None:
                        traffic.append(("in", chunk))
                    pending += chunk
                frame = self._unseal("connection.init", frame)
                want = self._with_params(step.value or "").encode(enc)
                if step.action == "expect" and frame.strip() != want.strip():
                    raise _Mismatch(frame, want)
        sock.settimeout(self.timeout)

    # ------------------------------------------------------------------
    # building requests (before the lock: bad input never sends)
    def _build(self, op, args):
        protocol = self.spec.connection.protocol
        if protocol == "text":
            return codec.format_request(op, args, self._forbidden, self._params).encode(self._enc)
        if protocol == "binary":
            return codec.encode_binary(op, args)
        codec.modbus_request(op, args, 0, self.spec.connection.unit)  # checks the value
        return args

    # ------------------------------------------------------------------
    # running one operation (the caller holds the lock)
    def _check_guard(self, op, args):
        """Run the file's interlock checks for ``op``; raise before anything of ``op`` is sent."""
        guard = op.guard
        if guard.skip_if is not None and args.get(guard.skip_if):
            return
        for check in guard.checks:
            if any(args.get(k) != v for k, v in check.when.items()):
                continue
            query = self.spec.operations[check.query]
            values = self._run_op(query, check.args, self._build(query, check.args))
            value = values.get(check.field)
            if value is None or not check.allows(value):
                raise DeviceInterlockError(op.name, f"{check.message} ({check.query} gave {check.field}={value!r})")

    def _run_op(self, op, args, request):
        protocol = self.spec.connection.protocol
        if protocol == "binary":
            return self._binary(op, request)
        if protocol == "modbus":
            return self._modbus(op, args)
        rerr = self.spec.reply_error
        tries = rerr.attempts if rerr is not None else 1
        for attempt in range(1, tries + 1):
            try:
                values = self._text_op(op, request)
                break
            except _ErrorToken as e:
                code, message, recovered = self._recover(op, e.frame)
                if attempt >= tries or not recovered:
                    raise DeviceError(op.name, code, message
                                      + (f" (after {attempt} attempts)" if attempt > 1 else "")) from None
                log.warning("%s: %s answered with an error (%s %s); retrying (%d of %d)", self.name, op.name, code,
                            message, attempt + 1, tries)
        queue = self.spec.error_queue
        if queue is not None:
            check = op.check_errors
            if check is None:
                check = op.kind == "command" or queue.after == "all"
            if check:
                self._check_queue(op)
        return values

    def _fast(self, op):
        """Whether ``op`` is one send and one reply up to the one in-terminator:
        then it runs as a single link operation (which also drains stale input)."""
        fast = self._fast_ops.get(op.name)
        if fast is None:
            fast = self._fast_ops[op.name] = (self._text and op.transaction is None and op.reply is not None
                                              and op.guard is None and len(self._in_terms) == 1
                                              and self._checksum is None)
        return fast

    def _exchange(self, raw, timeout):
        """Send ``raw`` and read one frame up to the in-terminator, as one link operation."""
        self._gap_wait()
        term = self._in_terms[0]
        frame = self.wrnrd_until(raw, term, timeout=timeout)
        self._last_send = time.monotonic()
        if self._exchanges is not None:
            self._exchanges.append([raw, frame + term])
        frame = self._unprompt(frame)
        self._check_token(frame, term)
        return frame

    def _text_op(self, op, request):
        t = op.transaction
        if self._fast(op):
            frame = self._exchange(request + self._out_term, op.timeout)
            return codec.parse_text(op, self._decode_frame(op, frame), frame)
        if t is None:
            steps = [Step("send", "{request}")]
            if op.reply is not None:
                steps.append(Step("reply"))
            attempts = op.attempts
        else:
            steps, attempts = t.steps, max(t.attempts, op.attempts)
        last = None
        for attempt in range(1, attempts + 1):
            frame = None
            try:
                for step in steps:
                    got = self._step(op, step, request, op.timeout)
                    if step.action == "reply":
                        frame = got
                break
            except (_Mismatch, _BadChecksum) as e:
                last = e
                self._drain_quiet(f"{op.name}: {e}")
            except LinkTimeoutError as e:
                if attempt >= attempts or not any(s.action == "expect" for s in steps):
                    raise
                last = e
            if attempt < attempts:
                log.warning("%s: %s: %s; sending again (%d of %d)", self.name, op.name,
                            last.reason if isinstance(last, DeviceReplyError) else last, attempt + 1, attempts)
        else:
            if isinstance(last, LinkTimeoutError):
                raise last
            if isinstance(last, _BadChecksum):
                raise DeviceReplyError(op.name, last.reply, last.reason + _after(attempts))
            raise DeviceReplyError(op.name, last.got, f"{last}" + _after(attempts))
        if op.reply is None:
            return {}
        return codec.parse_text(op, self._decode_frame(op, frame), frame)

    def _decode_frame(self, op, frame):
        try:
            return frame.decode(self._enc)
        except UnicodeDecodeError:
            raise DeviceReplyError(op.name, frame, f"not {self._enc} text") from None

    def _step(self, op, step, request, timeout, init=False):
        """Run one step; return the frame read (bytes) for expect/reply/read."""
        a = step.action
        if a == "send":
            data = step.value
            if data == "{request}":
                raw = request
            elif "{" in data:
                raw = data.format(request=request.decode(self._enc) if request is not None else "",
                                  **self._param_wire).encode(self._enc)
            else:
                raw = data.encode(self._enc)
            term = self._out_term if step.terminator is None else b"".join(
                t.encode(self._enc) for t in step.terminator[:1])
            if step.terminator != []:
                raw = self._seal(raw)
            self._send(raw + term, timeout if step.timeout is None else step.timeout)
            return None
        if a == "pause":
            time.sleep(step.value)
            return None
        if a == "discard":
            self._drain_quiet(None, wait=step.value)
            return None
        terms = self._in_terms if step.terminator is None else tuple(t.encode(self._enc) for t in step.terminator)
        frame, term = self._read_frame(terms, timeout if step.timeout is None else step.timeout, op)
        if not init:
            self._check_token(frame, term)
        if a == "expect":
            got = frame.strip() if self.spec.connection.strip else frame
            want = self._with_params(step.value).encode(self._enc)
            if got != (want.strip() if self.spec.connection.strip else want):
                raise _Mismatch(got, want)
        return frame

    def _check_token(self, frame, term):
        """Raise _ErrorToken when ``frame`` (ended by ``term``) is the file's error token."""
        rerr = self.spec.reply_error
        if rerr is None:
            return
        if rerr.terminator is not None and term == rerr.terminator.encode(self._enc):
            raise _ErrorToken(frame)
        if rerr.match is not None and rerr.match.search(frame.decode(self._enc, "replace").strip()):
            raise _ErrorToken(frame)

    def _unprompt(self, frame):
        if self._prompt:
            while frame.lstrip(b"\r\n").startswith(self._prompt):
                frame = frame.lstrip(b"\r\n")[len(self._prompt):]
        return frame

    def _gap_wait(self):
        gap = self.spec.connection.min_gap
        if gap and self._last_send is not None:
            wait = self._last_send + gap - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def _send(self, raw, timeout):
        self._gap_wait()
        self.send(raw)
        self._last_send = time.monotonic()
        if self._exchanges is not None:
            self._exchanges.append([raw, b""])

    def _term_regex(self, terms):
        regex = self._term_regexes.get(terms)
        if regex is None:
            regex = re.compile(b"|".join(re.escape(x) for x in sorted(terms, key=len, reverse=True)))
            self._term_regexes[terms] = regex
        return regex

    def _with_params(self, template):
        """A step's text with the device's params filled in."""
        return template.format(**self._param_wire) if "{" in template else template

    def _seal(self, raw):
        """A text frame to send, with the file's checksum appended (if it has one)."""
        return codec.seal_text(self._checksum, raw, self._enc) if self._checksum is not None else raw

    def _unseal(self, op_name, frame):
        """A text frame read, its checksum checked and removed (if the file has one)."""
        if self._checksum is None:
            return frame
        try:
            return codec.unseal_text(op_name, self._checksum, frame, self._enc)
        except DeviceReplyError as e:
            raise _BadChecksum(op_name, e.reply, e.reason) from None

    def _read_frame(self, terms, timeout, op=None):
        """One frame up to the first of ``terms``: ``(frame, terminator)``, its
        prompt and checksum removed."""
        if len(terms) == 1:
            # the common case: the link's own terminator search (no regex)
            frame, found = self.read_until(terms[0], timeout=timeout), terms[0]
            self._note_received(frame + found)
        else:
            data = self.expect(self._term_regex(terms), timeout=timeout)
            self._note_received(data)
            frame, found = data, b""
            for term in sorted(terms, key=len, reverse=True):
                if data.endswith(term):
                    frame, found = data[:-len(term)], term
                    break
        return self._unseal(op.name if op is not None else "?", self._unprompt(frame)), found

    def _drain_quiet(self, reason, wait=0.0):
        """Discard input, waiting up to ``wait`` seconds for more to arrive."""
        dropped = self._discard_until(time.monotonic() + wait)
        if dropped and reason:
            log.info("%s: discarded %d bytes (%s)", self.name, len(dropped), reason)

    def _discard_until(self, deadline, quiet=None):
        """Discard what has arrived and what arrives until ``deadline`` (monotonic
        seconds), or until nothing has arrived for ``quiet`` seconds; returns it.
        Waits on the socket itself, so an empty wait is not a failed read."""
        got = self.drain()
        while self.comm is not None:
            remaining = deadline - time.monotonic()
            if quiet is not None:
                remaining = min(remaining, quiet)
            if remaining <= 0:
                break
            try:
                if not select.select([self.comm], [], [], remaining)[0]:
                    break
            except (OSError, ValueError):
                break
            chunk = self.drain()
            if not chunk:
                break                          # closed by the peer: the next send reconnects
            got += chunk
        return got

    def _note_received(self, data):
        if self._exchanges is not None:
            if not self._exchanges:
                self._exchanges.append([b"", b""])
            self._exchanges[-1][1] += data

    def _recover(self, op, frame):
        """After an error token: ask why, recover if the code says how. Returns (code, message)."""
        rerr = self.spec.reply_error
        code, message = "?", frame.decode(self._enc, "replace").strip() or "error token"
        if not rerr.query:
            # no follow-up query: the error reply itself may carry the code
            if rerr.parse is not None:
                m = rerr.parse.search(message)
                if m is not None:
                    code, message = _code(m.group("code")), (m.groupdict().get("message") or "").strip()
            return code, message, False
        if rerr.query:
            self._drain_quiet("before the error query")
            self._send(self._seal(rerr.query.encode(self._enc)) + self._out_term, op.timeout)
            try:
                reply, _ = self._read_frame(self._in_terms, op.timeout, op)
            except LinkTimeoutError:
                return code, f"{message} (no answer to {rerr.query!r})", False
            text = reply.decode(self._enc, "replace").strip()
            m = rerr.parse.search(text)
            if m is None:
                return code, f"error token; {rerr.query!r} answered {text!r}", False
            code = _code(m.group("code"))
            message = (m.groupdict().get("message") or "").strip()
            command = (rerr.recover or {}).get(str(code))
            if command is not None:
                log.warning("%s: %s: device error %s %s; sending %r", self.name, op.name, code, message, command)
                self._send(self._seal(command.encode(self._enc)) + self._out_term, op.timeout)
                ct = self.spec.connection.command_transaction
                if ct is not None and any(s.action == "expect" for s in ct.steps):
                    try:
                        self._read_frame(self._in_terms, op.timeout, op)
                    except LinkTimeoutError:
                        pass
                return code, message, True
        return code, message, False

    def _check_queue(self, op):
        queue = self.spec.error_queue
        first = None
        for _ in range(32):
            raw = self._seal(queue.query.encode(self._enc)) + self._out_term
            if len(self._in_terms) == 1 and self._checksum is None:
                reply = self._exchange(raw, op.timeout)
            else:
                self._send(raw, op.timeout)
                reply, _ = self._read_frame(self._in_terms, op.timeout, op)
            text = reply.decode(self._enc, "replace").strip()
            m = queue.parse.search(text)
            if m is None:
                raise DeviceReplyError(op.name, reply, f"error queue reply does not match {queue.parse.pattern!r}")
            code = m.group("code")
            if str(_code(code)) in queue.ok or code in queue.ok:
                break
            if first is None:
                first = (_code(code), (m.groupdict().get("message") or "").strip())
        if first is not None:
            raise DeviceError(op.name, *first)

    # ------------------------------------------------------------------
    # binary
    def _binary(self, op, request):
        """Send a binary request and read its reply.  A reply that is short, too
        long, of an impossible length, with a wrong checksum or not starting
        with ``starts_with`` is discarded (with whatever else arrived) and the
        request sent again, up to ``attempts`` times; then
        :class:`DeviceReplyError`.  No reply at all is the link's timeout error."""
        reply = op.reply
        attempts = op.attempts
        for attempt in range(1, attempts + 1):
            self._send(request, op.timeout)
            if reply is None:
                return {}
            try:
                try:
                    data = self._read_binary(op)
                except LinkTimeoutError:
                    if attempt >= attempts:
                        raise
                    # a serial device stays silent after a frame it could not read: ask again
                    log.warning("%s: %s: no reply; sending again (%d of %d)", self.name, op.name, attempt + 1,
                                attempts)
                    continue
                extra = self.drain()
                if extra:
                    self._note_received(extra)
                    raise DeviceReplyError(op.name, data + extra, f"{len(data) + len(extra)} bytes, expected "
                                                                  f"{len(data)}")
                codec.check_frame(op.name, reply, data)
            except DeviceReplyError as e:
                late = self._settle(op)
                if attempt >= attempts:
                    raise DeviceReplyError(op.name, e.reply + late, e.reason + _after(attempts)) from None
                log.warning("%s: %s: reply discarded (%s): %s; sending again (%d of %d)", self.name, op.name,
                            e.reason, format_traffic(e.reply + late, 64), attempt + 1, attempts)
                continue
            return codec.decode_binary_reply(op.name, reply, data, check=False)
        raise AssertionError("unreachable")

    def _settle(self, op):
        """After a refused frame: discard the rest of it as it arrives, until the
        line has been quiet for :data:`SETTLE` seconds (at most the operation's
        timeout), so that the next attempt starts on a clean frame.  Returns what
        was discarded."""
        timeout = op.timeout if op.timeout is not None else (self.timeout or 10.0)
        got = self._discard_until(time.monotonic() + timeout, quiet=SETTLE)
        self._note_received(got)
        return got

    def _read_binary(self, op):
        """One whole reply frame: a fixed length, or a header whose length field
        gives the rest.  A frame that does not start with ``starts_with`` is
        refused as soon as those bytes are in (an error reply need not wait out
        the timeout).  Whatever was read of a frame that cannot be completed is
        drained and raised as :class:`DeviceReplyError` with its bytes; a
        timeout with nothing at all received is the link's timeout error."""
        reply = op.reply
        timeout = op.timeout if op.timeout is not None else (self.timeout or 10.0)
        deadline = time.monotonic() + timeout
        prefix = reply.starts_with
        fixed = reply.length
        head = fixed if fixed is not None else reply.length_field.header
        want = fixed if fixed is not None else f"at least {head}"
        data = b""

        def more(n):
            nonlocal data
            if n > 0:
                data += self.read_bytes(n, timeout=max(0.0, deadline - time.monotonic()))

        error = reply.error
        try:
            first = min(head, len(prefix)) if prefix is not None else head
            if error is not None:
                first = max(first, len(error.starts_with))
            more(first)
            if error is not None and data.startswith(error.starts_with):
                more(error.length - len(data))
                self._note_received(data)
                raise codec.error_reply(op.name, reply, data)
            if prefix is not None and not codec.starts_right(reply, data):
                rest = self.drain()
                self._note_received(data + rest)
                raise DeviceReplyError(op.name, data + rest, f"starts with {data.hex(' ')}, expected "
                                                             f"{reply.starts_text()}")
            more(head - len(data))
            if fixed is None:
                try:
                    want = codec.binary_reply_length(op.name, reply, data)
                except DeviceReplyError as e:
                    rest = self.drain()
                    self._note_received(data + rest)
                    raise DeviceReplyError(op.name, data + rest, e.reason) from None
            more(want - len(data))
        except LinkTimeoutError:
            partial = data + self.drain()
            self._note_received(partial)
            if not partial:
                raise
            raise DeviceReplyError(op.name, partial, f"{len(partial)} bytes, expected {want}") from None
        self._note_received(data)
        return data

    # ------------------------------------------------------------------
    # Modbus TCP
    def _modbus(self, op, args):
        conn = self.spec.connection
        tid = conn.transaction_id if conn.transaction_id != "increment" else next(self._tid) & 0xFFFF
        request = codec.modbus_request(op, args, tid, conn.unit)
        self._send(request, op.timeout)
        deadline = time.monotonic() + (op.timeout if op.timeout is not None else (self.timeout or 10.0))
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            header = self.read_bytes(7, timeout=remaining)
            length = codec.modbus_frame_length(header)
            if length < 8 or length > 260:
                self._note_received(header)
                rest = self.drain()
                raise DeviceReplyError(op.name, header + rest, f"MBAP length field {length - 6} is not a Modbus frame")
            body = self.read_bytes(length - 7, timeout=max(0.0, deadline - time.monotonic()))
            frame = header + body
            self._note_received(frame)
            got = int.from_bytes(frame[:2], "big")
            if got == tid:
                return codec.parse_modbus(op, request, frame, conn.unit)
            log.warning("%s: %s: discarded a reply with transaction id %#06x (sent %#06x): %s", self.name, op.name,
                        got, tid, format_traffic(frame, 64))


def _after(attempts):
    """`` (after N attempts)`` when the request was sent more than once."""
    return f" (after {attempts} attempts)" if attempts > 1 else ""


def _code(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return text
