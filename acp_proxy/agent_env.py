"""The environment an agent process starts with.

A sidecar's environment is usually the agent's (PATH, HOME, the provider's API key), so agents
inherit it by default, minus the proxy's own configuration: ``ACP_PROXY_*`` variables, and any
variable holding the store's URL when that URL carries a password. A deployment that wants an
allowlist sets ``agent_env_allow`` (names, or prefixes ending in ``*``): then only those pass.
The per-process values a client forwarded (``per_process_env``) are added last.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["PROXY_PREFIX", "agent_environment"]

#: The proxy's own settings: never an agent's business.
PROXY_PREFIX: Final = "ACP_PROXY_"
#: ``scheme://user:password@host``: a URL with credentials in it.
_URL_WITH_PASSWORD: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:[^/@\s]+@")


def _allowed(name: str, allow: Sequence[str]) -> bool:
    return any(
        name.startswith(entry[:-1]) if entry.endswith("*") else name == entry for entry in allow
    )


def agent_environment(
    base: Mapping[str, str],
    *,
    allow: Sequence[str] = (),
    store_url: str = "",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment for a new agent process.

    Args:
        base: The proxy's environment (``os.environ``).
        allow: ``agent_env_allow``; empty means inherit everything but the proxy's own.
        store_url: The store's path or URL; a variable holding it is withheld if it carries a
            password.
        extra: Per-process variables a client forwarded, added last (they are explicit).
    """
    secret = store_url if _URL_WITH_PASSWORD.match(store_url) else None
    env = {
        name: value
        for name, value in base.items()
        if not name.startswith(PROXY_PREFIX)
        and (secret is None or secret not in value)
        and (not allow or _allowed(name, allow))
    }
    if extra:
        env.update(extra)
    return env
