"""Deprecated alias of :mod:`socs_tcp.core.codec`, kept for one release (see the changelog).

``import socs_tcp.codec`` gives the very same module object as ``import socs_tcp.core.codec``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.core.codec")
