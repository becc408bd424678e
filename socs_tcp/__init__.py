"""socs_tcp: robust TCP links to lab and observatory hardware, for OCS.

The main entry point is :class:`TCPInterface`, a drop-in replacement for
``socs.tcp.TCPInterface`` with the ``cmd_tcp`` bus operations built in.
"""

from .core.buffer import ReceiveBuffer
from .core.policy import ReconnectPolicy
from .errors import ConnectFailedError, LinkError, LinkTimeoutError, PeerClosedError, ReadOverflowError
from .messages.jsonlines import AsyncTCPClient, MsgType
from .messages.tcpcom import TCPClient, TCPServer
from .transport.interface import TCPInterface

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
