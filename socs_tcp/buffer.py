"""Deprecated alias of :mod:`socs_tcp.core.buffer`, kept for one release (see the changelog).

``import socs_tcp.buffer`` gives the very same module object as ``import socs_tcp.core.buffer``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.core.buffer")
