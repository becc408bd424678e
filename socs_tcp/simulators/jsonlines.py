"""Deprecated alias of :mod:`socs_tcp.testing.simulators.jsonlines`, kept for one release."""

import importlib as _importlib
import sys as _sys

if __name__ == "__main__":
    _sys.exit(_importlib.import_module("socs_tcp.testing.simulators.jsonlines").main())
_sys.modules[__name__] = _importlib.import_module("socs_tcp.testing.simulators.jsonlines")
