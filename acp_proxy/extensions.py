"""The proxy's own ACP extension methods (``_acp-proxy/…``): names shared by the bridge and
the server, with no imports so the bridge stays cheap to start."""

from __future__ import annotations

from typing import Final

__all__ = ["ENV_METHOD", "STATUS_METHOD", "STDERR_METHOD"]

#: Extension notification a bridge sends first: ``{"env": {NAME: value}, "stderr": bool}``;
#: ``stderr``: relay the agent's stderr lines during this connection's turns.
ENV_METHOD: Final = "_acp-proxy/env"

#: Extension notification to a client that asked for it: ``{"sessionId", "line"}``, one line
#: the session's agent wrote to stderr while a turn ran (``stderr_relay.py``).
STDERR_METHOD: Final = "_acp-proxy/stderr"

#: Extension request answered by the proxy itself (never forwarded to an agent): what it is
#: doing (``acp-proxy status``, ``acp-proxy health``).
STATUS_METHOD: Final = "_acp-proxy/status"
