"""Toptica DLC smart (THz frequency-domain system) emulator: the ``> `` command line.

Facts and their sources (SOCS ``socs/agents/fls/drivers.py``, ``DLCSmart``):

* TCP port 1998; each command ends with LF; the controller is ready when the
  input ends with ``\\n> `` or ``> `` (``drain_buffer``); a reply is read up
  to a LF and ``\\r`` and the ``\\n> `` prompt are stripped (``read_all``).
  The SOCS driver reads no echo of the command, so none is sent.
* ``(param-ref 'name)`` reads a parameter, ``(param-set! 'name value)``
  writes one, ``(exec 'name args...)`` runs a command.  Booleans are ``#t`` /
  ``#f``; strings are quoted.
* Parameters the SOCS driver uses: ``general:system-label``,
  ``laser-operation:emission-global-enable``, ``lockin:mod-out-amplitude``,
  ``lockin:mod-out-offset``, ``frequency:frequency-set``,
  ``frequency:frequency-act``, ``frequency:scan-mode-fast``,
  ``frequency:frequency-min``/``-max``/``-step``, ``lockin:integration-time``,
  ``lockin:lock-in-value-nanoamp`` (a ``(#t value)`` pair: valid flag then
  value).  Commands: ``lockin:mod-out-set-to-zero``,
  ``lockin:mod-out-set-to-default``, ``lockin:lock-in-reset``,
  ``frequency:fast-scan-start``/``-stop``/``-clear-data``.
* Assumed, not from a source: a ``DeCoF Command Line`` banner and a prompt at
  connect, ``0`` as the reply to a successful ``param-set!``, an empty line
  for a command, and ``Error: <code> <text>`` for an unknown parameter
  (code -10), a read-only parameter (code -11) or a syntax error (code -1).
  The actual frequency follows the set frequency at once.

Faults: the common ones and :meth:`TopticaDLCEmulator.lose_prompt_once`
(the next reply comes without its prompt; the prompt follows the reply after it).
"""

import re

from .base import EmulatorServer

__all__ = ["TopticaDLCEmulator", "PROMPT"]

PROMPT = b"> "
BANNER = b"DeCoF Command Line\n"

_READ_ONLY = {"frequency:frequency-act", "lockin:lock-in-value-nanoamp", "general:system-label"}
_DEFAULT_BIAS = (1.0, 0.5)


class TopticaDLCEmulator(EmulatorServer):
    """A DLC smart with the parameters the SOCS driver uses."""

    device_name = "toptica_dlc"

    def __init__(self, *, banner=True, host="127.0.0.1", port=0):
        super().__init__(host, port)
        self.banner = banner
        self.params = {
            "general:system-label": '"DLC smart"',
            "laser-operation:emission-global-enable": False,
            "lockin:mod-out-amplitude": 0.0,
            "lockin:mod-out-offset": 0.0,
            "frequency:frequency-set": 100.0,
            "frequency:frequency-act": 100.0,
            "frequency:scan-mode-fast": False,
            "frequency:frequency-min": 100.0,
            "frequency:frequency-max": 200.0,
            "frequency:frequency-step": 0.1,
            "lockin:integration-time": 100,
            "lockin:lock-in-value-nanoamp": 12.5,
        }
        self.scanning = False
        #: every ``exec`` command run, with its arguments
        self.executed = []
        self._lose_prompt = 0
        self._owed_prompts = 0

    # -- faults ------------------------------------------------------------------

    def lose_prompt_once(self, count=1):
        """The next ``count`` replies come without their ``\\n> `` prompt."""
        with self.lock:
            self._lose_prompt = int(count)

    # -- protocol ----------------------------------------------------------------

    def on_connect(self, session):
        session.send((BANNER if self.banner else b"") + PROMPT)

    def split_requests(self, session):
        lines = []
        while True:
            index = session.buffer.find(b"\n")
            if index < 0:
                return lines
            lines.append(bytes(session.buffer[:index]).strip(b"\r "))
            del session.buffer[:index + 1]

    def respond(self, session, request):
        text = request.decode("ascii", errors="replace")
        reply = self._evaluate(text) if text else ""
        prompt = b"\n" + PROMPT
        if self._lose_prompt > 0:
            self._lose_prompt -= 1
            self._owed_prompts += 1
            return reply.encode("ascii") + b"\n"
        owed, self._owed_prompts = self._owed_prompts, 0
        return PROMPT * owed + reply.encode("ascii") + prompt

    def _evaluate(self, text):
        match = re.fullmatch(r"\(\s*(param-ref|param-set!|exec)\s+'([\w:\-]+)\s*(.*?)\s*\)", text)
        if not match:
            return "Error: -1 syntax error"
        verb, name, rest = match.groups()
        if verb == "exec":
            return self._exec(name, rest.split())
        if name not in self.params:
            return f"Error: -10 unknown parameter {name}"
        if verb == "param-ref":
            if rest:
                return "Error: -1 syntax error"
            return _format(name, self.params[name])
        if name in _READ_ONLY:
            return f"Error: -11 parameter is read-only {name}"
        value = _parse(rest)
        current = self.params[name]
        if isinstance(current, bool):
            if not isinstance(value, bool):
                return "Error: -1 syntax error"
        elif value is None or isinstance(value, bool):
            return "Error: -1 syntax error"
        elif isinstance(current, float):
            value = float(value)
        self.params[name] = value
        if name == "frequency:frequency-set":
            self.params["frequency:frequency-act"] = float(value)
        return "0"

    def _exec(self, name, args):
        self.executed.append((name, args))
        if name == "lockin:mod-out-set-to-zero":
            self.params["lockin:mod-out-amplitude"], self.params["lockin:mod-out-offset"] = 0.0, 0.0
        elif name == "lockin:mod-out-set-to-default":
            self.params["lockin:mod-out-amplitude"], self.params["lockin:mod-out-offset"] = _DEFAULT_BIAS
        elif name == "frequency:fast-scan-start":
            self.scanning = True
        elif name == "frequency:fast-scan-stop":
            self.scanning = False
        elif name in ("frequency:fast-scan-clear-data", "lockin:lock-in-reset"):
            pass
        else:
            return f"Error: -10 unknown parameter {name}"
        return ""


def _format(name, value):
    if name == "lockin:lock-in-value-nanoamp":
        return f"(#t {value})"
    if isinstance(value, bool):
        return "#t" if value else "#f"
    return str(value)


def _parse(text):
    if text == "#t":
        return True
    if text == "#f":
        return False
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None
