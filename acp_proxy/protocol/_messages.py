"""The JSON-RPC 2.0 envelope: decode, classify, encode. No I/O.

Only the envelope is decoded; ``params``, ``result`` and ``error`` stay :class:`msgspec.Raw` so
payloads are forwarded byte for byte (unknown fields, unknown update kinds and ``_meta``
survive untouched: acp-notes §11.8). JSON-RPC has no tag field, so a plain Struct is decoded
and classified by which members are present (style.md §3.4).
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec
from msgspec import UNSET, Raw, UnsetType

from ._depth import MAX_NESTING_DEPTH, exceeds_depth
from ._errors import INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, RemoteProtocolError
from ._params import MALFORMED_JSON

__all__ = [
    "EMPTY",
    "Call",
    "ErrorResponse",
    "Message",
    "Notification",
    "Request",
    "RequestId",
    "Response",
    "as_valid_utf8",
    "decode_message",
    "encode_error",
    "encode_notification",
    "encode_request",
    "encode_response",
    "error_payload",
    "require_utf8",
]

#: ACP ``RequestId``: string | int64 | null.
RequestId: TypeAlias = int | str | None

#: An absent member. ``Raw()`` is empty, while JSON ``null`` is ``Raw(b"null")``.
EMPTY: Final = Raw()


class _Envelope(msgspec.Struct):
    jsonrpc: str | UnsetType = UNSET
    id: RequestId | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: Raw = EMPTY
    result: Raw = EMPTY
    error: Raw = EMPTY


class _ErrorObject(msgspec.Struct):
    code: int
    message: str
    data: Raw = EMPTY


class Request(msgspec.Struct, frozen=True):
    """A call that expects an answer."""

    id: RequestId
    method: str
    params: Raw = EMPTY


class Notification(msgspec.Struct, frozen=True):
    """A call without an id: nobody answers it."""

    method: str
    params: Raw = EMPTY


class Response(msgspec.Struct, frozen=True):
    """A successful answer. ``result`` may be ``null`` (older agents answer load with null)."""

    id: RequestId
    result: Raw


class ErrorResponse(msgspec.Struct, frozen=True):
    """An error answer; ``error`` is the raw error object, passed through unchanged."""

    id: RequestId
    error: Raw
    code: int
    message: str


Message: TypeAlias = Request | Notification | Response | ErrorResponse
#: What a peer calls: a request or a notification (everything but an answer).
Call: TypeAlias = Request | Notification

_decoder: Final = msgspec.json.Decoder(_Envelope)
_error_decoder: Final = msgspec.json.Decoder(_ErrorObject)
_encoder: Final = msgspec.json.Encoder()


_OPENERS: Final = frozenset(b"{[")


def _is_structured(raw: Raw) -> bool:
    """True when ``raw`` is a JSON object or array (what JSON-RPC allows for params)."""
    return memoryview(raw)[0] in _OPENERS


def require_utf8(line: bytes) -> None:
    """Raise -32700 unless ``line`` is valid UTF-8 as a whole.

    JSON text is UTF-8 (RFC 8259 §8.1; acp-notes §1.1). Checked here, on the whole line, rather
    than inferred from whatever a JSON library raises: msgspec raised ``UnicodeDecodeError`` up to
    0.22 and ``DecodeError`` since 0.23, and it never looks inside ``Raw`` members at all, so a
    payload the proxy forwards and stores would otherwise escape the check. ASCII lines (most of
    them) cost one C scan and no copy.
    """
    if line.isascii():
        return
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RemoteProtocolError(
            f"Parse error: invalid UTF-8 at byte {exc.start}; each line must be one complete "
            "UTF-8 JSON value",
            PARSE_ERROR,
        ) from None


def as_valid_utf8(data: bytes) -> bytes:
    """``data`` unchanged when it is valid UTF-8, else with each bad sequence as U+FFFD.

    For bytes already in a store (recorded before every line was checked): what is replayed to
    a client or seeded into an agent must be JSON a strict parser accepts.
    """
    if data.isascii():
        return data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace").encode("utf-8")
    return data


def decode_message(line: bytes) -> Message:
    """Decode one line into a classified message.

    Raises:
        RemoteProtocolError: code -32700 for invalid JSON or invalid UTF-8 anywhere in the line,
            -32600 for valid JSON that is not a JSON-RPC 2.0 message, -32602 for JSON nested
            deeper than ``MAX_NESTING_DEPTH``. ``data`` holds the request
            id when one could be read, so the caller can answer it (``None`` otherwise, answered
            with id null).
    """
    require_utf8(line)
    try:
        env = _decoder.decode(line)
    except msgspec.ValidationError as exc:
        raise RemoteProtocolError(
            f"Invalid request: not a JSON-RPC 2.0 message object ({exc}); send one JSON object "
            "per line",
            INVALID_REQUEST,
        ) from None
    except MALFORMED_JSON as exc:
        # Malformed JSON, or RecursionError for absurd nesting: the peer's malformed input.
        raise RemoteProtocolError(
            f"Parse error: {exc}; each line must be one complete UTF-8 JSON value",
            PARSE_ERROR,
        ) from None
    ident = None if isinstance(env.id, UnsetType) else env.id
    if exceeds_depth(line):
        # Refused before it is forwarded or stored: a recorded event this deep would make
        # every restore of the conversation fail.
        raise RemoteProtocolError(
            f"Invalid params: JSON nested deeper than {MAX_NESTING_DEPTH} levels; flatten "
            "the message",
            INVALID_PARAMS,
            ident,
        )

    def invalid(why: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"Invalid request: {why}", INVALID_REQUEST, ident)

    if env.jsonrpc != "2.0":
        raise invalid('"jsonrpc" must be the string "2.0"')
    if not isinstance(env.method, UnsetType):
        if env.result or env.error:
            raise invalid("a message cannot carry both a method and a result or error")
        if env.params and not _is_structured(env.params):
            raise invalid('"params" must be an object or an array')
        if isinstance(env.id, UnsetType):
            return Notification(env.method, env.params)
        return Request(env.id, env.method, env.params)
    if isinstance(env.id, UnsetType):
        raise invalid('a message needs a "method" (call) or an "id" (response)')
    if env.result and env.error:
        raise invalid('a response carries "result" or "error", not both')
    if env.error:
        try:
            err = _error_decoder.decode(env.error)
        except msgspec.DecodeError:
            raise invalid(
                '"error" must be an object with integer "code" and string "message"'
            ) from None
        return ErrorResponse(env.id, env.error, err.code, err.message)
    if env.result:
        return Response(env.id, env.result)
    raise invalid('a response needs "result" or "error"')


def _encode_id(ident: RequestId) -> bytes:
    return _encoder.encode(ident)


def encode_request(ident: RequestId, method: str, params: Raw | bytes = EMPTY) -> bytes:
    """One request line, newline included. ``params`` bytes are embedded verbatim."""
    head = b'{"jsonrpc":"2.0","id":' + _encode_id(ident) + b',"method":' + _encoder.encode(method)
    if params:
        return head + b',"params":' + bytes(params) + b"}\n"
    return head + b"}\n"


def encode_notification(method: str, params: Raw | bytes = EMPTY) -> bytes:
    """One notification line, newline included."""
    head = b'{"jsonrpc":"2.0","method":' + _encoder.encode(method)
    if params:
        return head + b',"params":' + bytes(params) + b"}\n"
    return head + b"}\n"


def encode_response(ident: RequestId, result: Raw | bytes) -> bytes:
    """One success response line; ``result`` is embedded verbatim (``b"null"`` allowed)."""
    return b'{"jsonrpc":"2.0","id":' + _encode_id(ident) + b',"result":' + bytes(result) + b"}\n"


def error_payload(code: int, message: str, data: object = None) -> bytes:
    """The JSON of an error object."""
    obj: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        obj["data"] = data
    return _encoder.encode(obj)


def encode_error(
    ident: RequestId, code: int, message: str, data: object = None, *, raw: Raw | bytes = EMPTY
) -> bytes:
    """One error response line. ``raw`` forwards an existing error object unchanged."""
    body = bytes(raw) if raw else error_payload(code, message, data)
    return b'{"jsonrpc":"2.0","id":' + _encode_id(ident) + b',"error":' + body + b"}\n"
