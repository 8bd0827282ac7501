# syntax=docker/dockerfile:1
#
# acp-proxy: a long-lived ACP sidecar (see README.md and deploy/README.md).
#
#   docker build -t acp-proxy .
#   docker run --init -v acp-run:/run/acp -v acp-state:/var/lib/acp-proxy acp-proxy
#
# The default command serves the bundled fake agent, so the image runs on its embedded
# defaults. A real deployment installs its agent in a derived image and overrides the command
# with `-- AGENT_COMMAND [ARGS...]`; deploy/opencode.Dockerfile is a complete example
# (explained in deploy/README.md), in short:
#
#   FROM node:22-bookworm-slim AS opencode
#   RUN npm install -g opencode-ai@1.18.33
#   FROM acp-proxy
#   COPY --from=opencode /usr/local/lib/node_modules/opencode-ai/bin/opencode.exe /usr/local/bin/opencode
#   CMD ["--", "opencode", "acp"]
#
# Stopping: SIGTERM starts the drain: new work is refused (proxy_stopping), running turns get up
# to drain_timeout_s (25 s) to finish, what is left is cancelled and answered; then every agent's
# stdin is closed, its process group SIGTERMed and finally SIGKILLed (kill_grace_s = 2 s per
# step), the store flushed and the socket removed. Give it a grace period of 40 s (`docker stop
# -t 40`: Docker's default is 10 s; compose `stop_grace_period`, Kubernetes
# `terminationGracePeriodSeconds`), or lower `--drain-timeout` to fit yours.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: install the project and its dependencies into a self-contained venv -------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN python -m venv /opt/acp-proxy

WORKDIR /src
# Only pyproject.toml, uv.lock, README.md, acp_proxy/ and store/ survive .dockerignore.
COPY . .
# The runtime part of uv.lock, exact versions with hashes (the same lock `make` and CI use); uv
# only exports it and leaves the image with pip. All dependencies ship manylinux wheels: PyPI is
# the only network access needed.
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
    && uv export --frozen --no-dev --no-emit-project --no-header -o /tmp/runtime.txt \
    && /opt/acp-proxy/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/runtime.txt \
    && /opt/acp-proxy/bin/pip install --no-cache-dir --no-deps . \
    && /opt/acp-proxy/bin/acp-proxy --version

# --- runtime: the venv, a non-root user, nothing else ---------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="acp-proxy" \
      org.opencontainers.image.description="A long-lived ACP sidecar: one warm agent per conversation, every session recorded in SQLite." \
      org.opencontainers.image.licenses="MIT"

# uid/gid 10001: fixed, so that client containers and volume owners can match it.
# HOME is the state volume: agents keep their own data under ~ (opencode: ~/.local/share),
# which then survives restarts next to sessions.db.
# /workspace: an empty, acp-owned mount point for the files the agent works on (the `cwd` of
# session/new), shared with the app container at the same path.
RUN groupadd --system --gid 10001 acp \
    && useradd --system --uid 10001 --gid acp --no-create-home \
        --home-dir /var/lib/acp-proxy --shell /usr/sbin/nologin acp \
    && mkdir -p /run/acp /var/lib/acp-proxy /workspace \
    && chown acp:acp /run/acp /var/lib/acp-proxy /workspace \
    && chmod 0750 /run/acp /var/lib/acp-proxy /workspace

COPY --from=build /opt/acp-proxy /opt/acp-proxy

ENV PATH=/opt/acp-proxy/bin:$PATH \
    HOME=/var/lib/acp-proxy \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ACP_PROXY_SOCKET=/run/acp/proxy.sock \
    ACP_PROXY_DB=/var/lib/acp-proxy/sessions.db

# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /var/lib/acp-proxy

# /run/acp: the socket, shared with the client container. /var/lib/acp-proxy: the database
# (and the agents' HOME). Named volumes inherit the acp:acp 0750 ownership set above.
VOLUME ["/run/acp", "/var/lib/acp-proxy"]

STOPSIGNAL SIGTERM

# Healthy = the proxy answers an `_acp-proxy/status` request on its socket within 2 s (it
# listens as soon as the store is open). Each check is one short client connection (logged
# as client.connected/disconnected). To move the socket, set ACP_PROXY_SOCKET rather than
# --socket, so this check follows it. (podman's default OCI image format drops HEALTHCHECK:
# compose.yaml repeats it.)
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["acp-proxy", "health"]

# umask 0027: the database, its WAL and what agents write under HOME are not world-readable
# (the socket has its own mode, socket_mode). A shell sets it, then execs the proxy (PID 1 or
# under --init), which keeps signals going to the proxy itself.
ENTRYPOINT ["/bin/sh", "-c", "umask 0027 && exec acp-proxy serve \"$@\"", "acp-proxy"]
CMD ["--", "python", "-m", "acp_proxy.testing.fake_agent"]
