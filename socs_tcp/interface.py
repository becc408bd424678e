"""Deprecated alias of :mod:`socs_tcp.transport.interface`, kept for one release (see the changelog).

``import socs_tcp.interface`` gives the very same module object as ``import socs_tcp.transport.interface``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.transport.interface")
