# syntax=docker/dockerfile:1
#
# acp-proxy + opencode: a derived image for a real deployment (see deploy/README.md).
#
#   docker build -t acp-proxy .                                              # the base image
#   docker build -f deploy/opencode.Dockerfile -t acp-proxy-opencode deploy  # this one
#
# `npm install -g opencode-ai` needs Node.js only at install time: its postinstall script puts
# the native, glibc-linked opencode binary in place of bin/opencode.exe. So Node.js stays in the
# first stage and the proxy image gets the one binary.

ARG ACP_PROXY_IMAGE=acp-proxy:latest

FROM node:22-bookworm-slim AS opencode
ARG OPENCODE_VERSION=1.18.33
RUN npm install -g "opencode-ai@${OPENCODE_VERSION}" \
    && /usr/local/lib/node_modules/opencode-ai/bin/opencode.exe --version

FROM ${ACP_PROXY_IMAGE}
USER 0
# git: opencode works on repositories; ripgrep: its search tools (when `rg` is missing it tries
# to download one at run time, which a locked-down cluster does not allow); tini: see ENTRYPOINT.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ripgrep tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=opencode /usr/local/lib/node_modules/opencode-ai/bin/opencode.exe /usr/local/bin/opencode
USER 10001:10001
# The binary runs here (glibc of the proxy's base image); HOME=/tmp keeps this check's files
# out of the state volume.
RUN HOME=/tmp opencode --version
# Provider credentials come from the environment at run time (e.g. ANTHROPIC_API_KEY), or from
# `opencode auth login` state under $HOME (= /var/lib/acp-proxy, the state volume).
# tini reaps what the agents leave behind: tools an agent starts (shells, language servers) are
# re-parented to PID 1 when the agent ends, and the proxy only waits for the agents themselves.
# -s: also works when tini is not PID 1 (e.g. under `docker run --init`). SIGTERM is forwarded
# to the proxy, which then drains and ends its agents. The shell sets umask 0027 (as the base
# image does) and execs the proxy.
ENTRYPOINT ["/usr/bin/tini", "-s", "--", "/bin/sh", "-c", "umask 0027 && exec acp-proxy serve \"$@\"", "acp-proxy"]
CMD ["--", "opencode", "acp"]
