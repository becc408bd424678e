"""Named TCP links: the ``cmd_tcp`` bus module API.

Code written against the bus API refers to links by an id::

    from socs_tcp import cmd_tcp
    cmd_tcp.init_tcp("psu", "host=10.0.0.5,port=5025,timeout=2")
    cmd_tcp.wrnrd_until_tcp("psu", "*IDN?\\n", "\\n")
    cmd_tcp.deinit_tcp("psu")

``init_tcp`` only validates and registers; ``config_tcp`` connects (and any
operation connects on first use); ``inval_tcp`` closes so the next use
reconnects; ``deinit_tcp`` closes and forgets.  Every operation takes
``timeout='undef'``, meaning the link's default.  The registry is
thread-safe, and each link serialises its own operations.
"""

import threading

from .core.codec import parse_conf_string
from .transport.interface import TCPInterface

__all__ = [
    "init_tcp", "deinit_tcp", "config_tcp", "inval_tcp",
    "write_tcp", "write_bin_tcp", "read_tcp", "read_bin_tcp",
    "read_until_tcp", "read_bin_until_tcp", "wrnrd_tcp", "wrnrd_bin_tcp",
    "wrnrd_until_tcp", "wrnrd_bin_until_tcp", "expect_tcp", "links", "get_link",
]

DEFAULT_TIMEOUT = 10.0

_links = {}
_registry_lock = threading.Lock()


def _check_id(tcp_id):
    if not isinstance(tcp_id, str) or not tcp_id:
        raise TypeError(f"tcp_id must be a non-empty str, got {tcp_id!r}")


def get_link(tcp_id):
    """The :class:`~socs_tcp.TCPInterface` registered as ``tcp_id``.

    Raises:
        ValueError: unknown id (the message lists the known ones).
    """
    _check_id(tcp_id)
    with _registry_lock:
        try:
            return _links[tcp_id]
        except KeyError:
            known = ", ".join(sorted(_links)) or "none"
            raise ValueError(f"unknown TCP link id {tcp_id!r}; initialised links: {known}") from None


def links():
    """Ids of the registered links."""
    with _registry_lock:
        return sorted(_links)


def _timeout(timeout):
    """``'undef'`` means the link's default (``None``); any other value goes
    to the link, whose operation deadline checks it (once per call)."""
    if isinstance(timeout, str):
        if timeout == "undef":
            return None
        raise ValueError(f"timeout must be a number of seconds or 'undef', got {timeout!r}")
    return timeout


def init_tcp(tcp_id, conf_string):
    """Validate ``conf_string`` (``host=...,port=...[,timeout=...]``) and
    register link ``tcp_id``.  Does not connect.

    Raises:
        ValueError: malformed conf string, or ``tcp_id`` already registered.
    """
    _check_id(tcp_id)
    conf = parse_conf_string(conf_string)
    timeout = DEFAULT_TIMEOUT if conf["timeout"] is None else conf["timeout"]
    link = TCPInterface(conf["host"], conf["port"], timeout, connect=False, name=f"{tcp_id}@{conf['host']}:{conf['port']}")
    with _registry_lock:
        if tcp_id in _links:
            raise ValueError(f"TCP link id {tcp_id!r} is already initialised; call deinit_tcp({tcp_id!r}) first")
        _links[tcp_id] = link


def deinit_tcp(tcp_id):
    """Close link ``tcp_id`` and remove it from the registry."""
    link = get_link(tcp_id)
    with _registry_lock:
        _links.pop(tcp_id, None)
    link.disconnect()


def config_tcp(tcp_id):
    """Connect link ``tcp_id`` now.

    Raises:
        ConnectFailedError: the device cannot be reached.
    """
    get_link(tcp_id).connect()


def inval_tcp(tcp_id):
    """Close link ``tcp_id``; the next operation reconnects."""
    get_link(tcp_id).disconnect()


def write_tcp(tcp_id, data):
    """Write ``data`` (str or bytes) to link ``tcp_id``."""
    return get_link(tcp_id).write(data)


def write_bin_tcp(tcp_id, data):
    """Write hex ``data`` (two digits per byte, in transmission order)."""
    return get_link(tcp_id).write_bin(data)


def read_tcp(tcp_id, bytes_to_read, timeout="undef"):
    """Read ``bytes_to_read`` bytes as text."""
    return get_link(tcp_id).read(bytes_to_read, _timeout(timeout))


def read_bin_tcp(tcp_id, bytes_to_read, timeout="undef"):
    """Read ``bytes_to_read`` bytes as lowercase hex."""
    return get_link(tcp_id).read_bin(bytes_to_read, _timeout(timeout))


def read_until_tcp(tcp_id, eot, timeout="undef"):
    """Read until a terminator of the comma-separated list ``eot``."""
    return get_link(tcp_id).read_until(eot, _timeout(timeout))


def read_bin_until_tcp(tcp_id, eot, timeout="undef"):
    """Read until a terminator of ``eot``, as lowercase hex."""
    return get_link(tcp_id).read_bin_until(eot, _timeout(timeout))


def wrnrd_tcp(tcp_id, data, bytes_to_read, timeout="undef"):
    """Write ``data`` then read ``bytes_to_read`` bytes, atomically."""
    return get_link(tcp_id).wrnrd(data, bytes_to_read, _timeout(timeout))


def wrnrd_bin_tcp(tcp_id, data, bytes_to_read, timeout="undef"):
    """Write hex ``data`` then read ``bytes_to_read`` bytes as hex."""
    return get_link(tcp_id).wrnrd_bin(data, bytes_to_read, _timeout(timeout))


def wrnrd_until_tcp(tcp_id, data, eot, timeout="undef"):
    """Write ``data`` then read until a terminator of ``eot``."""
    return get_link(tcp_id).wrnrd_until(data, eot, _timeout(timeout))


def wrnrd_bin_until_tcp(tcp_id, data, eot, timeout="undef"):
    """Write hex ``data`` then read until a terminator of ``eot``, as hex."""
    return get_link(tcp_id).wrnrd_bin_until(data, eot, _timeout(timeout))


def expect_tcp(tcp_id, pattern, timeout="undef"):
    """Read until the regular expression ``pattern`` matches; return the consumed text."""
    return get_link(tcp_id).expect(pattern, _timeout(timeout))
