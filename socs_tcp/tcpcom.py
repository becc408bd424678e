"""Short name of :mod:`socs_tcp.messages.tcpcom`.

``import socs_tcp.tcpcom`` gives the very same module object as ``import socs_tcp.messages.tcpcom``.
"""

import importlib as _importlib
import sys as _sys

_sys.modules[__name__] = _importlib.import_module("socs_tcp.messages.tcpcom")
