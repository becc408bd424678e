"""OCS plugin entry point: maps agent class names to their modules.

``ocs-agent-cli --agent-class NAME`` looks the class up here.
"""

package_name = "socs_tcp"
agents = {}
