"""Deprecated alias of :mod:`socs_tcp.core.stats`, kept for one release (see the changelog).

``import socs_tcp.stats`` gives the very same module object as ``import socs_tcp.core.stats``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.core.stats")
