"""Serve a recording as a device.

:class:`ReplayServer` listens like a device and answers a client with the
bytes a recording (:mod:`socs_tcp.testing.recording`) holds.  It is a
:class:`~socs_tcp.testing.DeviceEmulator`, so the emulator's faults
(:meth:`~DeviceEmulator.set_delay`, :meth:`~DeviceEmulator.split_replies`,
:meth:`~DeviceEmulator.merge_replies`, :meth:`~DeviceEmulator.slow_drip`,
:meth:`~DeviceEmulator.go_silent`, :meth:`~DeviceEmulator.drop_after`,
:meth:`~DeviceEmulator.drop_connections`,
:meth:`~DeviceEmulator.refuse_connections`,
:meth:`~DeviceEmulator.send_garbage`, :meth:`~DeviceEmulator.flood`,
:meth:`~DeviceEmulator.restart`) work on replayed traffic too;
``responses``/``define_responses`` do not apply.

How a recording becomes a script:

* Each recorded connection is a *session*; the n-th connection a client
  makes gets the n-th session.  A session is a list of *steps*: a request
  (the client bytes recorded before the device's next bytes, joined) and its
  actions (each device chunk with its recorded delay, and a close if the
  device closed there).  Device bytes recorded before any request (a banner)
  are sent as soon as the client connects.
* ``match='strict'``: the client's bytes must be the session's requests in
  recorded order; identical polled queries thus get their successive
  recorded answers.  Chunking does not matter: bytes are matched as a
  stream, so a request may arrive split or merged with the next.
* ``match='queues'``: each distinct request has its own queue of recorded
  answers, served in recorded order whatever order the client asks in and
  whatever connection it uses (sessions then only give banners).  With
  ``context=N`` a request's queue can depend on the N requests before it
  on the connection (a mnemonic then ENQ: the ENQ's answer belongs to the
  mnemonic).
* ``timing='recorded'`` waits the recorded delays, ``'fast'`` sends at once
  (chunks still go out one by one), a number scales the delays (``0.1`` is
  ten times faster).
* ``at_end='close'``: when a session (in ``'queues'`` mode: a request's
  queue) has no answer left and the client sends more, or (``'strict'``
  mode) when a client connects after the last session, the connection is
  closed (logged, counted in ``exhausted``).  ``'loop'``: the session's
  steps (and the sessions) start again from the first.
* Recorded device closes are replayed as closes (so the client reconnects,
  getting the next session); closes by the client or by the recording proxy
  are not actions.

An unexpected request (bytes that are not the next recorded request, or in
``'queues'`` mode no recorded request) is always reported: a WARNING log
with the bytes, :attr:`ReplayServer.unexpected` (a list of
``(session, bytes)``) and :meth:`ReplayServer.summary`.  What the client gets
is ``on_unexpected``:

* ``'close'`` (default): the connection is closed at once, so the client
  sees a clear end of stream instead of waiting for a timeout;
* ``'ignore'``: the bytes are discarded and nothing is sent (the client
  times out);
* ``'reply'``: ``error_reply`` (bytes or str) is sent, the bytes are
  discarded, and the session stays at the same step.

The extent of an unexpected request is one line when the recorded requests
all end with the same ``\\n`` or ``\\r`` (or with ``request_end``, if
given), else whatever has been received.
"""

import logging
import threading

from ..core.checks import check_host, check_port
from ..core.codec import format_traffic
from .emulator import DeviceEmulator
from .proxy import linger_close
from .recording import Recording, read_recording

__all__ = ["ReplayServer", "Session", "Step", "build_sessions", "replay_fixture"]

log = logging.getLogger("socs_tcp.testing")

_MODES = ("strict", "queues")
_ENDS = ("close", "loop")
_UNEXPECTED = ("close", "ignore", "reply")
_CLOSE = None  # an action's payload meaning "close the connection"


class Step:
    """One request and what the device did after it: ``actions`` is a list of
    ``(delay, bytes)`` and ``(delay, None)`` for a close."""

    __slots__ = ("request", "actions")

    def __init__(self, request=b""):
        self.request = bytearray(request)
        self.actions = []

    def __repr__(self):
        return f"Step({bytes(self.request)!r}, {self.actions!r})"


