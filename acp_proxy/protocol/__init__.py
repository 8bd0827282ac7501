"""The protocol core: framing, envelope, errors and payload field access. No I/O at all.

Nothing here imports anyio, structlog or aiosqlite; the shell (``acp_proxy`` proper) feeds
bytes in and writes the bytes that come out.
"""

from __future__ import annotations

from ._depth import MAX_NESTING_DEPTH, exceeds_depth
from ._errors import (
    AGENT_EXITED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROXY_STOPPING,
    REQUEST_CANCELLED,
    RESOURCE_NOT_FOUND,
    SESSION_BUSY,
    SESSION_OWNED_ELSEWHERE,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ._framing import DEFAULT_MAX_LINE_BYTES, OVERSIZE, LineBuffer, Oversize
from ._messages import (
    EMPTY,
    Call,
    ErrorResponse,
    Message,
    Notification,
    Request,
    RequestId,
    Response,
    as_valid_utf8,
    decode_message,
    encode_error,
    encode_notification,
    encode_request,
    encode_response,
    error_payload,
)
from ._params import MALFORMED_JSON, get_str, object_members, rewrite_members, update_kind
from ._updates import SessionUpdate, decode_update_line, decode_update_params

__all__ = [
    "AGENT_EXITED",
    "DEFAULT_MAX_LINE_BYTES",
    "EMPTY",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "MALFORMED_JSON",
    "MAX_NESTING_DEPTH",
    "METHOD_NOT_FOUND",
    "OVERSIZE",
    "PARSE_ERROR",
    "PROXY_STOPPING",
    "REQUEST_CANCELLED",
    "RESOURCE_NOT_FOUND",
    "SESSION_BUSY",
    "SESSION_OWNED_ELSEWHERE",
    "Call",
    "ErrorResponse",
    "LineBuffer",
    "LocalProtocolError",
    "Message",
    "Notification",
    "Oversize",
    "ProtocolError",
    "RemoteProtocolError",
    "Request",
    "RequestId",
    "Response",
    "SessionUpdate",
    "as_valid_utf8",
    "decode_message",
    "decode_update_line",
    "decode_update_params",
    "encode_error",
    "encode_notification",
    "encode_request",
    "encode_response",
    "error_payload",
    "exceeds_depth",
    "get_str",
    "object_members",
    "rewrite_members",
    "update_kind",
]
