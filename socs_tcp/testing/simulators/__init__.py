"""Device simulators for tests, demos and local development.

* :mod:`socs_tcp.simulators.scpi` -- a SCPI power supply plus multimeter on a
  raw TCP socket (``python -m socs_tcp.simulators.scpi --port 5025``).

The names below are imported lazily, so that running a simulator module with
``python -m`` does not import it twice.
"""

__all__ = ["ScpiInstrument", "ScpiLineProtocol", "ScpiSimulator", "InstrumentState"]


def __getattr__(name):
    if name in __all__:
        from . import scpi
        return getattr(scpi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
