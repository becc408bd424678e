"""The SCPI instrument driver of ScpiInstrumentAgent against the simulated instrument."""

import logging

import pytest
from socs_tcp_agents.scpi_instrument.drivers import ScpiError, ScpiInstrument, parse_error

from socs_tcp import LinkError, LinkTimeoutError
from socs_tcp.simulators.scpi import ScpiInstrument as SimulatedInstrument
from socs_tcp.testing import DeviceEmulator


@pytest.fixture
def device():
    emulator = DeviceEmulator(default_response=SimulatedInstrument(noise=0).respond, write_termination="\n").start()
    try:
        yield emulator
    finally:
        emulator.shutdown()


def test_command_and_ask(device):
    psu = ScpiInstrument("127.0.0.1", device.port, 2.0)
    psu.command("VOLT 2.5")
    assert float(psu.ask("VOLT?")) == 2.5
    assert psu.identify()["model"]


def test_rejected_command_names_it_and_the_error(device):
    psu = ScpiInstrument("127.0.0.1", device.port, 2.0)
    with pytest.raises(ScpiError, match=r"'VOLT:BOGUS 1'.*-113") as info:
        psu.command("VOLT:BOGUS 1")
    assert info.value.errors[0][0] == -113
    assert psu.error_queue() == [], "the queue was emptied"


def test_late_reply_is_neither_taken_as_the_error_queue_nor_as_the_next_answer(device, caplog):
    psu = ScpiInstrument("127.0.0.1", device.port, 2.0)
    psu.command("VOLT 1.25")
    device.set_delay(0.6)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(LinkTimeoutError):
            psu.ask("VOLT?", timeout=0.3)   # the reply comes 0.6 s later, during SYST:ERR?
    assert "late reply" in caplog.text
    device.set_delay(0)
    psu.command("VOLT 3.5")
    assert float(psu.ask("VOLT?")) == 3.5


def test_instrument_out_of_step_is_a_link_error_not_a_crash(make_emulator):
    """Answers every line, commands too.  Whether the stray answer to ``VOLT 1`` is
    drained before ``SYST:ERR?`` or read as its answer depends on timing: both
    must end in the same LinkError (once this raised LinkTimeoutError instead)."""
    nonsense = make_emulator(default_response=lambda line: "hello", write_termination="\n")
    psu = ScpiInstrument("127.0.0.1", nonsense.port, 2.0)
    with pytest.raises(LinkError, match="out of step"):
        psu.command("VOLT 1")


def test_one_nonsense_answer_to_the_error_query_is_out_of_step_after_the_timeout(make_emulator):
    """The deterministic form of the path that raced: the only line that comes is
    the nonsense answer to ``SYST:ERR?``, and nothing follows it."""
    nonsense = make_emulator(default_response=lambda line: "hello" if line == "SYST:ERR?" else None,
                             write_termination="\n")
    psu = ScpiInstrument("127.0.0.1", nonsense.port, 0.3)
    with pytest.raises(LinkError, match=r"answered 'hello', not an error-queue entry.*out of step") as info:
        psu.command("VOLT 1")
    assert not isinstance(info.value, LinkTimeoutError)
    assert nonsense.received == ["VOLT 1", "SYST:ERR?"]


@pytest.mark.parametrize("reply, expected", [
    ('-113,"Undefined header"', (-113, "Undefined header")),
    ('+0,"No error"', (0, "No error")),
])
def test_parse_error(reply, expected):
    assert parse_error(reply) == expected


def test_parse_error_names_a_bad_reply():
    with pytest.raises(ValueError, match="'1.5'"):
        parse_error("1.5")
