"""Who may use which session, and which working directories a session may have.

The socket's file mode and the peer check on accept (``listener.py``) decide who connects.
With ``session_access = "creator"`` a connected peer also sees only the sessions its own uid
created (``SO_PEERCRED`` at ``session/new``, stored as ``creator_uid``): others' are answered
as if they did not exist, so their ids, cwds and titles do not leak either. Sessions recorded
before the column existed belong to the proxy's own uid.

A ``cwd`` must exist on the proxy's host (an agent given a missing one silently ran in the
proxy's own directory) and, with ``allowed_roots``, lie inside one of them once symlinks are
resolved.
"""

from __future__ import annotations

import os

from store import SessionRecord

from .config import Config
from .protocol import INVALID_PARAMS, RESOURCE_NOT_FOUND, LocalProtocolError

__all__ = ["check_cwd", "check_session_access", "listed_creator", "may_use"]


def may_use(config: Config, peer_uid: int | None, record: SessionRecord) -> bool:
    """Whether a client with ``peer_uid`` may load, prompt, cancel, close or delete it."""
    if config.session_access != "creator":
        return True
    owner = record.creator_uid if record.creator_uid is not None else os.getuid()
    return peer_uid == owner


def check_session_access(config: Config, peer_uid: int | None, record: SessionRecord) -> None:
    """Raise -32002 (as for an unknown session) unless `may_use`."""
    if not may_use(config, peer_uid, record):
        raise LocalProtocolError(
            f"Resource not found: no session {record.id} for uid {peer_uid} (this proxy "
            'serves a session only to the uid that created it: session_access = "creator")',
            RESOURCE_NOT_FOUND,
            {"sessionId": record.id},
        )


def listed_creator(config: Config, peer_uid: int | None) -> int | None:
    """The ``creator_uid`` ``session/list`` filters on (None: every session)."""
    if config.session_access != "creator":
        return None
    return peer_uid if peer_uid is not None else -1


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def check_cwd(config: Config, cwd: str) -> None:
    """Raise -32602 unless ``cwd`` is an existing directory inside ``allowed_roots``."""
    if not os.path.isdir(cwd):
        raise LocalProtocolError(
            f"Invalid params: cwd {cwd!r} does not exist or is not a directory on the proxy's "
            "host; create it first (the agent runs there)",
            INVALID_PARAMS,
            {"cwd": cwd},
        )
    if config.allowed_roots:
        real = os.path.realpath(cwd)
        roots = [os.path.realpath(root) for root in config.allowed_roots]
        if not any(_inside(real, root) for root in roots):
            raise LocalProtocolError(
                f"Invalid params: cwd {cwd!r} is outside the directories this proxy serves "
                f"(allowed_roots: {', '.join(config.allowed_roots)})",
                INVALID_PARAMS,
                {"cwd": cwd, "allowedRoots": config.allowed_roots},
            )
