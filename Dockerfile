# One image for the router replicas (`resource-router serve`) and the example instances
# (`python examples/echo_instance.py`). Build: docker build -t resource-router .
#
# Reproducible: the base image is pinned to a full version, and every dependency to the version in
# docker/constraints.txt (`make constraints` re-pins it). The image holds the gateway and nats extras
# (`serve --nats`), and no fakeredis, so a replica serves a real Redis.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel needs (no .venv, caches or tests from the build context).
COPY pyproject.toml README.md LICENSE ./
COPY docker/constraints.txt ./docker/constraints.txt
COPY src ./src
COPY lua ./lua
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --constraint docker/constraints.txt ".[gateway,nats]"

FROM ${PYTHON_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RESOURCE_ROUTER_HOST=0.0.0.0 \
    RESOURCE_ROUTER_PORT=8000
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY examples ./examples
RUN useradd --system --uid 10001 --no-create-home router
USER router

EXPOSE 8000
# /healthz answers while the process is alive; /readyz also needs Redis.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('RESOURCE_ROUTER_PORT', '8000')}/readyz\", timeout=2)"]
# exec form: the replica is PID 1's child-free main process and gets SIGTERM directly, so
# `docker stop` drains in-flight requests (up to --shutdown-timeout seconds).
ENTRYPOINT ["resource-router"]
CMD ["serve"]
