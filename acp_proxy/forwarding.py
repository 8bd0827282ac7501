"""Agent → client requests of one session: routed to a client, or answered for it.

An agent's ``session/request_permission``, ``fs/*``, ``terminal/*``, elicitation or ``_``
extension request goes to the client chosen by the session (the running turn's, else the
one attached last) with a fresh id of that connection; the client's answer goes back under the
agent's id. With no client to ask it gets the configured answer at once: a pending request
hangs the agent. ``$/cancel_request`` is translated per hop (acp-notes §7.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import msgspec
from msgspec import Raw

from .agent import AgentProcess
from .config import Config
from .logs import get_logger
from .peer import Peer
from .protocol import (
    INTERNAL_ERROR,
    MALFORMED_JSON,
    ErrorResponse,
    Request,
    RequestId,
    Response,
    object_members,
    rewrite_members,
)

__all__ = ["CANCELLED_OUTCOME", "ForwardedRequest", "Forwarding", "with_session_id"]

_encoder: Final = msgspec.json.Encoder()
_any_decoder: Final = msgspec.json.Decoder()
#: The permission outcome sent when nobody can answer or the turn was cancelled.
CANCELLED_OUTCOME: Final = b'{"outcome":{"outcome":"cancelled"}}'


@dataclass
class ForwardedRequest:
    """An agent → client request waiting for the client's answer."""

    agent: AgentProcess
    agent_id: RequestId
    method: str
    params: Raw
    client: Peer
    client_id: int


class Forwarding:
    """The agent → client requests of one session that wait for a client's answer."""

    def __init__(self, session_id: str, config: Config) -> None:
        self.session_id = session_id
        self.config = config
        self.pending: dict[tuple[int, int], ForwardedRequest] = {}
        self.log = get_logger(session_id=session_id)

    def __bool__(self) -> bool:
        return bool(self.pending)

    def forward(
        self, agent: AgentProcess, msg: Request, client: Peer | None, params: Raw | bytes
    ) -> None:
        """Send the agent's request to ``client`` (None: answer it for nobody)."""
        if client is None:
            self.answer_unattached(agent, msg.id, msg.method, msg.params)
            return

        def on_client_reply(reply: Response | ErrorResponse) -> None:
            fwd = self.pending.pop((id(client), client_id), None)
            if fwd is None:  # already answered by the proxy (cancel, detach)
                return
            if isinstance(reply, Response):
                agent.send_response(msg.id, reply.result)
            else:
                agent.send_error(msg.id, reply.code, reply.message, raw=reply.error)

        client_id = client.send_request(msg.method, params, on_client_reply)
        self.pending[(id(client), client_id)] = ForwardedRequest(
            agent, msg.id, msg.method, msg.params, client, client_id
        )

    def forward_cancel(self, agent: AgentProcess, params: Raw) -> None:
        """The agent's ``$/cancel_request`` for one of its requests, in the client's ids."""
        try:
            target = _any_decoder.decode(params).get("requestId")
        except (*MALFORMED_JSON, AttributeError):
            return
        for fwd in self.pending.values():
            if fwd.agent is agent and fwd.agent_id == target:
                fwd.client.send_notification("$/cancel_request", {"requestId": fwd.client_id})
                return

    def forget_agent(self, agent: AgentProcess) -> None:
        """The agent ended: nobody waits for these answers any more."""
        for key, fwd in list(self.pending.items()):
            if fwd.agent is agent:
                del self.pending[key]

    def answer_unattached(
        self, agent: AgentProcess, ident: RequestId, method: str, params: Raw
    ) -> None:
        """Answer a request no client can: permissions by policy, anything else an error."""
        if method == "session/request_permission":
            agent.send_response(ident, self._unattached_permission(params))
            self.log.info("permission.answered_unattached", method=method)
            return
        agent.send_error(
            ident,
            INTERNAL_ERROR,
            f"{method}: no client is attached to session {self.session_id}, so nobody can "
            "serve it; the proxy advertises no fs/terminal capability",
            {"kind": "no_client_attached", "sessionId": self.session_id},
        )

    def _unattached_permission(self, params: Raw) -> bytes:
        policy = self.config.unattached_permission
        if policy == "cancelled":
            return CANCELLED_OUTCOME
        try:
            options = _any_decoder.decode(params).get("options") or []
        except (*MALFORMED_JSON, AttributeError):
            options = []
        for option in options:
            if isinstance(option, dict) and str(option.get("kind", "")).startswith(policy):
                return _encoder.encode(
                    {"outcome": {"outcome": "selected", "optionId": option.get("optionId")}}
                )
        return CANCELLED_OUTCOME

    def answer(self, predicate: Callable[[ForwardedRequest], bool]) -> int:
        """Answer matching forwarded requests on the client's behalf; returns how many.

        Permission requests get ``cancelled`` (mandatory after ``session/cancel``); others get
        the unattached answer.
        """
        count = 0
        for key, fwd in list(self.pending.items()):
            if not predicate(fwd):
                continue
            del self.pending[key]
            count += 1
            if fwd.method == "session/request_permission":
                fwd.agent.send_response(fwd.agent_id, CANCELLED_OUTCOME)
            else:
                self.answer_unattached(fwd.agent, fwd.agent_id, fwd.method, fwd.params)
        return count


def with_session_id(params: Raw, session_id: str) -> bytes | Raw:
    """``params`` with its ``sessionId`` member (if any) set to the proxy's id."""
    try:
        members = object_members(params)
    except Exception:
        return params
    if "sessionId" in members:
        return rewrite_members(members, sessionId=session_id)
    return params
