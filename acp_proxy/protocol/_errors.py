"""JSON-RPC error codes and the protocol error hierarchy (h11 style).

``ProtocolError`` is abstract: code raises :class:`LocalProtocolError` ("we were asked to do
something the protocol forbids") or :class:`RemoteProtocolError` ("the peer broke the rules").
Each carries the JSON-RPC ``code`` the shell should answer with, like h11's
``error_status_hint``.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "AGENT_EXITED",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "PROXY_STOPPING",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "SESSION_BUSY",
    "SESSION_OWNED_ELSEWHERE",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]

# JSON-RPC 2.0 and ACP ($defs/ErrorCode in schema/v1/schema.json).
PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
REQUEST_CANCELLED: Final = -32800
RESOURCE_NOT_FOUND: Final = -32002
# Proxy-specific codes live in the implementation-defined -32000..-32099 range.
SESSION_BUSY: Final = -32010  #: a turn is already running on this session
AGENT_EXITED: Final = -32011  #: the agent process ended while the request was pending
PROXY_STOPPING: Final = -32012  #: the proxy is shutting down (SIGTERM); retry on the next one
SESSION_OWNED_ELSEWHERE: Final = -32013  #: another replica holds the session's lease


class ProtocolError(Exception):
    """A message broke JSON-RPC or ACP rules. Abstract: raise a subclass.

    Attributes:
        code: the JSON-RPC error code to answer with.
        data: optional structured detail for the error's ``data`` member.
    """

    code: int
    data: object

    def __init__(self, message: str, code: int = INVALID_REQUEST, data: object = None) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local- or RemoteProtocolError")
        super().__init__(message)
        self.code = code
        self.data = data

    @property
    def message(self) -> str:
        """The human-readable message (what happened and what to do)."""
        return str(self.args[0])


class LocalProtocolError(ProtocolError):
    """We (the proxy) were about to break the protocol, or refuse a well-formed request."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid JSON-RPC / ACP."""
