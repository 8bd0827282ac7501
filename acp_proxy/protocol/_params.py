"""Read and rewrite the few payload fields the proxy needs, leaving the rest raw.

Params are decoded one level deep as ``dict[str, Raw]``: a rewrite re-encodes only the outer
object and copies every other member's bytes as they came, so nested payloads (tool output,
``_meta``, unknown fields) are never re-encoded.
"""

from __future__ import annotations

from typing import Final

import msgspec
from msgspec import Raw

from ._errors import INVALID_PARAMS, RemoteProtocolError

__all__ = [
    "MALFORMED_JSON",
    "get_str",
    "object_members",
    "rewrite_members",
    "update_kind",
]

#: What msgspec raises for input that is not valid JSON text: invalid UTF-8 inside a string
#: surfaces as UnicodeDecodeError, absurd nesting as RecursionError. Catch all three.
MALFORMED_JSON: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
_members_decoder: Final = msgspec.json.Decoder(dict[str, Raw])
_str_decoder: Final = msgspec.json.Decoder(str)
_encoder: Final = msgspec.json.Encoder()


class _UpdateKind(msgspec.Struct):
    sessionUpdate: str = ""  # ACP wire name


_kind_decoder: Final = msgspec.json.Decoder(_UpdateKind)


def object_members(raw: Raw | bytes) -> dict[str, Raw]:
    """The top-level members of a JSON object, each left raw.

    Raises:
        RemoteProtocolError: -32602 when ``raw`` is not a JSON object.
    """
    if not raw:
        return {}
    try:
        return _members_decoder.decode(raw)
    except MALFORMED_JSON:
        raise RemoteProtocolError(
            "Invalid params: expected a JSON object", INVALID_PARAMS
        ) from None


def get_str(members: dict[str, Raw], key: str) -> str | None:
    """A string member, or None when absent, null or not a string."""
    raw = members.get(key)
    if raw is None:
        return None
    try:
        return _str_decoder.decode(raw)
    except MALFORMED_JSON:
        return None


def rewrite_members(members: dict[str, Raw], **changes: object) -> bytes:
    """Encode ``members`` with ``changes`` applied (a value of ``None`` removes the member).

    Values in ``changes`` may be :class:`Raw` (embedded verbatim) or any msgspec-encodable value.
    """
    out = dict(members)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = value if isinstance(value, Raw) else Raw(_encoder.encode(value))
    return _encoder.encode(out)


_KIND_PREFIX: Final = b'{"sessionUpdate":"'


def update_kind(update: Raw | bytes, *, validated: bool = False) -> str:
    """The ``sessionUpdate`` discriminator of a SessionUpdate ("" when absent or malformed).

    ``validated``: ``update`` is known to be well-formed JSON (bytes of a ``Raw`` msgspec
    decoded). Then, when the discriminator is its first member spelled without escapes (what
    agents write), it is read from the bytes without decoding the rest.
    """
    if validated and isinstance(update, bytes) and update.startswith(_KIND_PREFIX):
        end = update.find(b'"', len(_KIND_PREFIX))
        kind = update[len(_KIND_PREFIX) : end]
        if end > 0 and b"\\" not in kind:
            try:
                return kind.decode()
            except UnicodeDecodeError:
                return ""
    try:
        return _kind_decoder.decode(update).sessionUpdate
    except MALFORMED_JSON:
        return ""
