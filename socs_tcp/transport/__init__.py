"""Layer 2: one blocking TCP link to a device (:class:`TCPInterface`)."""

from .interface import TCPInterface

__all__ = ["TCPInterface"]
