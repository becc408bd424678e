"""OCS plugin entry point: tells ``ocs-agent-cli --agent-class NAME`` where
each agent of this package lives."""

package_name = "socs_tcp"
agents = {
    "TCPBusAgent": {"module": "socs_tcp_agents.tcp_bus.agent", "entry_point": "main"},
    "ScpiInstrumentAgent": {"module": "socs_tcp_agents.scpi_instrument.agent", "entry_point": "main"},
}
