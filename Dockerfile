# socs-tcp image: the package and its agents, started through ocs-agent-cli
# like the OCS images (INSTANCE_ID, SITE_HUB, SITE_HTTP from the environment).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY socs_tcp ./socs_tcp
COPY agents ./agents
RUN pip install --no-cache-dir . && useradd --create-home ocs
USER ocs
ENV OCS_CONFIG_DIR=/config
ENTRYPOINT ["ocs-agent-cli"]
