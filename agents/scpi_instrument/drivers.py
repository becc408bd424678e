"""Driver for SCPI instruments on a raw TCP socket (port 5025, ``\\n`` framing)."""

import logging

from socs_tcp import LinkError, LinkTimeoutError, TCPInterface

log = logging.getLogger(__name__)


class ScpiError(RuntimeError):
    """The instrument reported an error in its error queue.

    Attributes:
        command (str): the command that caused it.
        errors (list): ``(code, message)`` pairs read from ``SYST:ERR?``.
    """

    def __init__(self, command, errors):
        self.command = command
        self.errors = errors
        listed = "; ".join(f"{code},{msg}" for code, msg in errors)
        super().__init__(f"instrument rejected {command!r}: {listed}")


def parse_error(reply):
    """``'-113,"Undefined header"'`` -> ``(-113, 'Undefined header')``."""
    code, _, message = reply.partition(",")
    try:
        number = int(code.strip())
    except ValueError:
        raise ValueError(f"SYST:ERR? reply {reply!r} does not start with an error number") from None
    return number, message.strip().strip('"')


class ScpiInstrument(TCPInterface):
    """A SCPI instrument (power supply, multimeter, ...) over TCP.

    Every command is checked with ``SYST:ERR?`` afterwards (unless
    ``check_errors=False``); a query that times out is checked too, since
    instruments do not answer a query they reject.  Stale input is drained
    before each query, and a query that times out closes the connection, so
    a late reply can never be taken as the answer to a later query.

    Args:
        ip_address, port, timeout: as for :class:`~socs_tcp.TCPInterface`
            (default port 5025).
        check_errors (bool): read the error queue after each command.
        **kwargs: further :class:`~socs_tcp.TCPInterface` options; the
            terminations default to ``\\n`` and replies are right-stripped.
    """

    def __init__(self, ip_address, port=5025, timeout=5.0, *, check_errors=True, **kwargs):
        kwargs.setdefault("termination", "\n")
        kwargs.setdefault("rstrip", True)
        kwargs.setdefault("drain_before_query", True)
        kwargs.setdefault("close_on_timeout", True)
        kwargs.setdefault("encoding_errors", "backslashreplace")
        super().__init__(ip_address, port, timeout, **kwargs)
        self.check_errors = check_errors

    def error_queue(self, limit=32):
        """Pop every entry of the error queue; ``[]`` when it is empty.

        A reply to an earlier query that timed out can arrive just after the
        ``SYST:ERR?`` is sent, ahead of its answer: such a line is logged and
        skipped.

        Raises:
            LinkError: the replies still do not parse as error-queue entries
                (the instrument is out of step; the link is drained).
        """
        errors = []
        with self.lock:
            for _ in range(limit):
                code, message = self._error_entry()
                if code == 0:
                    break
                errors.append((code, message))
        return errors

    def _error_entry(self):
        reply = self.query("SYST:ERR?")
        try:
            return parse_error(reply)
        except ValueError:
            pass
        # most likely a late reply to an earlier query, just ahead of the answer: skip it once
        log.warning("%s: skipped %r while reading the error queue (a late reply to an earlier query)",
                    self.name, reply)
        skipped = reply
        try:
            reply = self.read_until()
        except LinkTimeoutError:
            # the skipped line was the only answer (it arrived before the query was sent and
            # was not drained, or the instrument answers nonsense): out of step all the same
            reply = None
        else:
            try:
                return parse_error(reply)
            except ValueError:
                pass
        self.drain()
        answered = f"{skipped!r}" if reply is None else f"{skipped!r} then {reply!r}"
        raise LinkError(f"{self.name}: SYST:ERR? answered {answered}, not an error-queue entry; "
                        "the instrument is out of step (input drained)")

    def command(self, command):
        """Send a command that has no reply, then check the error queue.

        Raises:
            ScpiError: the instrument rejected it.
        """
        with self.lock:
            self.write(command)
            if self.check_errors:
                errors = self.error_queue()
                if errors:
                    raise ScpiError(command, errors)

    def ask(self, command, timeout=None):
        """Send a query and return its reply (a ``str``).

        Raises:
            ScpiError: the instrument rejected the query (found in the error
                queue after the reply did not come).
            LinkTimeoutError: no reply and no error queued.
        """
        with self.lock:
            try:
                return self.query(command, timeout)
            except LinkTimeoutError:
                if self.check_errors:
                    errors = self.error_queue()
                    if errors:
                        raise ScpiError(command, errors) from None
                raise

    def identify(self):
        """``*IDN?`` split into manufacturer, model, serial and firmware."""
        reply = self.ask("*IDN?")
        parts = [p.strip() for p in reply.split(",")] + [""] * 4
        return {"idn": reply, "manufacturer": parts[0], "model": parts[1], "serial": parts[2],
                "firmware": parts[3]}

    def reset(self):
        """``*RST`` then ``*CLS``."""
        self.command("*RST")
        self.clear()

    def clear(self):
        """``*CLS``: clear the status registers and the error queue."""
        with self.lock:
            self.write("*CLS")

    def measure(self, queries):
        """Run ``(name, query)`` pairs; return ``{name: reply}`` (replies as str)."""
        with self.lock:
            return {name: self.ask(query) for name, query in queries}