class Session:
    """One recorded connection: ``conn`` id, ``steps`` and ``closed_by``."""

    __slots__ = ("conn", "steps", "closed_by", "_last_t")

    def __init__(self, conn, t):
        self.conn = conn
        self.steps = []
        self.closed_by = None
        self._last_t = t

    @property
    def banner(self):
        """The actions sent on connect (device bytes before any request)."""
        return self.steps[0].actions if self.steps and not self.steps[0].request else []

    @property
    def requests(self):
        """The steps that start with a request."""
        return [s for s in self.steps if s.request]

    def __repr__(self):
        return f"Session(conn={self.conn}, {len(self.steps)} steps, closed_by={self.closed_by})"


def build_sessions(recording):
    """Turn a :class:`~socs_tcp.testing.recording.Recording` into the list of
    :class:`Session` in order of first appearance."""
    sessions = {}
    for ev in recording.events:
        if ev.conn is None:
            continue
        session = sessions.get(ev.conn)
        if session is None:
            session = sessions[ev.conn] = Session(ev.conn, ev.t)
        if session.closed_by is not None:
            continue  # nothing after a close belongs to the session
        delay = max(0.0, ev.t - session._last_t)
        if ev.kind == "connect":
            session._last_t = ev.t
        elif ev.kind == "data" and ev.dir == "out":
            if not session.steps or session.steps[-1].actions:
                session.steps.append(Step())
            session.steps[-1].request += ev.data
            session._last_t = ev.t
        elif ev.kind == "data":
            if not session.steps:
                session.steps.append(Step())
            session.steps[-1].actions.append((delay, ev.data))
            session._last_t = ev.t
        elif ev.kind == "close":
            session.closed_by = ev.by
            if ev.by == "device":
                if not session.steps:
                    session.steps.append(Step())
                session.steps[-1].actions.append((delay, _CLOSE))
    for session in sessions.values():
        for step in session.steps:
            step.request = bytes(step.request)
    return list(sessions.values())


def _common_end(sessions):
    ends = {s.request[-1:] for session in sessions for s in session.steps if s.request}
    if len(ends) == 1:
        (end,) = ends
        if end in (b"\n", b"\r"):
            return end
    return None


class _Queues:
    """The per-request answer queues of ``match='queues'``: one queue per
    request, and with ``context=N`` also one per request *after* each run of
    up to N previous requests of the same connection (the more specific
    queue is used when it exists)."""

    def __init__(self, sessions, context=0):
        self.context = context
        self.answers = {}
        self.requests = set()
        for session in sessions:
            before = []
            for step in session.steps:
                if not step.request:
                    continue
                self.requests.add(step.request)
                for n in range(min(context, len(before)) + 1):
                    key = (tuple(before[len(before) - n:]) if n else ()) + (step.request,)
                    self.answers.setdefault(key, []).append(step.actions)
                if len(before) < context:
                    key = (None,) + tuple(before) + (step.request,)  # at the start of a connection
                    self.answers.setdefault(key, []).append(step.actions)
                before.append(step.request)
                if len(before) > context:
                    del before[0]
        self.next = dict.fromkeys(self.answers, 0)
        self.lock = threading.Lock()

    def match(self, data, before, loop):
        """``('match', request, actions)``, ``('wait',)``, ``('exhausted', request)`` or ``('unexpected',)``.
        ``before``: this connection's previous requests (newest last)."""
        with self.lock:
            best = None
            for request in self.requests:
                if data.startswith(request) and (best is None or len(request) > len(best)):
                    best = request
            if best is not None:
                keys = []
                if len(before) < self.context:
                    keys.append((None,) + tuple(before) + (best,))
                for n in range(min(self.context, len(before)), -1, -1):
                    keys.append((tuple(before[len(before) - n:]) if n else ()) + (best,))
                key = next(k for k in keys if k in self.answers)
                index = self.next[key]
                if index >= len(self.answers[key]):
                    if not loop:
                        return ("exhausted", best)
                    index = 0
                self.next[key] = index + 1
                return ("match", best, self.answers[key][index])
            if any(request.startswith(data) for request in self.requests):
                return ("wait",)
            return ("unexpected",)


