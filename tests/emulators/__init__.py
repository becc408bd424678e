"""Independent emulators of the real devices the shipped device files describe.

They are written from vendor manuals and from SOCS's own drivers and test
fixtures (each module's docstring names its sources), never from the device
files, so a device file tested against them is tested against the device's
documented behaviour and not against itself.

Every emulator is a real TCP server on 127.0.0.1 (``port=0``: a free port),
with ``start()``/``stop()``, use as a context manager, ``.port``,
``.address`` (``"127.0.0.1:PORT"``), state that setters change, and faults:
``drop_connections()``, ``go_silent(bool)``, ``refuse_connections(bool)``,
``set_delay(seconds)``, ``send_unsolicited(bytes)`` plus device-specific ones.
"""

from .cryomech_cpa import CryomechCPAEmulator
from .ds378 import DS378Emulator
from .galil_dmc import GalilDMCEmulator
from .ls372 import LS372Emulator
from .modbus_rtu import ModbusRTUEmulator
from .pcr500ma import PCR500MAEmulator
from .pfeiffer_tc400 import TC400Emulator
from .toptica_dlc import TopticaDLCEmulator
from .tpg366 import TPG366Emulator

__all__ = [
    "CryomechCPAEmulator",
    "DS378Emulator",
    "GalilDMCEmulator",
    "LS372Emulator",
    "ModbusRTUEmulator",
    "PCR500MAEmulator",
    "TC400Emulator",
    "TopticaDLCEmulator",
    "TPG366Emulator",
]
