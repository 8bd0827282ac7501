"""structlog set-up: JSON lines on stderr (stdout may be an ACP stdio channel)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

__all__ = ["configure_logging", "get_logger"]

_encoder = msgspec.json.Encoder(enc_hook=repr)


def _serialize(obj: Any, **_: Any) -> bytes:
    # JSONRenderer always passes default=; msgspec spells it enc_hook (bound above).
    return _encoder.encode(obj)


def configure_logging(level: str = "info") -> None:
    """Configure structlog once, at start-up. Never writes to stdout."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.BytesLoggerFactory(sys.stderr.buffer),
        cache_logger_on_first_use=True,
    )


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context."""
    return structlog.get_logger().bind(**bound)