class ReplayServer(DeviceEmulator):
    """A device that answers with a recording.

    Args:
        recording: a recording file path or a
            :class:`~socs_tcp.testing.recording.Recording`.
        match (str): ``'strict'`` or ``'queues'``.
        timing: ``'recorded'``, ``'fast'`` or a scale factor (number >= 0).
        at_end (str): ``'close'`` or ``'loop'``.
        on_unexpected (str): ``'close'``, ``'ignore'`` or ``'reply'``.
        error_reply (bytes or str): what ``on_unexpected='reply'`` sends
            (a str is encoded as UTF-8; escapes are not interpreted here).
        request_end (bytes or str or None): the byte(s) that end a request,
            for sizing unexpected requests; by default ``\\n`` or ``\\r`` when
            every recorded request ends with it.
        context (int): with ``match='queues'``, also keep a queue per request
            after each run of up to ``context`` previous requests, and prefer
            it: for protocols where a request's answer depends on the one
            before (a mnemonic then ENQ, a command then an error-queue read).
        host, port: listening address (``port=0`` picks a free port).

    Attributes:
        sessions (list of Session): the script.
        unexpected (list): ``(session number, bytes)`` of every unexpected request.
        matched (int): requests answered from the recording.
        exhausted (int): connections closed because the recording ran out.
    """

    def __init__(self, recording, *, match="strict", timing="recorded", at_end="close", on_unexpected="close",
                 error_reply=b"", request_end=None, context=0, host="127.0.0.1", port=0):
        super().__init__(None, None, read_termination=None, host=check_host(host, "host"),
                         port=check_port(port, "port", lowest=0))
        if not isinstance(recording, Recording):
            recording = read_recording(recording)
        if match not in _MODES:
            raise ValueError(f"match must be one of {', '.join(_MODES)}, got {match!r}")
        if at_end not in _ENDS:
            raise ValueError(f"at_end must be one of {', '.join(_ENDS)}, got {at_end!r}")
        if on_unexpected not in _UNEXPECTED:
            raise ValueError(f"on_unexpected must be one of {', '.join(_UNEXPECTED)}, got {on_unexpected!r}")
        self.scale = _timing_scale(timing)
        self.recording = recording
        self.match = match
        self.at_end = at_end
        self.on_unexpected = on_unexpected
        self.error_reply = error_reply.encode("utf-8") if isinstance(error_reply, str) else bytes(error_reply)
        self.sessions = build_sessions(recording)
        if request_end is None:
            self.request_end = _common_end(self.sessions)
        else:
            self.request_end = request_end.encode("utf-8") if isinstance(request_end, str) else bytes(request_end)
            if not self.request_end:
                raise ValueError("request_end must not be empty")
        self.unexpected = []
        self.matched = 0
        self.exhausted = 0
        self._stats_lock = threading.Lock()
        self._next_session = 0
        if isinstance(context, bool) or not isinstance(context, int) or context < 0:
            raise ValueError(f"context must be an int >= 0, got {context!r}")
        self._queues = _Queues(self.sessions, context) if match == "queues" else None
        self._wake = threading.Event()

    # ------------------------------------------------------------------
    def start(self):
        self._wake.clear()
        return super().start()

    def shutdown(self):
        self._wake.set()
        super().shutdown()

    stop = shutdown

    def summary(self):
        """``{'sessions', 'connections', 'matched', 'unexpected', 'exhausted'}``
        (counts) and ``'unexpected_requests'`` (the bytes)."""
        with self._stats_lock:
            return {"sessions": len(self.sessions), "connections": self.connections, "matched": self.matched,
                    "unexpected": len(self.unexpected), "exhausted": self.exhausted,
                    "unexpected_requests": [data for _, data in self.unexpected]}

    def summary_line(self):
        """The summary as one line (the CLI prints it when stopped)."""
        s = self.summary()
        return (f"replay summary: sessions={s['sessions']} connections={s['connections']} matched={s['matched']} "
                f"unexpected={s['unexpected']} exhausted={s['exhausted']}")

    # ------------------------------------------------------------------
    def _pick_session(self):
        with self._stats_lock:
            number = self._next_session
            self._next_session += 1
        if not self.sessions:
            return number, None
        if number >= len(self.sessions):
            if self.at_end != "loop":
                return number, None
        return number, self.sessions[number % len(self.sessions)]

    def _serve(self, conn):
        try:
            self._replay(conn)
        except OSError as exc:
            log.debug("replay %d: connection ended: %s", self.port, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
            if self._running:
                linger_close(conn)  # a clean end of stream, not a reset, even with unread requests
            else:
                conn.close()

    def _replay(self, conn):
        number, session = self._pick_session()
        label = number + 1
        if session is None and self._queues is not None:
            session = Session(0, 0.0)  # queues answer any connection; only the banner is missing
        if session is None:
            with self._stats_lock:
                self.exhausted += 1
            log.warning("replay %d: connection %d: the recording has no session left (%d recorded): closing",
                        self.port, label, len(self.sessions))
            return
        steps = session.steps
        index = 0
        if session.banner:
            index = 1
            if not self._act(conn, session.banner):
                return
        first = index
        before = []  # this connection's previous requests, for queues with context
        pending = bytearray()
        while self._running:
            data = conn.recv(65536)
            if not data:
                return
            pending += data
            while pending:
                if self._queues is not None:
                    outcome = self._queues.match(bytes(pending), before, self.at_end == "loop")
                    kind = outcome[0]
                    if kind == "match":
                        request, actions = outcome[1], outcome[2]
                        before.append(request)
                        if len(before) > self._queues.context:
                            del before[0]
                else:
                    if index >= len(steps):
                        if self.at_end == "loop" and first < len(steps):
                            index = first
                        else:
                            kind = "exhausted"
                            request = None
                    if index < len(steps):
                        request = steps[index].request
                        if pending.startswith(request):
                            kind, actions = "match", steps[index].actions
                            index += 1
                        elif request.startswith(pending):
                            kind = "wait"
                        else:
                            kind = "unexpected"
                if kind == "wait":
                    break
                if kind == "exhausted":
                    with self._stats_lock:
                        self.exhausted += 1
                    log.warning("replay %d: session %d: recording exhausted at %s: closing", self.port, label,
                                format_traffic(bytes(pending)))
                    return
                if kind == "unexpected":
                    size = self._unexpected_size(pending)
                    if size is None:
                        break  # wait for the end of the request
                    bad = bytes(pending[:size])
                    del pending[:size]
                    with self._stats_lock:
                        self.unexpected.append((label, bad))
                    with self._lock:
                        self.received.append(bad)
                    expected = "" if self._queues is not None or index >= len(steps) else \
                        f" (expected {format_traffic(steps[index].request)})"
                    log.warning("replay %d: session %d: unexpected request %s%s: %s", self.port, label,
                                format_traffic(bad), expected, self.on_unexpected)
                    if self.on_unexpected == "close":
                        return
                    if self.on_unexpected == "reply" and self.error_reply and not self.silent:
                        self._write(conn, self.error_reply)
                    continue
                # a match
                del pending[:len(request)]
                with self._stats_lock:
                    self.matched += 1
                with self._lock:
                    self.received.append(request)
                if self._drop_after is not None:
                    self._drop_after -= 1
                    if self._drop_after <= 0:
                        self._drop_after = None
                        return
                if not self._act(conn, actions):
                    return

    def _unexpected_size(self, pending):
        if self.request_end is None or len(pending) > (1 << 20):
            return len(pending)
        end = pending.find(self.request_end)
        return None if end < 0 else end + len(self.request_end)

    def _act(self, conn, actions):
        """Perform recorded actions.  Returns False when the connection was closed."""
        first = True
        for delay, payload in actions:
            wait = delay * self.scale
            if first and self.delay:
                wait += self.delay
            first = False
            if wait > 0 and self._wake.wait(wait):
                return False  # shutting down
            if payload is _CLOSE:
                log.debug("replay %d: recorded close", self.port)
                return False
            if self.silent:
                continue
            self._write(conn, payload)
        return True


def _timing_scale(timing):
    if timing == "recorded":
        return 1.0
    if timing == "fast":
        return 0.0
    if isinstance(timing, str):
        try:
            timing = float(timing)
        except ValueError:
            raise ValueError(f"timing must be 'recorded', 'fast' or a scale factor >= 0, got {timing!r}") from None
    if isinstance(timing, bool) or not isinstance(timing, (int, float)) or not 0 <= timing < float("inf"):
        raise ValueError(f"timing must be 'recorded', 'fast' or a scale factor >= 0, got {timing!r}")
    return float(timing)


def replay_fixture(path, **options):
    """Make a pytest fixture that yields a started :class:`ReplayServer` for
    the recording at ``path`` (``options`` as for :class:`ReplayServer`).
    The server is stopped after the test, even on failure.

    Example::

        tpg = replay_fixture("tests/data/recordings/tpg366.jsonl", timing="fast")

        def test_pressure(tpg):
            dev = TCPInterface("127.0.0.1", tpg.port, 2, termination="\\r\\n")
            ...
    """
    import pytest

    @pytest.fixture
    def fixture():
        server = ReplayServer(path, **options).start()
        try:
            yield server
        finally:
            server.shutdown()
    return fixture
