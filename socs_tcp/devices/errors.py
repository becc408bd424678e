"""Exceptions of :mod:`socs_tcp.devices`.

* :class:`DeviceFileError` -- a device file does not load; ``.errors`` lists
  every problem found, each with file, line and key.
* :class:`DeviceReplyError` -- a reply did not have the form the file
  describes (a :class:`ValueError`: the link is fine, the bytes are not).
* :class:`DeviceError` -- the device reported an error (an error token that
  recovery did not clear, or an entry in its error queue); its subclass
  :class:`DeviceInterlockError` is a ``guard`` of the file refusing an
  operation before anything of it was sent.

Link failures are the library's :class:`~socs_tcp.errors.LinkError`
subclasses (all :class:`ConnectionError`), raised unchanged.
"""

import dataclasses

from ..core.codec import format_traffic

__all__ = ["DeviceFileProblem", "DeviceFileError", "DeviceReplyError", "DeviceError", "DeviceInterlockError"]


@dataclasses.dataclass(frozen=True)
class DeviceFileProblem:
    """One problem in a device file: where it is and what is wrong."""

    file: str
    line: int
    key: str
    message: str

    def __str__(self):
        where = f"{self.file}:{self.line}:"
        return f"{where} {self.key}: {self.message}" if self.key else f"{where} {self.message}"


class DeviceFileError(ValueError):
    """A device file that does not load.

    ``str(error)`` is one line per problem, ``file:line: key: message``.
    """

    def __init__(self, errors):
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class DeviceReplyError(ValueError):
    """A reply that does not parse as the device file says it should.

    Attributes:
        operation (str): the operation whose reply it was.
        reply (bytes): the offending bytes.
    """

    def __init__(self, operation, reply, reason):
        self.operation = operation
        self.reply = bytes(reply)
        self.reason = reason
        super().__init__(f"{operation}: {reason}; reply {format_traffic(self.reply, 128)}")


class DeviceError(RuntimeError):
    """The device reported an error.

    Attributes:
        operation (str): the operation that failed.
        code: the device's error code (int when numeric, else str).
        message (str): the device's error text.
    """

    def __init__(self, operation, code, message):
        self.operation = operation
        self.code = code
        self.message = message
        super().__init__(f"{operation}: device error {code}" + (f": {message}" if message else ""))


class DeviceInterlockError(DeviceError):
    """An interlock of the device file (``guard``) refused the operation;
    nothing was sent for it.  ``code`` is ``"interlock"``."""

    def __init__(self, operation, message):
        super().__init__(operation, "interlock", message)
