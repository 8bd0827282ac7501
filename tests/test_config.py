"""Configuration: the committed example is the defaults, and mistakes are refused clearly."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from acp_proxy.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"socket": "/tmp/s.sock", "db": "/tmp/d.db", "agent_command": ["agent"]}


def test_example_file_equals_the_defaults() -> None:
    """config.example.toml lists every key with exactly the default value."""
    loaded = load_config(ROOT / "config.example.toml", **REQUIRED)
    assert loaded == Config(**REQUIRED)
    example = (ROOT / "config.example.toml").read_text()
    for name in msgspec.structs.fields(Config):
        assert f"{name.name} =" in example, f"{name.name} missing from config.example.toml"


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    """A misspelled key is an error that names it, not a silently ignored setting."""
    path = tmp_path / "c.toml"
    path.write_text("warm_spare = 2\n")
    with pytest.raises(ConfigError, match="warm_spare"):
        load_config(path, **REQUIRED)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"socket": None}, "--socket"),
        ({"db": None}, "--db"),
        ({"agent_command": None}, "agent command"),
        ({"warm_spares": -1}, "warm_spares"),
        ({"unattached_permission": "maybe"}, "unattached_permission"),
        ({"drain_timeout_s": -1}, "drain_timeout_s"),
        ({"metrics_address": "9464"}, "HOST:PORT"),
        ({"metrics_address": "localhost:http"}, "HOST:PORT"),
    ],
)
def test_invalid_settings_say_what_to_fix(overrides: dict, fragment: str) -> None:
    """Missing or invalid values are reported with the option to fix."""
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, **{**REQUIRED, **overrides})


def test_command_line_overrides_the_file(tmp_path: Path) -> None:
    """Options given on the command line win over the file."""
    path = tmp_path / "c.toml"
    path.write_text("warm_spares = 3\nlog_level = 'debug'\n")
    config = load_config(path, **REQUIRED, warm_spares=0)
    assert (config.warm_spares, config.log_level) == (0, "debug")
