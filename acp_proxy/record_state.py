"""What a session's state updates change in its stored record (mode, config options,
title): pure functions from an update to the new record and its store write. No I/O."""

from __future__ import annotations

import time
from typing import Final

import msgspec

from store import SessionRecord, UpdateSession

from .protocol import MALFORMED_JSON

__all__ = ["apply_state_update", "with_config_options", "with_current_mode"]

_encoder: Final = msgspec.json.Encoder()
_any_decoder: Final = msgspec.json.Decoder()


def with_current_mode(record: SessionRecord, mode_id: str) -> tuple[SessionRecord, UpdateSession]:
    """The session's current mode (re-applied when the agent is restored)."""
    modes = _any_decoder.decode(record.modes) if record.modes else {}
    if not isinstance(modes, dict):
        modes = {}
    modes["currentModeId"] = mode_id
    raw = _encoder.encode(modes)
    return (
        msgspec.structs.replace(record, modes=raw),
        UpdateSession(record.id, time.time(), modes=raw),
    )


def with_config_options(record: SessionRecord, raw: bytes) -> tuple[SessionRecord, UpdateSession]:
    """The session's config options (the complete set, as the agent sent it)."""
    return (
        msgspec.structs.replace(record, config_options=raw),
        UpdateSession(record.id, time.time(), config_options=raw),
    )


def apply_state_update(
    record: SessionRecord, kind: str, update: bytes
) -> tuple[SessionRecord, UpdateSession] | None:
    """What a ``current_mode_update``, ``config_option_update`` or ``session_info_update``
    changes in the record (None: nothing, or not understood)."""
    try:
        body = _any_decoder.decode(update)
    except MALFORMED_JSON:
        return None
    if not isinstance(body, dict):
        return None
    if kind == "current_mode_update" and isinstance(body.get("currentModeId"), str):
        return with_current_mode(record, body["currentModeId"])
    if kind == "config_option_update" and isinstance(body.get("configOptions"), list):
        return with_config_options(record, _encoder.encode(body["configOptions"]))
    if kind == "session_info_update" and "title" in body:
        title = body["title"] if isinstance(body["title"], str) else None
        return (
            msgspec.structs.replace(record, title=title),
            UpdateSession(record.id, time.time(), title=title),
        )
    return None
