"""Layer 6: the native OCS stack (crossbar, InfluxDB and agent processes),
the local launcher and the Grafana query expander.

Not part of the library: these modules start OCS processes and read
``deploy/``.  The library package :mod:`socs_tcp` never imports them.
"""
