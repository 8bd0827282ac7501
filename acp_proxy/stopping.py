"""What a stopping proxy still serves (see ``drain.py``). No I/O."""

from __future__ import annotations

from typing import Any, Final

from .extensions import STATUS_METHOD
from .protocol import PROXY_STOPPING

__all__ = ["refuses_while_stopping", "stopping_error"]

#: Requests still served while stopping: they start no new work.
_SERVED_WHILE_STOPPING: Final = frozenset({"session/cancel", STATUS_METHOD})


def refuses_while_stopping(method: str) -> bool:
    """Whether a request for ``method`` is refused once the proxy is stopping."""
    return method not in _SERVED_WHILE_STOPPING


def stopping_error(method: str) -> tuple[int, str, dict[str, Any]]:
    """``(code, message, data)`` of the answer to a request refused while stopping."""
    return (
        PROXY_STOPPING,
        f"{method} refused: the proxy is stopping (SIGTERM); reconnect to its replacement "
        "and retry: sessions are restored there",
        {"kind": "proxy_stopping", "retryable": True},
    )
