"""The proxy's own requests to an agent, awaited: ``call``, ``initialize`` and what the agent
advertised. A mixin of :class:`~acp_proxy.agent.AgentProcess`, which provides the request
transport (``send_request``, ``forget_request``) and its exit state."""

from __future__ import annotations

from typing import Any, Final

import anyio
import msgspec
from msgspec import Raw

from . import __version__
from .batch import AgentError, AgentExited, Batch, ExitInfo, ReplyCallback
from .protocol import AGENT_EXITED, ErrorResponse, Response

__all__ = ["AgentCalls"]

_result_decoder: Final = msgspec.json.Decoder(dict[str, Any])


class AgentCalls:
    """Awaited requests on top of an agent's request transport."""

    exit_info: ExitInfo | None
    initialize_result: dict[str, Any]

    def send_request(self, method: str, params: Raw | bytes, on_reply: ReplyCallback) -> int:
        """Send a request; ``on_reply`` gets the answer (the transport's)."""
        raise NotImplementedError

    def forget_request(self, ident: int) -> None:
        """Drop the callback of a request whose answer no longer matters (the transport's)."""
        raise NotImplementedError

    async def call(self, method: str, params: object) -> dict[str, Any]:
        """Send a proxy-originated request and wait for its result.

        Raises:
            AgentError: the agent answered with an error.
            AgentExited: the process ended first.
        """
        done = anyio.Event()
        box: list[Response | ErrorResponse] = []

        def on_reply(reply: Response | ErrorResponse, batch: Batch) -> None:
            box.append(reply)
            batch.deliveries.append(done.set)

        payload = params if isinstance(params, bytes | Raw) else msgspec.json.encode(params)
        ident = self.send_request(method, payload, on_reply)
        try:
            await done.wait()
        finally:
            if not box:
                self.forget_request(ident)
        reply = box[0]
        if isinstance(reply, ErrorResponse):
            if reply.code == AGENT_EXITED and self.exit_info is not None:
                raise AgentExited(self.exit_info, f"waiting for {method}")
            raise AgentError(method, reply)
        raw = bytes(reply.result)
        return {} if raw == b"null" else _result_decoder.decode(raw)

    async def initialize(self, client_capabilities: dict[str, Any]) -> None:
        """ACP ``initialize`` with the proxy's fixed client capability set."""
        self.initialize_result = await self.call(
            "initialize",
            {
                "protocolVersion": 1,
                "clientCapabilities": client_capabilities,
                "clientInfo": {"name": "acp-proxy", "version": __version__},
            },
        )

    @property
    def capabilities(self) -> dict[str, Any]:
        """The agent's ``agentCapabilities`` (empty before initialize)."""
        caps = self.initialize_result.get("agentCapabilities")
        return caps if isinstance(caps, dict) else {}

    def supports(self, session_capability: str) -> bool:
        """Whether ``sessionCapabilities.<name>`` is advertised (``load`` reads loadSession)."""
        if session_capability == "load":
            return self.capabilities.get("loadSession") is True
        caps = self.capabilities.get("sessionCapabilities")
        return isinstance(caps, dict) and isinstance(caps.get(session_capability), dict)
