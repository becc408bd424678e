"""OCS agents built on :mod:`socs_tcp` (installed as the ``socs_tcp_agents`` package)."""
