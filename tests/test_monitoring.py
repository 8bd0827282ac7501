"""The shipped dashboard and scrape config refer only to metrics the proxy exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from acp_proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"


def _exported_sample_names() -> set[str]:
    metrics = Metrics()
    timings = {"agent": "warm", "ttft_ms": 5.0, "model_first_token_ms": 2.0}
    metrics.observe_turn("completed", {**timings, "cli_ready_ms": 1.0, "session_init_ms": 1.0})
    metrics.count_restore("resume")
    metrics.count_error(-32601, None)
    metrics.observe_store_commit(0.001)
    status = {"agents": [], "sessions": {"live": 0}, "clients": 0, "agent_memory_bytes": 0}
    text = metrics.render(status).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_queries_name_exported_metrics() -> None:
    """Every acp_proxy_* series a Grafana panel queries exists in the exposition."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"acp_proxy_\w+", e)}
    assert used, "no acp_proxy metric in the dashboard"
    assert used <= _exported_sample_names(), used - _exported_sample_names()


def test_the_issue_metric_names_are_exported() -> None:
    """The names operators were promised (issue 13) are the ones exported."""
    names = _exported_sample_names()
    for name in (
        "acp_proxy_ttft_seconds_bucket",
        "acp_proxy_cli_ready_seconds_count",
        "acp_proxy_session_init_seconds_count",
        "acp_proxy_model_first_token_seconds_count",
        "acp_proxy_turns_total",
        "acp_proxy_restores_total",
        "acp_proxy_errors_total",
        "acp_proxy_live_agents",
        "acp_proxy_live_sessions",
        "acp_proxy_client_connections",
        "acp_proxy_agent_memory_bytes",
        "acp_proxy_store_commit_seconds_bucket",
    ):
        assert name in names


def test_scrape_config_scrapes_the_metrics_path() -> None:
    """The scrape config targets the default metrics port used in the examples."""
    text = (MONITORING / "prometheus.yml").read_text()
    assert "job_name: acp-proxy" in text
    assert "127.0.0.1:9464" in text


def test_memory_budget_metrics_follow_the_pool_counts() -> None:
    """The budget is a gauge; stops for memory a counter that follows the pool's counts
    (rendered twice: counted once)."""
    metrics = Metrics()
    status = {
        "agents": [],
        "sessions": {"live": 0},
        "clients": 0,
        "agent_memory_bytes": 0,
        "agent_memory_limit_bytes": 1 << 30,
        "agents_stopped_for_memory": {"spare": 1, "session": 2},
    }
    metrics.render(status)
    text = metrics.render(status).decode()
    samples = {
        (s.name, s.labels.get("role")): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples["acp_proxy_agent_memory_limit_bytes", None] == 1 << 30
    assert samples["acp_proxy_agents_stopped_for_memory_total", "spare"] == 1
    assert samples["acp_proxy_agents_stopped_for_memory_total", "session"] == 2
