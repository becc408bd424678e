"""DeviceAgent: the OCS agent made from a device file (see :mod:`socs_tcp.devices`)."""
