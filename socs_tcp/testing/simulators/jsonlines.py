"""A JSON-lines device simulator: a small thermal controller on a TCP socket.

Run it as a process::

    python -m socs_tcp.simulators.jsonlines --port 50010

It prints ``listening on HOST:PORT`` on standard output once it accepts
connections, logs to standard error, and stops on SIGINT or SIGTERM.

What it simulates: three ring sensors plus intake and exhaust temperatures
that relax towards a setpoint, published as telemetry ``temperature`` every
``--telemetry-interval`` seconds::

    {"id": "tel_temperature", "ring": [20.01, 19.98, 20.02], "intake": 19.5,
     "exhaust": 20.5, "setpoint": 20.0}

an event ``heartbeat`` every ``--heartbeat-interval`` seconds
(``{"id": "evt_heartbeat", "counter": 7, "uptime": 3.5}``), and an event
``setpointChanged`` after each accepted ``setTemperature``.  With
``--bare-ids`` the ids are sent without the ``tel_`` / ``evt_`` prefixes, as
the M2 cell controller does.

Commands (acknowledged, then ``success`` or ``fail``):

* ``setTemperature`` with ``value`` (degrees C, -40 to 80);
* ``getStatus`` -- succeeds with the current ``setpoint`` and ``temperature``;
* ``slow`` with ``duration`` (seconds, default 2) -- succeeds after that long;
* ``fail`` -- always fails with the reason ``"requested failure"``.

Any other command is answered with ``noack``.
"""

import argparse
import asyncio
import logging
import random
import signal
import sys
import time

from ...core.checks import check_seconds, format_host_port, listen_port_argument
from ..jsonserver import JsonLinesServer

__all__ = ["ThermalControllerSimulator", "make_parser", "main"]

log = logging.getLogger("socs_tcp.simulators.jsonlines")  # same name when run with -m

SETPOINT_RANGE = (-40.0, 80.0)


class ThermalControllerSimulator:
    """The device model and its periodic publications, on a :class:`~socs_tcp.testing.jsonserver.JsonLinesServer`.

    Args:
        server (JsonLinesServer): the server to register commands on and
            publish through (not started by this class).
        telemetry_interval (float): seconds between telemetry messages.
        heartbeat_interval (float): seconds between heartbeat events.
        setpoint (float): initial setpoint, degrees C.
        noise (float): standard deviation of the sensor noise, degrees C.
        seed (int): seed of the noise generator.
        clock (callable): monotonic clock (for tests).

    Attributes:
        setpoint (float): the current setpoint.
        temperature (float): the simulated bulk temperature.
    """

    #: fraction of the distance to the setpoint covered per second
    RELAXATION = 0.5

    def __init__(self, server, telemetry_interval=0.5, heartbeat_interval=1.0, setpoint=20.0, noise=0.01,
                 seed=None, clock=time.monotonic):
        self.server = server
        self.telemetry_interval = check_seconds(telemetry_interval, "telemetry_interval", positive=True)
        self.heartbeat_interval = check_seconds(heartbeat_interval, "heartbeat_interval", positive=True)
        self.setpoint = float(setpoint)
        self.temperature = float(setpoint)
        self.noise = float(noise)
        self._rng = random.Random(seed)
        self._clock = clock
        self._started = clock()
        self._last_update = self._started
        self.heartbeats = 0
        server.register_command("setTemperature", self.set_temperature)
        server.register_command("getStatus", self.get_status)
        server.register_command("slow", self.slow)
        server.register_command("fail", self.fail)

    # ------------------------------------------------------------------ model
    def update(self):
        """Advance the bulk temperature to now."""
        now = self._clock()
        dt = max(0.0, now - self._last_update)
        self._last_update = now
        self.temperature += (self.setpoint - self.temperature) * min(1.0, self.RELAXATION * dt)
        return self.temperature

    def telemetry(self):
        """The ``temperature`` telemetry details at this moment."""
        t = self.update()

        def read(offset):
            return round(t + offset + self._rng.gauss(0.0, self.noise), 4)

        return {"ring": [read(0.0), read(0.0), read(0.0)], "intake": read(-0.5), "exhaust": read(0.5),
                "setpoint": self.setpoint}

    # ------------------------------------------------------------------ commands
    async def set_temperature(self, details):
        """``setTemperature``: ``value`` in degrees C."""
        value = details.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"value must be a number, got {value!r}")
        low, high = SETPOINT_RANGE
        if not low <= value <= high:
            raise ValueError(f"value {value} is outside {low:g} to {high:g}")
        self.update()
        self.setpoint = float(value)
        await self.server.emit_event("setpointChanged", {"setpoint": self.setpoint})
        return None

    def get_status(self, details):
        """``getStatus``: the setpoint and the bulk temperature."""
        return {"setpoint": self.setpoint, "temperature": round(self.update(), 4)}

    async def slow(self, details):
        """``slow``: succeed after ``duration`` seconds (default 2)."""
        duration = details.get("duration", 2.0)
        if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not 0 <= duration <= 3600:
            raise ValueError(f"duration must be a number of seconds between 0 and 3600, got {duration!r}")
        await asyncio.sleep(duration)
        return {"duration": duration}

    def fail(self, details):
        """``fail``: always fails."""
        raise RuntimeError("requested failure")

    # ------------------------------------------------------------------ publishing
    async def run(self):
        """Publish telemetry and heartbeats until cancelled."""
        await asyncio.gather(self._every(self.telemetry_interval, self._publish_telemetry),
                             self._every(self.heartbeat_interval, self._publish_heartbeat))

    async def _every(self, period, action):
        next_time = self._clock()
        while True:
            await action()
            next_time += period
            delay = next_time - self._clock()
            if delay < 0:  # fell behind: restart the schedule
                next_time = self._clock()
                delay = 0
            await asyncio.sleep(delay)

    async def _publish_telemetry(self):
        await self.server.emit_telemetry("temperature", self.telemetry())

    async def _publish_heartbeat(self):
        self.heartbeats += 1
        await self.server.emit_event("heartbeat", {"counter": self.heartbeats,
                                                   "uptime": round(self._clock() - self._started, 3)})


