"""Argument checks shared by every layer: the one copy of each.

Each check returns the normalised value or raises with a message that names
the argument and the bad value.  The rule for the exception type is the
Python one: a value of the wrong *type* raises :class:`TypeError`, a value of
the right type but outside the allowed range raises :class:`ValueError`.
"""

import argparse
import math

__all__ = ["check_seconds", "check_port", "check_host", "check_bool", "format_host_port", "listen_port_argument"]


def check_seconds(value, what, *, allow_none=False, positive=False):
    """A duration in seconds: a finite int or float, ``>= 0`` (``> 0`` when
    ``positive``), or ``None`` when ``allow_none``.  Returns a float."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        extra = " or None" if allow_none else ""
        raise TypeError(f"{what} must be a number of seconds{extra}, got {type(value).__name__}: {value!r}")
    if math.isnan(value) or math.isinf(value) or value < 0 or (positive and value == 0):
        limit = "> 0" if positive else ">= 0"
        raise ValueError(f"{what} must be a finite number of seconds {limit}, got {value!r}")
    return float(value)


def check_port(port, what="port", *, lowest=1):
    """A TCP port number: an int in ``lowest..65535`` (``lowest=0`` lets the
    system pick a free port)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{what} must be an int, got {type(port).__name__}: {port!r}")
    if not lowest <= port <= 65535:
        raise ValueError(f"{what} must be in {lowest}..65535, got {port!r}")
    return port


def listen_port_argument(text):
    """The argparse ``type`` of a listening port on a command line:
    ``0..65535``, 0 picking a free port.  A bad value is a usage error that
    names it, not a traceback."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be an integer, got {text!r}") from None
    try:
        return check_port(port, lowest=0)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def check_host(host, what="host"):
    """A host name or IP address (brackets around an IPv6 address are
    removed).  Returns the bare host."""
    if not isinstance(host, str):
        raise TypeError(f"{what} must be a str (host name or IP address), got {type(host).__name__}: {host!r}")
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise ValueError(f"{what} must not be empty, got {host!r}")
    return text


def check_bool(value, what):
    """``True`` or ``False``, nothing else (not 0/1, not strings)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {type(value).__name__}: {value!r}")
    return value


def format_host_port(host, port):
    """``host:port``, with an IPv6 address in brackets: ``[::1]:5025``."""
    host = str(host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
