"""Short name of :mod:`socs_tcp.messages.jsonlines`.

``import socs_tcp.jsonlines`` gives the very same module object as ``import socs_tcp.messages.jsonlines``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.messages.jsonlines")
