"""Run one emulator in the foreground: ``python -m emulators NAME [--port N]``
(from the tests/ folder).  The first stdout line is ``listening on HOST:PORT``;
SIGINT or SIGTERM stops it cleanly."""

import argparse
import signal
import sys
import threading

from . import (
    CryomechCPAEmulator,
    DS378Emulator,
    GalilDMCEmulator,
    LS372Emulator,
    PCR500MAEmulator,
    TopticaDLCEmulator,
    TPG366Emulator,
)

EMULATORS = {
    "tpg366": TPG366Emulator,
    "ls372": LS372Emulator,
    "pcr500ma": PCR500MAEmulator,
    "ds378": DS378Emulator,
    "cryomech_cpa": CryomechCPAEmulator,
    "galil_dmc": GalilDMCEmulator,
    "toptica_dlc": TopticaDLCEmulator,
}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m emulators", description=__doc__)
    parser.add_argument("name", choices=sorted(EMULATORS))
    parser.add_argument("--port", type=int, default=0, help="listening port on 127.0.0.1 (0: a free one)")
    args = parser.parse_args(argv)
    device = EMULATORS[args.name](port=args.port).start()
    done = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: done.set())
    print(f"listening on {device.address}", flush=True)
    try:
        done.wait()
    finally:
        device.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
