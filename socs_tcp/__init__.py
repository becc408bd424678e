"""socs_tcp: robust TCP links to lab and observatory hardware, for OCS.

The main entry point is :class:`TCPInterface`, a drop-in replacement for
``socs.tcp.TCPInterface`` with the ``cmd_tcp`` bus operations built in.
"""

from .buffer import ReceiveBuffer
from .errors import ConnectFailedError, LinkError, LinkTimeoutError, PeerClosedError, ReadOverflowError
from .interface import TCPInterface
from .jsonlines import AsyncTCPClient, MsgType
from .policy import ReconnectPolicy
from .tcpcom import TCPClient, TCPServer

try:
    from importlib.metadata import PackageNotFoundError, version
    __version__ = version("socs_tcp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = [
    "TCPInterface", "ReconnectPolicy", "ReceiveBuffer", "AsyncTCPClient", "MsgType",
    "TCPServer", "TCPClient",
    "LinkError", "ConnectFailedError", "LinkTimeoutError", "PeerClosedError", "ReadOverflowError",
    "__version__",
]
