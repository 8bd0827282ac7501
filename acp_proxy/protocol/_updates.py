"""The hot path: ``session/update`` notifications, decoded in one pass. No I/O.

Nearly every line an agent writes during a turn is a ``session/update`` notification. In the
shape agents write them (``jsonrpc`` first, then ``method``, then ``params`` holding exactly
``sessionId``, ``update`` and maybe ``_meta``) one typed decode validates the whole line and
hands back ``update`` raw. Anything else (other key order, extra members, a request with that
method, malformed JSON) is left to :func:`~acp_proxy.protocol.decode_message`, which gives the
same meaning or the error to answer.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from msgspec import Raw

from ._params import MALFORMED_JSON

__all__ = ["SessionUpdate", "decode_update_line", "decode_update_params"]


class SessionUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``session/update`` params: ``update`` and ``_meta`` stay raw."""

    sessionId: str  # ACP wire name
    update: Raw
    meta: Raw = msgspec.field(name="_meta", default=Raw())


class _UpdateLine(msgspec.Struct, forbid_unknown_fields=True):
    jsonrpc: Literal["2.0"]
    method: Literal["session/update"]
    params: SessionUpdate


_LINE_PREFIX: Final = b'{"jsonrpc":"2.0","method":"session/update",'
_line_decoder: Final = msgspec.json.Decoder(_UpdateLine)
_params_decoder: Final = msgspec.json.Decoder(SessionUpdate)
_NOT_THIS_SHAPE: Final = (msgspec.ValidationError, *MALFORMED_JSON)


def decode_update_line(line: bytes) -> SessionUpdate | None:
    """The params of ``line`` if it is a ``session/update`` notification in the usual shape.

    None means "decode it with ``decode_message``": the line may still be a valid
    ``session/update`` written differently, another message, or malformed.
    """
    if not line.startswith(_LINE_PREFIX):
        return None
    if not line.isascii():
        # msgspec does not look inside Raw members: invalid UTF-8 in ``update`` would pass.
        # decode_message checks the whole line and answers -32700.
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return None
    try:
        return _line_decoder.decode(line).params
    except _NOT_THIS_SHAPE:
        return None


def decode_update_params(params: Raw | bytes) -> SessionUpdate | None:
    """``session/update`` params in the usual shape, or None (read them member by member)."""
    try:
        return _params_decoder.decode(params)
    except _NOT_THIS_SHAPE:
        return None
