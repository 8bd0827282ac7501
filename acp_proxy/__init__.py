"""acp-proxy: a long-lived ACP sidecar that keeps one warm agent per conversation.

Layers: ``protocol`` (pure, no I/O) → ``agent``/``client``/``session``/``proxy`` (the anyio
shell) → ``server``/``attach``/``__main__`` (entry points). The store is the top-level
``store`` package.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
