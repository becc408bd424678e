"""Layer 2: one blocking TCP link to a device (:class:`TCPInterface`).

``connection`` owns the socket (connect with backoff, send and receive under
one deadline: the only home of the fast path); ``interface`` is
:class:`TCPInterface` (the SOCS hooks and the bus operations over it).
"""

from .interface import TCPInterface

__all__ = ["TCPInterface"]
