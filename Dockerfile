# socs-tcp: the socs_tcp package and its OCS agents (socs_tcp_agents), run
# like the OCS images: "dumb-init ocs-agent-cli", site config in /config,
# the agent chosen by INSTANCE_ID (and SITE_HOST, SITE_HUB, SITE_HTTP) from
# the environment.  See docker-compose.yml and docs/deployment.rst.
#
#   docker build -t socs-tcp .
#   docker run --rm -v "$PWD/deploy:/config:ro" -e INSTANCE_ID=tcp-bus -e SITE_HOST=docker socs-tcp

# The Python 3.11 image both stages start from.  Real builds keep the default;
# the compose test (tests/test_docker_site.py) builds on a locally made
# Debian image with Python 3.11, as no image registry can be reached there.
ARG BASE_IMAGE=python:3.11-slim

# ---- build stage: install into a virtualenv, with a compiler at hand for any
# dependency that has no wheel for the target platform.
FROM ${BASE_IMAGE} AS build

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
# PYBJDATA_NO_EXTENSION: autobahn's serialization extra builds bjdata from
# source, and its C extension can be compiled against another numpy than the
# one installed; the pure-Python build avoids that.
ENV PATH="/opt/venv/bin:$PATH" \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYBJDATA_NO_EXTENSION=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY socs_tcp ./socs_tcp
COPY agents ./agents
COPY socs_tcp_stack ./socs_tcp_stack
# dumb-init as PID 1 forwards signals to the agent and reaps its children,
# so "docker stop" lets OCS stop its sessions cleanly.
RUN pip install . dumb-init

# ---- runtime stage: the virtualenv only, run by an unprivileged user.
FROM ${BASE_IMAGE}

# uid/gid 9000, as the ocs user of the OCS images
RUN groupadd --gid 9000 ocs \
    && useradd --uid 9000 --gid 9000 --create-home --shell /usr/sbin/nologin ocs

COPY --from=build /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:$PATH" \
    OCS_CONFIG_DIR=/config \
    PYTHONUNBUFFERED=1

# Not the source tree: the installed package is what runs.
WORKDIR /
USER ocs

ENTRYPOINT ["dumb-init", "ocs-agent-cli"]