def make_parser():
    parser = argparse.ArgumentParser(
        prog="python -m socs_tcp.simulators.jsonlines",
        description="JSON-lines thermal controller simulator (one JSON object per line, \\r\\n terminated).")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=listen_port_argument, default=50010, help="TCP port, 0 picks a free one (default 50010)")
    parser.add_argument("--telemetry-interval", type=float, default=0.5, help="seconds between telemetry messages")
    parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds between heartbeat events")
    parser.add_argument("--setpoint", type=float, default=20.0, help="initial setpoint, degrees C")
    parser.add_argument("--bare-ids", action="store_true",
                        help="send events and telemetry without the evt_/tel_ prefixes")
    parser.add_argument("--seed", type=int, default=None, help="seed of the noise generator")
    parser.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="default INFO")
    return parser


async def _serve(opts):
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = JsonLinesServer(opts.host, opts.port, name="thermal-sim", prefix_ids=not opts.bare_ids)
    try:
        sim = ThermalControllerSimulator(server, opts.telemetry_interval, opts.heartbeat_interval,
                                         setpoint=opts.setpoint, seed=opts.seed)
        await server.start()
    except (OSError, ValueError) as exc:
        log.error("cannot start on %s:%s: %s", opts.host, opts.port, exc)
        return 2
    publisher = asyncio.create_task(sim.run())
    try:
        sys.stdout.write(f"listening on {format_host_port(server.host, server.port)}\n")
        sys.stdout.flush()
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({publisher, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if publisher in done:
            stopper.cancel()
            log.error("publisher ended unexpectedly: %r", publisher.exception())
            return 1
        log.info("stopping")
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        await server.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0


def main(args=None):
    """Run the simulator until SIGINT or SIGTERM.  Returns the exit code."""
    opts = make_parser().parse_args(args)
    logging.basicConfig(level=opts.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(opts))


if __name__ == "__main__":
    sys.exit(main())
