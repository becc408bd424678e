"""Deprecated home of the simulators, kept for one release (see the changelog).

The simulators now live in :mod:`socs_tcp.testing.simulators`;
``python -m socs_tcp.simulators.scpi`` and ``import socs_tcp.simulators.scpi``
still work and give the same module.
"""

from socs_tcp.testing.simulators import *  # noqa: F403
from socs_tcp.testing.simulators import __all__  # noqa: F401
