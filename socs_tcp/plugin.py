"""OCS plugin entry point: tells ``ocs-agent-cli`` where each agent class of
this package lives (the class is named by ``agent-class`` in the site file)."""

package_name = "socs_tcp"
agents = {
    "TCPBusAgent": {"module": "socs_tcp_agents.tcp_bus.agent", "entry_point": "main"},
    "ScpiInstrumentAgent": {"module": "socs_tcp_agents.scpi_instrument.agent", "entry_point": "main"},
    "MessageLinkAgent": {"module": "socs_tcp_agents.message_link.agent", "entry_point": "main"},
    "DeviceAgent": {"module": "socs_tcp_agents.device.agent", "entry_point": "main"},
}
