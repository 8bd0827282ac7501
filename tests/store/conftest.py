"""Fixtures for the store tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """Run the store tests on asyncio only (aiosqlite is asyncio-only)."""
    return "asyncio"
