"""Prometheus metrics, scraped from the real ``serve`` and parsed."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from .conftest import client, proxy

pytestmark = pytest.mark.trio


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str) -> tuple[int, str, bytes]:
    def fetch() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    return await trio.to_thread.run_sync(fetch)


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_turns_by_agent_and_report_gauges(tmp: Path) -> None:
    """Four turns (a spare agent, the same warm, a cold one, one restored after close)
    give four TTFT samples with the right labels; phases, restores, errors, store commits
    and gauges are exported."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    args = ("--warm-spares", "0", "--metrics", f"127.0.0.1:{port}")
    async with proxy(tmp, "--startup-delay", "0.05", extra_args=args) as p, client(p) as c:
        # initialize started one agent to learn the capabilities: the first session takes it
        a = await c.new_session(str(tmp))
        await c.prompt(a, "one")  # spare
        await c.prompt(a, "two")  # warm
        b = await c.new_session(str(tmp))
        await c.prompt(b, "three")  # cold: no spare left, session/new spawned it
        assert (await c.request("session/close", {"sessionId": a})).error is None
        await c.prompt(a, "four")  # restored into a new agent
        missing = await c.request("nope/method", {})
        assert missing.error["code"] == -32601
        status, content_type, body = await _get(url)
        not_found = await _get(f"http://127.0.0.1:{port}/other")
        rung = next(r["rung"] for r in p.logs() if r.get("event") == "session.restored")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    assert not_found[0] == 404
    s = _samples(body.decode())
    kinds = ("spare", "warm", "cold", "restored")
    ttft = {k: _value(s, "acp_proxy_ttft_seconds_count", agent=k) for k in kinds}
    assert ttft == {"spare": 1, "warm": 1, "cold": 1, "restored": 1}
    assert _value(s, "acp_proxy_turns_total", outcome="completed") == 4
    assert _value(s, "acp_proxy_restores_total", rung=rung) == 1
    assert _value(s, "acp_proxy_errors_total", kind="method_not_found") == 1
    # Phases are samples only for the turns that paid them: the warm turn paid neither.
    assert _value(s, "acp_proxy_cli_ready_seconds_count", agent="cold") == 1
    assert _value(s, "acp_proxy_cli_ready_seconds_sum", agent="cold") >= 0.05
    assert _value(s, "acp_proxy_session_init_seconds_count", agent="restored") == 1
    assert _value(s, "acp_proxy_cli_ready_seconds_count", agent="restored") == 1
    assert _value(s, "acp_proxy_cli_ready_seconds_count", agent="warm") == 0
    assert _value(s, "acp_proxy_cli_ready_seconds_count", agent="spare") == 0
    first_tokens = sum(
        _value(s, "acp_proxy_model_first_token_seconds_count", agent=k) for k in kinds
    )
    assert first_tokens == 4
    # Buckets from 1 ms to 60 s, cumulative.
    assert ("acp_proxy_ttft_seconds_bucket", (("agent", "warm"), ("le", "0.001"))) in s
    assert _value(s, "acp_proxy_ttft_seconds_bucket", agent="warm", le="60.0") == 1
    assert _value(s, "acp_proxy_store_commit_seconds_count") > 3
    assert _value(s, "acp_proxy_live_agents", role="session") == 2
    assert _value(s, "acp_proxy_live_agents", role="spare") == 0
    assert _value(s, "acp_proxy_live_sessions") == 2
    assert _value(s, "acp_proxy_client_connections") == 1
    assert _value(s, "acp_proxy_agent_memory_bytes") > 1 << 20


async def test_metrics_are_off_by_default(tmp: Path) -> None:
    """Without --metrics nothing listens (the proxy opens no TCP port of its own)."""
    async with proxy(tmp) as p:
        lines = [line for line in p.logs() if line.get("event") == "metrics.listening"]
    assert lines == []
